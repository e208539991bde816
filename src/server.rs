//! The HTTP/1.1 accept loop shared by the gateway, its admin listener and the emulator.
//!
//! Accepts until `shutdown` resolves, then stops accepting and lets every connection finish
//! its in-flight request (idle keep-alive connections close at once), for at most the drain.
//! What one connection can hold is bounded ([`Bounds`]): open connections, header bytes (431
//! past `max_header_bytes`), the time to send a request head (also the idle keep-alive
//! timeout), and the time a write may stall on a caller that does not read ([`io`]).
//! At the connection cap a new caller takes the place of the longest-idle connection, which
//! is closed ([`idle`]); only when every connection has a request in flight is it answered
//! 503 and closed, never left waiting unaccepted.
//! Requests that break HTTP/1.1's Host rules (RFC 9112 §3.2) get 400 before any handler runs.
//! Those, an HTTP/2 preface (505), and heads hyper answers itself (431 past the head bound,
//! 400 for a head it cannot parse) are handed to the listener's [`Handler::refused`], so that
//! every request leaves its one log line (and, on the gateway, its one outcome metric). Every
//! answer made here carries `x-timgate-attempts: 0`, as the gateway's own answers carry the
//! attempts they took.

mod connection;
mod idle;
mod io;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HOST, HeaderValue};
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioTimer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tracing::{debug, info, warn};

use crate::config;
use crate::error::envelope;
use connection::connection;
use idle::Idle;
use io::Guarded;

pub use io::LINGER;

/// The header on every answer timgate gives: the upstream attempts it took (0: none was sent).
pub const ATTEMPTS: &str = "x-timgate-attempts";

/// Connections the admin listener serves at once: probes and scrapes, never a crowd.
pub const ADMIN_MAX_CONNECTIONS: usize = 32;
/// Connections past the cap being placed (in an idle connection's place) or answered 503
/// at once; beyond these, closed unanswered.
const MAX_PAST_CAP: usize = 32;
/// Idle connections a caller past the cap asks for their place before it is answered 503:
/// each that declines has just received a request.
const MAX_ASKS: usize = 8;
/// How long an idle connection may take to answer an ask; it answers on its next poll.
const ASK_WAIT: Duration = Duration::from_millis(100);
/// Descriptors kept for everything but proxy connections: the listeners, the admin
/// connections, the refusals, the runtime, log and configuration files.
const RESERVED_FDS: u64 = 128;
/// Descriptors one proxy connection may need: its own, one to Tencent, and with the
/// in-process emulator, the emulator's end of that one.
const FDS_PER_CONNECTION: u64 = 3;

/// What one listener's connections may hold.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Connections served at once; past it, the longest-idle is closed for a new one, or,
    /// with none idle, the new one is answered 503 and closed.
    pub max_connections: usize,
    /// Bytes of a request head (request line and headers); past it, 431.
    pub max_header_bytes: usize,
    /// Longest wait for a request head, and so for an idle keep-alive connection's next request.
    pub header_read_timeout: Duration,
    /// Longest a write may make no progress before the connection is closed.
    pub write_timeout: Duration,
    /// How long connections may take to finish once `shutdown` resolves.
    pub drain: Duration,
}

impl Bounds {
    /// The bounds configured in `[server]`, the connection cap kept within the descriptor limit.
    pub fn from_config(server: &config::Server) -> Bounds {
        Bounds {
            max_connections: connection_cap(server.max_connections),
            max_header_bytes: server.max_header_bytes,
            header_read_timeout: server.header_read_timeout,
            write_timeout: server.write_timeout,
            drain: server.drain_timeout,
        }
    }

    /// The same bounds with at most `n` connections.
    pub fn max_connections(self, n: usize) -> Bounds {
        Bounds {
            max_connections: n.min(self.max_connections),
            ..self
        }
    }

    /// The same bounds with another drain deadline.
    pub fn drain(self, drain: Duration) -> Bounds {
        Bounds { drain, ..self }
    }
}

impl Default for Bounds {
    /// The defaults of `[server]`.
    fn default() -> Bounds {
        Bounds {
            max_connections: 1024,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(20),
        }
    }
}

/// A request the edge answered itself, before any handler saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// How the request ended, as the `outcome` label and log field.
    pub outcome: &'static str,
    /// The status it was answered with.
    pub status: StatusCode,
    /// The envelope's ErrorCode, when the answer carried one.
    pub code: Option<u32>,
    /// Why.
    pub error: &'static str,
}

/// What serves one listener's requests.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The answer to one request, as a future.
    type Answer: Future<Output = Response<Full<Bytes>>> + Send + 'static;

    /// Answers one request.
    fn handle(&self, request: Request<Incoming>) -> Self::Answer;

    /// Records a request the edge answered itself; by default its one log line.
    fn refused(&self, refusal: Refusal) {
        info!(
            outcome = refusal.outcome,
            status = refusal.status.as_u16(),
            error_code = refusal.code,
            error = refusal.error,
            "request"
        );
    }
}

/// A plain function of a request is a handler whose refusals are logged.
impl<H, F> Handler for H
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    type Answer = F;

    fn handle(&self, request: Request<Incoming>) -> F {
        self(request)
    }
}

/// Raises this process's soft limit on open files to its hard limit, and returns the limit
/// now in force (`None`: unlimited or unknown). Call once, before serving.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            warn!(error = %e, "could not raise the open-file limit to its hard limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// `configured`, lowered so that every connection at the cap still finds its descriptors.
fn connection_cap(configured: usize) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let Some(limit) = limit else {
        return configured;
    };
    let room = limit.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION;
    let room = usize::try_from(room).unwrap_or(usize::MAX).max(1);
    if room < configured {
        warn!(
            configured,
            fd_limit = limit,
            cap = room,
            "server.max_connections lowered to fit the open-file limit"
        );
    }
    configured.min(room)
}

/// What one listener's connections share.
struct Listener<H> {
    handler: H,
    http: http1::Builder,
    bounds: Bounds,
    /// One permit for each connection served: the cap.
    open: Arc<Semaphore>,
    /// The connections that are idle now, whose places a caller past the cap may take.
    idle: Arc<Idle>,
    /// One permit for each caller past the cap being placed or refused.
    past_cap: Arc<Semaphore>,
    /// Whether 503s are being answered, so that it is logged once, not per caller.
    refusing: AtomicBool,
}

/// Serves `handler` on `listener` within `bounds` until `shutdown`, then drains for at most
/// `bounds.drain`. Returns whether every connection finished within the drain.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
    bounds: Bounds,
) -> bool {
    let shared = Arc::new(Listener {
        handler,
        http: builder(&bounds),
        bounds,
        open: Arc::new(Semaphore::new(bounds.max_connections)),
        idle: Arc::default(),
        past_cap: Arc::new(Semaphore::new(MAX_PAST_CAP)),
        refusing: AtomicBool::new(false),
    });
    // Every connection holds a receiver until it is closed: the drain waits for them all.
    let (closing, _) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = shared.open.clone().try_acquire_owned() else {
                        past_cap(stream, &shared, closing.subscribe());
                        continue;
                    };
                    shared.refusing.store(false, Ordering::Relaxed);
                    tokio::spawn(connection(stream, shared.clone(), closing.subscribe(), permit));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    closing.send_replace(true);
    tokio::select! {
        () = closing.closed() => true,
        () = tokio::time::sleep(bounds.drain) => {
            warn!(drain = ?bounds.drain, "drain deadline passed with connections still open");
            false
        }
    }
}

/// A connection past the cap: served in the place of the longest-idle connection that is
/// still idle when asked; answered 503 when every connection is busy.
fn past_cap<H: Handler>(
    stream: TcpStream,
    shared: &Arc<Listener<H>>,
    closing: watch::Receiver<bool>,
) {
    let Ok(placing) = shared.past_cap.clone().try_acquire_owned() else {
        debug!("closing a connection unanswered: too many past the cap at once");
        return;
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        if let Some(permit) = take_place(&shared).await {
            debug!("closed the longest-idle connection for a new caller");
            drop(placing);
            connection(stream, shared, closing, permit).await;
            return;
        }
        drop(closing);
        if !shared.refusing.swap(true, Ordering::Relaxed) {
            warn!(
                max = shared.bounds.max_connections,
                "at the connection cap with every connection busy: answering 503"
            );
        }
        refuse(stream, &shared.handler, shared.bounds).await;
        drop(placing);
    });
}

/// A place for a caller past the cap: one freed meanwhile, or one an idle connection hands
/// over as it closes. `None` when every connection asked was busy.
async fn take_place<H>(shared: &Listener<H>) -> Option<OwnedSemaphorePermit> {
    for _ in 0..MAX_ASKS {
        if let Ok(permit) = shared.open.clone().try_acquire_owned() {
            return Some(permit);
        }
        let asks = shared.idle.longest()?;
        let (ask, answer) = oneshot::channel();
        if asks.send(ask).is_err() {
            continue;
        }
        if let Ok(Ok(Some(permit))) = tokio::time::timeout(ASK_WAIT, answer).await {
            return Some(permit);
        }
    }
    None
}

fn builder(bounds: &Bounds) -> http1::Builder {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(bounds.header_read_timeout)
        .max_header_size(bounds.max_header_bytes)
        // The read buffer never grows past the head's bound (hyper's floor is 8 KiB).
        .max_buf_size(bounds.max_header_bytes.max(8192));
    http
}

/// Answers a request that breaks the Host rules itself; hands every other to `handler`.
/// Decided before the answer's future is made, so that this future, which hyper keeps for
/// as long as its connection is open, holds no request head.
fn checked<H: Handler>(
    handler: &H,
    request: Request<Incoming>,
) -> impl Future<Output = Response<Full<Bytes>>> + Send + use<H> {
    let answer = match host_refusal(&request) {
        None => Ok(handler.handle(request)),
        Some(error) => Err(refused_host(handler, error)),
    };
    async move {
        match answer {
            Ok(handled) => handled.await,
            Err(refused) => refused,
        }
    }
}

/// The answer to a request that breaks the Host rules, recorded as refused.
fn refused_host<H: Handler>(handler: &H, error: &'static str) -> Response<Full<Bytes>> {
    handler.refused(Refusal {
        outcome: "bad_request",
        status: StatusCode::BAD_REQUEST,
        code: Some(60002),
        error,
    });
    let mut response = envelope(StatusCode::BAD_REQUEST, 60002, error);
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    headers.insert(ATTEMPTS, HeaderValue::from_static("0"));
    response
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host; no request has two.
fn host_refusal(request: &Request<Incoming>) -> Option<&'static str> {
    match request.headers().get_all(HOST).iter().count() {
        0 if request.version() == Version::HTTP_11 => {
            Some("an HTTP/1.1 request needs a Host header")
        }
        0 | 1 => None,
        _ => Some("a request may carry only one Host header"),
    }
}

/// A connection past the cap with every connection busy: its request head is read, then
/// answered 503 and closed with a lingering close. The head is read first because a client
/// answered before it has written its request takes the answer for a broken connection
/// (hyper's client reports an unexpected message), not for a 503.
async fn refuse<H: Handler>(stream: TcpStream, handler: &H, bounds: Bounds) {
    let mut io = Guarded::new(stream, bounds.write_timeout);
    let wait = bounds.header_read_timeout.min(REFUSAL_WAIT);
    let head = tokio::time::timeout(wait, read_head(&mut io, bounds.max_header_bytes)).await;
    if !matches!(head, Ok(Ok(true))) {
        // Silent, closed, or a head past the bound: no request to answer.
        return;
    }
    handler.refused(Refusal {
        outcome: "overloaded",
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: Some(60008),
        error: "the gateway is at its connection limit",
    });
    if io.write_all(AT_CAPACITY).await.is_ok() && io.shutdown().await.is_ok() {
        // Whatever body the caller is still sending is read and dropped, so that the
        // close does not become a reset that destroys the answer before it is read.
        let _ = tokio::time::timeout(
            REFUSAL_WAIT,
            tokio::io::copy(&mut io, &mut tokio::io::sink()),
        )
        .await;
    }
}

/// How long a refused connection may take to send its head, and to finish sending after
/// its answer.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// Reads up to the end of a request head (`\r\n\r\n`) and no further than `max` bytes,
/// keeping none of it. Whether a whole head arrived.
async fn read_head(io: &mut Guarded, max: usize) -> std::io::Result<bool> {
    let mut buf = [0u8; 1024];
    // How much of "\r\n\r\n" the bytes so far end with.
    let mut matched = 0;
    let mut read = 0;
    while read < max {
        let want = buf.len().min(max - read);
        let n = io.read(&mut buf[..want]).await?;
        if n == 0 {
            return Ok(false);
        }
        read += n;
        for &byte in &buf[..n] {
            matched = match (matched, byte) {
                (0 | 2, b'\r') | (1 | 3, b'\n') => matched + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if matched == 4 {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The answer to a connection past the cap.
const AT_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nconnection: close\r\nretry-after: 1\r\n\
x-timgate-attempts: 0\r\ncontent-length: 109\r\n\r\n\
{\"ActionStatus\":\"FAIL\",\"ErrorCode\":60008,\"ErrorInfo\":\"the gateway is at its connection limit; retry shortly\"}";

#[cfg(test)]
mod tests {
    use super::*;

    fn declared_length_matches(response: &[u8]) {
        let text = std::str::from_utf8(response).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let declared: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(declared, body.len(), "{text}");
        assert!(head.contains("\r\nx-timgate-attempts: 0\r\n"), "{head}");
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    #[test]
    fn the_canned_answers_declare_their_length_and_carry_an_envelope() {
        declared_length_matches(AT_CAPACITY);
        declared_length_matches(io::HTTP2_REFUSAL);
    }
}
