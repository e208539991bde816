//! The emulator's view of Tencent's call-frequency limits: a sliding one-second window per
//! SDKAppID (60011, `rate_limit`) and per API with its own entry in `api_limits` (60007); an
//! API without one is bounded by `rate_limit` alone, as in the gateway. Only admitted
//! requests count.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::api::Api;
use crate::config::App;
use crate::rules::Refusal;

const WINDOW: Duration = Duration::from_secs(1);

/// An app's own limit and its per-API limits.
type AppLimits = (NonZeroU32, std::collections::BTreeMap<String, NonZeroU32>);
/// A window's key: the SDKAppID alone (60011) or with an API name (60007).
type Key = (u64, Option<String>);
/// Admission times per window.
type Hits = HashMap<Key, VecDeque<Instant>>;

/// Recent admissions per SDKAppID and per API.
pub struct Limits {
    apps: HashMap<u64, AppLimits>,
    hits: Mutex<Hits>,
}

impl Limits {
    /// The limits configured for `apps`.
    pub fn new(apps: &[App]) -> Limits {
        Limits {
            apps: apps
                .iter()
                .map(|a| (a.sdkappid, (a.rate_limit, a.api_limits.clone())))
                .collect(),
            hits: Mutex::default(),
        }
    }

    /// Admits one request at `now`, or refuses it the way Tencent does.
    pub fn admit(&self, sdkappid: u64, api: &Api, now: Instant) -> Result<(), Refusal> {
        let Some((app_limit, api_limits)) = self.apps.get(&sdkappid) else {
            return Ok(());
        };
        let name = api.name();
        let mut hits = self
            .hits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent(&mut hits, (sdkappid, None), now) >= app_limit.get() as usize {
            let info = format!("SDKAppID over {app_limit} requests per second");
            return Err(Refusal::new(60011, info));
        }
        let mut keys = vec![(sdkappid, None)];
        if let Some(api_limit) = api_limits.get(name) {
            let key = (sdkappid, Some(name.to_owned()));
            if recent(&mut hits, key.clone(), now) >= api_limit.get() as usize {
                let info = format!("{name} over {api_limit} requests per second");
                return Err(Refusal::new(60007, info));
            }
            keys.push(key);
        }
        for key in keys {
            hits.entry(key).or_default().push_back(now);
        }
        Ok(())
    }
}

/// How many admissions for `key` lie within the second before `now`, dropping older ones.
fn recent(hits: &mut Hits, key: Key, now: Instant) -> usize {
    let Some(log) = hits.get_mut(&key) else {
        return 0;
    };
    while log
        .front()
        .is_some_and(|t| now.duration_since(*t) >= WINDOW)
    {
        log.pop_front();
    }
    log.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn limits(extra: &str) -> Limits {
        let text = format!(
            "[[apps]]\nsdkappid = 1\nidentifier = \"a\"\nsecret_key = \"k\"\nregion = \"usa\"\nrate_limit = 5\n{extra}"
        );
        Limits::new(&Config::from_toml(&text).unwrap().apps)
    }

    #[test]
    fn refuses_past_the_app_limit_within_one_second_only() {
        let limits = limits("");
        let api = Api::from_path("/v4/openim/sendmsg").unwrap();
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(
                limits
                    .admit(1, &api, t0 + Duration::from_millis(i * 100))
                    .is_ok()
            );
        }
        let refused = limits
            .admit(1, &api, t0 + Duration::from_millis(999))
            .unwrap_err();
        assert_eq!(refused.code, 60011);
        assert!(
            limits
                .admit(1, &api, t0 + Duration::from_millis(1000))
                .is_ok()
        );
    }

    #[test]
    fn refuses_past_an_api_limit_with_60007() {
        let limits = limits("[apps.api_limits]\n\"openim/sendmsg\" = 2\n");
        let api = Api::from_path("/v4/openim/sendmsg").unwrap();
        let other = Api::from_path("/v4/openim/other").unwrap();
        let t0 = Instant::now();
        assert!(limits.admit(1, &api, t0).is_ok());
        assert!(limits.admit(1, &api, t0).is_ok());
        assert_eq!(limits.admit(1, &api, t0).unwrap_err().code, 60007);
        assert!(limits.admit(1, &other, t0).is_ok());
    }
}
