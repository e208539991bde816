//! Opening a TCP connection to an origin: directly, or through an HTTP proxy's CONNECT
//! tunnel (`server.egress_proxy` / `HTTPS_PROXY`) for HTTPS origins the proxy covers. TLS is
//! then spoken end to end over the tunnel, so the proxy sees no plaintext.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::config::EgressProxy;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The most bytes a proxy's answer to CONNECT may take.
const MAX_CONNECT_REPLY: usize = 8 * 1024;

/// A TCP dialer that tunnels through `proxy` where it applies; wrapped by hyper-rustls for TLS.
#[derive(Clone)]
pub(super) struct Dialer {
    pub(super) http: HttpConnector,
    pub(super) proxy: Option<EgressProxy>,
}

impl Service<Uri> for Dialer {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let proxy = self
            .proxy
            .as_ref()
            .filter(|p| {
                target.scheme_str() == Some("https") && target.host().is_some_and(|h| p.covers(h))
            })
            .map(|p| p.url.clone());
        Box::pin(async move {
            let Some(proxy) = proxy else {
                return http.call(target).await.map_err(Into::into);
            };
            let stream = http
                .call(proxy)
                .await
                .map_err(|e| format!("the egress proxy: {e}"))?
                .into_inner();
            tunnel(stream, &target).await.map(TokioIo::new)
        })
    }
}

/// Asks the proxy on `stream` for a tunnel to `target`'s host and port (443 by default).
async fn tunnel(mut stream: TcpStream, target: &Uri) -> Result<TcpStream, BoxError> {
    let host = target.host().ok_or("no host to tunnel to")?;
    let port = target.port_u16().unwrap_or(443);
    let authority = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    // Read the answer's head only: the tunnel's first bytes (TLS) follow it, sent by us.
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 512];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_CONNECT_REPLY {
            return Err("the egress proxy's answer to CONNECT is too long".into());
        }
        // The proxy sends nothing after its head until we speak, so reading ahead is safe,
        // but read only what the head can still hold.
        let room = (MAX_CONNECT_REPLY - head.len()).min(byte.len());
        let n = stream.read(&mut byte[..room]).await?;
        if n == 0 {
            return Err("the egress proxy closed the connection during CONNECT".into());
        }
        head.extend_from_slice(&byte[..n]);
        if find_end(&head).is_some_and(|end| end != head.len()) {
            return Err("the egress proxy sent bytes after its answer to CONNECT".into());
        }
    }
    let status_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let status_line = String::from_utf8_lossy(status_line);
    let mut parts = status_line.split_whitespace();
    let ok = parts.next().is_some_and(|v| v.starts_with("HTTP/1."))
        && parts
            .next()
            .is_some_and(|code| code.len() == 3 && code.starts_with('2'));
    if !ok {
        return Err(format!(
            "the egress proxy refused CONNECT {authority}: {}",
            status_line.trim()
        )
        .into());
    }
    Ok(stream)
}

/// Where the head ends (just past the first blank line), if it has.
fn find_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}
