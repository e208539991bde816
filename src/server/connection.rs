//! One accepted connection, from its accept to its close.
//!
//! Until its first bytes arrive it costs no buffers: hyper takes over only then. It is
//! closed when it stays silent past `header_read_timeout`, when the drain starts (at once
//! while idle, after its answer otherwise), and when a caller past the connection cap needs
//! its place while it is idle ([`idle`](super::idle)). That last close never cuts a request:
//! hyper's graceful shutdown closes only a connection with nothing in flight, and whatever
//! of a next request hyper had already read is handed back to a new hyper connection on the
//! same socket, which serves it as if nothing had happened.

use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};

use hyper::StatusCode;
use hyper::server::conn::http1::{Connection, Parts};
use hyper::service::{HttpService, service_fn};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tracing::debug;

use super::idle::{Activity, Answered, Ask, Place};
use super::io::{self, Guarded};
use super::{Handler, Listener, Refusal, checked};

/// How the wait for a connection's first bytes ended.
enum First {
    /// Bytes arrived: hyper takes over.
    Arrived,
    /// Silent past the head timeout, closed by the caller, or the drain started: closed.
    Gone,
    /// A caller past the cap asked for this idle connection's place.
    Asked(Ask),
}

/// Why polling hyper stopped.
enum Driven {
    /// hyper closed the connection, and shut its socket down (with its lingering close).
    Closed(hyper::Result<()>),
    /// An ask found the connection idle, and hyper was asked to shut down gracefully.
    Asked(Ask),
}

/// How a gracefully shut down connection let go.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once from a boxed future, never kept"
)]
enum Stopped<S> {
    /// At once: it was idle. Its socket, what hyper had read of a next request, and the ask.
    Idle(Parts<TokioIo<Guarded>, S>, Ask),
    /// After finishing an exchange (its socket shut down), or with an error.
    Finished(hyper::Result<()>),
}

/// Serves one accepted connection that holds `permit`, one of the cap's places.
///
/// An `async` block rather than an `async fn`: an `async fn` keeps a second place for each
/// argument once it has started, and this future lives as long as its connection (with
/// 1,000 callers, 1,000 of them).
#[expect(
    clippy::manual_async_fn,
    reason = "one place for each argument, as said above"
)]
pub(super) fn connection<H: Handler>(
    stream: TcpStream,
    listener: Arc<Listener<H>>,
    mut closing: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let activity = Arc::new(Activity::default());
        let mut place = Place::new(listener.idle.clone());
        let wait = listener.bounds.header_read_timeout;
        match first_bytes(&stream, wait, &mut closing, &mut place, &activity).await {
            First::Arrived => {}
            First::Gone => return,
            First::Asked(ask) => {
                drop(stream);
                let _ = ask.send(Some(permit));
                return;
            }
        }
        // In a block: a local borrowed before an await would keep its place in this future
        // (some 180 bytes) for the connection's whole life.
        let (io, http2_refused) = {
            let io = Guarded::new(stream, listener.bounds.write_timeout);
            let http2_refused = io.http2_refused();
            (io.watched(activity.clone()), http2_refused)
        };
        let ended = served(io, &listener, closing, place, activity, permit).await;
        if http2_refused.load(Ordering::Relaxed) {
            listener.handler.refused(Refusal {
                outcome: "bad_request",
                status: StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                code: Some(60002),
                error: "an HTTP/2 preface on the HTTP/1.1 port",
            });
        } else if let Err(e) = ended {
            match answered_by_hyper(&e) {
                Some(refusal) => listener.handler.refused(refusal),
                None => debug!(error = %e, "connection ended with an error"),
            }
        }
    }
}

/// Waits, idle, for the connection's first bytes; an ask meanwhile is granted unless bytes
/// are already waiting. The bytes are peeked at, not read: `readable` alone also fires for
/// a connection that has sent nothing yet.
async fn first_bytes(
    stream: &TcpStream,
    wait: std::time::Duration,
    closing: &mut watch::Receiver<bool>,
    place: &mut Place,
    activity: &Activity,
) -> First {
    let mut byte = [0u8; 1];
    tokio::select! {
        peeked = tokio::time::timeout(wait, stream.peek(&mut byte)) => {
            if matches!(peeked, Ok(Ok(n)) if n > 0) {
                activity.arrived();
                First::Arrived
            } else {
                First::Gone
            }
        }
        () = closed(closing) => First::Gone,
        ask = place.ask(activity) => {
            if !io::unread(stream) {
                return First::Asked(ask);
            }
            let _ = ask.send(None);
            activity.arrived();
            First::Arrived
        }
    }
}

/// hyper serving the connection until it closes; a place asked for while idle is handed
/// over, unless bytes of a next request had come, which are then served on a new hyper
/// connection over the same socket.
///
/// Not an `async fn`, for the reason `connection` gives: the hyper connection (some 800
/// bytes) is made here and kept in one place in the future, replaced in that place when
/// the socket is served anew.
fn served<'a, H: Handler>(
    io: Guarded,
    listener: &'a Listener<H>,
    mut closing: watch::Receiver<bool>,
    mut place: Place,
    activity: Arc<Activity>,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = hyper::Result<()>> + Send + 'a {
    let (handler, answering) = (listener.handler.clone(), activity.clone());
    let service = service_fn(move |request| {
        answering.arrived();
        let answer = checked(&handler, request);
        let answering = answering.clone();
        async move { Ok::<_, Infallible>(answer.await.map(|body| Answered::new(body, answering))) }
    });
    let mut http = listener.http.serve_connection(TokioIo::new(io), service);
    async move {
        loop {
            let ask = match drive(&mut http, &mut place, &activity, &mut closing).await {
                Driven::Closed(ended) => return ended,
                Driven::Asked(ask) => ask,
            };
            // Boxed: rarely needed, and as large as the connection it holds.
            let (parts, ask) = match Box::pin(stopped(http, ask)).await {
                Stopped::Idle(parts, ask) => (parts, ask),
                Stopped::Finished(ended) => return ended,
            };
            let mut guarded = parts.io.into_inner();
            if parts.read_buf.is_empty() && !guarded.unread() {
                // Nothing unread: a plain close sends FIN, no reset; no lingering needed.
                drop(guarded);
                let _ = ask.send(Some(permit));
                return Ok(());
            }
            // A next request had begun: not idle after all (the ask goes unanswered).
            guarded.replay(parts.read_buf);
            activity.arrived();
            http = listener
                .http
                .serve_connection(TokioIo::new(guarded), parts.service);
        }
    }
}

/// Polls hyper until it closes the connection, or until an ask finds the connection idle;
/// then asks hyper to shut down gracefully, which closes at once only a connection with
/// nothing in flight (else it only keeps it from serving another request).
async fn drive<S>(
    http: &mut Connection<TokioIo<Guarded>, S>,
    place: &mut Place,
    activity: &Activity,
    closing: &mut watch::Receiver<bool>,
) -> Driven
where
    S: HttpService<hyper::body::Incoming, ResBody = Answered, Error = Infallible>,
{
    let mut draining = false;
    let ask = loop {
        tokio::select! {
            // hyper first: what it reads or answers decides whether the place is idle.
            biased;
            ended = &mut *http => return Driven::Closed(ended),
            () = closed(closing), if !draining => {
                draining = true;
                Pin::new(&mut *http).graceful_shutdown();
            }
            ask = place.ask(activity) => break ask,
        }
    };
    Pin::new(http).graceful_shutdown();
    Driven::Asked(ask)
}

/// Resolves once the listener is closing (or gone). Polled again at every wake-up of its
/// connection: a poll by the task already registered only looks whether the channel has
/// changed (a watch's wait registers anew at each poll, some 250 instructions).
async fn closed(closing: &mut watch::Receiver<bool>) {
    let mut seen = closing.clone();
    let mut wait = pin!(closing.wait_for(|closing| *closing));
    let mut registered: Option<Waker> = None;
    std::future::poll_fn(|cx| {
        let unchanged = matches!(seen.has_changed(), Ok(false));
        if unchanged && registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        seen.mark_unchanged();
        match wait.as_mut().poll(cx) {
            Poll::Ready(_) => Poll::Ready(()),
            Poll::Pending => {
                registered = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await;
}

/// A connection whose graceful shutdown was asked for, run until hyper has let go of it,
/// without shutting its socket down. hyper lets go at its first poll when nothing was in
/// flight: the ask is then handed back to be answered. Otherwise (an exchange that the
/// connection's activity did not show) the ask is declined at once, and hyper finishes the
/// exchange, which keeps nothing open after it.
async fn stopped<S>(http: Connection<TokioIo<Guarded>, S>, ask: Ask) -> Stopped<S>
where
    S: HttpService<hyper::body::Incoming, ResBody = Answered, Error = Infallible>,
{
    let mut stopping = pin!(http.without_shutdown());
    let first = std::future::poll_fn(|cx| Poll::Ready(stopping.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(Ok(parts)) => Stopped::Idle(parts, ask),
        Poll::Ready(Err(e)) => Stopped::Finished(Err(e)),
        Poll::Pending => {
            let _ = ask.send(None);
            let parts = match stopping.await {
                Ok(parts) => parts,
                Err(e) => return Stopped::Finished(Err(e)),
            };
            // Closed as hyper would have, with its lingering close.
            let _ = parts.io.into_inner().shutdown().await;
            Stopped::Finished(Ok(()))
        }
    }
}

/// The answer hyper wrote itself (in the envelope, see `io`), before closing, to a request
/// head it could not read.
fn answered_by_hyper(e: &hyper::Error) -> Option<Refusal> {
    if !e.is_parse() {
        return None;
    }
    let refusal = if !e.is_parse_too_large() {
        Refusal {
            outcome: "bad_request",
            status: StatusCode::BAD_REQUEST,
            code: Some(60002),
            error: io::BAD_HEAD,
        }
    } else if e.to_string().contains("URI") {
        Refusal {
            outcome: "header_too_large",
            status: StatusCode::URI_TOO_LONG,
            code: Some(60002),
            error: io::TARGET_TOO_LONG,
        }
    } else {
        Refusal {
            outcome: "header_too_large",
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            code: Some(60002),
            error: io::HEAD_TOO_LARGE,
        }
    };
    Some(refusal)
}
