//! Connections to Tencent, pooled, and one upstream attempt on one of them.
//!
//! `connect` hands out a *ready* connection — an idle pooled one, or a new one with its TCP
//! and TLS handshakes done — so the request path can check the rate limits at the moment the
//! request goes on the wire, after any handshake, not before it. Connections are HTTP/1.1
//! keep-alive, TLS by rustls with Mozilla's roots (plus `server.ca_file`), at most
//! `server.upstream_max_connections` open per origin (past it, attempts wait in order for
//! one to come free), and closed by a sweeper once idle for `server.upstream_idle_timeout_ms`.
//! When an origin cannot be resolved or connected to (TLS included), the attempt goes to the
//! app's backup origin, if it has one (never on an answer). HTTPS may go through an egress
//! proxy's CONNECT tunnel. An attempt's URL holds a UserSig, so it is never logged or put
//! into an error.
//!
//! Failures are this module's own `Error`, named by what is known about the request: never
//! sent (`Unreachable`), possibly sent (`Broken`, `Timeout`, `Body`, `Status`). The retry
//! policy decides on exactly these.

mod dial;
mod pool;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1;
use hyper::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tokio::time::Instant;
use tower_service::Service;
use tracing::warn;

use crate::config::{EgressProxy, ExtraRoots};
use dial::Dialer;
use pool::{Checkout, Pool, Sender, Slot};

pub use pool::Gauges;

/// The largest answer read from Tencent; real ones are a few KB.
const MAX_REPLY_BYTES: usize = 8 * 1024 * 1024;
/// How long attempts go straight to the backup after the primary failed, before the primary
/// is tried again.
pub const PRIMARY_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Tencent's answer to one attempt, as it will be passed back to the caller.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Tencent's HTTP status (200 for every API-level answer).
    pub status: StatusCode,
    /// Tencent's `Content-Type`, passed through.
    pub content_type: Option<HeaderValue>,
    /// Tencent's `Content-Encoding`, passed through with the body as it came. timgate asks
    /// for `identity`; an answer encoded anyway still reaches the caller intact (its
    /// `ErrorCode` is then unread: no retry on it).
    pub content_encoding: Option<HeaderValue>,
    /// Tencent's body, byte for byte.
    pub body: Bytes,
    /// `ErrorCode` and `RequestId` read from the body, when it is Tencent's envelope.
    pub envelope: Envelope,
}

/// The parts of Tencent's envelope a gateway acts on.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    /// `ErrorCode`: 0 is success.
    #[serde(rename = "ErrorCode")]
    pub error_code: Option<i64>,
    /// `RequestId`, for Tencent support.
    #[serde(rename = "RequestId")]
    pub request_id: Option<String>,
    /// The entries of `ErrorList`: the accounts a batch call failed for while it carried
    /// out the others (batchsendmsg, query_online_status).
    #[serde(rename = "ErrorList", default)]
    pub error_list: Entries,
    /// The entries of `FailAccounts` (multiaccount_import's accounts not imported).
    #[serde(rename = "FailAccounts", default)]
    pub fail_accounts: Entries,
}

impl Envelope {
    /// How many entries failed in an answer that carried out the others.
    pub fn partial(&self) -> u32 {
        self.error_list.0.saturating_add(self.fail_accounts.0)
    }
}

/// The number of entries in a JSON array, counted without keeping them; 0 for any other
/// value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entries(pub u32);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Count;
        impl<'de> serde::de::Visitor<'de> for Count {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Entries, A::Error> {
                let mut n = 0u32;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    n = n.saturating_add(1);
                }
                Ok(Entries(n))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Entries(0))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Entries, E> {
                Ok(Entries(0))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Entries, E> {
                Ok(Entries(0))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Entries, E> {
                Ok(Entries(0))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Entries, E> {
                Ok(Entries(0))
            }
            fn visit_str<E>(self, _: &str) -> Result<Entries, E> {
                Ok(Entries(0))
            }
            fn visit_unit<E>(self) -> Result<Entries, E> {
                Ok(Entries(0))
            }
        }
        deserializer.deserialize_any(Count)
    }
}

/// Why an attempt got no answer to pass back.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection could be made or came free in time, or the one at hand closed before
    /// the request was written: nothing reached Tencent.
    #[error("Tencent is unreachable: {0}")]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The connection broke after the request may have reached Tencent.
    #[error("the connection to Tencent broke: {0}")]
    Broken(#[source] hyper::Error),
    /// Tencent did not answer within the attempt's deadline; the request may have reached it.
    #[error("Tencent did not answer within {0:?}")]
    Timeout(Duration),
    /// Tencent's answer body could not be read, or was over `MAX_REPLY_BYTES`.
    #[error("Tencent's answer could not be read: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Tencent answered with a status that is not a final answer (1xx, 101 Switching
    /// Protocols): the request reached it, but there is nothing to pass back.
    #[error("Tencent answered HTTP {0}, which is not a final answer")]
    Status(StatusCode),
}

/// Where attempts go: `scheme://authority`, as the pool and the `Host` header know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    uri: Uri,
    key: String,
    host: HeaderValue,
}

impl Origin {
    /// The origin of a base URL such as `https://adminapisgp.im.qcloud.com`.
    pub fn new(base: &Uri) -> Origin {
        let scheme = base.scheme_str().unwrap_or("https");
        let authority = base.authority().map_or("", |a| a.as_str());
        let key = format!("{scheme}://{authority}");
        Origin {
            uri: key
                .parse()
                .expect("a scheme and a parsed authority form a URI"),
            host: HeaderValue::from_str(authority).expect("a parsed authority is a valid header"),
            key,
        }
    }
}

/// One origin and its pool.
struct Target {
    origin: Origin,
    pool: Arc<Pool>,
    /// Until when attempts skip this origin for the backup (it failed to connect).
    down_until: Mutex<Option<Instant>>,
}

/// Where one app's attempts go: its primary origin, and a backup for when the primary cannot
/// be resolved or connected to.
#[derive(Clone)]
pub struct Endpoint {
    primary: Arc<Target>,
    backup: Option<Arc<Target>>,
}

impl Endpoint {
    /// Connections open to the primary origin now.
    pub fn open_connections(&self) -> usize {
        self.primary.pool.open()
    }
}

/// A ready connection, checked out of the pool for one attempt.
pub struct Connection {
    sender: Sender,
    slot: Slot,
    target: Arc<Target>,
}

/// An idle connection taken before a turn ([`Upstream::try_connect`]); it goes back to the
/// pool, unused and as idle as it was, when dropped.
pub struct Held {
    connection: Option<Connection>,
    /// When it was last used.
    since: Instant,
}

impl Held {
    /// The connection, to send on now.
    pub fn take(mut self) -> Option<Connection> {
        self.connection.take()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(Connection {
            sender,
            slot,
            target,
        }) = self.connection.take()
        {
            target.pool.checkin_unused(sender, slot, self.since);
        }
    }
}

/// The shared connection pools and the attempt deadline.
pub struct Upstream {
    connector: HttpsConnector<Dialer>,
    targets: Arc<Mutex<HashMap<String, Weak<Target>>>>,
    timeout: Duration,
    connect_timeout: Duration,
    max_connections: usize,
    idle_timeout: Duration,
    gauges: Gauges,
    failovers: Counter,
}

/// What the pools are built with.
pub struct Settings<'a> {
    /// One attempt's deadline, from send to the whole answer.
    pub timeout: Duration,
    /// TCP + TLS (and CONNECT) deadline.
    pub connect_timeout: Duration,
    /// Connections open at once per origin.
    pub max_connections: usize,
    /// An unused connection is closed after this long.
    pub idle_timeout: Duration,
    /// Roots trusted besides Mozilla's.
    pub extra_roots: &'a ExtraRoots,
    /// HTTPS through this proxy's CONNECT tunnel, where it applies.
    pub egress_proxy: Option<&'a EgressProxy>,
}

impl Upstream {
    /// The pools, with their sweeper running on the current Tokio runtime (it stops when the
    /// `Upstream` is dropped). `gauges` and `failovers` are the metrics it keeps.
    pub fn new(settings: &Settings<'_>, gauges: Gauges, failovers: Counter) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_nodelay(true);
        let dialer = Dialer {
            http,
            proxy: settings.egress_proxy.cloned(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls(settings.extra_roots))
            .https_or_http()
            .enable_http1()
            .wrap_connector(dialer);
        let targets = Arc::new(Mutex::new(HashMap::new()));
        spawn_sweeper(Arc::downgrade(&targets), settings.idle_timeout);
        Self {
            connector,
            targets,
            timeout: settings.timeout,
            connect_timeout: settings.connect_timeout,
            max_connections: settings.max_connections,
            idle_timeout: settings.idle_timeout,
            gauges,
            failovers,
        }
    }

    /// The endpoint for `primary` and, when given, `backup` (base URLs). Origins are shared:
    /// two apps in one region use one pool.
    pub fn endpoint(&self, primary: &Uri, backup: Option<&Uri>) -> Endpoint {
        Endpoint {
            primary: self.target(primary),
            backup: backup.map(|b| self.target(b)),
        }
    }

    fn target(&self, base: &Uri) -> Arc<Target> {
        let origin = Origin::new(base);
        let mut targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(target) = targets.get(&origin.key).and_then(Weak::upgrade) {
            return target;
        }
        let target = Arc::new(Target {
            pool: Pool::new(self.max_connections, self.gauges.clone()),
            origin,
            down_until: Mutex::new(None),
        });
        targets.retain(|_, t| t.strong_count() > 0);
        targets.insert(target.origin.key.clone(), Arc::downgrade(&target));
        target
    }

    /// A ready connection for `endpoint`: an idle one from the pool, or a new one, waiting in
    /// order for one to come free (no later than `until`) when the pool is full. The primary
    /// origin first; when it cannot be resolved or connected to, the backup. A failure here
    /// means nothing was sent.
    pub async fn connect(&self, endpoint: &Endpoint, until: Instant) -> Result<Connection, Error> {
        let Some(backup) = &endpoint.backup else {
            return self
                .checkout(&endpoint.primary, until)
                .await
                .map_err(Into::into);
        };
        let primary = &endpoint.primary;
        if !primary.is_down() {
            match self.checkout(primary, until).await {
                Err(Failed::Dial(why)) => {
                    primary.mark_down();
                    self.failovers.inc();
                    warn!(
                        primary = %primary.origin.key,
                        backup = %backup.origin.key,
                        error = %why,
                        retry_primary_after = ?PRIMARY_RETRY_AFTER,
                        "the primary upstream cannot be reached: failing over to the backup"
                    );
                }
                other => return other.map_err(Into::into),
            }
        }
        let connected = self.checkout(backup, until).await;
        if let Err(Failed::Dial(_)) = connected {
            // Neither works now: the next attempt tries the primary again.
            primary.mark_up();
        }
        connected.map_err(Into::into)
    }

    /// An idle connection to `endpoint` that is ready now, if one is and no attempt is
    /// waiting for one: never a dial, never a place in the queue.
    pub fn try_connect(&self, endpoint: &Endpoint) -> Option<Held> {
        let target = match &endpoint.backup {
            Some(backup) if endpoint.primary.is_down() => backup,
            _ => &endpoint.primary,
        };
        let (sender, slot, since) = target.pool.try_checkout(self.idle_timeout)?;
        Some(Held {
            connection: Some(Connection {
                sender,
                slot,
                target: target.clone(),
            }),
            since,
        })
    }

    async fn checkout(&self, target: &Arc<Target>, until: Instant) -> Result<Connection, Failed> {
        let slot = match target.pool.checkout(self.idle_timeout, until).await {
            Some(Checkout::Ready(mut sender, slot)) => {
                // Ready before the send-time guard, not after it: a connection just handed
                // over by the request before is ready only once its task has seen that
                // answer through. Waiting for that after the guard would let writes bunch.
                let ready = crate::deadline::until(until, sender.ready()).await;
                if let Ok(Ok(())) = ready {
                    return Ok(Connection {
                        sender,
                        slot,
                        target: target.clone(),
                    });
                }
                if ready.is_err() {
                    return Err(Failed::Wait);
                }
                // Closed meanwhile: its slot dials a new one.
                slot
            }
            Some(Checkout::Dial(slot)) => slot,
            None => return Err(Failed::Wait),
        };
        // Boxed (TLS and handshake state, ~1 KB): rare, and kept out of every waiting checkout.
        let dial = Box::pin(async {
            let io = self
                .connector
                .clone()
                .call(target.origin.uri.clone())
                .await?;
            let (sender, connection) = http1::handshake(io).await?;
            tokio::spawn(async move {
                // Ends when Tencent or the pool closes the connection; nothing to report.
                let _ = connection.await;
            });
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(sender)
        });
        // On failure the slot is dropped: its place goes to the next waiter.
        let sender = tokio::time::timeout(self.connect_timeout, dial)
            .await
            .map_err(|_| Failed::Dial("connect timed out".into()))?
            .map_err(Failed::Dial)?;
        Ok(Connection {
            sender,
            slot,
            target: target.clone(),
        })
    }

    /// POSTs `body` to `path` (path and query) on `connection`, within the attempt deadline,
    /// and returns the connection to the pool when the exchange completed cleanly.
    pub async fn send(
        &self,
        connection: Connection,
        path: Uri,
        body: Bytes,
    ) -> Result<Reply, Error> {
        let Connection {
            mut sender,
            slot,
            target,
        } = connection;
        // Built from parts, not a builder: nothing here can fail, so a caller's path never
        // meets an `expect`.
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = path;
        let headers = request.headers_mut();
        headers.insert(HOST, target.origin.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        let reply = tokio::time::timeout(self.timeout, round_trip(&mut sender, request))
            .await
            .map_err(|_| Error::Timeout(self.timeout))??;
        target.pool.checkin(sender, slot);
        Ok(reply)
    }
}

impl Drop for Target {
    /// An origin no app uses any more (after a reload): its idle connections are closed.
    fn drop(&mut self) {
        self.pool.sweep(Duration::ZERO);
    }
}

impl Target {
    fn is_down(&self) -> bool {
        let down = self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        down.is_some_and(|until| Instant::now() < until)
    }

    fn mark_down(&self) {
        *self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + PRIMARY_RETRY_AFTER);
    }

    fn mark_up(&self) {
        *self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Why a checkout gave no connection.
enum Failed {
    /// Resolving, connecting, TLS or the HTTP handshake failed (or timed out).
    Dial(Box<dyn std::error::Error + Send + Sync>),
    /// Every connection stayed busy until the attempt's wait ended.
    Wait,
}

impl From<Failed> for Error {
    fn from(failed: Failed) -> Error {
        match failed {
            Failed::Dial(why) => Error::Unreachable(why),
            Failed::Wait => Error::Unreachable(
                "every upstream connection (server.upstream_max_connections) stayed busy until the request's deadline".into(),
            ),
        }
    }
}

/// Closes idle connections past `idle_timeout`, checking four times per timeout, so none
/// stays open more than a quarter of it longer. Stops when the pools are gone.
fn spawn_sweeper(targets: Weak<Mutex<HashMap<String, Weak<Target>>>>, idle_timeout: Duration) {
    let tick = (idle_timeout / 4).max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(targets) = targets.upgrade() else {
                return;
            };
            let live: Vec<Arc<Target>> = targets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .filter_map(Weak::upgrade)
                .collect();
            drop(targets);
            for target in live {
                target.pool.sweep(idle_timeout);
            }
        }
    });
}

/// rustls with the ring provider, Mozilla's roots and the configured extra ones.
fn tls(extra_roots: &ExtraRoots) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // Each was checked to be usable when the configuration was loaded.
    roots.add_parsable_certificates(extra_roots.0.iter().cloned());
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// One request and its whole answer on a ready connection.
async fn round_trip(sender: &mut Sender, request: Request<Full<Bytes>>) -> Result<Reply, Error> {
    // A pooled connection can close between checkout and now; then nothing was sent.
    sender
        .ready()
        .await
        .map_err(|e| Error::Unreachable(e.into()))?;
    let response = match sender.try_send_request(request).await {
        Ok(response) => response,
        Err(mut e) => {
            // With the request handed back, it was never written: nothing reached Tencent.
            let unsent = e.take_message().is_some();
            let error = e.into_error();
            return Err(if unsent {
                Error::Unreachable(error.into())
            } else {
                Error::Broken(error)
            });
        }
    };
    let status = response.status();
    if status.is_informational() {
        return Err(Error::Status(status));
    }
    let content_type = response.headers().get(CONTENT_TYPE).cloned();
    let content_encoding = response.headers().get(CONTENT_ENCODING).cloned();
    let body = collect(response.into_body()).await?;
    let envelope = serde_json::from_slice(&body).unwrap_or_default();
    Ok(Reply {
        status,
        content_type,
        content_encoding,
        body,
        envelope,
    })
}

/// Reads a whole answer into one buffer, up to `MAX_REPLY_BYTES`. Each frame is copied and
/// dropped, so memory follows the bytes, not how many frames carried them: a 4 MB answer in
/// 1-byte chunks costs about 4 MB, not a `Bytes` (and a read buffer) per byte.
async fn collect(mut body: Incoming) -> Result<Bytes, Error> {
    let declared = body.size_hint().exact().unwrap_or(0);
    let mut buffer = BytesMut::with_capacity(
        usize::try_from(declared).map_or(MAX_REPLY_BYTES, |n| n.min(MAX_REPLY_BYTES)),
    );
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::Body(e.into()))?;
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > MAX_REPLY_BYTES {
                return Err(Error::Body(
                    format!("over the {MAX_REPLY_BYTES}-byte limit").into(),
                ));
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
}
