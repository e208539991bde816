//! One origin's connections: at most `max` open at once, idle ones kept newest last, and the
//! attempts that find every connection busy waiting in arrival order.
//!
//! Every open connection holds a [`Slot`]; a slot given back (its connection closed or never
//! made) goes to the first waiter still waiting, as leave to dial, and an idle connection
//! checked in goes to the first waiter before it is kept. Nothing drops a slot while the
//! pool's lock is held: a slot's `Drop` takes the lock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A ready connection's request half.
pub(super) type Sender = SendRequest<Full<Bytes>>;

/// The pool-wide gauges: connections open and idle, and attempts waiting for one.
#[derive(Clone, Default)]
pub struct Gauges {
    /// Connections open (busy or idle), all origins.
    pub open: Gauge,
    /// Connections open and unused, all origins.
    pub idle: Gauge,
    /// Attempts waiting for a connection to come free, all origins.
    pub waiting: Gauge,
}

/// One origin's pool.
pub(super) struct Pool {
    max: usize,
    state: Mutex<State>,
    gauges: Gauges,
}

struct State {
    open: usize,
    idle: Vec<Idle>,
    waiters: VecDeque<oneshot::Sender<Grant>>,
}

/// An unused connection and when it was last used.
struct Idle {
    sender: Sender,
    slot: Slot,
    since: Instant,
}

/// What a waiter is handed: a slot, with an idle connection in it or leave to dial one.
struct Grant {
    slot: Slot,
    sender: Option<Sender>,
}

/// One of the pool's `max` places for an open connection; given back when dropped.
pub(super) struct Slot(Option<Arc<Pool>>);

/// What a checkout found.
pub(super) enum Checkout {
    /// An idle connection, with its slot.
    Ready(Sender, Slot),
    /// A slot to dial a new connection in.
    Dial(Slot),
}

impl Pool {
    pub(super) fn new(max: usize, gauges: Gauges) -> Arc<Pool> {
        Arc::new(Pool {
            max,
            state: Mutex::new(State {
                open: 0,
                idle: Vec::new(),
                waiters: VecDeque::new(),
            }),
            gauges,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle connection (newest first; closed or stale ones are closed on the way), else a
    /// slot to dial in, else a place in the queue until `until`. `None`: no connection came
    /// free in time.
    pub(super) async fn checkout(
        self: &Arc<Self>,
        idle_timeout: Duration,
        until: Instant,
    ) -> Option<Checkout> {
        let waiting = {
            let mut state = self.lock();
            let mut spare = None;
            while let Some(idle) = state.idle.pop() {
                self.gauges.idle.dec();
                if !idle.sender.is_closed() && idle.since.elapsed() < idle_timeout {
                    if let Some(slot) = spare {
                        state.forget(self, slot);
                    }
                    return Some(Checkout::Ready(idle.sender, idle.slot));
                }
                // Closed by Tencent or stale: its slot can dial a fresh one.
                if let Some(slot) = spare.replace(idle.slot) {
                    state.forget(self, slot);
                }
            }
            if let Some(slot) = spare {
                return Some(Checkout::Dial(slot));
            }
            state.waiters.retain(|waiter| !waiter.is_closed());
            if state.open < self.max && state.waiters.is_empty() {
                return Some(Checkout::Dial(state.new_slot(self)));
            }
            let (tx, rx) = oneshot::channel();
            state.waiters.push_back(tx);
            rx
        };
        let counted = Waiting::new(&self.gauges.waiting);
        let granted = tokio::time::timeout_at(until, waiting).await;
        drop(counted);
        // A grant sent as the wait timed out is dropped with the receiver: its slot goes back.
        let grant = granted.ok()?.ok()?;
        Some(match grant.sender {
            Some(sender) if !sender.is_closed() => Checkout::Ready(sender, grant.slot),
            _ => Checkout::Dial(grant.slot),
        })
    }

    /// The newest idle connection, if it is ready now and nobody waits for one (closed or
    /// stale ones are closed on the way), with when it was last used.
    pub(super) fn try_checkout(
        self: &Arc<Self>,
        idle_timeout: Duration,
    ) -> Option<(Sender, Slot, Instant)> {
        let mut state = self.lock();
        state.waiters.retain(|waiter| !waiter.is_closed());
        if !state.waiters.is_empty() {
            return None;
        }
        while let Some(idle) = state.idle.pop() {
            if idle.sender.is_closed() || idle.since.elapsed() >= idle_timeout {
                self.gauges.idle.dec();
                drop(idle.sender);
                state.forget(self, idle.slot);
                continue;
            }
            if !idle.sender.is_ready() {
                // Still seeing its last answer through: not ready at once.
                state.idle.push(idle);
                return None;
            }
            self.gauges.idle.dec();
            return Some((idle.sender, idle.slot, idle.since));
        }
        None
    }

    /// A connection whose exchange completed: to the first waiter, else kept idle.
    pub(super) fn checkin(self: &Arc<Self>, sender: Sender, slot: Slot) {
        self.checkin_unused(sender, slot, Instant::now());
    }

    /// `checkin` of a connection last used at `since` (one taken and given back unused keeps
    /// its idle time, so the idle timeout still closes it).
    pub(super) fn checkin_unused(self: &Arc<Self>, sender: Sender, slot: Slot, since: Instant) {
        let mut state = self.lock();
        if sender.is_closed() {
            state.forget(self, slot);
            return;
        }
        let mut grant = Grant {
            slot,
            sender: Some(sender),
        };
        while let Some(waiter) = state.waiters.pop_front() {
            match waiter.send(grant) {
                Ok(()) => return,
                Err(back) => grant = back,
            }
        }
        let Grant { slot, sender } = grant;
        if let Some(sender) = sender {
            self.gauges.idle.inc();
            state.idle.push(Idle {
                sender,
                slot,
                since,
            });
        }
    }

    /// Closes the idle connections unused for `idle_timeout` or closed by the other side.
    pub(super) fn sweep(self: &Arc<Self>, idle_timeout: Duration) {
        let mut state = self.lock();
        let mut kept = Vec::with_capacity(state.idle.len());
        for idle in std::mem::take(&mut state.idle) {
            if !idle.sender.is_closed() && idle.since.elapsed() < idle_timeout {
                kept.push(idle);
            } else {
                self.gauges.idle.dec();
                // Dropping the request half makes hyper close the connection.
                drop(idle.sender);
                state.forget(self, idle.slot);
            }
        }
        state.idle = kept;
    }

    /// Connections open now (for tests and the bench).
    pub(super) fn open(&self) -> usize {
        self.lock().open
    }
}

impl State {
    fn new_slot(&mut self, pool: &Arc<Pool>) -> Slot {
        self.open += 1;
        pool.gauges.open.inc();
        Slot(Some(pool.clone()))
    }

    /// Gives `slot` back under the lock, without its `Drop`, and hands the place to the
    /// first waiter.
    fn forget(&mut self, pool: &Arc<Pool>, mut slot: Slot) {
        slot.0 = None;
        self.released(pool);
    }

    fn released(&mut self, pool: &Arc<Pool>) {
        self.open -= 1;
        pool.gauges.open.dec();
        while self.open < pool.max {
            let Some(waiter) = self.waiters.pop_front() else {
                return;
            };
            let grant = Grant {
                slot: self.new_slot(pool),
                sender: None,
            };
            let Err(unsent) = waiter.send(grant) else {
                return;
            };
            // That waiter had given up: take the place back and try the next.
            let mut slot = unsent.slot;
            slot.0 = None;
            self.open -= 1;
            pool.gauges.open.dec();
        }
    }
}

/// Counts one waiter while it lives (also when the waiting caller hangs up).
struct Waiting<'a>(&'a Gauge);

impl<'a> Waiting<'a> {
    fn new(gauge: &'a Gauge) -> Waiting<'a> {
        gauge.inc();
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            pool.lock().released(&pool);
        }
    }
}
