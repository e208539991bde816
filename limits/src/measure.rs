//! What a request's body costs on its API's quotas, read once from the body the proxy parsed.

use std::num::NonZeroU32;

use crate::table::Quota;

/// What a request's body says about one quota of its API: its cost and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    /// Units the request costs (at least 1).
    pub cost: NonZeroU32,
    /// The value of the quota's key field.
    pub key: Option<String>,
}

/// A request whose cost alone is over what its API takes in one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooCostly {
    /// Tencent's ErrorCode for it.
    pub code: u32,
    /// What is wrong.
    pub info: String,
}

/// Measures `body` for each of `quotas`, in order: the length of the cost field (absent or
/// not an array: 1), the key field's string (absent or not a string: no key, so one lane
/// for all such requests). Refuses a cost over the quota's documented most.
pub fn measure(
    quotas: &[Quota],
    body: &serde_json_borrow::Value<'_>,
) -> Result<Vec<Measured>, TooCostly> {
    quotas
        .iter()
        .map(|quota| {
            let items = quota
                .cost
                .as_deref()
                .and_then(|field| body.get(field).as_array().map(<[_]>::len))
                .unwrap_or(1);
            let cost = u32::try_from(items).unwrap_or(u32::MAX);
            if let (Some(field), Some((most, code))) = (&quota.cost, quota.max_cost)
                && cost > most.get()
            {
                return Err(TooCostly {
                    code,
                    info: format!(
                        "{field} has {items} entries; {} takes at most {most}",
                        quota.api
                    ),
                });
            }
            let key = quota
                .key
                .as_deref()
                .and_then(|field| body.get(field).as_str())
                .map(str::to_owned);
            Ok(Measured {
                cost: NonZeroU32::new(cost).unwrap_or(NonZeroU32::MIN),
                key,
            })
        })
        .collect()
}
