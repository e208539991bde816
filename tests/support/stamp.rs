//! Arrival times as the kernel saw them.
//!
//! A recording upstream that timestamps a request when its handler runs measures its own
//! runtime as much as timgate: on two shared cores a read can wait tens of milliseconds,
//! then a backlog of requests is stamped at once, and a second that holds exactly the limit
//! at the wire shows more at the recorder. `SO_TIMESTAMPNS` has the kernel stamp each
//! segment as it is queued to the socket; on loopback that is within the sender's `write`,
//! so the stamp is when timgate's bytes reached the upstream, whatever the test's runtime
//! does afterwards.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A TCP stream that notes the kernel's arrival stamp of the first bytes read since the
/// last [`Arrivals::take`].
pub struct Stamped {
    stream: TcpStream,
    arrivals: Arrivals,
}

/// The earliest arrival not yet taken, shared with the connection's request handler.
#[derive(Clone, Default)]
pub struct Arrivals(Arc<Mutex<Option<SystemTime>>>);

impl Arrivals {
    /// When the bytes read since the last call arrived, as an `Instant` (now when nothing was
    /// stamped). HTTP/1 callers send a request only after the answer before it, so what was
    /// read since the last request is this request.
    pub fn take(&self) -> Instant {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let Some(arrived) = self.0.lock().unwrap().take() else {
            return now;
        };
        let ago = wall.duration_since(arrived).unwrap_or(Duration::ZERO);
        now.checked_sub(ago).unwrap_or(now)
    }

    fn note(&self, stamp: SystemTime) {
        self.0.lock().unwrap().get_or_insert(stamp);
    }
}

impl Stamped {
    /// Asks the kernel to stamp what arrives on `stream` from now on.
    pub fn new(stream: TcpStream) -> io::Result<(Stamped, Arrivals)> {
        setsockopt(&stream, sockopt::ReceiveTimestampns, &true)?;
        let arrivals = Arrivals::default();
        let stamped = Stamped {
            stream,
            arrivals: arrivals.clone(),
        };
        Ok((stamped, arrivals))
    }
}

/// One `recvmsg` into `into`: the bytes read and the stamp of the segment they came in.
fn receive(stream: &TcpStream, into: &mut [u8]) -> io::Result<(usize, Option<SystemTime>)> {
    let mut space = nix::cmsg_space!(TimeSpec);
    let mut iov = [IoSliceMut::new(into)];
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(space.as_mut_slice()),
        MsgFlags::empty(),
    )?;
    let stamp = msg.cmsgs()?.find_map(|message| match message {
        ControlMessageOwned::ScmTimestampns(at) => Some(
            UNIX_EPOCH
                + Duration::new(
                    u64::try_from(at.tv_sec()).unwrap_or(0),
                    u32::try_from(at.tv_nsec()).unwrap_or(0),
                ),
        ),
        _ => None,
    });
    Ok((msg.bytes, stamp))
}

impl AsyncRead for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.stream.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match this
                .stream
                .try_io(Interest::READABLE, || receive(&this.stream, unfilled))
            {
                Ok((n, stamp)) => {
                    if let (true, Some(stamp)) = (n > 0, stamp) {
                        this.arrivals.note(stamp);
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
