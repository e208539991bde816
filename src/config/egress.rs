//! The egress proxy from the environment: `HTTPS_PROXY` (or `https_proxy`) when
//! `server.egress_proxy` is not set, and `NO_PROXY` (or `no_proxy`) for either. Read once,
//! with the rest of the configuration, at start.

use std::ffi::OsString;

use super::value::proxy_url;
use super::{ConfigError, EgressProxy};

/// The proxy variables among a process's environment.
#[derive(Default)]
pub(super) struct ProxyVars {
    https_proxy: Option<(&'static str, String)>,
    no_proxy: Option<String>,
}

impl ProxyVars {
    /// The upper-case name wins over the lower-case one, as curl reads them.
    pub(super) fn from(vars: &[(OsString, OsString)]) -> ProxyVars {
        let get = |name: &str| {
            vars.iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| v.to_str())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        ProxyVars {
            https_proxy: get("HTTPS_PROXY")
                .map(|v| ("HTTPS_PROXY", v))
                .or_else(|| get("https_proxy").map(|v| ("https_proxy", v))),
            no_proxy: get("NO_PROXY").or_else(|| get("no_proxy")),
        }
    }
}

/// `configured` (from `server.egress_proxy`), else `HTTPS_PROXY`; with `NO_PROXY`'s hosts.
pub(super) fn egress_proxy(
    configured: Option<EgressProxy>,
    vars: &ProxyVars,
) -> Result<Option<EgressProxy>, ConfigError> {
    let proxy = match (configured, &vars.https_proxy) {
        (Some(proxy), _) => proxy,
        (None, Some((name, url))) => EgressProxy {
            url: proxy_url(url.trim_end_matches('/'))
                .map_err(|m| ConfigError::new(format!("environment {name}"), m))?,
            no_proxy: Vec::new(),
            from: name,
        },
        (None, None) => return Ok(None),
    };
    let no_proxy = vars
        .no_proxy
        .iter()
        .flat_map(|list| list.split(','))
        .map(|entry| entry.trim().to_ascii_lowercase())
        .filter(|entry| !entry.is_empty())
        .collect();
    Ok(Some(EgressProxy { no_proxy, ..proxy }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> ProxyVars {
        let owned: Vec<(OsString, OsString)> = list
            .iter()
            .map(|(n, v)| ((*n).into(), (*v).into()))
            .collect();
        ProxyVars::from(&owned)
    }

    #[test]
    fn https_proxy_is_used_when_the_key_is_not_set_and_no_proxy_exempts_hosts() {
        let found = egress_proxy(
            None,
            &vars(&[
                ("HTTPS_PROXY", "http://proxy:3128/"),
                ("NO_PROXY", "localhost, .internal,127.0.0.1"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(found.from, "HTTPS_PROXY");
        assert_eq!(found.url, "http://proxy:3128");
        assert!(found.covers("adminapisgp.im.qcloud.com"));
        assert!(!found.covers("localhost"));
        assert!(!found.covers("a.b.internal"));
        assert!(!found.covers("127.0.0.1"));
        assert!(found.covers("xinternal"));
        assert!(
            egress_proxy(None, &vars(&[("NO_PROXY", "*")]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_bad_https_proxy_names_the_variable() {
        let e = egress_proxy(None, &vars(&[("https_proxy", "socks5://x:1")])).unwrap_err();
        assert_eq!(e.key, "environment https_proxy");
    }
}
