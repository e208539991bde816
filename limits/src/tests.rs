//! The limiter on this replica alone, on a paused clock: every limit in every second, FIFO,
//! bounded waits, closing, slowing down, quotas and keyed lanes.

use super::*;
use crate::keyed::{Keyed, SETS, WAYS};
use crate::lane::{Lane, guard};
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::time::Duration;
use tokio::time::Instant;

const ROOM_LIST: &str = "/v4/live_engine_http_srv/get_room_list";
const SEND: &str = "/v4/openim/sendmsg";

/// A limiter and the lanes of apps 1 and 2, each limited to `rate_limit`.
struct Local {
    limiter: Limiter,
    apps: HashMap<u64, Lanes>,
}

impl Local {
    async fn acquire(&self, app: u64, api: &str, max_wait: Duration) -> Result<(), Throttled> {
        self.apps[&app].acquire(api, max_wait).await
    }

    fn slow_down(&self, app: u64, api: &str, scope: Scope) {
        self.apps[&app].slow_down(api, scope);
    }

    fn waiting(&self) -> usize {
        self.limiter.waiting()
    }
}

fn local(rate_limit: u32) -> Arc<Local> {
    let limiter = Limiter::default();
    let apps = [1, 2]
        .into_iter()
        .map(|id| (id, limiter.lanes(spec(id, rate_limit, &[]))))
        .collect();
    Arc::new(Local { limiter, apps })
}

/// App `sdkappid` at `rate_limit` calls a second, with Tencent's documented per-API
/// limits and quotas, and the calls limits `api_limits` (API name, limit) besides.
fn spec(sdkappid: u64, rate_limit: u32, api_limits: &[(&str, u32)]) -> AppSpec {
    let mut spec = AppSpec::new(sdkappid, NonZeroU32::new(rate_limit).unwrap());
    for (api, n) in api_limits {
        spec.api_limits
            .insert((*api).to_owned(), NonZeroU32::new(*n).unwrap());
    }
    spec
}

/// The API name (`service/command`) of a request path.
fn api(path: &str) -> String {
    path.trim_start_matches("/v4/").to_owned()
}

/// Starts `n` acquisitions in order, one after another, and returns their release times
/// in release order, tagged with their arrival index.
async fn burst(
    limiter: &Arc<Local>,
    app: u64,
    path: &str,
    n: usize,
    max_wait: Duration,
) -> Vec<(usize, Instant)> {
    let released = Arc::new(StdMutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (limiter, released, api) = (limiter.clone(), released.clone(), api(path));
        tasks.push(tokio::spawn(async move {
            if limiter.acquire(app, &api, max_wait).await.is_ok() {
                released.lock().unwrap().push((i, Instant::now()));
            }
        }));
        // Let task i take its place in line before task i + 1 arrives.
        tokio::task::yield_now().await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(released).unwrap().into_inner().unwrap()
}

/// The most releases in any window of one second (closed at both ends).
fn busiest_second(times: &[Instant]) -> usize {
    busiest_within(times, Duration::from_secs(1))
}

/// The most releases in any window of `window` (closed at both ends).
fn busiest_within(times: &[Instant], window: Duration) -> usize {
    let each: Vec<(Instant, u32)> = times.iter().map(|at| (*at, 1)).collect();
    busiest_window(&each, window) as usize
}

#[tokio::test(start_paused = true)]
async fn closing_refuses_the_waiters_whose_turn_comes_after_it_before_their_turn() {
    // 10/s paced at 9.6/s: ten requests hold slots about 104 ms apart, up to ~0.94 s.
    let limiter = local(10);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let limiter = limiter.clone();
        tasks.push(tokio::spawn(async move {
            let answer = limiter.acquire(1, &api(SEND), Duration::from_secs(5)).await;
            (answer, Instant::now())
        }));
        tokio::task::yield_now().await;
    }
    let closed = Instant::now();
    limiter
        .limiter
        .close_at(closed + Duration::from_millis(300));
    let mut granted = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (Ok(()), at) => granted.push(at),
            (Err(throttled), at) => {
                // Each waits first in sendmsg's own 200/s lane (one slot of ~5.2 ms per
                // request ahead, under 50 ms for ten), whose slots all come before the
                // closing time; it is refused as soon as it reaches the app lane, whose
                // turn for it would come after the closing time — never at that turn.
                assert!(
                    at - closed < Duration::from_millis(50),
                    "refused before its turn, not at it: {:?}",
                    at - closed
                );
                assert!(at + throttled.retry_after > closed + Duration::from_millis(300));
            }
        }
    }
    // Slots at 0, 104, 208 ms come before the closing time; the other seven do not.
    assert_eq!(granted.len(), 3, "{granted:?}");
    assert!(
        granted
            .iter()
            .all(|at| *at <= closed + Duration::from_millis(300))
    );
    // A request arriving now is refused at once too: its turn would come later still.
    let late = limiter.acquire(1, &api(SEND), Duration::from_secs(5)).await;
    assert!(late.is_err());
    assert_eq!(limiter.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_burst_after_idle_never_exceeds_the_limit_in_any_second() {
    let limiter = local(200);
    let released = burst(&limiter, 1, SEND, 1000, Duration::from_secs(60)).await;
    let times: Vec<Instant> = released.iter().map(|(_, t)| *t).collect();
    assert_eq!(times.len(), 1000);
    assert!(busiest_second(&times) <= 200, "{}", busiest_second(&times));
    // Efficiency under sustained overload: at least 95% of the limit.
    let span = (*times.last().unwrap() - times[0]).as_secs_f64();
    let rate = 999.0 / span;
    assert!(rate >= 0.95 * 200.0, "released {rate:.1}/s");
}

#[tokio::test(start_paused = true)]
async fn the_guard_alone_never_admits_more_than_the_limit_in_a_second_and_its_spread() {
    // Sends as fast as the guard lets them, as if every paced wake-up came late at once.
    // A send may reach Tencent up to SPREAD after its admission, so the guard's window is
    // one second and SPREAD.
    for limit in [1, 2, 10, 33, 50, 100, 200, 1000] {
        let lane = Lane::new(Scope::App, std::num::NonZeroU32::new(limit).unwrap());
        let end = Instant::now() + Duration::from_secs(3);
        let mut times = Vec::new();
        while Instant::now() < end {
            guard(&[(&lane, NonZeroU32::MIN)], end + Duration::from_secs(60))
                .await
                .unwrap();
            times.push(Instant::now());
        }
        let spread = busiest_within(&times, Duration::from_secs(1) + SPREAD);
        assert!(spread <= limit as usize, "limit {limit}: {spread}");
        assert!(
            busiest_second(&times) >= (limit as usize * 96) / 100,
            "limit {limit}: too strict"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_lane_of_a_longer_period_keeps_its_limit_within_the_period_and_its_spread() {
    // 12,000 units a minute, calls of up to 500 units: the burst is raised to 500.
    let minute = Duration::from_secs(60);
    let (limit, largest) = (
        NonZeroU32::new(12_000).unwrap(),
        NonZeroU32::new(500).unwrap(),
    );
    let lane = Lane::of(Scope::App, limit, minute, largest);
    let end = Instant::now() + Duration::from_secs(150);
    let mut sent = Vec::new();
    while Instant::now() < end {
        guard(&[(&lane, largest)], end + Duration::from_secs(60))
            .await
            .unwrap();
        sent.push((Instant::now(), largest.get()));
    }
    assert!(busiest_window(&sent, minute + SPREAD) <= limit.get());
    assert!(busiest_window(&sent, minute) >= limit.get() * 95 / 100);
}

#[tokio::test(start_paused = true)]
async fn an_api_limit_holds_beside_the_app_limit() {
    let limiter = local(200);
    let released = burst(&limiter, 1, ROOM_LIST, 60, Duration::from_secs(60)).await;
    let times: Vec<Instant> = released.iter().map(|(_, t)| *t).collect();
    assert!(busiest_second(&times) <= 10, "{}", busiest_second(&times));
    let span = (*times.last().unwrap() - times[0]).as_secs_f64();
    assert!(59.0 / span >= 9.5, "released {:.2}/s", 59.0 / span);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_released_first_in_first_out() {
    let limiter = local(50);
    let released = burst(&limiter, 1, SEND, 200, Duration::from_secs(60)).await;
    let order: Vec<usize> = released.iter().map(|(i, _)| *i).collect();
    assert_eq!(order, (0..200).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_wait_predicted_too_long_is_refused_at_once() {
    let limiter = local(10);
    let max_wait = Duration::from_millis(250);
    // Three fit within 250 ms at 9.6/s (0, 104, 208 ms); the fourth is refused.
    let released = burst(&limiter, 1, SEND, 3, max_wait).await;
    assert_eq!(released.len(), 3);
    let before = Instant::now();
    let refused = limiter
        .acquire(1, &api(SEND), Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(Instant::now(), before, "refused without waiting");
    assert_eq!(refused.scope, Scope::App);
    assert!(
        refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(105)
    );

    let room_list = local(200);
    room_list
        .acquire(1, &api(ROOM_LIST), max_wait)
        .await
        .unwrap();
    let refused = room_list
        .acquire(1, &api(ROOM_LIST), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(refused.scope, Scope::Api);
}

#[tokio::test(start_paused = true)]
async fn saturating_one_app_does_not_slow_another() {
    let limiter = local(10);
    let busy = limiter.clone();
    let flood =
        tokio::spawn(async move { burst(&busy, 1, SEND, 50, Duration::from_secs(60)).await });
    for _ in 0..10_000 {
        if limiter.waiting() >= 45 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(limiter.waiting() >= 45);
    let before = Instant::now();
    limiter
        .acquire(2, &api(SEND), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(Instant::now(), before);
    assert_eq!(flood.await.unwrap().len(), 50);
    assert_eq!(limiter.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_leaves_gives_its_turn_back() {
    let limiter = local(10);
    let send = api(SEND);
    limiter.acquire(1, &send, Duration::ZERO).await.unwrap();
    let leaver = limiter.acquire(1, &send, Duration::from_secs(1));
    // Poll once so it takes its place, then drop it: it leaves the queue.
    let mut leaver = Box::pin(leaver);
    assert!(futures_poll_once(leaver.as_mut()).await.is_none());
    assert_eq!(limiter.waiting(), 1);
    drop(leaver);
    assert_eq!(limiter.waiting(), 0);
    // The next caller gets the slot the leaver had, ~104 ms after the first.
    let start = Instant::now();
    limiter
        .acquire(1, &send, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(Instant::now() - start <= Duration::from_millis(105));
}

#[tokio::test(start_paused = true)]
async fn tencents_rate_limit_answer_halves_the_pace_for_a_while() {
    let limiter = local(100);
    let send = api(SEND);
    limiter.slow_down(1, &send, Scope::App);
    let released = burst(&limiter, 1, SEND, 41, Duration::from_secs(60)).await;
    let span = released.last().unwrap().1 - released[0].1;
    // 40 intervals at half of 96/s take about 0.83 s instead of 0.42 s.
    assert!(span >= Duration::from_millis(800), "{span:?}");
}

/// Lanes of app 1 at `rate_limit`, with the calls limits `api_limits` besides.
fn app(rate_limit: u32, api_limits: &[(&str, u32)]) -> Lanes {
    Limiter::default().lanes(spec(1, rate_limit, api_limits))
}

/// Sends `measured` to `path` at each of `at` (in order), each waiting up to `max_wait`;
/// returns the send times of those that went.
async fn schedule(
    lanes: &Arc<Lanes>,
    path: &str,
    at: Vec<(Instant, Vec<Measured>)>,
    max_wait: Duration,
) -> Vec<Instant> {
    let tasks: Vec<_> = at
        .into_iter()
        .map(|(at, measured)| {
            let (lanes, api) = (lanes.clone(), api(path));
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let turn = lanes.turn(&api, &measured, max_wait).await.ok()?;
                turn.send_now().await.ok()?;
                Some(Instant::now())
            })
        })
        .collect();
    let mut sent = Vec::new();
    for task in tasks {
        sent.extend(task.await.unwrap());
    }
    sent
}

fn costing(cost: u32, key: Option<&str>) -> Vec<Measured> {
    vec![Measured {
        cost: NonZeroU32::new(cost).unwrap(),
        key: key.map(str::to_owned),
    }]
}

#[tokio::test(start_paused = true)]
async fn every_api_is_held_to_200_a_second_beside_a_larger_app_lane() {
    let lanes = Arc::new(app(1000, &[]));
    let now = Instant::now();
    let burst = (0..300).map(|_| (now, Vec::new())).collect();
    let sent = schedule(&lanes, SEND, burst, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 300);
    assert!(busiest_second(&sent) <= 200, "{}", busiest_second(&sent));
    // Another API is not held up by sendmsg's lane.
    // Another API is not held up by sendmsg's lane: only by the app's 1,000/s spacing.
    let before = Instant::now();
    lanes
        .acquire(&api("/v4/openim/querystate"), Duration::from_millis(5))
        .await
        .unwrap();
    assert!(Instant::now() - before <= Duration::from_millis(2));
    // A bought-up rate lifts it.
    let lanes = Arc::new(app(1000, &[("openim/sendmsg", 300)]));
    let now = Instant::now();
    let burst = (0..300).map(|_| (now, Vec::new())).collect();
    let sent = schedule(&lanes, SEND, burst, Duration::from_secs(10)).await;
    assert!(busiest_second(&sent) > 250, "{}", busiest_second(&sent));
}

/// The most units sent within any closed window of `period`.
fn busiest_window(sent: &[(Instant, u32)], period: Duration) -> u32 {
    let mut sent = sent.to_vec();
    sent.sort();
    let (mut start, mut units, mut most) = (0, 0, 0);
    for end in 0..sent.len() {
        units += sent[end].1;
        while sent[end].0 - sent[start].0 > period {
            units -= sent[start].1;
            start += 1;
        }
        most = most.max(units);
    }
    most
}

#[tokio::test(start_paused = true)]
async fn recipients_stay_within_12000_in_every_sliding_minute() {
    const BATCH: &str = "/v4/openim/batchsendmsg";
    let lanes = Arc::new(app(1000, &[]));
    let now = Instant::now();
    let calls = (0..40).map(|_| (now, costing(500, None))).collect();
    let sent = schedule(&lanes, BATCH, calls, Duration::from_secs(3600)).await;
    assert_eq!(sent.len(), 40);
    let units: Vec<(Instant, u32)> = sent.iter().map(|t| (*t, 500)).collect();
    let minute = Duration::from_secs(60);
    assert!(busiest_window(&units, minute) <= 12_000);
    // …and not far below it: 20,000 recipients go out within about 100 s.
    let span = *sent.iter().max().unwrap() - *sent.iter().min().unwrap();
    assert!(span <= Duration::from_secs(105), "{span:?}");
    // Right after, the next call's turn is 2.6 s away: past a 1 s wait, refused at once.
    let before = Instant::now();
    let refused = lanes
        .turn(&api(BATCH), &costing(500, None), Duration::from_secs(1))
        .await;
    assert!(refused.is_err());
    assert_eq!(Instant::now(), before);
}

#[tokio::test(start_paused = true)]
async fn a_busy_group_is_held_to_40_a_second_and_a_quiet_one_is_not_slowed() {
    const GROUP: &str = "/v4/group_open_http_svc/send_group_msg";
    let lanes = Arc::new(app(1000, &[]));
    let start = Instant::now();
    let every = |hz: u64, key: &'static str| {
        (0..3 * hz).map(move |i| {
            let at = start + Duration::from_micros(i * 1_000_000 / hz);
            (at, costing(1, Some(key)))
        })
    };
    let busy = schedule(
        &lanes,
        GROUP,
        every(100, "busy").collect(),
        Duration::from_secs(60),
    );
    let quiet = every(30, "quiet").collect::<Vec<_>>();
    let asked: Vec<Instant> = quiet.iter().map(|(at, _)| *at).collect();
    let quiet = schedule(&lanes, GROUP, quiet, Duration::from_secs(60));
    let (busy, quiet) = tokio::join!(busy, quiet);
    assert_eq!(busy.len(), 300);
    assert!(busiest_second(&busy) <= 40, "{}", busiest_second(&busy));
    assert_eq!(quiet.len(), 90);
    let mut quiet = quiet;
    quiet.sort();
    // The quiet group waits at most one slot of the API's 200/s lane and one of the
    // app's, which both groups share, never for the busy group's own lane.
    let shared = Duration::from_secs_f64(1.0 / 192.0 + 1.0 / 960.0);
    for (sent, asked) in quiet.iter().zip(&asked) {
        assert!(*sent - *asked <= shared, "{:?}", *sent - *asked);
    }
}

#[tokio::test(start_paused = true)]
async fn keyed_lanes_are_bounded_and_gone_once_idle() {
    let keyed = Keyed::new(
        Scope::Api,
        NonZeroU32::new(40).unwrap(),
        Duration::from_secs(1),
        NonZeroU32::MIN,
    );
    let now = Instant::now();
    // Lanes held by turns in flight: every set fills, further keys are refused.
    let held: Vec<Arc<Lane>> = (0..20_000)
        .filter_map(|i| keyed.lane(&format!("g{i}"), now).ok())
        .collect();
    assert_eq!(held.len(), SETS * WAYS);
    for lane in &held {
        lane.reserve(now, Duration::ZERO, NonZeroU32::MIN)
            .unwrap()
            .used();
    }
    assert_eq!(keyed.live(now), SETS * WAYS);
    // A key with a lane keeps it.
    assert!(Arc::ptr_eq(&keyed.lane("g0", now).unwrap(), &held[0]));
    drop(held);
    // Unheld but reserved ahead: not yet anyone else's.
    assert!(keyed.lane("late", now).is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(keyed.live(Instant::now()), 0);
    // Idle lanes are taken over by new keys, as fresh ones.
    for i in 0..500 {
        let lane = keyed.lane(&format!("h{i}"), Instant::now()).unwrap();
        assert!(lane.is_fresh(Instant::now()));
    }
}

async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match Pin::new(&mut future).poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}
