//! timgate: a sidecar gateway in front of Tencent Cloud Chat / TRTC's server REST API.
//!
//! Callers POST unsigned requests; timgate picks the app, signs as its admin with a
//! short-lived UserSig and a fresh nonce, forwards over pooled HTTPS and passes Tencent's
//! answer back unchanged.
//!
//! # Layout
//! - [`config`]: the TOML + environment configuration, validated before any port is bound.
//! - [`usersig`]: UserSig v2 signing and verification, and the per-app re-signing `Signer`.
//! - [`api`]: which API a request path names.
//! - [`upstream`]: the pooled client to Tencent and one upstream attempt.
//! - [`proxy`]: the request path that ties them together.
//! - [`error`]: the errors timgate answers itself, in Tencent's envelope.
//! - [`emulator`]: a stand-in for Tencent, for local runs, tests and benchmarks.
//! - [`server`]: the accept loop with graceful drain, shared by gateway and emulator.

pub mod api;
pub mod config;
pub mod emulator;
pub mod error;
pub mod limiter;
pub mod proxy;
pub mod retry;
pub mod rules;
pub mod server;
pub mod upstream;
pub mod usersig;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::info;

use crate::config::{Config, Endpoint};
use crate::emulator::Emulator;
use crate::proxy::Gateway;

/// Runs the gateway on `listener` until `shutdown` resolves, then drains.
///
/// Starts the in-process emulator first when an app's endpoint is `"emulator"`.
/// Returns whether every accepted connection finished within the drain deadline.
pub async fn run(
    config: Config,
    listener: TcpListener,
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
    let gateway = Arc::new(Gateway::new(
        &config,
        embedded.as_ref().map(|(addr, _)| *addr),
    ));
    info!(addr = %listener.local_addr()?, apps = config.apps.len(), "gateway listening");
    let handler = move |request| proxy::handle(gateway.clone(), request);
    let drained = server::serve(listener, handler, shutdown, config.server.drain_timeout).await;
    if let Some((_, task)) = embedded {
        task.abort();
    }
    Ok(drained)
}

/// Runs the emulator for `config`'s apps on `listener` until `shutdown` resolves.
pub async fn emulate(config: &Config, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let emulator = Arc::new(Emulator::new(&config.apps));
    let handler = move |request| emulator::handle(emulator.clone(), request);
    server::serve(listener, handler, shutdown, config.server.drain_timeout).await;
}

fn spawn_emulator(config: &Config, listener: TcpListener) -> tokio::task::JoinHandle<()> {
    let config = config.clone();
    tokio::spawn(async move { emulate(&config, listener, std::future::pending()).await })
}
