//! The path router on any bytes. Input: a request path, optionally `\n` and an allow-list
//! entry. `Api::from_path` accepts exactly `/v4/<service>/<command>` of `A-Za-z0-9_` within
//! `MAX_NAME_BYTES` (checked against a plain restatement of that rule), and an entry parses
//! or is refused without panicking, and matches exactly what a reference glob matches, within
//! segments only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use timgate::api::{Api, MAX_NAME_BYTES, Pattern};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, entry) = text.split_once('\n').unwrap_or((text, text));
    let api = Api::from_path(path);
    assert_eq!(api.is_some(), is_api_path(path), "{path:?}");
    if let Some(api) = &api {
        let name = api.name();
        assert!(name.len() <= MAX_NAME_BYTES);
        assert_eq!(format!("/v4/{name}"), path);
        assert_eq!(format!("{}/{}", api.service(), api.command()), name);
        let _ = api.known();
    }
    // The entry against the path's API, or a fixed one.
    let target = api.unwrap_or_else(|| Api::from_path("/v4/openim/sendmsg").expect("valid"));
    let entry = entry.strip_prefix("/v4/").unwrap_or(entry);
    let Ok(pattern) = Pattern::parse(entry) else {
        return;
    };
    assert_eq!(pattern.as_str(), entry);
    let (service, command) = entry.split_once('/').expect("a parsed entry has one /");
    let expected = glob(service.as_bytes(), target.service().as_bytes())
        && glob(command.as_bytes(), target.command().as_bytes());
    assert_eq!(pattern.matches(&target), expected, "{entry:?} vs {target}");
});

/// `/v4/<service>/<command>`, each segment non-empty `A-Za-z0-9_`, the name short enough.
fn is_api_path(path: &str) -> bool {
    let Some(name) = path.strip_prefix("/v4/") else {
        return false;
    };
    let segments: Vec<&str> = name.split('/').collect();
    name.len() <= MAX_NAME_BYTES
        && segments.len() == 2
        && segments
            .iter()
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// The reference glob: `*` matches any run of bytes; a table of which prefixes match which.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    // matched[j]: pattern[..i] matches name[..j], for the i of the current row.
    let mut matched = vec![false; name.len() + 1];
    matched[0] = true;
    for &p in pattern {
        let mut next = vec![false; name.len() + 1];
        for j in 0..=name.len() {
            next[j] = if p == b'*' {
                matched[j] || (j > 0 && next[j - 1])
            } else {
                j > 0 && matched[j - 1] && name[j - 1] == p
            };
        }
        matched = next;
    }
    matched[name.len()]
}
