//! Which Tencent API a request names: `/v4/<service>/<command>`.
//!
//! Both segments are non-empty and made of `A-Za-z0-9_` only, and `service/command` is at most
//! `MAX_NAME_BYTES` long, so an `Api` can be put into an upstream URL or a log line as it is,
//! and a path no real API could have is refused before it costs anything.

use std::fmt;
use std::sync::Arc;

/// The longest `service/command` accepted. The longest name in Tencent's documentation
/// (TENCENT.md) is `live_engine_http_srv/get_banned_member_list`, 43 bytes, and the Chat
/// family's longest run to about 50 (`group_open_http_svc/send_group_system_notification`);
/// 128 leaves room for APIs Tencent adds, and keeps the upstream URL far below the 64 KiB
/// that `http::Uri` can hold.
pub const MAX_NAME_BYTES: usize = 128;

/// One REST API, e.g. `live_engine_http_srv/set_room_metadata`.
///
/// Its name is shared, not owned: a request keeps one for its log line beside the one its
/// steps use, and a clone is then a count, not a copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Api {
    /// `service/command`.
    name: Arc<str>,
    /// Where `/` sits in `name`.
    split: usize,
}

impl Api {
    /// Parses a request path; `None` unless it is exactly `/v4/<service>/<command>` with a
    /// name of at most `MAX_NAME_BYTES`.
    pub fn from_path(path: &str) -> Option<Api> {
        let name = path.strip_prefix("/v4/")?;
        if name.len() > MAX_NAME_BYTES {
            return None;
        }
        let mut parts = name.split('/');
        let (service, command) = (parts.next()?, parts.next()?);
        if parts.next().is_some() || !is_name(service) || !is_name(command) {
            return None;
        }
        // `name` is `service/command` exactly: taken as it is, not formatted anew.
        Some(Api {
            name: Arc::from(name),
            split: service.len(),
        })
    }

    /// The service segment, e.g. `live_engine_http_srv`.
    pub fn service(&self) -> &str {
        &self.name[..self.split]
    }

    /// The command segment, e.g. `set_room_metadata`.
    pub fn command(&self) -> &str {
        &self.name[self.split + 1..]
    }

    /// `service/command`: the form used in `api_limits` keys, the rules table, logs and metrics.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// An API is its name where a name will do: the limiter keys its lanes by `service/command`
/// (`&str`), so a request's `&Api` is passed to it as it is.
impl std::ops::Deref for Api {
    type Target = str;

    fn deref(&self) -> &str {
        &self.name
    }
}

/// What timgate knows of an API's service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// A service whose every command timgate knows, and this is one of them.
    Command,
    /// A service whose every command timgate knows, and this is none of them.
    UnknownCommand,
    /// Not such a service, but one letter or two away from one (a likely typo).
    NearService(&'static str),
    /// A service timgate does not list (most Chat APIs): any command may be right.
    OtherService,
}

/// The seat API's commands (TENCENT.md §6); the live room API's are the rules table's.
const SEAT_COMMANDS: [&str; 4] = [
    "get_seat_list",
    "pick_user_on_seat",
    "kick_user_off_seat",
    "move_user_to_seat",
];

/// The services whose every command timgate knows.
const KNOWN_SERVICES: [&str; 2] = ["live_engine_http_srv", "room_engine_http_mic"];

impl Api {
    /// Whether this is a command timgate knows, for validating configured API names.
    pub fn known(&self) -> Known {
        let (service, command) = (self.service(), self.command());
        let listed = match service {
            "live_engine_http_srv" => crate::rules::TABLE
                .iter()
                .any(|(name, _)| *name == self.name()),
            "room_engine_http_mic" => SEAT_COMMANDS.contains(&command),
            _ => {
                return KNOWN_SERVICES
                    .iter()
                    .find(|known| distance(known, service) <= 2)
                    .map_or(Known::OtherService, |known| Known::NearService(known));
            }
        };
        if listed {
            Known::Command
        } else {
            Known::UnknownCommand
        }
    }
}

/// An allow-list entry: `service/command`, where `*` in a segment matches any run of name
/// characters within that segment (`live_engine_http_srv/*`, `openim/send*`, `*/*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// As written, for printing it back.
    text: String,
    /// Where `/` sits in `text`.
    split: usize,
}

impl Pattern {
    /// Parses `service/command`, each segment non-empty and of `A-Za-z0-9_*`; an entry
    /// without a `*` in the service must name a service no letter or two away from a known
    /// one, and a fully written command of a known service must be one of its commands.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let malformed = || {
            format!("{text:?} must be \"service/command\" (letters, digits, _ and * as a wildcard)")
        };
        let (service, command) = text.split_once('/').ok_or_else(malformed)?;
        let word = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'*')
        };
        if text.len() > MAX_NAME_BYTES || !word(service) || !word(command) {
            return Err(malformed());
        }
        if !service.contains('*') {
            let literal = format!("/v4/{service}/{}", command.replace('*', "x"));
            let known = Api::from_path(&literal).map(|api| api.known());
            match known {
                Some(Known::NearService(near)) => {
                    return Err(format!("unknown service {service:?}; did you mean {near}?"));
                }
                Some(Known::UnknownCommand) if !command.contains('*') => {
                    return Err(format!("{service} has no command {command:?}"));
                }
                _ => {}
            }
        }
        Ok(Pattern {
            text: text.to_owned(),
            split: service.len(),
        })
    }

    /// Whether `api` is one this entry names.
    pub fn matches(&self, api: &Api) -> bool {
        glob(&self.text[..self.split], api.service())
            && glob(&self.text[self.split + 1..], api.command())
    }

    /// The entry as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of bytes. Linear in practice:
/// on a mismatch it retries from the last `*` only, one byte further on.
pub(crate) fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

/// Levenshtein distance between two short ASCII names.
fn distance(a: &str, b: &str) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.bytes().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// `service/command`.
impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

fn is_name(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_service_command_only() {
        let api = Api::from_path("/v4/live_engine_http_srv/set_room_metadata").unwrap();
        assert_eq!(api.to_string(), "live_engine_http_srv/set_room_metadata");
        assert_eq!(api.service(), "live_engine_http_srv");
        assert_eq!(api.command(), "set_room_metadata");
        for bad in [
            "/",
            "/v4",
            "/v4/",
            "/v4/a",
            "/v4/a/",
            "/v4//b",
            "/v3/a/b",
            "/v4/a/b/c",
            "/v4/a/b%2Fc",
            "/v4/a/../b",
            "/v4/a-b/c",
        ] {
            assert_eq!(Api::from_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_over_128_bytes_are_refused() {
        let longest = format!("/v4/{}/{}", "s".repeat(63), "c".repeat(64));
        assert_eq!(Api::from_path(&longest).unwrap().name().len(), 128);
        let over = format!("/v4/{}/{}", "s".repeat(63), "c".repeat(65));
        assert_eq!(Api::from_path(&over), None);
    }

    #[test]
    fn knows_the_live_room_and_seat_commands_and_spots_a_misspelled_service() {
        let known = |path: &str| Api::from_path(path).unwrap().known();
        assert_eq!(
            known("/v4/live_engine_http_srv/get_room_list"),
            Known::Command
        );
        assert_eq!(
            known("/v4/room_engine_http_mic/get_seat_list"),
            Known::Command
        );
        assert_eq!(
            known("/v4/live_engine_http_srv/get_room_lists"),
            Known::UnknownCommand
        );
        assert_eq!(
            known("/v4/live_engine_http_svr/get_room_list"),
            Known::NearService("live_engine_http_srv")
        );
        assert_eq!(known("/v4/openim/sendmsg"), Known::OtherService);
    }

    #[test]
    fn patterns_match_within_a_segment_only() {
        let matches = |pattern: &str, path: &str| {
            Pattern::parse(pattern)
                .unwrap()
                .matches(&Api::from_path(path).unwrap())
        };
        assert!(matches(
            "live_engine_http_srv/*",
            "/v4/live_engine_http_srv/get_room_list"
        ));
        assert!(!matches("live_engine_http_srv/*", "/v4/openim/sendmsg"));
        assert!(matches("openim/sendmsg", "/v4/openim/sendmsg"));
        assert!(!matches("openim/sendmsg", "/v4/openim/sendmsg2"));
        assert!(matches("openim/send*", "/v4/openim/sendmsg"));
        assert!(matches("*/*", "/v4/a/b"));
        assert!(matches(
            "*_srv/get_*_list",
            "/v4/live_engine_http_srv/get_room_list"
        ));
        assert!(!matches(
            "*_srv/get_*_list",
            "/v4/live_engine_http_srv/get_room_info"
        ));
        assert!(matches("a*a*a*b/x", "/v4/aaaaaaaaab/x"));
        assert!(!matches("a*a*a*b/x", "/v4/aaaaaaaaaa/x"));
    }

    #[test]
    fn malformed_or_misspelled_patterns_are_refused() {
        for bad in ["", "*", "a", "a/", "/b", "a/b/c", "a-b/c", "a/b c"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
        let e = Pattern::parse("live_engine_http_svr/*").unwrap_err();
        assert!(e.contains("did you mean live_engine_http_srv"), "{e}");
        let e = Pattern::parse("live_engine_http_srv/get_room_lists").unwrap_err();
        assert!(e.contains("no command"), "{e}");
        assert!(Pattern::parse("live_engine_http_srv/get_*").is_ok());
    }
}
