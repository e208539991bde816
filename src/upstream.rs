//! Connections to Tencent, pooled, and one upstream attempt on one of them.
//!
//! `connect` hands out a *ready* connection — an idle pooled one, or a new one with its TCP
//! and TLS handshakes done — so the request path can check the rate limits at the moment the
//! request goes on the wire, after any handshake, not before it. Connections are HTTP/1.1
//! keep-alive, TLS by rustls with Mozilla's roots (plus `server.ca_file`), kept idle per
//! origin for `IDLE_TIMEOUT`. An attempt's URL holds a UserSig, so it is never logged or put
//! into an error.
//!
//! Failures are this module's own `Error`, named by what is known about the request: never
//! sent (`Unreachable`), possibly sent (`Broken`, `Timeout`, `Body`, `Status`). The retry
//! policy decides on exactly these.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use tokio::time::Instant;
use tower_service::Service;

use crate::config::ExtraRoots;

/// The largest answer read from Tencent; real ones are a few KB.
const MAX_REPLY_BYTES: usize = 8 * 1024 * 1024;
/// How long an unused connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most idle connections kept per origin.
const MAX_IDLE_PER_ORIGIN: usize = 256;

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
}

/// Why an attempt got no answer to pass back.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection could be made, or the one at hand closed before the request was
    /// written: nothing reached Tencent.
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

/// A ready connection, checked out of the pool for one attempt.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    origin: String,
}

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// The shared connection pool and its attempt deadline.
pub struct Upstream {
    connector: HttpsConnector<HttpConnector>,
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl Upstream {
    /// A pool whose attempts give up after `timeout`, and connects (TLS included) after
    /// `connect_timeout`. TLS trusts Mozilla's roots and `extra_roots`.
    pub fn new(timeout: Duration, connect_timeout: Duration, extra_roots: &ExtraRoots) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls(extra_roots))
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            connector,
            idle: Mutex::default(),
            timeout,
            connect_timeout,
        }
    }

    /// A ready connection to `origin`: an idle one from the pool, or a new one.
    /// A failure here means nothing was sent.
    pub async fn connect(&self, origin: &Origin) -> Result<Connection, Error> {
        if let Some(sender) = self.take_idle(&origin.key) {
            return Ok(Connection {
                sender,
                origin: origin.key.clone(),
            });
        }
        let dial = async {
            let io = self.connector.clone().call(origin.uri.clone()).await?;
            let (sender, connection) = http1::handshake(io).await?;
            tokio::spawn(async move {
                // Ends when Tencent or the pool closes the connection; nothing to report.
                let _ = connection.await;
            });
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(sender)
        };
        let sender = tokio::time::timeout(self.connect_timeout, dial)
            .await
            .map_err(|_| Error::Unreachable("connect timed out".into()))?
            .map_err(Error::Unreachable)?;
        Ok(Connection {
            sender,
            origin: origin.key.clone(),
        })
    }

    /// POSTs `body` to `path` (path and query) on `connection`, within the attempt deadline,
    /// and returns the connection to the pool when the exchange completed cleanly.
    pub async fn send(
        &self,
        connection: Connection,
        origin: &Origin,
        path: Uri,
        body: Bytes,
    ) -> Result<Reply, Error> {
        // Built from parts, not a builder: nothing here can fail, so a caller's path never
        // meets an `expect`.
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = path;
        let headers = request.headers_mut();
        headers.insert(HOST, origin.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        let Connection { mut sender, origin } = connection;
        let reply = tokio::time::timeout(self.timeout, round_trip(&mut sender, request))
            .await
            .map_err(|_| Error::Timeout(self.timeout))??;
        self.put_idle(origin, sender);
        Ok(reply)
    }

    fn take_idle(&self, origin: &str) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = idle.get_mut(origin)?;
        // Newest first: the likeliest to be alive. Closed or stale ones are dropped.
        while let Some(entry) = list.pop() {
            if entry.sender.is_ready() && entry.since.elapsed() < IDLE_TIMEOUT {
                return Some(entry.sender);
            }
        }
        None
    }

    fn put_idle(&self, origin: String, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = idle.entry(origin).or_default();
        if list.len() < MAX_IDLE_PER_ORIGIN {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
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
async fn round_trip(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<Reply, Error> {
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
