//! `TIMGATE__<SECTION>__<KEY>` environment variables as configuration overrides.
//!
//! A variable names a key by its path, upper-cased, with `__` between the parts and a number
//! for an `[[apps]]` entry's index: `TIMGATE__SERVER__LISTEN` is `server.listen`,
//! `TIMGATE__APPS__0__SECRET_KEY` is `apps[0].secret_key`. The value is read as the key's
//! type (`TIMGATE__APPS__0__RATE_LIMIT=500` is a number). An override wins over the file, and
//! can supply a key, or a whole app, that the file lacks. `api_limits` entries cannot come
//! from the environment: their names (`service/command`) are no variable name.
//! Every problem with an overridden key names the variable that set it.

use std::ffi::OsString;

use super::ConfigError;

/// The prefix of every override; `TIMGATE_SECRET_KEY` and `TIMGATE_CONFIG` (one `_`) are not.
const PREFIX: &str = "TIMGATE__";

/// One variable: its name, the configuration path it sets, and its value.
pub(super) struct Override {
    pub(super) var: String,
    pub(super) path: String,
    pub(super) value: String,
}

/// The overrides in `vars`, in a stable order (by variable name).
pub(super) fn overrides(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<Override>, ConfigError> {
    let mut found = Vec::new();
    for (name, value) in vars {
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let refuse = |why: &str| ConfigError::new(format!("environment {name}"), why);
        let value = value
            .into_string()
            .map_err(|_| refuse("the value is not UTF-8"))?;
        let path = path(rest).ok_or_else(|| {
            refuse("not a configuration key: expected TIMGATE__<SECTION>__<KEY> or TIMGATE__APPS__<N>__<KEY>")
        })?;
        if path.contains(".api_limits") {
            return Err(refuse(
                "api_limits entries cannot be set from the environment (their names hold '/'); set them in the file",
            ));
        }
        found.push(Override {
            var: name.to_owned(),
            path,
            value,
        });
    }
    found.sort_by(|a, b| a.var.cmp(&b.var));
    Ok(found)
}

/// `SERVER__LISTEN` → `server.listen`; `APPS__0__SECRET_KEY` → `apps[0].secret_key`.
fn path(rest: &str) -> Option<String> {
    let mut path = String::new();
    for part in rest.split("__") {
        let part = part.to_ascii_lowercase();
        let is_word = part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) && !path.is_empty() {
            path.push_str(&format!("[{}]", part.parse::<u16>().ok()?));
        } else if !part.is_empty() && is_word && !part.starts_with('_') {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&part);
        } else {
            return None;
        }
    }
    (!path.is_empty()).then_some(path)
}

/// The variable that set `key`, or the one that set a key inside it, if any.
pub(super) fn blame<'o>(overrides: &'o [Override], key: &str) -> Option<&'o str> {
    overrides
        .iter()
        .find(|o| o.path == key)
        .or_else(|| overrides.iter().find(|o| o.path.starts_with(key)))
        .map(|o| o.var.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn a_number_between_parts_is_an_index() {
        let found = overrides(vars(&[
            ("TIMGATE__APPS__0__SECRET_KEY", "k"),
            ("TIMGATE__SERVER__LISTEN", "0.0.0.0:8080"),
            ("TIMGATE_SECRET_KEY", "not an override"),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        let paths: Vec<_> = found.iter().map(|o| o.path.as_str()).collect();
        assert_eq!(paths, ["apps[0].secret_key", "server.listen"]);
    }

    #[test]
    fn a_name_that_is_no_key_is_refused_naming_the_variable() {
        for name in [
            "TIMGATE__",
            "TIMGATE__SERVER____LISTEN",
            "TIMGATE__0__X",
            "TIMGATE__A-B",
        ] {
            let e = overrides(vars(&[(name, "x")])).err().unwrap();
            assert_eq!(e.key, format!("environment {name}"));
        }
        let e = overrides(vars(&[("TIMGATE__APPS__0__API_LIMITS__OPENIM", "5")]))
            .err()
            .unwrap();
        assert!(e.message.contains("api_limits"), "{e}");
    }
}
