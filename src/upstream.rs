//! The pooled HTTP(S) client to Tencent, and one upstream attempt.
//!
//! One `hyper-util` client is shared by every app: keep-alive connections are pooled per
//! host, TLS is rustls with compiled-in roots. An attempt is bounded twice, by the connect
//! deadline and by the whole-attempt deadline (above Tencent's own 3 s). The attempt's URL
//! holds a UserSig, so it is never logged or put into an error.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::error::Error;

/// The largest answer read from Tencent; real ones are a few KB.
const MAX_REPLY_BYTES: usize = 8 * 1024 * 1024;

/// Tencent's answer to one attempt, as it will be passed back to the caller.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Tencent's HTTP status (200 for every API-level answer).
    pub status: StatusCode,
    /// Tencent's `Content-Type`, passed through.
    pub content_type: Option<HeaderValue>,
    /// Tencent's body, byte for byte.
    pub body: Bytes,
    /// `ErrorCode` and `RequestId` read from the body, when it is Tencent's envelope.
    pub outcome: Outcome,
}

/// The parts of Tencent's envelope a gateway acts on.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    /// `ErrorCode`: 0 is success.
    #[serde(rename = "ErrorCode")]
    pub error_code: Option<i64>,
    /// `RequestId`, for Tencent support.
    #[serde(rename = "RequestId")]
    pub request_id: Option<String>,
}

/// The shared upstream client.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl Upstream {
    /// A pooled client whose attempts give up after `timeout`, connects after `connect_timeout`.
    pub fn new(timeout: Duration, connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(https);
        Self { client, timeout }
    }

    /// POSTs `body` to `uri` once and reads the whole answer, within the attempt deadline.
    pub async fn send(&self, uri: Uri, body: Bytes) -> Result<Reply, Error> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .expect("method, a parsed URI and a static header make a valid request");
        tokio::time::timeout(self.timeout, self.exchange(request))
            .await
            .map_err(|_| Error::Timeout(self.timeout))?
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<Reply, Error> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(Error::Unreachable)?;
        let status = response.status();
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(Error::UpstreamBody)?
            .to_bytes();
        let outcome = serde_json::from_slice(&body).unwrap_or_default();
        Ok(Reply {
            status,
            content_type,
            body,
            outcome,
        })
    }
}
