//! Every timing constant of the limiter, local and fleet-wide, and the assertions that tie
//! them. Why each value keeps the limit is argued in `ARGUMENT.md`; the fleet's script has
//! the ones it uses written into its text from here ([`script`], `fleet::script`), so Rust
//! and Lua cannot disagree.

use std::time::Duration;

/// One second: the window every calls-a-second limit is counted over.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Share of the limit that pacing releases: the margin absorbs network jitter at Tencent.
pub const PACE: f64 = 0.96;
/// Share of the limit the send-time guard refills at; its burst makes up the rest of L.
pub const GUARD: f64 = 0.97;
/// How much the delays from admission to Tencent of a lane's sends may differ with the limit
/// still kept there: every guard (a local lane's, the fleet's in its script) admits at most
/// L units in any window of its period + `SPREAD`.
pub const SPREAD: Duration = Duration::from_millis(25);
/// A lane whose limit changed on reload: the guards' window after the switch, during which
/// the successor admits only what the old guard admits too (a raise) or nothing (a cut).
pub const TRANSITION: Duration = WINDOW.checked_add(SPREAD).expect("a second and SPREAD");
/// How long a lane runs at half pace after Tencent said it was too fast.
pub const SLOWDOWN: Duration = Duration::from_secs(2);
/// tokio's timer resolution: a shorter wait for a fleet turn is not slept.
pub const TICK: Duration = Duration::from_millis(1);

/// How often a replica beats (and, while cut off, probes Redis).
pub const BEAT: Duration = Duration::from_millis(200);
/// A member whose last live beat is older than this is counted as possibly in fallback.
pub const EXPIRY: Duration = Duration::from_millis(1000);
/// After Redis loses its state, how long its guard admits nothing.
pub const QUARANTINE: Duration = Duration::from_millis(1200);
/// How long a lapsed member's claim is kept in Redis.
pub const RETAIN: Duration = Duration::from_secs(600);
/// How long another process that still beats must hold this replica's member name before
/// this one renames: a process that is gone holds it at most `EXPIRY` past its last beat, and
/// the newcomer, refused meanwhile, takes the name at its first beat after that.
pub const HELD: Duration = Duration::from_secs(2);
/// Room for timer lateness and clock-rate differences in the waits of the fleet's argument.
pub const MARGIN: Duration = Duration::from_millis(100);
/// The oldest a fleet guard's admission may be when its answer arrives (the write follows
/// at once): asked at most this long ago, time in its batch's queue included. A slower
/// answer is not sent on.
pub const FRESH: Duration = Duration::from_millis(20);
/// What `SPREAD` leaves for the write itself after a `FRESH` admission.
pub const WRITE: Duration = Duration::from_millis(5);
/// The slowest heartbeat that brings a replica back to Redis: a round trip that leaves its
/// guards, queue included (up to about two round trips), within `FRESH`. Between the two a
/// replica stays where it is, rather than flap.
pub const BACK: Duration = Duration::from_millis(10);
/// How long a Redis call cut off by `timeout_ms` is followed to learn why it failed.
pub const FOLLOW: Duration = Duration::from_secs(2);
/// How long a lane's lowest limit stands in Redis after the last call that asked with it:
/// a larger limit takes over only then (a raise everywhere), not while replicas still ask
/// with both.
pub const LOWEST_STANDS: Duration = Duration::from_secs(5);
/// How long a lane's key outlives its state in Redis (past its last reservation and a
/// period, its state is a fresh lane's).
pub const KEEP: Duration = Duration::from_secs(10);

// Pacing runs below the guard's refill, so the guard bites only on jitter.
const _: () = assert!(0.0 < PACE && PACE < GUARD && GUARD < 1.0);
// A fresh admission and its write reach Tencent within the guard's allowance.
const _: () = assert!(FRESH.as_nanos() + WRITE.as_nanos() <= SPREAD.as_nanos());
// A replica comes back only when two round trips (a guard's queue and its call) fit in FRESH.
const _: () = assert!(2 * BACK.as_nanos() <= FRESH.as_nanos());
// A wait under a tick is not slept: a tick is far below what freshness allows.
const _: () = assert!(TICK.as_nanos() < BACK.as_nanos());
// A live member that misses one beat is not yet counted lapsed.
const _: () = assert!(2 * BEAT.as_nanos() <= EXPIRY.as_nanos());
// A fallback share is spent from `live_until` + WINDOW + MARGIN: no guard window
// (WINDOW + SPREAD) then holds both that send and an admission made while the share was
// still Redis's.
const _: () = assert!(SPREAD.as_nanos() < MARGIN.as_nanos());
// After lost state no guard window holds admissions of both the old and the new state.
const _: () = assert!(TRANSITION.as_nanos() < QUARANTINE.as_nanos());
// A restarted process is not renamed for the beats of its own predecessor, which is gone:
// the name is free a beat after EXPIRY, with a beat to spare.
const _: () = assert!(EXPIRY.as_nanos() + 2 * BEAT.as_nanos() <= HELD.as_nanos());
// A claim outlives the wait before its replica may spend it.
const _: () = assert!(EXPIRY.as_nanos() + MARGIN.as_nanos() < RETAIN.as_nanos());
// A lowered limit stands past the guard's whole transition.
const _: () = assert!(TRANSITION.as_nanos() < LOWEST_STANDS.as_nanos());

/// The fleet script's timing values, space-separated in the order its first line sets them
/// (`fleet::script`): heartbeat expiry (µs), epoch quarantine (µs), `PACE`, `GUARD`, `SPREAD`
/// (µs), `SLOWDOWN` (µs), `KEEP` (ms), `LOWEST_STANDS` (µs), `TICK` (µs). The replicas pass `EXPIRY` and
/// `QUARANTINE`; a test of the script alone may pass others.
pub fn script(expiry: Duration, quarantine: Duration) -> String {
    let micros = |d: Duration| d.as_micros();
    format!(
        "{} {} {PACE} {GUARD} {} {} {} {} {}",
        micros(expiry),
        micros(quarantine),
        micros(SPREAD),
        micros(SLOWDOWN),
        KEEP.as_millis(),
        micros(LOWEST_STANDS),
        micros(TICK),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_reads_the_timing_it_is_given() {
        let text = script(EXPIRY, QUARANTINE);
        let values: Vec<f64> = text.split(' ').map(|v| v.parse().unwrap()).collect();
        assert_eq!(
            values,
            [1e6, 1.2e6, PACE, GUARD, 25_000.0, 2e6, 10_000.0, 5e6, 1e3],
            "{text}"
        );
    }
}
