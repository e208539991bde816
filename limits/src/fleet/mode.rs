//! Where this replica takes its turns, as a state machine without I/O.
//!
//! States: *shared* (in Redis), *leaving* (Redis lost; the fallback share may be spent from a
//! time on), *fallback* (on its own, at its share). Beside the mode it keeps what the moves
//! between them depend on: the clock offset to Redis and the last round trip, until when a
//! live beat already sent may keep the replica counted live, when Redis surely counted it
//! lapsed, until when its fallback sends still count, and when Redis last answered.
//!
//! Events, each one function taking the instants it happened at, and answering what the
//! caller must do (the I/O, metrics and logs stay with the caller, `Fleet`):
//! - [`Machine::failed`]: a call failed or timed out; shared → leaving.
//! - [`Machine::mode_at`]: time passed; leaving → fallback once its wait is over.
//! - [`Machine::beat_sent`]: a heartbeat goes out: live or not, and its deadlines.
//! - [`Machine::beat_answered`]: a heartbeat answered; leaving or fallback → shared when the
//!   round trip is within `BACK`.
//! - [`Machine::sent_on_fallback`]: a send on the fallback share.
//! - [`Guarding::answered`]: a send-time guard answered; two late answers in a row are a loss.
//!
//! The argument these moves keep is in the parent module's documentation.

use std::time::Duration;

use tokio::time::Instant;

use super::{BACK, EXPIRY, FRESH, HELD, MARGIN, RETAIN, WINDOW};

/// Where this replica takes its turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// In Redis.
    Shared,
    /// Redis is gone; its share may be spent from `until` on.
    Leaving { until: Instant },
    /// On its own, at its share.
    Fallback,
}

/// What a heartbeat about to be sent carries (`Machine::beat_sent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Beat {
    /// Live: this replica is in Redis and past its fallback sends' second.
    pub live: bool,
    /// The beat's deadline in Redis time (µs), once the clock offset is known.
    pub not_after: Option<i64>,
    /// Until when (Redis time, µs, late rather than early) this replica's fallback sends on
    /// lanes longer than a second still count.
    pub long_until: Option<i64>,
}

/// What a heartbeat's answer means (`Machine::beat_answered`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answered {
    /// Away from Redis and slower than `BACK`: stay away, and keep the claim and member
    /// count as they are.
    TooSlow(Duration),
    /// Counted: adopt the claim and member count it carries. `back`: this answer brought
    /// the replica back to Redis.
    Counted { back: bool },
}

/// The replica's mode and the times its moves depend on.
#[derive(Debug)]
pub(super) struct Machine {
    /// Our clock's origin for times sent to Redis.
    anchor: Instant,
    /// `timeout_ms`: the longest a call may take.
    timeout: Duration,
    mode: Mode,
    /// Upper bound of (Redis clock − our clock), µs, from the last beat.
    offset: Option<i64>,
    /// The last beat's round trip.
    round_trip: Duration,
    /// Until when a live beat already sent may keep us counted as live.
    live_until: Option<Instant>,
    /// When Redis surely counts this replica as lapsed, from the last loss of Redis on: a
    /// fallback share of a limit over period P may be spent from this + P + `MARGIN`.
    lapsed_at: Option<Instant>,
    /// Which loss of Redis the fallback lanes belong to: each loss starts them afresh.
    generation: u64,
    /// Until when sends made on the fallback share of a second's limit still count: the
    /// share goes back to the fleet only `MARGIN` after it.
    rejoin_after: Option<Instant>,
    /// Until when sends made on the fallback share of a longer period's quota still count:
    /// live beats tell Redis, which keeps the share off those lanes until then.
    long_until: Option<Instant>,
    /// The send time of the last call Redis answered.
    contact: Option<Instant>,
}

impl Machine {
    /// A replica that has not reached Redis yet: shared, without a clock offset.
    pub(super) fn new(anchor: Instant, timeout: Duration) -> Machine {
        Machine {
            anchor,
            timeout,
            mode: Mode::Shared,
            offset: None,
            round_trip: Duration::ZERO,
            live_until: None,
            lapsed_at: None,
            generation: 0,
            rejoin_after: None,
            long_until: None,
            contact: None,
        }
    }

    /// The mode at `now`, moving from leaving to fallback when its wait is over. `true`:
    /// this call made that move (the share is spent from now on).
    pub(super) fn mode_at(&mut self, now: Instant) -> (Mode, bool) {
        if let Mode::Leaving { until } = self.mode
            && now >= until
        {
            self.mode = Mode::Fallback;
            return (Mode::Fallback, true);
        }
        (self.mode, false)
    }

    /// Whether sends on the fallback share may be made now (the mode last seen).
    pub(super) fn in_fallback(&self) -> bool {
        self.mode == Mode::Fallback
    }

    /// A call failed or timed out at `now`: stop using Redis, and wait before spending the
    /// share until no second can hold both a fallback send and an admission made while the
    /// share still counted as Redis's. `Some(until)`: this call left Redis, and the share
    /// may be spent from `until`; `None`: it was away already.
    pub(super) fn failed(&mut self, now: Instant) -> Option<Instant> {
        if self.mode != Mode::Shared {
            return None;
        }
        let lapsed = self.live_until.unwrap_or(now).max(now);
        let until = lapsed + WINDOW + MARGIN;
        self.mode = Mode::Leaving { until };
        self.lapsed_at = Some(lapsed);
        self.generation += 1;
        Some(until)
    }

    /// Which loss of Redis the fallback lanes are for, and how long from `now` until a
    /// fallback share of a limit over `period` may be spent (zero: now).
    pub(super) fn fallback_period(&self, period: Duration, now: Instant) -> (u64, Duration) {
        let from = self
            .lapsed_at
            .map_or(now, |at| at + period.max(WINDOW) + MARGIN);
        (self.generation, from.saturating_duration_since(now))
    }

    /// A send on the fallback share at `now`, over lanes of these periods: it counts until
    /// a period after it (see `rejoin_after` and `long_until`).
    pub(super) fn sent_on_fallback(
        &mut self,
        periods: impl Iterator<Item = Duration>,
        now: Instant,
    ) {
        for period in periods {
            let until = if period > WINDOW {
                &mut self.long_until
            } else {
                &mut self.rejoin_after
            };
            *until = (*until).max(Some(now + period));
        }
    }

    /// Whether the claim is still kept in Redis at `now`: a replica cut off for longer than
    /// `RETAIN` has no share to spend.
    pub(super) fn retained(&self, now: Instant) -> bool {
        self.contact
            .is_none_or(|at| now.saturating_duration_since(at) + EXPIRY + MARGIN < RETAIN)
    }

    /// Whether a beat has given the clock offset a live beat needs.
    pub(super) fn has_offset(&self) -> bool {
        self.offset.is_some()
    }

    /// A heartbeat sent at `sent`: live while in Redis, with the offset known and the
    /// fallback sends' second past; a live one keeps the replica counted until `live_until`.
    pub(super) fn beat_sent(&mut self, sent: Instant) -> Beat {
        let rejoin = self.rejoin_after.is_none_or(|at| sent >= at + MARGIN);
        let live = self.mode == Mode::Shared && rejoin && self.offset.is_some();
        let not_after = self
            .offset
            .map(|offset| self.micros(sent + self.timeout) + offset);
        // In Redis time, late rather than early: `offset` is an upper bound.
        let long_until = match (self.long_until, self.offset) {
            (Some(until), Some(offset)) if until > sent => {
                Some(self.micros(until + MARGIN) + offset)
            }
            _ => None,
        };
        if live {
            let until = sent + self.timeout + self.round_trip + EXPIRY;
            self.live_until = Some(self.live_until.map_or(until, |u| u.max(until)));
        }
        Beat {
            live,
            not_after,
            long_until,
        }
    }

    /// A heartbeat sent at `sent` answered at `received`, Redis's clock then `redis_now`
    /// (µs). The offset (an upper bound however slow the answer) and the last contact are
    /// kept current either way. Away from Redis, an answer slower than `BACK` does not bring
    /// the replica back (its guards would come back too late to be sent on).
    pub(super) fn beat_answered(
        &mut self,
        sent: Instant,
        received: Instant,
        redis_now: i64,
    ) -> Answered {
        self.offset = Some(redis_now - self.micros(sent));
        self.round_trip = received.saturating_duration_since(sent);
        self.contact = Some(sent);
        if self.mode != Mode::Shared && self.round_trip > BACK {
            return Answered::TooSlow(self.round_trip);
        }
        let back = self.mode != Mode::Shared;
        self.mode = Mode::Shared;
        Answered::Counted { back }
    }

    fn micros(&self, at: Instant) -> i64 {
        at.saturating_duration_since(self.anchor).as_micros() as i64
    }
}

/// Whether this replica's member name is held by another process that still beats, and
/// since when: past `HELD`, that one is alive (a process that is gone stops holding a name
/// `EXPIRY` after its last beat), and this one must take another name.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Naming {
    /// The first beat refused in this run of refusals.
    held_since: Option<Instant>,
}

impl Naming {
    /// A beat was refused at `now`: `true` when the name has been held for `HELD`.
    pub(super) fn held(&mut self, now: Instant) -> bool {
        let since = *self.held_since.get_or_insert(now);
        now.saturating_duration_since(since) >= HELD
    }
}

/// Whether an admission asked at `asked` and answered at `answered` may be sent on: within
/// `FRESH`, so the write follows Redis's admission by less than `SPREAD`.
pub(super) fn fresh(asked: Instant, answered: Instant) -> bool {
    answered.saturating_duration_since(asked) <= FRESH
}

/// What a send-time guard's asker does with one answer (`Guarding::answered`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Guarded {
    /// Admitted, and fresh: send now.
    Send,
    /// Admitted too late to send on: ask again at once.
    Again,
    /// Not admitted yet: ask again after this wait.
    Wait(Duration),
    /// The second answer in a row that came too late: Redis is lost.
    Lost,
}

/// One send-time guard's asks, in a row.
#[derive(Debug, Default)]
pub(super) struct Guarding {
    /// The last answer came too late.
    stale: bool,
}

impl Guarding {
    /// The guard asked at `asked` answered at `answered` that its lanes admit after `wait`.
    pub(super) fn answered(
        &mut self,
        asked: Instant,
        answered: Instant,
        wait: Duration,
    ) -> Guarded {
        let late = !fresh(asked, answered);
        if late && self.stale {
            return Guarded::Lost;
        }
        self.stale = late;
        match (wait.is_zero(), late) {
            (true, false) => Guarded::Send,
            (true, true) => Guarded::Again,
            (false, _) => Guarded::Wait(wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(50);
    /// Redis's clock, µs, far from ours.
    const REDIS: i64 = 1_700_000_000_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A machine anchored at `t0`, whose first beat (sent at `t0`, answered 2 ms later with
    /// Redis's clock at `REDIS`) gave it the clock offset.
    fn joined(t0: Instant) -> Machine {
        let mut machine = Machine::new(t0, TIMEOUT);
        assert_eq!(
            machine.beat_answered(t0, t0 + ms(2), REDIS),
            Answered::Counted { back: false }
        );
        machine
    }

    #[test]
    fn a_new_replica_is_shared_but_beats_as_lapsed_until_it_knows_the_clock_offset() {
        let t0 = Instant::now();
        let mut machine = Machine::new(t0, TIMEOUT);
        assert_eq!(machine.mode_at(t0), (Mode::Shared, false));
        assert!(!machine.has_offset());
        let first = machine.beat_sent(t0);
        assert_eq!(
            first,
            Beat {
                live: false,
                not_after: None,
                long_until: None
            }
        );
        // Not live: it keeps nobody counted as live.
        assert_eq!(machine.live_until, None);
        // Redis answers with its clock 2 ms after the send: the offset maps our send time.
        machine.beat_answered(t0 + ms(100), t0 + ms(102), REDIS);
        assert!(machine.has_offset());
        let second = machine.beat_sent(t0 + ms(200));
        assert!(second.live);
        // Its deadline is its send time + timeout_ms in Redis time: REDIS is our t0 + 100 ms.
        assert_eq!(second.not_after, Some(REDIS + 150_000));
        // Counted live until the send + timeout + round trip + EXPIRY.
        assert_eq!(
            machine.live_until,
            Some(t0 + ms(200) + TIMEOUT + ms(2) + EXPIRY)
        );
    }

    #[test]
    fn a_failed_call_leaves_redis_and_waits_a_second_and_margin_past_the_last_live_beat() {
        let t0 = Instant::now();
        let mut machine = joined(t0);
        machine.beat_sent(t0 + ms(200));
        let live_until = t0 + ms(200) + TIMEOUT + ms(2) + EXPIRY;
        let failed = t0 + ms(300);
        let until = machine.failed(failed).expect("left Redis");
        assert_eq!(until, live_until + WINDOW + MARGIN);
        assert_eq!(machine.mode_at(failed), (Mode::Leaving { until }, false));
        assert_eq!(machine.generation, 1);
        // A second failure while away changes nothing: not a second loss.
        assert_eq!(machine.failed(failed + ms(10)), None);
        assert_eq!(machine.generation, 1);
        assert_eq!(machine.mode_at(failed + ms(10)).0, Mode::Leaving { until });
    }

    #[test]
    fn a_failure_long_after_the_last_live_beat_waits_from_the_failure() {
        let t0 = Instant::now();
        let mut machine = joined(t0);
        machine.beat_sent(t0);
        let failed = t0 + Duration::from_secs(5);
        assert_eq!(machine.failed(failed), Some(failed + WINDOW + MARGIN));
        // Never live at all: from the failure too.
        let mut new = Machine::new(t0, TIMEOUT);
        assert_eq!(new.failed(t0 + ms(7)), Some(t0 + ms(7) + WINDOW + MARGIN));
    }

    #[test]
    fn leaving_turns_to_fallback_once_its_wait_is_over_and_says_so_once() {
        let t0 = Instant::now();
        let mut machine = joined(t0);
        let until = machine.failed(t0).unwrap();
        assert!(!machine.in_fallback());
        assert_eq!(
            machine.mode_at(until - Duration::from_micros(1)),
            (Mode::Leaving { until }, false)
        );
        assert_eq!(machine.mode_at(until), (Mode::Fallback, true));
        assert!(machine.in_fallback());
        assert_eq!(machine.mode_at(until + ms(1)), (Mode::Fallback, false));
    }

    #[test]
    fn a_longer_periods_share_is_spent_a_period_after_redis_counted_the_replica_out() {
        let t0 = Instant::now();
        let mut machine = joined(t0);
        // Before any loss: at once, in generation 0.
        assert_eq!(
            machine.fallback_period(Duration::from_secs(60), t0),
            (0, Duration::ZERO)
        );
        let until = machine.failed(t0 + ms(10)).unwrap();
        let lapsed = t0 + ms(10);
        assert_eq!(until, lapsed + WINDOW + MARGIN);
        let minute = Duration::from_secs(60);
        assert_eq!(
            machine.fallback_period(minute, until),
            (1, lapsed + minute + MARGIN - until)
        );
        // A second's limit (or less) waits a second, like the mode.
        assert_eq!(machine.fallback_period(ms(500), until), (1, Duration::ZERO));
        assert_eq!(
            machine.fallback_period(minute, lapsed + minute + MARGIN),
            (1, Duration::ZERO)
        );
    }

    #[test]
    fn a_slow_heartbeat_does_not_bring_a_replica_back_but_keeps_the_offset_current() {
        let t0 = Instant::now();
        let mut machine = joined(t0);
        let until = machine.failed(t0).unwrap();
        machine.mode_at(until);
        let sent = until + ms(100);
        let slow = BACK + ms(1);
        assert_eq!(
            machine.beat_answered(sent, sent + slow, REDIS + 7_000_000),
            Answered::TooSlow(slow)
        );
        assert_eq!(machine.mode_at(sent + slow).0, Mode::Fallback);
        // The offset is the new one (an upper bound), and the contact is the send.
        let next = machine.beat_sent(sent + ms(200));
        assert!(!next.live, "away from Redis: not live");
        assert_eq!(next.not_after, Some(REDIS + 7_000_000 + 250_000));
        assert_eq!(machine.contact, Some(sent));
    }

    #[test]
    fn a_heartbeat_within_back_brings_a_replica_back_from_leaving_or_fallback() {
        let t0 = Instant::now();
        for spend in [false, true] {
            let mut machine = joined(t0);
            let until = machine.failed(t0).unwrap();
            if spend {
                assert_eq!(machine.mode_at(until).0, Mode::Fallback);
            }
            let sent = until + ms(5);
            assert_eq!(
                machine.beat_answered(sent, sent + BACK, REDIS),
                Answered::Counted { back: true }
            );
            assert_eq!(machine.mode_at(sent + BACK), (Mode::Shared, false));
            // Already back: the next answer is counted but brings nothing back.
            assert_eq!(
                machine.beat_answered(sent + ms(200), sent + ms(300), REDIS),
                Answered::Counted { back: false }
            );
        }
    }

    #[test]
    fn the_share_goes_back_only_a_second_and_margin_after_the_last_fallback_send() {
        let t0 = Instant::now();
        let mut machine = joined(t0);
        let until = machine.failed(t0).unwrap();
        machine.mode_at(until);
        let last = until + ms(400);
        machine.sent_on_fallback([WINDOW].into_iter(), until);
        machine.sent_on_fallback([WINDOW].into_iter(), last);
        machine.beat_answered(last + ms(1), last + ms(3), REDIS);
        // Back in Redis, but its beats stay lapsed until the fallback sends' second is over.
        let rejoin = last + WINDOW + MARGIN;
        assert!(!machine.beat_sent(rejoin - Duration::from_micros(1)).live);
        assert!(machine.beat_sent(rejoin).live);
        // An earlier send does not move it back.
        machine.sent_on_fallback([WINDOW].into_iter(), until);
        assert!(machine.beat_sent(rejoin).live);
    }

    #[test]
    fn sends_on_a_longer_periods_share_are_told_to_redis_until_their_period_is_over() {
        let t0 = Instant::now();
        let mut machine = joined(t0);
        let until = machine.failed(t0).unwrap();
        machine.mode_at(until);
        let minute = Duration::from_secs(60);
        let sent = until + ms(100);
        machine.sent_on_fallback([minute, WINDOW].into_iter(), sent);
        // Back, and live a second later: the live beat carries the minute's end.
        let back = sent + ms(10);
        machine.beat_answered(back, back + ms(2), REDIS);
        let offset = REDIS - machine.micros(back);
        let beat = machine.beat_sent(sent + Duration::from_secs(2));
        assert!(beat.live);
        assert_eq!(
            beat.long_until,
            Some(machine.micros(sent + minute + MARGIN) + offset)
        );
        // Once the minute is over, nothing more to tell.
        assert_eq!(machine.beat_sent(sent + minute).long_until, None);
    }

    #[test]
    fn a_claim_is_kept_while_redis_answered_within_retain() {
        let t0 = Instant::now();
        let mut machine = Machine::new(t0, TIMEOUT);
        assert!(machine.retained(t0 + RETAIN * 2), "never reached: kept");
        machine.beat_answered(t0, t0 + ms(1), REDIS);
        let edge = t0 + RETAIN - EXPIRY - MARGIN;
        assert!(machine.retained(edge - Duration::from_micros(1)));
        assert!(!machine.retained(edge));
    }

    #[test]
    fn a_name_held_by_another_process_is_given_up_only_after_held() {
        let t0 = Instant::now();
        let mut naming = Naming::default();
        assert!(!naming.held(t0));
        // A predecessor that is gone stops holding the name EXPIRY after its last beat: the
        // beats refused until then do not rename.
        assert!(!naming.held(t0 + EXPIRY + crate::timing::BEAT));
        assert!(!naming.held(t0 + HELD - Duration::from_micros(1)));
        assert!(naming.held(t0 + HELD));
        // A beat taken in between starts the count again.
        let mut naming = Naming::default();
        naming.held(t0);
        naming = Naming::default();
        assert!(!naming.held(t0 + HELD));
    }

    #[test]
    fn an_admission_is_fresh_within_fresh_of_its_ask() {
        let t0 = Instant::now();
        assert!(fresh(t0, t0 + FRESH));
        assert!(!fresh(t0, t0 + FRESH + Duration::from_micros(1)));
    }

    #[test]
    fn a_guard_sends_on_a_fresh_admission_asks_again_after_a_late_one_and_loses_redis_on_two() {
        let t0 = Instant::now();
        let late = FRESH + ms(1);
        let mut guarding = Guarding::default();
        assert_eq!(
            guarding.answered(t0, t0 + ms(1), Duration::ZERO),
            Guarded::Send
        );
        let mut guarding = Guarding::default();
        assert_eq!(
            guarding.answered(t0, t0 + late, Duration::ZERO),
            Guarded::Again
        );
        // A fresh one after a late one is sent on.
        assert_eq!(
            guarding.answered(t0, t0 + ms(1), Duration::ZERO),
            Guarded::Send
        );
        let mut guarding = Guarding::default();
        guarding.answered(t0, t0 + late, Duration::ZERO);
        assert_eq!(
            guarding.answered(t0, t0 + late, Duration::ZERO),
            Guarded::Lost
        );
        // A wait, late or not, is waited; two late in a row are a loss whatever they said.
        let mut guarding = Guarding::default();
        assert_eq!(
            guarding.answered(t0, t0 + ms(1), ms(3)),
            Guarded::Wait(ms(3))
        );
        assert_eq!(
            guarding.answered(t0, t0 + late, ms(3)),
            Guarded::Wait(ms(3))
        );
        assert_eq!(guarding.answered(t0, t0 + late, ms(3)), Guarded::Lost);
    }
}
