//! Which of a listener's connections are idle, longest-idle first, so that a caller who
//! arrives at the connection cap is served in the place of one of them (nginx closes idle
//! keep-alive connections to admit new ones the same way) rather than refused.
//!
//! A connection is idle from its accept until its first bytes arrive, and again from the
//! moment an answer has been handed whole to hyper until the next bytes or request: no
//! request in flight and none arriving ([`Activity`]). Each idle connection has one entry in
//! [`Idle`], keyed by when it became idle; an entry is added or removed only when its
//! connection's state changes, in O(log n), and there is at most one per open connection,
//! so the registry is bounded by the connection cap. Taking the longest-idle entry is only
//! an [`Ask`]: the connection answers it on its own task, where it knows whether anything
//! has arrived since, and hands over its place only if nothing has.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

/// A newcomer's ask that an idle connection close and hand over its place: answered with the
/// place, or with `None` (or not at all) when the connection turned out not to be idle.
pub(super) type Ask = oneshot::Sender<Option<OwnedSemaphorePermit>>;

/// A listener's idle connections, longest-idle first.
#[derive(Default)]
pub(super) struct Idle {
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    /// The key the next connection to become idle gets: later is larger.
    next: u64,
    by_age: BTreeMap<u64, oneshot::Sender<Ask>>,
}

impl Idle {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enters a connection that has just become idle with where its asks go: its key.
    fn enter(&self, asks: oneshot::Sender<Ask>) -> u64 {
        let mut waiting = self.lock();
        let key = waiting.next;
        waiting.next += 1;
        waiting.by_age.insert(key, asks);
        key
    }

    /// Takes a connection's entry out: its ask channel back, still unused, or `None` when an
    /// asker has taken it.
    fn leave(&self, key: u64) -> Option<oneshot::Sender<Ask>> {
        self.lock().by_age.remove(&key)
    }

    /// The longest-idle connection's ask channel, taken out of the registry.
    pub(super) fn longest(&self) -> Option<oneshot::Sender<Ask>> {
        self.lock().by_age.pop_first().map(|(_, asks)| asks)
    }

    /// How many connections are idle now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_age.len()
    }
}

/// Whether a connection has anything in flight. Busy from the moment bytes arrive or a
/// request reaches the handler until its answer has been handed whole to hyper (the
/// answer's body is dropped) and written out (a flush completed). Idle then means hyper has
/// finished the exchange: with keep-alive it waits for a next head, without it, it has
/// closed the connection in the same poll. A pipelined request whose first bytes came with
/// the previous one is not seen here; hyper's read buffer tells (see `connection`).
#[derive(Debug, Default)]
pub(super) struct Activity {
    busy: AtomicBool,
    writing: AtomicBool,
}

impl Activity {
    /// Bytes or a request arrived.
    pub(super) fn arrived(&self) {
        self.busy.store(true, Ordering::Relaxed);
    }

    /// The answer was handed to hyper whole.
    fn answered(&self) {
        self.busy.store(false, Ordering::Relaxed);
    }

    /// Bytes were written (or are waiting to be): not idle until they are flushed.
    pub(super) fn wrote(&self) {
        self.writing.store(true, Ordering::Relaxed);
    }

    /// A flush completed: everything written is out.
    pub(super) fn flushed(&self) {
        self.writing.store(false, Ordering::Relaxed);
    }

    /// Nothing in flight, arriving or being written, as far as this connection has seen.
    pub(super) fn is_idle(&self) -> bool {
        !self.busy.load(Ordering::Relaxed) && !self.writing.load(Ordering::Relaxed)
    }
}

/// One connection's entry in [`Idle`], kept in step with its [`Activity`]; leaves on drop.
pub(super) struct Place {
    idle: Arc<Idle>,
    entry: Entry,
}

/// Where a connection stands in the registry. Its ask channel is made once and kept while
/// no asker has taken it: a connection turns idle and busy again at every request.
enum Entry {
    /// Not in the registry, with no channel kept.
    Out,
    /// In the registry under `key`; asks arrive on `asked`.
    In {
        key: u64,
        asked: oneshot::Receiver<Ask>,
    },
    /// Out of the registry, holding both ends of a channel no asker has seen (the receiving
    /// end first: dropped first, it spares the task a wake-up from the sending end's drop).
    Kept {
        asked: oneshot::Receiver<Ask>,
        asks: oneshot::Sender<Ask>,
    },
}

impl Place {
    /// A connection not yet entered.
    pub(super) fn new(idle: Arc<Idle>) -> Place {
        Place {
            idle,
            entry: Entry::Out,
        }
    }

    /// Waits for an ask while `activity` says idle. Polled after every poll of the
    /// connection's I/O, so the entry follows each change of state: entered when the
    /// connection turns idle, removed (an ask already sent then goes unanswered, which the
    /// asker reads as "busy") when it turns busy.
    pub(super) fn ask<'a>(
        &'a mut self,
        activity: &'a Activity,
    ) -> impl Future<Output = Ask> + Send + 'a {
        std::future::poll_fn(move |cx| self.poll_ask(activity.is_idle(), cx))
    }

    fn poll_ask(&mut self, idle: bool, cx: &mut Context<'_>) -> Poll<Ask> {
        loop {
            match (&self.entry, idle) {
                (Entry::Out | Entry::Kept { .. }, true) => self.enter(),
                (Entry::In { .. }, false) => self.leave(),
                _ => {}
            }
            let Entry::In { asked, .. } = &mut self.entry else {
                return Poll::Pending;
            };
            // The asker took the entry out of the registry.
            let ask = std::task::ready!(Pin::new(asked).poll(cx));
            self.entry = Entry::Out;
            if let Ok(ask) = ask {
                return Poll::Ready(ask);
            }
        }
    }

    fn enter(&mut self) {
        let (asks, asked) = match std::mem::replace(&mut self.entry, Entry::Out) {
            Entry::Kept { asks, asked } => (asks, asked),
            Entry::Out | Entry::In { .. } => oneshot::channel(),
        };
        let key = self.idle.enter(asks);
        self.entry = Entry::In { key, asked };
    }

    fn leave(&mut self) {
        let Entry::In { key, asked } = std::mem::replace(&mut self.entry, Entry::Out) else {
            return;
        };
        // Taken by an asker: `asked` is dropped with whatever ask it holds, unanswered.
        if let Some(asks) = self.idle.leave(key) {
            self.entry = Entry::Kept { asks, asked };
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.leave();
    }
}

/// An answer's body that marks its connection answered once hyper has taken all of it.
pub(super) struct Answered {
    body: Full<Bytes>,
    activity: Arc<Activity>,
}

impl Answered {
    pub(super) fn new(body: Full<Bytes>, activity: Arc<Activity>) -> Answered {
        Answered { body, activity }
    }
}

impl Body for Answered {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Answered {
    fn drop(&mut self) {
        self.activity.answered();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop() -> Context<'static> {
        Context::from_waker(std::task::Waker::noop())
    }

    #[test]
    fn the_longest_idle_is_asked_first_and_a_busy_connection_is_not_asked() {
        let idle = Arc::new(Idle::default());
        let (first, second) = (Activity::default(), Activity::default());
        let (mut a, mut b) = (Place::new(idle.clone()), Place::new(idle.clone()));
        assert!(a.poll_ask(first.is_idle(), &mut noop()).is_pending());
        assert!(b.poll_ask(second.is_idle(), &mut noop()).is_pending());
        assert_eq!(idle.len(), 2);

        // `a` got a request: it leaves at its next poll, so `b` is the one asked.
        first.arrived();
        assert!(a.poll_ask(first.is_idle(), &mut noop()).is_pending());
        assert_eq!(idle.len(), 1);
        let (reply, _answer) = oneshot::channel();
        idle.longest().unwrap().send(reply).unwrap();
        assert!(b.poll_ask(second.is_idle(), &mut noop()).is_ready());
        assert!(idle.longest().is_none());

        // Answered, `a` is idle again; dropped, it is gone.
        first.answered();
        assert!(a.poll_ask(first.is_idle(), &mut noop()).is_pending());
        assert_eq!(idle.len(), 1);
        drop(a);
        assert_eq!(idle.len(), 0);
    }

    #[test]
    fn a_connection_idle_again_after_a_request_is_asked_as_before() {
        let idle = Arc::new(Idle::default());
        let activity = Activity::default();
        let mut place = Place::new(idle.clone());
        for _ in 0..3 {
            assert!(place.poll_ask(activity.is_idle(), &mut noop()).is_pending());
            activity.arrived();
            assert!(place.poll_ask(activity.is_idle(), &mut noop()).is_pending());
            assert_eq!(idle.len(), 0);
            activity.answered();
        }
        assert!(place.poll_ask(activity.is_idle(), &mut noop()).is_pending());
        let (reply, _answer) = oneshot::channel();
        idle.longest().unwrap().send(reply).unwrap();
        assert!(place.poll_ask(activity.is_idle(), &mut noop()).is_ready());
    }

    #[test]
    fn an_answer_is_not_idle_until_it_is_written_out() {
        let activity = Activity::default();
        activity.arrived();
        activity.wrote();
        activity.answered();
        assert!(!activity.is_idle(), "a write still waits for its flush");
        activity.flushed();
        assert!(activity.is_idle());
    }

    #[test]
    fn an_ask_sent_to_a_connection_that_turned_busy_goes_unanswered() {
        let idle = Arc::new(Idle::default());
        let activity = Activity::default();
        let mut place = Place::new(idle.clone());
        assert!(place.poll_ask(activity.is_idle(), &mut noop()).is_pending());
        let (reply, mut answer) = oneshot::channel();
        idle.longest().unwrap().send(reply).unwrap();
        activity.arrived();
        assert!(place.poll_ask(activity.is_idle(), &mut noop()).is_pending());
        assert!(matches!(
            answer.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
}
