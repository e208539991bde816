//! timgate: a sidecar gateway in front of Tencent Cloud Chat / TRTC's server REST API.
//!
//! Callers POST unsigned requests; timgate picks the app, signs as its admin with a
//! short-lived UserSig and a fresh nonce, forwards over pooled HTTPS and passes Tencent's
//! answer back unchanged.
//!
//! # Layout
//! From the top of the request path down; a module names only those on its own line or
//! below it, and no two name each other (`tests/layers.rs` holds these walls in CI).
//! - [`admin`]: the health, readiness and metrics listener; [`callback`]: Tencent's
//!   callbacks in, verified, routed by command, forwarded to the service and answered inside
//!   Tencent's deadline; [`emulator`]: a stand-in for Tencent, for local runs, tests and
//!   benchmarks; [`reload`]: changing the configuration while it runs (SIGHUP, a changed file).
//! - [`proxy`]: the request path that ties the rest together.
//! - [`server`]: the accept loop with graceful drain, shared by gateway and emulator;
//!   [`body`]: reading a request body within budget.
//! - [`error`]: the errors timgate answers itself, in Tencent's envelope; [`metrics`]:
//!   Prometheus metrics; [`retry`]: which upstream attempts are tried again, and the backoff.
//! - [`upstream`]: the pooled client to Tencent and one upstream attempt; [`auth`]: who may
//!   call what: `[[callers]]` tokens and the app and API allow-lists.
//! - [`config`]: the TOML + environment configuration, validated before any port is bound.
//! - [`usersig`]: UserSig v2 signing and verification, and the per-app re-signing `Signer`;
//!   [`api`]: which API a request path names.
//! - [`rules`]: the documented request limits, checked before any quota is spent; [`json`]:
//!   one reading of every body, JSON with no object that names a key twice; [`logfmt`]: the
//!   text log line's fields; [`limiter`]: keeps each SDKAppID and API under Tencent's
//!   call-frequency limits (the workspace crate `timgate-limits`, in `limits/`, whose
//!   `ARGUMENT.md` says why the limit holds).

pub mod admin;
pub mod api;
pub mod auth;
pub mod body;
pub mod callback;
pub mod config;
pub mod deadline;
pub mod emulator;
pub mod error;
pub mod json;
pub use timgate_limits as limiter;
pub mod logfmt;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod retry;
pub mod rules;
pub mod server;
pub mod upstream;
pub mod usersig;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::info;

use crate::admin::Admin;
use crate::callback::Callbacks;
use crate::config::{Config, Endpoint, Resolved};
use crate::emulator::Emulator;
use crate::proxy::Gateway;
use crate::server::Bounds;

/// The ports the gateway serves, bound by [`bind`] before anything else runs.
pub struct Listeners {
    /// Where callers send their requests (`server.listen`).
    pub proxy: TcpListener,
    /// Health, readiness and metrics (`server.admin_listen`).
    pub admin: TcpListener,
    /// The in-process emulator (`emulator.listen`), when an app's endpoint is `"emulator"`.
    pub emulator: Option<TcpListener>,
    /// Tencent's callbacks (`callbacks.listen`), when configured.
    pub callbacks: Option<TcpListener>,
}

/// A port that could not be bound, naming the listener's key and its address, e.g.
/// `server.listen 127.0.0.1:8080: Address already in use (os error 98)`.
#[derive(Debug, thiserror::Error)]
#[error("{key} {addr}: {source}")]
pub struct BindError {
    /// The configuration key of the listener, e.g. `server.admin_listen`.
    pub key: &'static str,
    /// The address it names.
    pub addr: SocketAddr,
    /// Why it could not be bound.
    #[source]
    pub source: std::io::Error,
}

/// Binds every port `config` names (the emulator's only when an app's endpoint is
/// `"emulator"`), and resolves that endpoint to the emulator's bound address. Nothing that
/// [`run`] does with the result can fail for the configuration's sake.
pub async fn bind(config: Config) -> Result<(Resolved, Listeners), BindError> {
    async fn one(key: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
        let fail = |source| BindError { key, addr, source };
        TcpListener::bind(addr).await.map_err(fail)
    }
    let proxy = one("server.listen", config.server.listen).await?;
    let admin = one("server.admin_listen", config.server.admin_listen).await?;
    let embedded = config.apps.iter().any(|a| a.endpoint == Endpoint::Emulator);
    let (emulator, emulator_addr) = if embedded {
        let key = "emulator.listen";
        let listener = one(key, config.emulator.listen).await?;
        let addr = listener.local_addr().map_err(|source| BindError {
            key,
            addr: config.emulator.listen,
            source,
        })?;
        (Some(listener), Some(addr))
    } else {
        (None, None)
    };
    let callbacks = match config.callbacks.listen {
        Some(addr) => Some(one("callbacks.listen", addr).await?),
        None => None,
    };
    let listeners = Listeners {
        proxy,
        admin,
        emulator,
        callbacks,
    };
    Ok((Resolved::new(config, emulator_addr), listeners))
}

/// Runs the gateway until `shutdown` resolves, then drains: readiness fails at once, no new
/// connection is accepted, and every accepted request (queued ones included) is answered
/// within `server.drain_timeout_ms`. The admin listener stops last.
///
/// Starts the in-process emulator first on its listener, when [`bind`] made one.
/// Returns whether the drain answered every request without cutting one (a connection still
/// open at the deadline, such as a caller that stopped reading its answer, is closed and
/// logged, but cuts no request).
pub async fn run(
    resolved: Resolved,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<bool> {
    run_reloading(resolved, listeners, shutdown, None).await
}

/// [`run`], and while it runs, reloads the configuration from `reload` (on SIGHUP, and when
/// the file or a key file changes; see [`reload`]).
pub async fn run_reloading(
    resolved: Resolved,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    reload: Option<reload::Source>,
) -> std::io::Result<bool> {
    let config = resolved.config();
    let emulator_addr = listeners
        .emulator
        .as_ref()
        .and_then(|listener| listener.local_addr().ok());
    let callbacks_addr = listeners
        .callbacks
        .as_ref()
        .and_then(|listener| listener.local_addr().ok());
    let embedded = listeners.emulator.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "in-process emulator listening");
        }
        spawn_emulator(config, listener, callbacks_addr)
    });
    let gateway = Arc::new(Gateway::new(&resolved));
    let callbacks = listeners
        .callbacks
        .map(|listener| serve_callbacks(config, &gateway, listener));
    let reloading = reload.map(|source| {
        let hub = callbacks.as_ref().map(|(hub, _, _)| hub.clone());
        let watch = reload::watch(source, config.clone(), gateway.clone(), emulator_addr, hub);
        tokio::spawn(watch)
    });
    let admin = Arc::new(Admin::new(gateway.clone()));
    let admin_addr = listeners.admin.local_addr()?;
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = {
        let admin = admin.clone();
        let handler = move |request| admin::handle(admin.clone(), request);
        let stopped = async {
            let _ = admin_stopped.await;
        };
        let bounds = Bounds::from_config(&config.server)
            .max_connections(server::ADMIN_MAX_CONNECTIONS)
            .drain(Duration::from_secs(1));
        tokio::spawn(server::serve(listeners.admin, handler, stopped, bounds))
    };
    info!(
        addr = %listeners.proxy.local_addr()?,
        admin = %admin_addr,
        callbacks = callbacks_addr.map(tracing::field::display),
        apps = config.apps.len(),
        "gateway listening"
    );
    let draining_gateway = gateway.clone();
    let leaving = gateway.clone();
    let handler = proxy::Edge(gateway);
    let (callbacks_stop, callbacks_task) = match callbacks {
        Some((_, stop, task)) => (Some(stop), Some(task)),
        None => (None, None),
    };
    let draining = async {
        shutdown.await;
        draining_gateway.drain(tokio::time::Instant::now() + config.server.drain_timeout);
        if let Some(stop) = callbacks_stop {
            let _ = stop.send(());
        }
        admin.drain();
        info!(deadline = ?config.server.drain_timeout, "draining");
    };
    let bounds = Bounds::from_config(&config.server);
    let closed = server::serve(listeners.proxy, handler, draining, bounds).await;
    if let Some(task) = callbacks_task
        && !matches!(task.await, Ok(true))
    {
        tracing::warn!("the callback listener's drain closed connections still open");
    }
    leaving.leave_fleet().await;
    let _ = stop_admin.send(());
    let _ = admin_task.await;
    if let Some(task) = embedded {
        task.abort();
    }
    if let Some(task) = reloading {
        task.abort();
    }
    let cut = leaving.requests_cut();
    info!(requests_cut = cut, connections_closed = closed, "drained");
    Ok(cut == 0)
}

/// Serves Tencent's callbacks on `listener` with the proxy port's bounds, until the returned
/// sender fires (the drain), counting into `gateway`'s metrics.
fn serve_callbacks(
    config: &Config,
    gateway: &Gateway,
    listener: TcpListener,
) -> (
    Arc<Callbacks>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<bool>,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "callback listener listening");
    }
    let hub = Arc::new(Callbacks::new(config, gateway.metrics().callbacks()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = stopped.await;
    };
    let handler = callback::Edge(hub.clone());
    let bounds = Bounds::from_config(&config.server);
    let task = tokio::spawn(server::serve(listener, handler, stopped, bounds));
    (hub, stop, task)
}

/// Runs the emulator for `config`'s apps on `listener` until `shutdown` resolves. Apps with
/// callback routes get the callbacks Tencent would send, at `callbacks.listen` (its port
/// must be a real one).
pub async fn emulate(config: &Config, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let target = config
        .callbacks
        .listen
        .filter(|addr| addr.port() != 0)
        .map(callback::reachable);
    // The seed was carried out once already by `timgate`'s start, which refuses a seed the
    // emulator refuses; a refusal here leaves an empty emulator, said in the log.
    let emulator = Emulator::new(&config.apps)
        .with_seed(config.emulator.seed.as_ref())
        .unwrap_or_else(|refused| {
            tracing::error!(error = %refused, "emulator: started without its seed");
            Emulator::new(&config.apps)
        });
    let emulator = Arc::new(emulator.with_callbacks(&config.apps, target));
    let handler = move |request| emulator::handle(emulator.clone(), request);
    server::serve(
        listener,
        handler,
        shutdown,
        Bounds::from_config(&config.server),
    )
    .await;
}

/// The in-process emulator, posting callbacks to the callback listener bound at `callbacks`.
fn spawn_emulator(
    config: &Config,
    listener: TcpListener,
    callbacks: Option<SocketAddr>,
) -> tokio::task::JoinHandle<()> {
    let mut config = config.clone();
    config.callbacks.listen = callbacks;
    tokio::spawn(async move { emulate(&config, listener, std::future::pending()).await })
}
