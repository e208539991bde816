//! Changing the configuration while it runs: on SIGHUP, and when the configuration file, any
//! `secret_key_file` or any caller's `token_file` changes on disk.
//!
//! A reload reads the file exactly as `timgate check` does ([`Config::load`]: the file, the
//! `TIMGATE__*` variables the process started with, every check). It is all or nothing: a
//! file that fails a check, or that changes a key only a restart can change ([`fixed`]), is
//! refused with a log line naming the key, and the running configuration stays whole. A good
//! one is swapped in for the requests that start after it ([`Gateway::reload`]).
//!
//! Files are watched by reading them once a second and comparing a hash of their contents,
//! not with inotify: Kubernetes updates a mounted Secret or ConfigMap by swapping a symlink
//! (`..data`) in the parent directory, which an inotify watch on the file itself never sees,
//! and the handful of small files a gateway names cost nothing to read. Polling also follows
//! a path through any number of symlinks, sees an edit that keeps the modification time, and
//! needs no dependency.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};

use crate::config::{Config, ConfigError, Endpoint, Log, Resolved, SecretSource, TokenSource};
use crate::proxy::Gateway;

/// How often watched files are read.
pub const POLL: Duration = Duration::from_secs(1);

/// Applies a reloaded `[log]` section to the running logger.
pub type ApplyLogs = Box<dyn Fn(&Log) -> Result<(), String> + Send + Sync>;

/// Where a reload comes from: the configuration file, SIGHUP, and how to change the logs.
pub struct Source {
    /// The configuration file the process started with.
    pub path: PathBuf,
    /// SIGHUP, installed before any port was bound (its default action ends the process).
    #[cfg(unix)]
    pub hangup: tokio::signal::unix::Signal,
    /// Applies `[log]`; `None` when the logs are not this process's to change.
    pub logs: Option<ApplyLogs>,
}

/// What a reload is checked against and applied to.
struct Running {
    config: Config,
    gateway: Arc<Gateway>,
    /// The in-process emulator's address, when one was started.
    emulator: Option<SocketAddr>,
}

/// Reloads on SIGHUP and on a change of a watched file, until the task is dropped.
pub async fn watch(
    mut source: Source,
    config: Config,
    gateway: Arc<Gateway>,
    emulator: Option<SocketAddr>,
) {
    let mut running = Running {
        config,
        gateway,
        emulator,
    };
    let mut seen = fingerprint(&source.path, &running.config).await;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            _ = hangup(&mut source) => "SIGHUP",
            _ = tick.tick() => {
                let now = fingerprint(&source.path, &running.config).await;
                if now.is_none() || now == seen {
                    continue;
                }
                "a watched file changed"
            }
        };
        reload(&source, &mut running, why).await;
        // A refused file is not read again until it (or a key file) changes, or SIGHUP.
        seen = fingerprint(&source.path, &running.config).await;
    }
}

#[cfg(unix)]
async fn hangup(source: &mut Source) {
    source.hangup.recv().await;
}

#[cfg(not(unix))]
async fn hangup(_: &mut Source) {
    std::future::pending::<()>().await;
}

/// One reload: load and check, refuse or apply, log and count.
async fn reload(source: &Source, running: &mut Running, why: &'static str) {
    match attempt(source, running).await {
        Ok(()) => {
            running.gateway.metrics().reloaded(true);
            info!(
                why,
                apps = running.config.apps.len(),
                "configuration reloaded"
            );
        }
        Err(e) => {
            running.gateway.metrics().reloaded(false);
            error!(
                why,
                key = %e.key,
                error = %e.message,
                "configuration reload refused; the running configuration stays"
            );
        }
    }
}

async fn attempt(source: &Source, running: &mut Running) -> Result<(), ConfigError> {
    // Read on the blocking pool, as the watched files are: see `fingerprint`.
    let path = source.path.clone();
    let config = tokio::task::spawn_blocking(move || Config::load(&path))
        .await
        .map_err(|_| ConfigError {
            key: "config".into(),
            message: "reading the configuration stopped before it finished".into(),
        })??;
    if let Some(key) = fixed(&running.config, &config) {
        return Err(ConfigError {
            key: key.into(),
            message: "cannot change while timgate runs; restart it to apply this".into(),
        });
    }
    if running.emulator.is_none()
        && let Some(i) = config
            .apps
            .iter()
            .position(|a| a.endpoint == Endpoint::Emulator)
    {
        return Err(ConfigError {
            key: format!("apps[{i}].endpoint"),
            message: "the in-process emulator was not started with this process; restart it to \
                      use \"emulator\""
                .into(),
        });
    }
    if let Some(logs) = &source.logs {
        logs(&config.log).map_err(|message| ConfigError {
            key: "log".into(),
            message,
        })?;
    }
    running
        .gateway
        .reload(&Resolved::new(config.clone(), running.emulator));
    running.config = config;
    Ok(())
}

/// The first key that differs between `running` and `new` among those a reload cannot
/// change: every key of `[server]` (listeners, connection and body bounds, timeouts, the
/// trusted CAs, the drain), `[emulator]` and `[fleet]`.
pub fn fixed(running: &Config, new: &Config) -> Option<&'static str> {
    let (a, b) = (&running.server, &new.server);
    let server = [
        ("server.listen", a.listen == b.listen),
        ("server.admin_listen", a.admin_listen == b.admin_listen),
        (
            "server.worker_threads",
            a.worker_threads == b.worker_threads,
        ),
        (
            "server.max_body_bytes",
            a.max_body_bytes == b.max_body_bytes,
        ),
        (
            "server.max_body_bytes_in_flight",
            a.max_body_bytes_in_flight == b.max_body_bytes_in_flight,
        ),
        (
            "server.max_connections",
            a.max_connections == b.max_connections,
        ),
        (
            "server.max_header_bytes",
            a.max_header_bytes == b.max_header_bytes,
        ),
        (
            "server.header_read_timeout_ms",
            a.header_read_timeout == b.header_read_timeout,
        ),
        (
            "server.write_timeout_ms",
            a.write_timeout == b.write_timeout,
        ),
        (
            "server.body_read_timeout_ms",
            a.body_read_timeout == b.body_read_timeout,
        ),
        (
            "server.upstream_timeout_ms",
            a.upstream_timeout == b.upstream_timeout,
        ),
        (
            "server.connect_timeout_ms",
            a.connect_timeout == b.connect_timeout,
        ),
        ("server.ca_file", a.ca_file == b.ca_file),
        (
            "server.drain_timeout_ms",
            a.drain_timeout == b.drain_timeout,
        ),
        // Any key of [server] not named above (Debug shows every field).
        ("server", format!("{a:?}") == format!("{b:?}")),
        (
            "emulator.listen",
            running.emulator.listen == new.emulator.listen,
        ),
        (
            "fleet",
            format!("{:?}", running.fleet) == format!("{:?}", new.fleet),
        ),
    ];
    server
        .into_iter()
        .find_map(|(key, same)| (!same).then_some(key))
}

/// A hash of every watched file's contents (a missing or unreadable file hashes as such).
/// The files are read on the blocking pool: the runtime has one worker by default, and a
/// slow or hung read (a network or FUSE secrets mount, a FIFO) must stall only this
/// watcher, never the requests and probes that worker serves. `None` if the read did not
/// finish (the runtime is stopping).
async fn fingerprint(path: &std::path::Path, config: &Config) -> Option<u64> {
    let files = watched(path, config);
    tokio::task::spawn_blocking(move || {
        let mut hasher = DefaultHasher::new();
        for file in files {
            crate::config::read_bounded(&file).ok().hash(&mut hasher);
        }
        hasher.finish()
    })
    .await
    .ok()
}

/// The configuration file and every file a key or a caller's token is read from.
fn watched(path: &std::path::Path, config: &Config) -> Vec<PathBuf> {
    let keys = config
        .apps
        .iter()
        .filter_map(|app| match &app.secret_source {
            SecretSource::File(file) => Some(PathBuf::from(file)),
            SecretSource::Inline | SecretSource::Env(_) => None,
        });
    let tokens = config
        .callers
        .iter()
        .filter_map(|caller| match &caller.token_source {
            TokenSource::File(file) => Some(PathBuf::from(file)),
            TokenSource::Env(_) => None,
        });
    std::iter::once(path.to_owned())
        .chain(keys)
        .chain(tokens)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str =
        "[[apps]]\nsdkappid = 1\nidentifier = \"a\"\nsecret_key = \"k\"\nregion = \"usa\"\n";

    #[test]
    fn a_changed_listen_address_is_named() {
        let running = Config::from_toml(APP).unwrap();
        let moved =
            Config::from_toml(&format!("[server]\nlisten = \"127.0.0.1:1\"\n{APP}")).unwrap();
        assert_eq!(fixed(&running, &moved), Some("server.listen"));
        let admin = format!("[server]\nadmin_listen = \"127.0.0.1:1\"\n{APP}");
        let admin = Config::from_toml(&admin).unwrap();
        assert_eq!(fixed(&running, &admin), Some("server.admin_listen"));
    }

    #[test]
    fn apps_limits_keys_and_logs_may_change() {
        let running = Config::from_toml(APP).unwrap();
        let text = format!(
            "[log]\nformat = \"json\"\n{}rate_limit = 7\n{}",
            APP.replace("\"k\"", "\"k2\""),
            APP.replace("sdkappid = 1", "sdkappid = 2")
        );
        let changed = Config::from_toml(&text).unwrap();
        assert_eq!(fixed(&running, &changed), None);
    }
}
