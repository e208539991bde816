//! The request checks on any bytes, for every API of the rules table, every API with a
//! built-in quota, and one with neither: JSON or 60003 (the same verdict on every API), then
//! the API's documented rules and quota costs, each refusal with one of the table's codes;
//! never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use timgate::api::Api;
use timgate::error::Error;
use timgate::json;
use timgate::limiter::table::{self, TOO_MANY_ACCOUNTS};
use timgate::proxy::inspect;
use timgate::rules::TABLE;

/// Tencent's "invalid parameter": a body that is not an object.
const INVALID: u32 = 100002;

fuzz_target!(|data: &[u8]| {
    // The two readings of a body agree: the walk without a tree and the tree (each refusing
    // a key named twice in one object).
    assert_eq!(
        json::validate(data).is_ok(),
        json::parse(data).is_ok(),
        "validate and parse disagree"
    );
    // An API with neither rules nor a quota.
    let unchecked = Api::from_path("/v4/profile/portrait_get").expect("valid");
    let json = inspect(&unchecked, data, &[]);
    assert!(matches!(json, Ok(ref m) if m.is_empty()) || matches!(json, Err(Error::NotJson(_))));
    let quotas = table::quotas();
    let names = TABLE
        .iter()
        .map(|(name, _)| *name)
        .chain(quotas.iter().map(|q| q.api.as_str()));
    for name in names {
        let api = Api::from_path(&format!("/v4/{name}")).expect("the tables' names are APIs");
        let own: Vec<_> = quotas.iter().filter(|q| q.api == name).cloned().collect();
        let codes: Vec<u32> = TABLE
            .iter()
            .filter(|(n, _)| *n == name)
            .flat_map(|(_, rules)| rules.iter().map(|r| r.code))
            .chain([INVALID, TOO_MANY_ACCOUNTS])
            .collect();
        match inspect(&api, data, &own) {
            Ok(measured) => {
                assert!(json.is_ok(), "{name}");
                assert_eq!(measured.len(), own.len(), "{name}");
                for (m, quota) in measured.iter().zip(&own) {
                    assert!(
                        m.cost <= quota.largest_cost() || quota.max_cost.is_none(),
                        "{name}"
                    );
                }
            }
            Err(Error::Rejected(refusal)) => {
                assert!(json.is_ok(), "{name}");
                assert!(codes.contains(&refusal.code), "{name}: {}", refusal.code);
                assert!(!refusal.info.is_empty(), "{name}");
            }
            Err(Error::NotJson(_)) => assert!(json.is_err(), "{name}"),
            Err(other) => panic!("{name}: {other}"),
        }
    }
});
