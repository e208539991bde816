//! `[server]`: every key in one table (the `server_keys!` rows below), each with its type as
//! written, its default, how `timgate check` prints it from the running [`Server`], and
//! whether a reload may change it. Parsing (the keys accepted and their defaults), printing
//! and reload's check of the keys fixed at start all come from that table, so a key is added
//! in one row (and in [`Server`], with the check that types it).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::value::{MAX_MS, millis, ms, proxy_url, socket_addr, up_to_an_hour};
use super::{ConfigError, EgressProxy, ExtraRoots, Server};

/// Most connections to one upstream origin (`server.upstream_max_connections`).
pub const MAX_UPSTREAM_CONNECTIONS: usize = 4096;
/// Most runtime worker threads (`server.worker_threads`).
pub const MAX_WORKER_THREADS: usize = 256;

/// One key of `[server]`, as its row in the table declares it.
#[derive(Debug, Clone, Copy)]
pub struct ServerKey {
    /// Its full name, as errors and reload's log lines give it: `server.listen`.
    pub key: &'static str,
    /// What a reload that changes it does.
    pub reload: Reload,
    /// Whether two configurations set it alike, compared as `timgate check` prints them.
    same: fn(&RawServer, &RawServer) -> bool,
}

/// What a reload that changes a key does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Refuses it, naming the key: it is read at start only.
    Restart,
    /// Applies it to the requests that start after the reload.
    Live,
}

/// The table: one row per key,
/// `key: type as written = default, printed |server| as written, what a reload does;`.
/// It declares `RawServer` (serde's view of the section: the keys accepted, each with its
/// default), `RawServer::printed` (the running `Server` back in the file's keys, which
/// `timgate check` prints) and `SERVER_KEYS` (each key with what a reload does).
macro_rules! server_keys {
    ($(
        $(#[$attr:meta])*
        $key:ident: $raw:ty = $default:expr, printed |$s:ident| $print:expr, $reload:ident;
    )*) => {
        /// `[server]` as written, and as printed.
        #[derive(Deserialize, Serialize)]
        #[serde(deny_unknown_fields, default)]
        pub(super) struct RawServer {
            $($(#[$attr])* $key: $raw,)*
        }

        impl Default for RawServer {
            fn default() -> Self {
                Self { $($key: $default,)* }
            }
        }

        impl RawServer {
            /// The running `server` in the file's keys and units.
            pub(super) fn printed(server: &Server) -> RawServer {
                RawServer { $($key: { let $s = server; $print },)* }
            }
        }

        /// Every key of `[server]`, in the order `timgate check` prints them.
        pub const SERVER_KEYS: &[ServerKey] = &[$(ServerKey {
            key: concat!("server.", stringify!($key)),
            reload: Reload::$reload,
            same: |a, b| a.$key == b.$key,
        },)*];
    };
}

server_keys! {
    listen: String = "127.0.0.1:8080".into(), printed |s| s.listen.to_string(), Restart;
    admin_listen: String = "127.0.0.1:9464".into(), printed |s| s.admin_listen.to_string(), Restart;
    max_body_bytes: u64 = 128 * 1024, printed |s| int(s.max_body_bytes), Restart;
    max_body_bytes_in_flight: u64 = 8 * 1024 * 1024,
        printed |s| int(s.max_body_bytes_in_flight), Restart;
    max_connections: u64 = 1024, printed |s| int(s.max_connections), Restart;
    max_header_bytes: u64 = 16 * 1024, printed |s| int(s.max_header_bytes), Restart;
    header_read_timeout_ms: u64 = 10_000, printed |s| ms(s.header_read_timeout), Restart;
    write_timeout_ms: u64 = 10_000, printed |s| ms(s.write_timeout), Restart;
    body_read_timeout_ms: u64 = 10_000, printed |s| ms(s.body_read_timeout), Restart;
    upstream_timeout_ms: u64 = 5000, printed |s| ms(s.upstream_timeout), Restart;
    connect_timeout_ms: u64 = 2000, printed |s| ms(s.connect_timeout), Restart;
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_file: Option<String> = None, printed |s| s.ca_file.clone(), Restart;
    drain_timeout_ms: u64 = 20_000, printed |s| ms(s.drain_timeout), Restart;
    allow_anonymous: bool = false, printed |s| s.allow_anonymous, Restart;
    upstream_max_connections: u64 = 64, printed |s| int(s.upstream_max_connections), Restart;
    // Absent: `default_worker_threads`; always printed.
    worker_threads: Option<u64> = None, printed |s| Some(int(s.worker_threads.get())), Restart;
    upstream_idle_timeout_ms: u64 = 60_000, printed |s| ms(s.upstream_idle_timeout), Restart;
    #[serde(skip_serializing_if = "Option::is_none")]
    egress_proxy: Option<String> = None, printed |s| file_egress_proxy(s), Restart;
}

/// A count as written; every one validated fits.
fn int(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// `server.egress_proxy`. From HTTPS_PROXY it is the environment's, not the file's: not
/// printed as a key.
fn file_egress_proxy(server: &Server) -> Option<String> {
    server
        .egress_proxy
        .as_ref()
        .filter(|p| p.from == "server.egress_proxy")
        .map(|p| p.url.to_string().trim_end_matches('/').to_owned())
}

impl Server {
    /// The first key of `[server]` that `new` sets differently and that a reload may not
    /// change ([`SERVER_KEYS`]), in the table's order; `server` for a difference that no key
    /// shows (the certificates read from an unchanged `ca_file`, `HTTPS_PROXY`).
    pub fn fixed_change(&self, new: &Server) -> Option<&'static str> {
        let (a, b) = (RawServer::printed(self), RawServer::printed(new));
        let named = SERVER_KEYS
            .iter()
            .find(|k| k.reload == Reload::Restart && !(k.same)(&a, &b))
            .map(|k| k.key);
        // Debug shows every field, derived ones included.
        named.or_else(|| (format!("{self:?}") != format!("{new:?}")).then_some("server"))
    }
}

impl RawServer {
    /// The typed `[server]`, or the first key at fault, checked in the order of the fields.
    pub(super) fn validate(self) -> Result<Server, ConfigError> {
        let (max_body_bytes, max_body_bytes_in_flight) =
            body_bytes(self.max_body_bytes, self.max_body_bytes_in_flight)?;
        let max_connections = usize::try_from(self.max_connections)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ConfigError::new("server.max_connections", "must be above 0"))?;
        let max_header_bytes = header_bytes(self.max_header_bytes)?;
        let upstream_timeout = upstream_timeout(self.upstream_timeout_ms)?;
        let (listen, admin_listen) = listeners(&self.listen, &self.admin_listen)?;
        let upstream_max_connections = upstream_connections(self.upstream_max_connections)?;
        let worker_threads = worker_threads(self.worker_threads)?;
        let egress_proxy = egress_proxy(self.egress_proxy.as_deref())?;
        let idle = millis(
            "server.upstream_idle_timeout_ms",
            self.upstream_idle_timeout_ms,
        )?;
        let header = millis("server.header_read_timeout_ms", self.header_read_timeout_ms)?;
        Ok(Server {
            listen,
            admin_listen,
            upstream_max_connections,
            worker_threads,
            upstream_idle_timeout: idle,
            egress_proxy,
            max_body_bytes,
            max_body_bytes_in_flight,
            max_connections,
            max_header_bytes,
            header_read_timeout: header,
            write_timeout: millis("server.write_timeout_ms", self.write_timeout_ms)?,
            body_read_timeout: millis("server.body_read_timeout_ms", self.body_read_timeout_ms)?,
            upstream_timeout,
            connect_timeout: millis("server.connect_timeout_ms", self.connect_timeout_ms)?,
            extra_roots: extra_roots(self.ca_file.as_deref())?,
            ca_file: self.ca_file,
            drain_timeout: drain("server.drain_timeout_ms", self.drain_timeout_ms)?,
            allow_anonymous: self.allow_anonymous,
        })
    }
}

/// `max_body_bytes` (above 0, below 4 GiB) and `max_body_bytes_in_flight` (at least one body).
fn body_bytes(one: u64, in_flight: u64) -> Result<(usize, usize), ConfigError> {
    let max_body_bytes = usize::try_from(one)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ConfigError::new("server.max_body_bytes", "must be above 0"))?;
    let max_body_bytes_in_flight = usize::try_from(in_flight)
        .ok()
        .filter(|n| *n >= max_body_bytes)
        .ok_or_else(|| {
            ConfigError::new(
                "server.max_body_bytes_in_flight",
                "must be at least server.max_body_bytes",
            )
        })?;
    if u32::try_from(max_body_bytes).is_err() {
        return Err(ConfigError::new(
            "server.max_body_bytes",
            "must be below 4 GiB",
        ));
    }
    Ok((max_body_bytes, max_body_bytes_in_flight))
}

/// `max_header_bytes`: hyper's read buffer cannot be smaller than 8 KiB; a head never needs
/// more than 1 MiB.
fn header_bytes(n: u64) -> Result<usize, ConfigError> {
    usize::try_from(n)
        .ok()
        .filter(|n| (8192..=1 << 20).contains(n))
        .ok_or_else(|| {
            ConfigError::new(
                "server.max_header_bytes",
                "must be between 8192 and 1048576",
            )
        })
}

/// `upstream_timeout_ms`: above Tencent's own deadline.
fn upstream_timeout(ms: u64) -> Result<Duration, ConfigError> {
    if !(3001..=MAX_MS).contains(&ms) {
        return Err(ConfigError::new(
            "server.upstream_timeout_ms",
            format!("must be between 3001 and {MAX_MS}: above Tencent's own deadline of 3 s"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// `listen` and `admin_listen`, which must differ (unless both ask for any free port).
fn listeners(listen: &str, admin_listen: &str) -> Result<(SocketAddr, SocketAddr), ConfigError> {
    let listen = socket_addr("server.listen", listen)?;
    let admin_listen = socket_addr("server.admin_listen", admin_listen)?;
    if listen == admin_listen && listen.port() != 0 {
        return Err(ConfigError::new(
            "server.admin_listen",
            "must differ from server.listen",
        ));
    }
    Ok((listen, admin_listen))
}

/// `upstream_max_connections`: 1 to `MAX_UPSTREAM_CONNECTIONS`.
fn upstream_connections(n: u64) -> Result<usize, ConfigError> {
    usize::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_UPSTREAM_CONNECTIONS).contains(n))
        .ok_or_else(|| {
            ConfigError::new(
                "server.upstream_max_connections",
                format!("must be between 1 and {MAX_UPSTREAM_CONNECTIONS}"),
            )
        })
}

/// `worker_threads`: 1 to `MAX_WORKER_THREADS`, else `default_worker_threads`.
fn worker_threads(n: Option<u64>) -> Result<NonZeroUsize, ConfigError> {
    let Some(n) = n else {
        return Ok(default_worker_threads());
    };
    usize::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_WORKER_THREADS).contains(n))
        .and_then(NonZeroUsize::new)
        .ok_or_else(|| {
            ConfigError::new(
                "server.worker_threads",
                format!("must be between 1 and {MAX_WORKER_THREADS}"),
            )
        })
}

/// `egress_proxy`, when the file sets it (`HTTPS_PROXY` is read later, in `egress`).
fn egress_proxy(url: Option<&str>) -> Result<Option<EgressProxy>, ConfigError> {
    url.map(|url| {
        let url = proxy_url(url).map_err(|m| ConfigError::new("server.egress_proxy", m))?;
        Ok(EgressProxy {
            url,
            no_proxy: Vec::new(),
            from: "server.egress_proxy",
        })
    })
    .transpose()
}

/// The certificates in the PEM file at `path`, if one is configured; at least one.
fn extra_roots(path: Option<&str>) -> Result<ExtraRoots, ConfigError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let Some(path) = path else {
        return Ok(ExtraRoots::default());
    };
    let fail = |why: String| ConfigError::new("server.ca_file", format!("{path}: {why}"));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    let (_, rejected) =
        rustls::RootCertStore::empty().add_parsable_certificates(certs.iter().cloned());
    if rejected > 0 {
        return Err(fail(format!(
            "{rejected} certificate(s) are not usable as roots"
        )));
    }
    Ok(ExtraRoots(certs))
}

/// The drain: 1 s to an hour. A shorter one would cut off the callers' idle keep-alive
/// connections before they close, and the exit code would report requests cut that never were.
fn drain(key: &str, ms: u64) -> Result<Duration, ConfigError> {
    if ms < 1000 {
        return Err(ConfigError::new(
            key,
            format!("must be between 1000 and {MAX_MS}"),
        ));
    }
    up_to_an_hour(key, ms)
}

/// One: a sidecar's load is what Tencent's limits let through (200/s an app by default),
/// which one thread serves a hundred times over (about 20,000 requests/s on the development
/// machine), and a second worker costs cross-thread wake-ups on every request: CPU per
/// request 78-80 µs with two workers, 40-45 µs with one, in the same rounds
/// (benches/README.md). A gateway for many busy apps can set more.
fn default_worker_threads() -> NonZeroUsize {
    NonZeroUsize::MIN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const APP: &str =
        "[[apps]]\nsdkappid = 1\nidentifier = \"a\"\nsecret_key = \"k\"\nregion = \"usa\"\n";

    /// A value other than the default for every key of the table.
    fn changed_values() -> Vec<(&'static str, String)> {
        let pem = std::env::temp_dir().join(format!("timgate-server-ca-{}", std::process::id()));
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        std::fs::write(&pem, certified.cert.pem()).unwrap();
        vec![
            ("listen", "\"127.0.0.1:1\"".into()),
            ("admin_listen", "\"127.0.0.1:2\"".into()),
            ("max_body_bytes", "1000".into()),
            ("max_body_bytes_in_flight", "9000000".into()),
            ("max_connections", "7".into()),
            ("max_header_bytes", "9000".into()),
            ("header_read_timeout_ms", "7".into()),
            ("write_timeout_ms", "7".into()),
            ("body_read_timeout_ms", "7".into()),
            ("upstream_timeout_ms", "4000".into()),
            ("connect_timeout_ms", "7".into()),
            ("ca_file", format!("{:?}", pem.display().to_string())),
            ("drain_timeout_ms", "7000".into()),
            ("allow_anonymous", "true".into()),
            ("upstream_max_connections", "7".into()),
            ("worker_threads", "2".into()),
            ("upstream_idle_timeout_ms", "7".into()),
            ("egress_proxy", "\"http://127.0.0.1:3128\"".into()),
        ]
    }

    #[test]
    fn every_key_of_the_table_is_read_printed_and_fixed_at_start() {
        let running = Config::from_toml(APP).unwrap();
        let values = changed_values();
        let keys: Vec<_> = values.iter().map(|(k, _)| format!("server.{k}")).collect();
        let table: Vec<_> = SERVER_KEYS.iter().map(|k| k.key.to_owned()).collect();
        assert_eq!(keys, table, "one value per key of the table, in its order");
        for ((name, value), key) in values.iter().zip(SERVER_KEYS) {
            let line = format!("{name} = {value}");
            let text = format!("[server]\n{line}\n{APP}");
            let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{line}: {e}"));
            let printed = config.to_toml();
            assert!(
                printed.contains(&format!("\n{line}\n")),
                "{line}: {printed}"
            );
            let again = Config::from_toml(&printed).unwrap();
            assert_eq!(
                format!("{:?}", again.server),
                format!("{:?}", config.server)
            );
            assert_eq!(key.reload, Reload::Restart);
            assert_eq!(running.server.fixed_change(&config.server), Some(key.key));
            assert_eq!(config.server.fixed_change(&again.server), None, "{line}");
        }
        let ca_file = values.iter().find(|(k, _)| *k == "ca_file").unwrap();
        std::fs::remove_file(ca_file.1.trim_matches('"')).unwrap();
    }
}
