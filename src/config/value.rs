//! Checks of single values that several sections share: a rate, a duration, an address, a
//! proxy URL. Below every section's module, so that none of them imports another for these.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use hyper::Uri;

use super::ConfigError;

/// The highest calls-per-second limit accepted: far above anything Tencent sells, and within
/// what the limiter's nanosecond clock can pace (1 / (0.97 · L) must be at least 1 ns).
pub const MAX_RATE: u32 = 1_000_000;
/// The longest duration accepted for any `*_ms` key: one hour. Longer waits are mistakes,
/// and every deadline added to "now" stays far from the clock's end.
pub const MAX_MS: u64 = 3_600_000;

/// A calls-per-second limit: 1 to `MAX_RATE`.
pub(super) fn rate(key: &str, n: u32) -> Result<NonZeroU32, ConfigError> {
    NonZeroU32::new(n)
        .filter(|n| n.get() <= MAX_RATE)
        .ok_or_else(|| ConfigError::new(key, format!("must be between 1 and {MAX_RATE}")))
}

/// An `IP:port` address.
pub(super) fn socket_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| ConfigError::new(key, format!("{text:?} is not an IP:port address")))
}

/// A duration of 1 ms to an hour.
pub(super) fn millis(key: &str, ms: u64) -> Result<Duration, ConfigError> {
    if ms == 0 {
        return Err(ConfigError::new(
            key,
            format!("must be between 1 and {MAX_MS}"),
        ));
    }
    up_to_an_hour(key, ms)
}

/// A duration of 0 ms to an hour.
pub(super) fn up_to_an_hour(key: &str, ms: u64) -> Result<Duration, ConfigError> {
    if ms > MAX_MS {
        return Err(ConfigError::new(
            key,
            format!("must be at most {MAX_MS} (an hour)"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// `http://host:port` of an HTTP proxy that tunnels with CONNECT (no path, no credentials).
pub(super) fn proxy_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text.parse().map_err(|_| format!("{text:?} is not a URL"))?;
    let bare = uri.path_and_query().is_none_or(|pq| pq.as_str() == "/");
    let plain = uri.scheme_str() == Some("http");
    let userinfo = uri.authority().is_some_and(|a| a.as_str().contains('@'));
    if !plain || uri.host().is_none() || !bare || userinfo {
        return Err(format!(
            "{text:?} must be http://host[:port] (an HTTP proxy that tunnels with CONNECT; no path, no credentials)"
        ));
    }
    Ok(uri)
}

/// Milliseconds; validation keeps every duration within an hour, so this never saturates.
pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
