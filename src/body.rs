//! Request bodies: read into one buffer that grows with the data, within a per-request limit,
//! a deadline, and a budget of body bytes held across all connections at once.
//!
//! Memory is proportional to the bytes received, never to how they were framed: every frame
//! is copied into a single `BytesMut` and dropped, so a body sent as a million 1-byte chunks
//! costs what its million bytes cost. The buffer's *capacity* is what the budget counts; it is
//! reserved before the buffer grows, and returned when the `Held` permit is dropped. A body
//! that finds the budget spent is refused at once (503), not queued.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

/// The first allocation for a body of unknown length; it doubles as data arrives.
const FIRST_CHUNK: usize = 4 * 1024;

/// The bytes of request bodies that may be held at once, across all connections.
#[derive(Clone)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// A share of the budget; returned when dropped. Keep it as long as the body's bytes.
pub struct Held(Option<OwnedSemaphorePermit>);

impl Budget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Budget {
        Budget {
            bytes: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            total,
        }
    }

    /// Bytes not held by any body now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Takes `n` more bytes into `held`, or `Error::Overloaded` when the budget has no room.
    fn take(&self, held: &mut Held, n: usize) -> Result<(), Error> {
        let n = u32::try_from(n).map_err(|_| Error::Overloaded(self.total))?;
        if n == 0 {
            return Ok(());
        }
        let permit = self
            .bytes
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| Error::Overloaded(self.total))?;
        match &mut held.0 {
            Some(existing) => existing.merge(permit),
            None => held.0 = Some(permit),
        }
        Ok(())
    }
}

/// Reads the whole body, up to `limit` bytes and within `deadline`, its buffer paid for from
/// `budget`; an empty body becomes `{}`. The returned `Held` must live as long as the bytes.
pub async fn read(
    request: Request<Incoming>,
    limit: usize,
    deadline: Duration,
    budget: &Budget,
) -> Result<(Bytes, Held), Error> {
    let (body, held) = read_exact(request, limit, deadline, budget).await?;
    // Tencent refuses an empty body; `{}` is what every caller means by it.
    let body = if body.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        body
    };
    Ok((body, held))
}

/// `read`, with an empty body left empty.
pub async fn read_exact(
    request: Request<Incoming>,
    limit: usize,
    deadline: Duration,
    budget: &Budget,
) -> Result<(Bytes, Held), Error> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Error::BodyTooLarge(limit));
    }
    // A declared length is a promise, not bytes: the buffer still grows only as data comes.
    let expected = declared.map_or(limit, |n| n as usize);
    let reading = collect(request.into_body(), limit, expected, budget);
    let (body, held) = crate::deadline::within(deadline, reading)
        .await
        .map_err(|_| Error::BodyTimeout(deadline))??;
    Ok((body.freeze(), held))
}

/// Reads a whole answer `body` (a callback service's), up to `limit` bytes, paid for from
/// `budget` like a request body: what answers cost counts against the same bound, and is
/// proportional to their bytes, never to their framing. `declared` is its Content-Length.
pub async fn read_answer(
    body: Incoming,
    declared: Option<u64>,
    limit: usize,
    budget: &Budget,
) -> Result<(Bytes, Held), Error> {
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Error::BodyTooLarge(limit));
    }
    let expected = declared.map_or(limit, |n| n as usize);
    let (body, held) = collect(body, limit, expected, budget).await?;
    Ok((body.freeze(), held))
}

/// Copies every data frame into one buffer, growing it (and the budget share) by doubling,
/// never past `expected` (the declared length, else `limit`).
async fn collect(
    mut body: Incoming,
    limit: usize,
    expected: usize,
    budget: &Budget,
) -> Result<(BytesMut, Held), Error> {
    let mut held = Held(None);
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::BodyRead(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing Tencent reads
        };
        let needed = buffer.len() + data.len();
        if needed > limit {
            return Err(Error::BodyTooLarge(limit));
        }
        if needed > buffer.capacity() {
            let grown = needed
                .max(buffer.capacity() * 2)
                .max(FIRST_CHUNK)
                .min(expected.max(needed));
            budget.take(&mut held, grown - buffer.capacity())?;
            // A new exact allocation: `reserve` could round up past what the budget paid for.
            let mut larger = BytesMut::with_capacity(grown);
            larger.extend_from_slice(&buffer);
            buffer = larger;
        }
        buffer.extend_from_slice(&data);
    }
    Ok((buffer, held))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_returned_when_dropped() {
        let budget = Budget::new(100);
        let mut held = Held(None);
        budget.take(&mut held, 60).unwrap();
        budget.take(&mut held, 30).unwrap();
        assert_eq!(budget.available(), 10);
        assert!(matches!(
            budget.take(&mut Held(None), 11),
            Err(Error::Overloaded(100))
        ));
        drop(held);
        assert_eq!(budget.available(), 100);
    }
}
