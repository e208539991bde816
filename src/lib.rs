//! timgate: a sidecar gateway in front of Tencent Cloud Chat / TRTC's server REST API.
//!
//! Callers POST unsigned requests; timgate picks the app, signs as its admin with a
//! short-lived UserSig and a fresh nonce, forwards over pooled HTTPS and passes Tencent's
//! answer back unchanged.
//!
//! # Layout
//! - [`config`]: the TOML + environment configuration, validated before any port is bound.
//! - [`usersig`]: UserSig v2 signing and verification, and the per-app re-signing `Signer`.
//! - [`api`]: which API a request path names; [`body`]: reading a request body within budget.
//! - [`upstream`]: the pooled client to Tencent and one upstream attempt.
//! - [`proxy`]: the request path that ties them together.
//! - [`error`]: the errors timgate answers itself, in Tencent's envelope.
//! - [`emulator`]: a stand-in for Tencent, for local runs, tests and benchmarks.
//! - [`server`]: the accept loop with graceful drain, shared by gateway and emulator.
//! - [`limiter`]: keeps each SDKAppID and API under Tencent's call-frequency limits.
//! - [`retry`]: which upstream attempts are tried again, and the backoff between tries.
//! - [`rules`]: the documented request limits, checked before any quota is spent.
//! - [`metrics`]: Prometheus metrics; [`admin`]: the health, readiness and metrics listener.

pub mod admin;
pub mod api;
pub mod body;
pub mod config;
pub mod emulator;
pub mod error;
pub mod limiter;
pub mod metrics;
pub mod proxy;
pub mod retry;
pub mod rules;
pub mod server;
pub mod upstream;
pub mod usersig;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::info;

use crate::admin::Admin;
use crate::config::{Config, Endpoint};
use crate::emulator::Emulator;
use crate::proxy::Gateway;
use crate::server::Bounds;

/// The two ports the gateway serves.
pub struct Listeners {
    /// Where callers send their requests (`server.listen`).
    pub proxy: TcpListener,
    /// Health, readiness and metrics (`server.admin_listen`).
    pub admin: TcpListener,
}

/// Runs the gateway until `shutdown` resolves, then drains: readiness fails at once, no new
/// connection is accepted, and every accepted request (queued ones included) is answered
/// within `server.drain_timeout_ms`. The admin listener stops last.
///
/// Starts the in-process emulator first when an app's endpoint is `"emulator"`.
/// Returns whether every accepted connection finished within the drain deadline.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<bool> {
    let embedded = if config.apps.iter().any(|a| a.endpoint == Endpoint::Emulator) {
        let emulator_listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = emulator_listener.local_addr()?;
        info!(%addr, "in-process emulator listening");
        Some((addr, spawn_emulator(&config, emulator_listener)))
    } else {
        None
    };
    let emulator = embedded.as_ref().map(|(addr, _)| *addr);
    let gateway = Arc::new(Gateway::new(&config, emulator).map_err(std::io::Error::other)?);
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
        apps = config.apps.len(),
        "gateway listening"
    );
    let draining_gateway = gateway.clone();
    let leaving = gateway.clone();
    let handler = move |request| proxy::handle(gateway.clone(), request);
    let draining = async {
        shutdown.await;
        draining_gateway.drain(tokio::time::Instant::now() + config.server.drain_timeout);
        admin.drain();
        info!(deadline = ?config.server.drain_timeout, "draining");
    };
    let bounds = Bounds::from_config(&config.server);
    let drained = server::serve(listeners.proxy, handler, draining, bounds).await;
    leaving.leave_fleet().await;
    let _ = stop_admin.send(());
    let _ = admin_task.await;
    if let Some((_, task)) = embedded {
        task.abort();
    }
    Ok(drained)
}

/// Runs the emulator for `config`'s apps on `listener` until `shutdown` resolves.
pub async fn emulate(config: &Config, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let emulator = Arc::new(Emulator::new(&config.apps));
    let handler = move |request| emulator::handle(emulator.clone(), request);
    server::serve(
        listener,
        handler,
        shutdown,
        Bounds::from_config(&config.server),
    )
    .await;
}

fn spawn_emulator(config: &Config, listener: TcpListener) -> tokio::task::JoinHandle<()> {
    let config = config.clone();
    tokio::spawn(async move { emulate(&config, listener, std::future::pending()).await })
}
