//! The emulator's view of Tencent's limits, from the same table the gateway keeps: sliding
//! windows per SDKAppID (60011, `rate_limit`), per API (60007, its `api_limits` entry or
//! `DEFAULT_API_RATE`), and per quota of an API (60007: units per second or minute, per key
//! when the quota is keyed). Only admitted requests count. Windows are dropped once empty,
//! so callers' API names and group IDs leave nothing behind.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::api::Api;
use crate::config::App;
use crate::limiter::{DEFAULT_API_RATE, Measured, Quota};
use crate::rules::Refusal;

/// Windows kept before the empty ones are swept.
const SWEEP_AT: usize = 1024;

/// An app's limits.
struct AppLimits {
    rate: NonZeroU32,
    apis: BTreeMap<String, NonZeroU32>,
    quotas: Vec<Quota>,
}

/// A window's key: the SDKAppID, the API (none: the app's), the quota's index and key.
type Key = (u64, Option<String>, Option<(usize, Option<String>)>);

/// Admissions in one window: when, and how many units each.
#[derive(Default)]
struct Window {
    hits: VecDeque<(Instant, u32)>,
    units: u64,
}

impl Window {
    /// Units admitted within `period` before `now`, dropping older ones.
    fn recent(&mut self, now: Instant, period: Duration) -> u64 {
        while let Some((t, n)) = self.hits.front().copied()
            && now.duration_since(t) >= period
        {
            self.hits.pop_front();
            self.units -= u64::from(n);
        }
        self.units
    }
}

/// Recent admissions per SDKAppID, per API and per quota.
pub struct Limits {
    apps: HashMap<u64, AppLimits>,
    windows: Mutex<Windows>,
}

#[derive(Default)]
struct Windows {
    open: HashMap<Key, Window>,
    sweep_at: usize,
}

impl Limits {
    /// The limits configured for `apps`.
    pub fn new(apps: &[App]) -> Limits {
        Limits {
            apps: apps
                .iter()
                .map(|a| {
                    let limits = AppLimits {
                        rate: a.rate_limit,
                        apis: a.api_limits.clone(),
                        quotas: a.api_quotas.clone(),
                    };
                    (a.sdkappid, limits)
                })
                .collect(),
            windows: Mutex::default(),
        }
    }

    /// The quotas of `api` for `sdkappid`, whose costs and keys `admit` needs.
    pub fn quotas(&self, sdkappid: u64, api: &Api) -> Vec<Quota> {
        self.apps.get(&sdkappid).map_or_else(Vec::new, |app| {
            app.quotas
                .iter()
                .filter(|q| q.api == api.name())
                .cloned()
                .collect()
        })
    }

    /// Admits one request that arrived at `now`, or refuses it the way Tencent does. `measured` holds
    /// its cost and key for each of `quotas(sdkappid, api)`, in order.
    pub fn admit(
        &self,
        sdkappid: u64,
        api: &Api,
        measured: &[Measured],
        now: Instant,
    ) -> Result<(), Refusal> {
        let Some(app) = self.apps.get(&sdkappid) else {
            return Ok(());
        };
        let name = api.name();
        let second = Duration::from_secs(1);
        let api_rate = app.apis.get(name).map_or(DEFAULT_API_RATE, |n| n.get());
        let mut checks: Vec<(Key, u64, Duration, u32, Refusal)> = vec![
            (
                (sdkappid, None, None),
                u64::from(app.rate.get()),
                second,
                1,
                Refusal::new(
                    60011,
                    format!("SDKAppID over {} requests per second", app.rate),
                ),
            ),
            (
                (sdkappid, Some(name.to_owned()), None),
                u64::from(api_rate),
                second,
                1,
                Refusal::new(60007, format!("{name} over {api_rate} requests per second")),
            ),
        ];
        let quotas = app.quotas.iter().filter(|q| q.api == name);
        for (i, quota) in quotas.enumerate() {
            let measured = measured.get(i);
            let key = measured.and_then(|m| m.key.clone());
            let cost = measured.map_or(1, |m| m.cost.get());
            checks.push((
                (sdkappid, Some(name.to_owned()), Some((i, key))),
                u64::from(quota.rate.get()),
                quota.per.period(),
                cost,
                Refusal::new(60007, format!("{name} over {quota}")),
            ));
        }
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (key, limit, period, cost, refusal) in &checks {
            let used = windows
                .open
                .get_mut(key)
                .map_or(0, |w| w.recent(now, *period));
            if used + u64::from(*cost) > *limit {
                return Err(refusal.clone());
            }
        }
        for (key, _, _, cost, _) in checks {
            let window = windows.open.entry(key).or_default();
            // Calls are admitted in the order they are handled but stamped when they arrived:
            // the hits stay in arrival order, so expiry from the front stays exact.
            let at = window
                .hits
                .iter()
                .rposition(|(t, _)| *t <= now)
                .map_or(0, |i| i + 1);
            window.hits.insert(at, (now, cost));
            window.units += u64::from(cost);
        }
        windows.sweep(now);
        Ok(())
    }
}

impl Windows {
    /// Drops windows with nothing in the last minute once they have doubled since the last
    /// sweep: memory follows the keys in use, not every key ever seen.
    fn sweep(&mut self, now: Instant) {
        if self.open.len() < self.sweep_at.max(SWEEP_AT) {
            return;
        }
        let minute = Duration::from_secs(60);
        self.open.retain(|_, w| w.recent(now, minute) > 0);
        self.open.shrink_to_fit();
        self.sweep_at = 2 * self.open.len();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn limits(extra: &str) -> Limits {
        limits_at(5, extra)
    }

    fn limits_at(rate_limit: u32, extra: &str) -> Limits {
        let text = format!(
            "[[apps]]\nsdkappid = 1\nidentifier = \"a\"\nsecret_key = \"k\"\nregion = \"usa\"\nrate_limit = {rate_limit}\n{extra}"
        );
        Limits::new(&Config::from_toml(&text).unwrap().apps)
    }

    #[test]
    fn a_call_handled_after_a_later_one_expires_by_its_arrival() {
        let limits = limits("");
        let api = Api::from_path("/v4/openim/sendmsg").unwrap();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        // Arrived at 50 ms but handled after the one that arrived at 100 ms.
        for ms in [100, 50, 200, 300, 400] {
            assert!(limits.admit(1, &api, &[], at(ms)).is_ok(), "{ms}");
        }
        assert!(
            limits.admit(1, &api, &[], at(1_060)).is_ok(),
            "the 50 ms call has left the second"
        );
        assert!(
            limits.admit(1, &api, &[], at(1_070)).is_err(),
            "100..1070 holds five"
        );
    }

    #[test]
    fn refuses_past_the_app_limit_within_one_second_only() {
        let limits = limits("");
        let api = Api::from_path("/v4/openim/sendmsg").unwrap();
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(
                limits
                    .admit(1, &api, &[], t0 + Duration::from_millis(i * 100))
                    .is_ok()
            );
        }
        let refused = limits
            .admit(1, &api, &[], t0 + Duration::from_millis(999))
            .unwrap_err();
        assert_eq!(refused.code, 60011);
        assert!(
            limits
                .admit(1, &api, &[], t0 + Duration::from_millis(1000))
                .is_ok()
        );
    }

    #[test]
    fn refuses_past_an_api_limit_with_60007() {
        let limits = limits("[apps.api_limits]\n\"openim/sendmsg\" = 2\n");
        let api = Api::from_path("/v4/openim/sendmsg").unwrap();
        let other = Api::from_path("/v4/openim/other").unwrap();
        let t0 = Instant::now();
        assert!(limits.admit(1, &api, &[], t0).is_ok());
        assert!(limits.admit(1, &api, &[], t0).is_ok());
        assert_eq!(limits.admit(1, &api, &[], t0).unwrap_err().code, 60007);
        assert!(limits.admit(1, &other, &[], t0).is_ok());
    }

    #[test]
    fn every_api_has_its_own_200_a_second() {
        let limits = limits_at(1000, "");
        let send = Api::from_path("/v4/openim/sendmsg").unwrap();
        let other = Api::from_path("/v4/openim/querystate").unwrap();
        let t0 = Instant::now();
        for _ in 0..200 {
            assert!(limits.admit(1, &send, &[], t0).is_ok());
        }
        assert_eq!(limits.admit(1, &send, &[], t0).unwrap_err().code, 60007);
        assert!(limits.admit(1, &other, &[], t0).is_ok());
    }

    #[test]
    fn quotas_count_units_per_minute_and_per_key() {
        let limits = limits_at(1000, "");
        let batch = Api::from_path("/v4/openim/batchsendmsg").unwrap();
        let t0 = Instant::now();
        let cost = |n| Measured {
            cost: NonZeroU32::new(n).unwrap(),
            key: None,
        };
        for i in 0..24 {
            let at = t0 + Duration::from_millis(i * 300);
            assert!(limits.admit(1, &batch, &[cost(500)], at).is_ok(), "{i}");
        }
        let full = t0 + Duration::from_secs(59);
        assert_eq!(
            limits.admit(1, &batch, &[cost(1)], full).unwrap_err().code,
            60007
        );
        assert!(
            limits
                .admit(1, &batch, &[cost(500)], t0 + Duration::from_secs(61))
                .is_ok()
        );

        let group = Api::from_path("/v4/group_open_http_svc/send_group_msg").unwrap();
        let to = |g: &str| Measured {
            cost: NonZeroU32::MIN,
            key: Some(g.to_owned()),
        };
        for _ in 0..40 {
            assert!(limits.admit(1, &group, &[to("a")], t0).is_ok());
        }
        assert_eq!(
            limits.admit(1, &group, &[to("a")], t0).unwrap_err().code,
            60007
        );
        assert!(limits.admit(1, &group, &[to("b")], t0).is_ok());
    }

    #[test]
    fn windows_of_keys_gone_quiet_are_dropped() {
        let limits = limits_at(
            1_000_000,
            "[apps.api_limits]\n\"group_open_http_svc/send_group_msg\" = 1000000\n",
        );
        let group = Api::from_path("/v4/group_open_http_svc/send_group_msg").unwrap();
        let t0 = Instant::now();
        for i in 0..300_000u32 {
            let key = Measured {
                cost: NonZeroU32::MIN,
                key: Some(i.to_string()),
            };
            let at = t0 + Duration::from_millis(u64::from(i));
            assert!(limits.admit(1, &group, &[key], at).is_ok());
        }
        let open = limits.windows.lock().unwrap().len();
        // 60,000 keys sent within the last minute, at most twice that between sweeps.
        assert!(open <= 2 * 60_000 + 10, "{open} windows");
    }
}
