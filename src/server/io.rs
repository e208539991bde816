//! One accepted connection's bytes, as hyper sees them, with what hyper's HTTP/1 server
//! leaves out.
//!
//! - **Stalled writes time out**: a write or flush that makes no progress for
//!   `write_timeout` fails, so a caller that stops reading its answers cannot hold the
//!   connection (nginx's `send_timeout`); hyper has no write timeout of its own.
//! - **Lingering close**: closing sends FIN after the last answer, then reads and discards
//!   what the caller is still sending until it closes too, for at most `LINGER`. A caller
//!   that writes its whole (too large) body before reading sees its 413 instead of a reset.
//! - **An HTTP/2 preface gets an answer**: hyper's HTTP/1 parser closes such a connection
//!   without a word, so the first bytes are looked at here, and `PRI ` gets a 505.
//! - **hyper's own answers carry the envelope**: to a head it cannot read, hyper writes a
//!   bare 400, 414 or 431 with no body. Such an answer (a 4xx without `content-type`, which
//!   every answer timgate makes has) is written as the same status in Tencent's envelope,
//!   with `x-timgate-attempts: 0` like every answer timgate gives.
//! - **What arrives and leaves is seen**: each read that hands hyper bytes, and each write
//!   until its flush, marks the connection busy ([`Activity`]), and bytes hyper read but
//!   did not use can be handed back to be read again ([`Guarded::replay`]), so that an idle
//!   connection asked for its place is closed only when nothing of a next request has come.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::idle::Activity;

/// Longest a closing connection reads and discards what its caller still sends.
pub const LINGER: Duration = Duration::from_secs(2);

/// How an HTTP/2 connection with prior knowledge starts (RFC 9113 §3.4); 4 bytes decide.
const H2_START: &[u8; 4] = b"PRI ";

/// Reads per poll while lingering, so one fast sender cannot starve other tasks.
const LINGER_READS_PER_POLL: usize = 16;

/// The answer to an HTTP/2 preface, written before the connection closes.
pub(super) const HTTP2_REFUSAL: &[u8] = b"HTTP/1.1 505 HTTP Version Not Supported\r\n\
content-type: application/json\r\nconnection: close\r\nx-timgate-attempts: 0\r\n\
content-length: 93\r\n\r\n\
{\"ActionStatus\":\"FAIL\",\"ErrorCode\":60002,\"ErrorInfo\":\"HTTP/2 is not supported: use HTTP/1.1\"}";

/// What the envelope says for each answer hyper writes itself.
pub(super) const BAD_HEAD: &str = "the request head is not valid HTTP/1.1";
pub(super) const TARGET_TOO_LONG: &str = "the request target is too long";
pub(super) const HEAD_TOO_LARGE: &str = "the request head is larger than server.max_header_bytes";

/// A TCP connection with a write timeout, a lingering close and an HTTP/2 check.
pub struct Guarded {
    stream: TcpStream,
    /// Set once an HTTP/2 preface has been answered.
    http2_refused: Arc<AtomicBool>,
    write_timeout: Duration,
    /// Armed while a write makes no progress.
    stalled: Option<Pin<Box<Sleep>>>,
    start: Start,
    /// hyper's own bare answer, replaced by this one: the bytes and how many are written.
    replacing: Option<(Vec<u8>, usize)>,
    closing: Closing,
    /// Bytes read before, handed out again before anything new.
    replay: Bytes,
    /// Told of every read that hands out bytes.
    activity: Option<Arc<Activity>>,
}

/// What is known of the connection's first bytes.
enum Start {
    /// Fewer than 4 bytes read, all of them a prefix of `PRI `: held back from hyper.
    Sniffing { bytes: [u8; 4], len: usize },
    /// Not HTTP/2: `bytes[at..len]` are still to be handed to hyper.
    Replaying {
        bytes: [u8; 4],
        at: usize,
        len: usize,
    },
    /// Everything read was handed on; read straight from the socket.
    Passing,
    /// An HTTP/2 preface, answered: hyper sees the end of the stream.
    Refused,
}

enum Closing {
    Open,
    Lingering(Pin<Box<Sleep>>),
    Closed,
}

impl Guarded {
    /// Wraps an accepted connection.
    pub fn new(stream: TcpStream, write_timeout: Duration) -> Guarded {
        Guarded {
            stream,
            http2_refused: Arc::default(),
            write_timeout,
            stalled: None,
            start: Start::Sniffing {
                bytes: [0; 4],
                len: 0,
            },
            replacing: None,
            closing: Closing::Open,
            replay: Bytes::new(),
            activity: None,
        }
    }

    /// The same connection, telling `activity` of every read that hands out bytes.
    pub fn watched(self, activity: Arc<Activity>) -> Guarded {
        Guarded {
            activity: Some(activity),
            ..self
        }
    }

    /// Hands `bytes`, read before, out again ahead of anything new.
    pub fn replay(&mut self, bytes: Bytes) {
        self.replay = bytes;
    }

    /// Whether bytes have arrived that nothing has read yet (see [`unread`]).
    pub fn unread(&self) -> bool {
        unread(&self.stream)
    }

    /// Whether an HTTP/2 preface was answered 505, readable after the connection is gone.
    pub fn http2_refused(&self) -> Arc<AtomicBool> {
        self.http2_refused.clone()
    }

    /// Records a write's outcome: progress disarms the stall timer; no progress for
    /// `write_timeout` turns into an error.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.write_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the caller read nothing for the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Reads the first bytes until they decide whether this is HTTP/2. On a preface, answers
    /// 505 and reports end of stream to hyper, which then closes the connection.
    fn poll_sniff(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Start::Sniffing { mut bytes, len } = self.start {
            let mut next = ReadBuf::new(&mut bytes[len..]);
            ready!(Pin::new(&mut self.stream).poll_read(cx, &mut next))?;
            let read = next.filled().len();
            let len = len + read;
            let decided = read == 0 || bytes[..len] != H2_START[..len] || len == H2_START.len();
            self.start = if !decided {
                Start::Sniffing { bytes, len }
            } else if len == H2_START.len() && bytes == *H2_START {
                // A fresh connection's send buffer is empty: this small write completes.
                let _ = Pin::new(&mut self.stream).poll_write(cx, HTTP2_REFUSAL);
                self.http2_refused.store(true, Ordering::Relaxed);
                Start::Refused
            } else {
                Start::Replaying { bytes, at: 0, len }
            };
        }
        Poll::Ready(Ok(()))
    }

    /// Writes the envelope that replaces hyper's bare answer of `replaced` bytes; reports
    /// those bytes as written once the whole envelope is.
    fn poll_replacement(
        &mut self,
        cx: &mut Context<'_>,
        replaced: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            let Some((answer, at)) = &self.replacing else {
                return Poll::Ready(Ok(replaced));
            };
            if *at == answer.len() {
                self.replacing = None;
                return Poll::Ready(Ok(replaced));
            }
            let poll = Pin::new(&mut self.stream).poll_write(cx, &answer[*at..]);
            let n = ready!(self.watch(cx, poll))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if let Some((_, at)) = &mut self.replacing {
                *at += n;
            }
        }
    }

    /// After FIN: reads and drops what the caller still sends, until it closes, errs, or
    /// `LINGER` has passed.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Closing::Lingering(until) = &mut self.closing else {
            return Poll::Ready(());
        };
        if until.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let mut scratch = [0u8; 16 * 1024];
        for _ in 0..LINGER_READS_PER_POLL {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Tells the activity, if any, that bytes are being written.
    fn wrote(&self) {
        if let Some(activity) = &self.activity {
            activity.wrote();
        }
    }

    /// Reads what is to be handed to hyper next: bytes to replay, then the sniffed ones,
    /// then the socket's.
    fn poll_fill(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.replay.has_remaining() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay[..n]);
            self.replay.advance(n);
            if self.replay.is_empty() {
                // An emptied slice still holds hyper's old buffer.
                self.replay = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_sniff(cx))?;
        match &mut self.start {
            Start::Replaying { bytes, at, len } => {
                let n = (*len - *at).min(buf.remaining());
                buf.put_slice(&bytes[*at..*at + n]);
                *at += n;
                if at == len {
                    self.start = Start::Passing;
                    // The rest of what has arrived goes in the same read: handed the 4
                    // sniffed bytes alone, hyper reads again into a buffer that then holds
                    // a partial head, and so doubles it (16 KiB a connection, not 8). Only
                    // bytes are taken from this read; nothing yet, the end or an error is
                    // met again by the next one (an error at worst as the end).
                    let _ = Pin::new(&mut self.stream).poll_read(cx, buf);
                }
                Poll::Ready(Ok(()))
            }
            Start::Passing => Pin::new(&mut self.stream).poll_read(cx, buf),
            Start::Refused => Poll::Ready(Ok(())),
            Start::Sniffing { .. } => unreachable!("poll_sniff returns Ready only once decided"),
        }
    }
}

/// Whether bytes have arrived on `stream` that nothing has read yet. The kernel is asked
/// directly: the runtime learns of new bytes only at its next look.
pub fn unread(stream: &TcpStream) -> bool {
    use rustix::net::{RecvFlags, recv};
    let mut byte = [0u8; 1];
    let peeked = recv(stream, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT);
    matches!(peeked, Ok((_, n)) if n > 0)
}

/// The envelope answer for `written`, when it is hyper's own bare answer to a head it could
/// not read: `HTTP/1.1 400`, `414` or `431` with no `content-type`.
fn enveloped(written: &[u8]) -> Option<Vec<u8>> {
    let (status, info) = match written.get(..13)? {
        b"HTTP/1.1 400 " => ("400 Bad Request", BAD_HEAD),
        b"HTTP/1.1 414 " => ("414 URI Too Long", TARGET_TOO_LONG),
        b"HTTP/1.1 431 " => ("431 Request Header Fields Too Large", HEAD_TOO_LARGE),
        _ => return None,
    };
    let head_end = written
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(written.len());
    let typed = written[..head_end]
        .split(|b| *b == b'\n')
        .any(|line| line.len() >= 13 && line[..13].eq_ignore_ascii_case(b"content-type:"));
    if typed {
        return None;
    }
    let body = serde_json::json!({
        "ActionStatus": "FAIL",
        "ErrorCode": 60002,
        "ErrorInfo": info,
    })
    .to_string();
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n\
             x-timgate-attempts: 0\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = this.poll_fill(cx, buf);
        if buf.filled().len() > before
            && let Some(activity) = &this.activity
        {
            activity.arrived();
        }
        read
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.wrote();
        if this.replacing.is_none() {
            this.replacing = enveloped(buf).map(|answer| (answer, 0));
        }
        if this.replacing.is_some() {
            return this.poll_replacement(cx, buf.len());
        }
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.wrote();
        if this.replacing.is_none()
            && let Some(first) = bufs.iter().find(|b| !b.is_empty())
        {
            this.replacing = enveloped(first).map(|answer| (answer, 0));
        }
        if this.replacing.is_some() {
            return this.poll_replacement(cx, bufs.iter().map(|b| b.len()).sum());
        }
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        let flushed = this.watch(cx, poll);
        if let (Poll::Ready(Ok(())), Some(activity)) = (&flushed, &this.activity) {
            activity.flushed();
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Closing::Open = this.closing {
            let poll = Pin::new(&mut this.stream).poll_shutdown(cx);
            ready!(this.watch(cx, poll))?;
            this.closing = Closing::Lingering(Box::pin(tokio::time::sleep(LINGER)));
        }
        ready!(this.poll_linger(cx));
        this.closing = Closing::Closed;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_first_read_after_the_sniff_holds_the_whole_head() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut caller = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let head =
            b"POST /v4/openim/query_online_status HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n";
        caller.write_all(head).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        stream.readable().await.unwrap();
        let mut guarded = Guarded::new(stream, Duration::from_secs(1));
        let mut buf = vec![0u8; 8192];
        // One read, as hyper's first: all that has arrived, not the 4 bytes sniffed.
        let n = guarded.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], head);
    }

    #[test]
    fn only_hypers_bare_answers_are_enveloped() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let answer = String::from_utf8(enveloped(bare).unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("\r\nx-timgate-attempts: 0\r\n"), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["ErrorCode"], 60002);
        assert_eq!(body["ErrorInfo"], HEAD_TOO_LARGE);
        // Answers timgate made (Tencent's passed through included) and interim ones stay.
        let typed =
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\ncontent-length: 0\r\n\r\n";
        assert!(enveloped(typed).is_none());
        assert!(enveloped(b"HTTP/1.1 100 Continue\r\n\r\n").is_none());
        assert!(enveloped(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
    }
}
