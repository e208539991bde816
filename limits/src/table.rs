//! Tencent's documented limits (TENCENT.md §6 and §7), as data: per API, its lanes, each
//! readable against Tencent's page. Adding a limit is adding an entry here.
//!
//! Every API has a lane of its own at `DEFAULT_API_RATE` calls a second (lower where `CALLS`
//! says so) beside its app's lane. Some APIs have further lanes (`QUOTAS`): a quota counted in
//! units taken from the body (the entries of `To_Account`), per second or per minute, and
//! possibly one lane per value of a body field (`GroupId`). An app's `api_limits` and
//! `api_quotas` override these rates (a bought-up API).

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

/// Calls a second every API is allowed unless listed otherwise (§6, §7: "200/s unless
/// listed").
pub const DEFAULT_API_RATE: u32 = 200;

/// Documented per-API call limits below `DEFAULT_API_RATE`, as `service/command`.
pub const CALLS: &[(&str, u32)] = &[
    ("live_engine_http_srv/get_room_list", 10),
    ("live_engine_http_srv/get_room_stats", 100),
    ("live_engine_http_srv/add_robot", 100),
    ("im_open_login_svc/multiaccount_import", 100),
    // 1 call a second (cloud.tencent.com/document/product/269/1614).
    ("group_open_http_svc/get_appid_group_list", 1),
];

/// Tencent's ErrorCode for more than 500 recipients in one `batchsendmsg` (its page's error
/// table, cloud.tencent.com/document/product/269/1612: 90011, "批量发消息目标账号超过500";
/// 90018 is the push APIs' code for too many accounts).
pub const TOO_MANY_ACCOUNTS: u32 = 90011;

/// The window a quota counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Per {
    /// Units a second.
    Second,
    /// Units a minute.
    Minute,
}

impl Per {
    /// The window's length.
    pub fn period(self) -> Duration {
        match self {
            Per::Second => Duration::from_secs(1),
            Per::Minute => Duration::from_secs(60),
        }
    }

    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Per::Second => "second",
            Per::Minute => "minute",
        }
    }

    /// The window named `name` in the configuration.
    pub fn from_name(name: &str) -> Option<Per> {
        [Per::Second, Per::Minute]
            .into_iter()
            .find(|per| per.name() == name)
    }
}

/// One further lane of an API: `rate` units per `per`, a request costing the number of
/// entries of the array field `cost` (1 without it), counted per value of the string field
/// `key` (one lane for the API without it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// The API, `service/command`.
    pub api: String,
    /// Units allowed per window.
    pub rate: NonZeroU32,
    /// The window.
    pub per: Per,
    /// A top-level array field whose length is a request's cost.
    pub cost: Option<String>,
    /// A top-level string field whose value has a lane of its own.
    pub key: Option<String>,
    /// The most units one request may cost, and Tencent's code for a request over it.
    pub max_cost: Option<(NonZeroU32, u32)>,
}

impl Quota {
    /// The units one request may cost at most: Tencent's documented cap, or a quarter of the
    /// rate (so the send-time guard keeps room to refill; see `lane`).
    pub fn largest_cost(&self) -> NonZeroU32 {
        match self.max_cost {
            Some((most, _)) => most,
            None if self.cost.is_none() => NonZeroU32::MIN,
            None => NonZeroU32::new(self.rate.get() / 4).unwrap_or(NonZeroU32::MIN),
        }
    }

    /// Whether `other` counts the same thing (so one replaces the other).
    pub fn same_lane(&self, other: &Quota) -> bool {
        self.api == other.api && self.cost == other.cost && self.key == other.key
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = self.cost.as_deref().map_or("calls", |_| "units");
        write!(f, "{} {unit} a {}", self.rate, self.per.name())?;
        if let Some(key) = &self.key {
            write!(f, " per {key}")?;
        }
        Ok(())
    }
}

/// A built-in quota, as `Quota` with static strings.
pub struct BuiltIn {
    /// The API, `service/command`.
    pub api: &'static str,
    /// Units allowed per window.
    pub rate: u32,
    /// The window.
    pub per: Per,
    /// The array field a request's cost is the length of.
    pub cost: Option<&'static str>,
    /// The string field with a lane per value.
    pub key: Option<&'static str>,
    /// The documented most a request may cost, and Tencent's code past it.
    pub max_cost: Option<(u32, u32)>,
}

/// The documented quotas beyond calls per second (§7).
pub const QUOTAS: &[BuiltIn] = &[
    // 12,000 recipients a minute, each entry of To_Account counting; ≤ 500 a call
    // (cloud.tencent.com/document/product/269/1612).
    BuiltIn {
        api: "openim/batchsendmsg",
        rate: 12_000,
        per: Per::Minute,
        cost: Some("To_Account"),
        key: None,
        max_cost: Some((500, TOO_MANY_ACCOUNTS)),
    },
    // 40 messages a second per group, all senders together (…/269/1629, …/269/9346).
    BuiltIn {
        api: "group_open_http_svc/send_group_msg",
        rate: 40,
        per: Per::Second,
        cost: None,
        key: Some("GroupId"),
        max_cost: None,
    },
];

/// APIs whose repeats Tencent drops within a window, so a timeout after sending may be
/// retried inside it (§7).
pub const DEDUP: &[(&str, Duration)] = &[
    // Same (sender, MsgSeq, MsgRandom, content) within 120 s.
    ("openim/sendmsg", Duration::from_secs(120)),
    // Same Random within 5 minutes.
    (
        "group_open_http_svc/send_group_msg",
        Duration::from_secs(300),
    ),
];

/// The built-in quotas as `Quota`s.
pub fn quotas() -> Vec<Quota> {
    QUOTAS
        .iter()
        .filter_map(|q| {
            Some(Quota {
                api: q.api.to_owned(),
                rate: NonZeroU32::new(q.rate)?,
                per: q.per,
                cost: q.cost.map(str::to_owned),
                key: q.key.map(str::to_owned),
                max_cost: q
                    .max_cost
                    .and_then(|(n, code)| Some((NonZeroU32::new(n)?, code))),
            })
        })
        .collect()
}

/// The window within which Tencent drops a repeat of a request to `api`, if it does.
pub fn dedup_window(api: &str) -> Option<Duration> {
    DEDUP
        .iter()
        .find(|(name, _)| *name == api)
        .map(|(_, window)| *window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_quotas_read_as_tencent_states_them() {
        let quotas = quotas();
        assert_eq!(quotas.len(), QUOTAS.len());
        let shown: Vec<String> = quotas.iter().map(|q| format!("{}: {q}", q.api)).collect();
        assert_eq!(
            shown,
            [
                "openim/batchsendmsg: 12000 units a minute",
                "group_open_http_svc/send_group_msg: 40 calls a second per GroupId",
            ]
        );
        assert_eq!(quotas[0].largest_cost().get(), 500);
        assert_eq!(quotas[1].largest_cost().get(), 1);
        assert_eq!(
            dedup_window("openim/sendmsg"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(dedup_window("openim/batchsendmsg"), None);
    }
}
