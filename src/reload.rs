//! Changing the configuration while it runs: on SIGHUP, and when the configuration file, any
//! `secret_key_file`, any caller's `token_file` or any app's callback token file changes on
//! disk.
//!
//! A reload reads the file exactly as `timgate check` does ([`Config::load`]: the file, the
//! `TIMGATE__*` variables the process started with, every check). It is all or nothing: a
//! file that fails a check, or that changes a key only a restart can change ([`fixed`]), is
//! refused with a log line naming the key, and the running configuration stays whole. A good
//! one is swapped in for the requests that start after it ([`Gateway::reload`]).
//!
//! Files are watched by reading them once a second and comparing a hash of their whole
//! contents, not with inotify: Kubernetes updates a mounted Secret or ConfigMap by swapping a
//! symlink (`..data`) in the parent directory, which an inotify watch on the file itself
//! never sees, and the handful of small files a gateway names cost nothing to read (each is
//! capped, the configuration at 1 MiB). Polling also follows a path through any number of
//! symlinks, sees an edit that keeps the modification time, and needs no dependency.
//!
//! Nothing at a watched path can stop the watcher: only regular files within their cap are
//! read (`config::file`), so a FIFO, a device, a folder or an oversized file is a
//! refused reload like any bad file; and each read has a deadline (`disk`), so one that
//! hangs (a stuck network mount) is a refused reload too, logged and counted once, while
//! SIGHUP and the polls that follow are still answered.

mod disk;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};

use crate::callback::Callbacks;
use crate::config::file::{self, Cap};
use crate::config::{Config, ConfigError, Endpoint, Log, Resolved, SecretSource, TokenSource};
use crate::proxy::Gateway;
use disk::{Disk, Stalled};

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
    /// Where the watched files are read.
    disk: Disk,
    /// The callback listener's routes and tokens, when it was started.
    callbacks: Option<Arc<Callbacks>>,
}

/// Reloads on SIGHUP and on a change of a watched file, until the task is dropped.
pub async fn watch(
    mut source: Source,
    config: Config,
    gateway: Arc<Gateway>,
    emulator: Option<SocketAddr>,
    callbacks: Option<Arc<Callbacks>>,
) {
    let mut running = Running {
        config,
        gateway,
        emulator,
        disk: Disk::new(disk::DEADLINE),
        callbacks,
    };
    let mut seen = fingerprint(&source.path, &mut running).await.ok();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            _ = hangup(&mut source) => "SIGHUP",
            _ = tick.tick() => {
                if !changed(&source, &mut running, seen).await {
                    continue;
                }
                "a watched file changed"
            }
        };
        reload(&source, &mut running, why).await;
        // A refused file is not read again until it (or a key file) changes, or SIGHUP.
        seen = fingerprint(&source.path, &mut running).await.ok();
    }
}

/// Whether the watched files hash differently from `seen` (`None`: not known). A read that
/// does not finish in time is a refused reload, logged and counted once: the polls after it
/// find it still going and wait for the next.
async fn changed(source: &Source, running: &mut Running, seen: Option<u64>) -> bool {
    match fingerprint(&source.path, running).await {
        Ok(now) => Some(now) != seen,
        Err(stalled @ Stalled::TimedOut(_)) => {
            refused(running, "polling the watched files", &unread(stalled));
            false
        }
        Err(Stalled::Busy(_) | Stalled::Stopped) => false,
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
        Err(e) => refused(running, why, &e),
    }
}

/// Logs and counts a refused reload.
fn refused(running: &Running, why: &'static str, e: &ConfigError) {
    running.gateway.metrics().reloaded(false);
    error!(
        why,
        key = %e.key,
        error = %e.message,
        "configuration reload refused; the running configuration stays"
    );
}

/// A read that gave no answer, as the reason a reload is refused.
fn unread(stalled: Stalled) -> ConfigError {
    ConfigError {
        key: "config".into(),
        message: stalled.to_string(),
    }
}

async fn attempt(source: &Source, running: &mut Running) -> Result<(), ConfigError> {
    let path = source.path.clone();
    let config = running
        .disk
        .run(move || Config::load(&path))
        .await
        .map_err(unread)??;
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
    if let Some(callbacks) = &running.callbacks {
        callbacks.reload(&config);
    }
    running.config = config;
    Ok(())
}

/// The first key that differs between `running` and `new` among those a reload cannot
/// change: every key of `[server]` (listeners, connection and body bounds, timeouts, the
/// trusted CAs, the drain: see [`crate::config::SERVER_KEYS`]), `[emulator]`, `[fleet]` and
/// `callbacks.listen`.
pub fn fixed(running: &Config, new: &Config) -> Option<&'static str> {
    let others = [
        (
            "emulator.listen",
            running.emulator.listen == new.emulator.listen,
        ),
        (
            "fleet",
            format!("{:?}", running.fleet) == format!("{:?}", new.fleet),
        ),
        (
            "callbacks.listen",
            running.callbacks.listen == new.callbacks.listen,
        ),
    ];
    running.server.fixed_change(&new.server).or_else(|| {
        others
            .into_iter()
            .find_map(|(key, same)| (!same).then_some(key))
    })
}

/// A hash of every watched file's whole contents, or of why it could not be read (missing,
/// not a regular file, over its cap).
async fn fingerprint(path: &std::path::Path, running: &mut Running) -> Result<u64, Stalled> {
    let files = watched(path, &running.config);
    running
        .disk
        .run(move || {
            let mut hasher = DefaultHasher::new();
            for (file, cap) in files {
                match file::hash(&file, cap, &mut hasher) {
                    // Where one file ends and the next begins.
                    Ok(len) => len.hash(&mut hasher),
                    Err(e) => e.to_string().hash(&mut hasher),
                }
            }
            hasher.finish()
        })
        .await
}

/// The configuration file and every file a key, a caller's token or a callback token is
/// read from, each with its cap.
fn watched(path: &std::path::Path, config: &Config) -> Vec<(PathBuf, Cap)> {
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
    let callback_tokens = config.apps.iter().flat_map(|app| {
        let callbacks = &app.callbacks;
        [&callbacks.token, &callbacks.previous]
            .into_iter()
            .flatten()
            .filter_map(|token| match &token.source {
                TokenSource::File(file) => Some(PathBuf::from(file)),
                TokenSource::Env(_) => None,
            })
    });
    let files = keys.chain(tokens).chain(callback_tokens);
    std::iter::once((path.to_owned(), file::CONFIG))
        .chain(files.map(|file| (file, file::KEY)))
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
