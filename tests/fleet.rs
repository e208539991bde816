//! The fleet: several timgate processes sharing each limit through a real `redis-server`
//! (started here on a free port, without persistence), measured at a recording upstream
//! that counts every sliding second — and the limit kept while Redis is killed, restarted
//! or stalled.
//!
//! Without `redis-server` on PATH these tests say so loudly and pass, unless `CI` is set,
//! where they fail (`.ci/run` installs it).

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::fleet::{
    Post, Redis, SEND, SEND_BODY, addrs, arrivals, count_between, fleet_formed, offer, offer_each,
};
use support::{Caller, Process, Recorder, sample};
use tokio::time::Instant;

/// The tests that run gateway processes and count seconds take turns: on a small machine,
/// two of them at once would measure each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---- The script's answers, at fixed Redis times ----------------------------------------

/// Runs one op of the script at the fixed time `now` (µs), on lanes `lanes`.
async fn op(
    redis: &mut redis::aio::MultiplexedConnection,
    name: &str,
    now: i64,
    lanes: &[&str],
    args: &[String],
) -> redis::Value {
    // Expiry 1 s, no quarantine (the epoch is born at the first call).
    let text = timgate::limiter::fleet_script(Duration::from_secs(1), Duration::ZERO);
    let script = redis::Script::new(&text);
    let mut call = script.prepare_invoke();
    call.key("t:members").key("t:claims").key("t:epoch");
    for lane in lanes {
        call.key(*lane);
    }
    call.arg(name).arg(now);
    for arg in args {
        call.arg(arg);
    }
    call.invoke_async(redis).await.unwrap()
}

fn ints(value: redis::Value) -> Vec<i64> {
    redis::FromRedisValue::from_redis_value(value).unwrap()
}

/// A batch op's answer: its numbers packed in one string, 8 bytes little-endian each.
fn packed(value: redis::Value) -> Vec<i64> {
    let redis::Value::BulkString(bytes) = value else {
        panic!("not a string: {value:?}");
    };
    let (numbers, rest) = bytes.as_chunks::<8>();
    assert!(rest.is_empty(), "{} bytes", bytes.len());
    numbers.iter().map(|n| i64::from_le_bytes(*n)).collect()
}

async fn turn(
    redis: &mut redis::aio::MultiplexedConnection,
    now: i64,
    max_wait: i64,
    lanes: &[(&str, u32)],
) -> Vec<i64> {
    let keys: Vec<&str> = lanes.iter().map(|(k, _)| *k).collect();
    let mut args = vec![max_wait.to_string()];
    args.extend(lanes.iter().map(|(_, l)| l.to_string()));
    ints(op(redis, "turn", now, &keys, &args).await)
}

#[tokio::test]
async fn the_script_reserves_in_arrival_order_refuses_long_waits_and_takes_two_lanes_at_once() {
    let Some(server) = Redis::start() else { return };
    let mut redis = server.client().await;
    let t0 = 1_000_000_000_000;
    // Limit 10/s: pacing at 9.6/s, one slot every 104,167 µs.
    let interval = 104_167;
    for k in 0..3 {
        let answer = turn(&mut redis, t0, 250_000, &[("t:app", 10)]).await;
        assert_eq!(answer[0], 1, "one lane reserved: {answer:?}");
        assert_eq!(answer[1], k * interval, "FIFO slot {k}: {answer:?}");
    }
    // The fourth would wait 312,501 µs > 250,000: refused, with the wait, nothing reserved.
    let refused = turn(&mut redis, t0, 250_000, &[("t:app", 10)]).await;
    assert_eq!(refused, vec![-1, 3 * interval]);
    let later = turn(&mut redis, t0 + 3 * interval, 0, &[("t:app", 10)]).await;
    assert_eq!(later[..2], [1, 0]);

    // An API lane and its app lane, reserved in one call at one slot.
    let both = turn(
        &mut redis,
        t0,
        1_000_000,
        &[("t:api", 100), ("t:app2", 200)],
    )
    .await;
    assert_eq!(both[..2], [2, 0], "{both:?}");
    let again = turn(
        &mut redis,
        t0,
        1_000_000,
        &[("t:api", 100), ("t:app2", 200)],
    )
    .await;
    // The API lane (96/s) is the later one: 10,417 µs.
    assert_eq!(again[..2], [2, 10_417], "{again:?}");
    // The app lane alone is not held up by the API lane's slot beyond one interval...
    let app_only = turn(&mut redis, t0, 1_000_000, &[("t:app2", 200)]).await;
    assert_eq!(app_only[..2], [1, 10_417 + 5209], "{app_only:?}");
    // ...and an API far behind reserves only its own lane, the app lane follows later.
    for _ in 0..5 {
        turn(&mut redis, t0, 1_000_000, &[("t:api", 100)]).await;
    }
    let split = turn(
        &mut redis,
        t0,
        1_000_000,
        &[("t:api", 100), ("t:app2", 200)],
    )
    .await;
    assert_eq!(split[0], 1, "only the API lane: {split:?}");
    // A refusal names the lane at fault: the API lane, first.
    let refused = turn(&mut redis, t0, 0, &[("t:api", 100), ("t:app2", 200)]).await;
    assert_eq!(refused[0], -1, "{refused:?}");
}

#[tokio::test]
async fn the_script_takes_a_slot_back_from_a_caller_who_left_and_slows_a_lane_for_everyone() {
    let Some(server) = Redis::start() else { return };
    let mut redis = server.client().await;
    let t0 = 3_000_000_000_000;
    let interval = 104_167;
    let first = turn(&mut redis, t0, 1_000_000, &[("r:app", 10)]).await;
    let second = turn(&mut redis, t0, 1_000_000, &[("r:app", 10)]).await;
    assert_eq!(second[..2], [1, interval]);
    // The second caller hangs up while waiting: its slot, still the last, is given back.
    let release = |r: &[i64]| vec![r[2].to_string(), r[3].to_string()];
    op(&mut redis, "release", t0, &["r:app"], &release(&second)).await;
    let third = turn(&mut redis, t0, 1_000_000, &[("r:app", 10)]).await;
    assert_eq!(
        third[1], interval,
        "the slot given back is the next one: {third:?}"
    );
    // A slot no longer the last cannot be given back: the ones after it keep their places.
    op(&mut redis, "release", t0, &["r:app"], &release(&first)).await;
    let fourth = turn(&mut redis, t0, 1_000_000, &[("r:app", 10)]).await;
    assert_eq!(fourth[1], 2 * interval, "{fourth:?}");

    // Tencent said too fast (60011): the lane, which every replica reserves in, moves to
    // half pace for a while, starting two intervals out.
    op(&mut redis, "slow", t0, &["s:app"], &["10".into()]).await;
    let a = turn(&mut redis, t0, 10_000_000, &[("s:app", 10)]).await;
    let b = turn(&mut redis, t0, 10_000_000, &[("s:app", 10)]).await;
    assert_eq!([a[1], b[1]], [2 * interval, 4 * interval]);
    // Two seconds later the pace is back to normal.
    let later = t0 + 3_000_000;
    let c = turn(&mut redis, later, 10_000_000, &[("s:app", 10)]).await;
    let d = turn(&mut redis, later, 10_000_000, &[("s:app", 10)]).await;
    assert_eq!([c[1], d[1]], [0, interval]);
}

#[tokio::test]
async fn the_scripts_guard_admits_the_limit_in_any_second_and_lapsed_claims_are_subtracted() {
    let Some(server) = Redis::start() else { return };
    let mut redis = server.client().await;
    let t0 = 2_000_000_000_000;
    // As fast as the guard admits, 1 ms apart, for 3 s: never more than 200 in a second.
    let mut admitted = Vec::new();
    let mut now = t0;
    while now < t0 + 3_000_000 {
        let wait: i64 = redis::FromRedisValue::from_redis_value(
            op(&mut redis, "guard", now, &["g:app"], &["200".into()]).await,
        )
        .unwrap();
        if wait == 0 {
            admitted.push(now);
        }
        now += 1000;
    }
    // Nor more than 200 in any 1.025 s, so sends that reach Tencent up to 25 ms apart from
    // their admission still make at most 200 in any second.
    let busiest = support::busiest_units(&ones(&admitted), 1_025_000);
    assert!((194..=200).contains(&busiest), "busiest 1.025 s {busiest}");

    // A member that beat once with a third of the limit, then lapsed: the lane has 200 − 66.
    let beat = ints(
        op(
            &mut redis,
            "beat",
            t0,
            &[],
            &[
                "m1".into(),
                "0".into(),
                "333333".into(),
                "1".into(),
                String::new(),
                "600000000".into(),
                String::new(),
                "a".into(),
            ],
        )
        .await,
    );
    assert_eq!(
        beat[0], 333_333,
        "claim granted from a free ledger: {beat:?}"
    );
    let other = ints(
        op(
            &mut redis,
            "beat",
            t0,
            &[],
            &[
                "m2".into(),
                "0".into(),
                "1000000".into(),
                "1".into(),
                String::new(),
                "600000000".into(),
                String::new(),
                "b".into(),
            ],
        )
        .await,
    );
    assert_eq!(other[0], 666_667, "never more than what is free: {other:?}");
    let lapsed = t0 + 1_500_000;
    let slot = turn(&mut redis, lapsed, 10_000_000, &[("g:fresh", 200)]).await;
    let next = turn(&mut redis, lapsed, 10_000_000, &[("g:fresh", 200)]).await;
    // Both lapsed: 200 − 66 − 133 = 1 left, paced at 0.96/s.
    assert_eq!(slot[1], 0);
    assert_eq!(next[1], 1_041_667, "{next:?}");
    // A beat that arrives after its deadline is ignored.
    let late = ints(
        op(
            &mut redis,
            "beat",
            lapsed,
            &[],
            &[
                "m1".into(),
                "0".into(),
                "333333".into(),
                "1".into(),
                (lapsed - 1).to_string(),
                "600000000".into(),
                String::new(),
                "a".into(),
            ],
        )
        .await,
    );
    assert_eq!(late[0], -1);
}

/// One ask of a batch: its longest wait, and each lane's key and spec.
type BatchAsk = (i64, Vec<(String, String)>);

/// The asks of `batch_asks` for the lanes of prefix `p`.
fn batch_asks(p: &str) -> Vec<BatchAsk> {
    let lane = |name: &str, spec: &str| (format!("{p}:{name}"), spec.to_owned());
    let minute = "12000/60000000/500/500";
    vec![
        (1_000_000, vec![lane("app", "10")]),
        (1_000_000, vec![lane("api", "100"), lane("app", "10")]),
        (0, vec![lane("app", "10")]),
        (1_000_000, vec![lane("quota", minute), lane("app", "10")]),
        (1_000_000, vec![lane("app", "10")]),
        (1_000_000, vec![lane("api", "100"), lane("app", "10")]),
    ]
}

#[tokio::test]
async fn a_batch_answers_each_ask_as_its_own_call_at_that_time_would() {
    let Some(server) = Redis::start() else { return };
    let mut redis = server.client().await;
    let t0 = 5_000_000_000_000;
    // One call per ask, on lanes "one:…"; then all of them in one batch on lanes "all:…".
    let mut expected = Vec::new();
    for (max_wait, lanes) in batch_asks("one") {
        let keys: Vec<&str> = lanes.iter().map(|(k, _)| k.as_str()).collect();
        let mut args = vec![max_wait.to_string()];
        args.extend(lanes.iter().map(|(_, spec)| spec.clone()));
        let answer = ints(op(&mut redis, "turn", t0, &keys, &args).await);
        expected.push(answer.len() as i64);
        expected.extend(answer);
    }
    let (keys, args) = batch_call(&batch_asks("all"), Some(false));
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let batch = packed(op(&mut redis, "turns", t0, &keys, &args).await);
    assert_eq!(batch, expected);
    // The third was refused (a wait over 0) and reserved nothing; the quota's was taken.
    assert!(expected.contains(&-1), "{expected:?}");

    // The guard: twelve sends at once on a lane of 10/s (its burst admits a few), and one
    // on two lanes: the same admissions and waits, one call or twelve.
    let guards = |p: &str| {
        let mut asks = vec![(0, vec![(format!("{p}:g"), "10".to_owned())]); 12];
        asks.insert(
            3,
            (
                0,
                vec![
                    (format!("{p}:h"), "100".to_owned()),
                    (format!("{p}:g"), "10".to_owned()),
                ],
            ),
        );
        asks
    };
    let mut expected = Vec::new();
    for (_, lanes) in guards("one") {
        let keys: Vec<&str> = lanes.iter().map(|(k, _)| k.as_str()).collect();
        let specs: Vec<String> = lanes.iter().map(|(_, spec)| spec.clone()).collect();
        let wait: i64 = redis::FromRedisValue::from_redis_value(
            op(&mut redis, "guard", t0, &keys, &specs).await,
        )
        .unwrap();
        expected.extend([1, wait]);
    }
    let (keys, args) = batch_call(&guards("all"), None);
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let batch = packed(op(&mut redis, "guards", t0, &keys, &args).await);
    assert_eq!(batch, expected);
    assert!(expected.iter().skip(1).step_by(2).any(|&w| w == 0));
    assert!(expected.iter().skip(1).step_by(2).any(|&w| w > 0));
    // Turns that guard too (their requests hold a connection): a turn reserved on every lane
    // with a wait under a tick is followed by the guard at the same time, the others by -1.
    // The first ask finds its lane free; the next ones wait behind it.
    let mut expected = Vec::new();
    for (max_wait, lanes) in batch_asks("tg_one") {
        let keys: Vec<&str> = lanes.iter().map(|(k, _)| k.as_str()).collect();
        let mut args = vec![max_wait.to_string()];
        args.extend(lanes.iter().map(|(_, spec)| spec.clone()));
        let mut answer = ints(op(&mut redis, "turn", t0, &keys, &args).await);
        if answer[0] == lanes.len() as i64 && answer[1] < 1000 {
            let specs: Vec<String> = lanes.iter().map(|(_, spec)| spec.clone()).collect();
            let wait: i64 = redis::FromRedisValue::from_redis_value(
                op(&mut redis, "guard", t0, &keys, &specs).await,
            )
            .unwrap();
            answer.push(wait);
        } else {
            answer.push(-1);
        }
        expected.push(answer.len() as i64);
        expected.extend(answer);
    }
    let (keys, args) = batch_call(&batch_asks("tg_all"), Some(true));
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let batch = packed(op(&mut redis, "turns", t0, &keys, &args).await);
    assert_eq!(batch, expected);
    // The first ask was admitted with its turn (a trailing 0); a later one waited (-1).
    assert_eq!(
        &expected[..6],
        &[5, 1, 0, 0, expected[4], 0],
        "{expected:?}"
    );
    assert!(expected.contains(&-1), "{expected:?}");
    // And the lanes were left in the same state.
    for lane in ["app", "api", "quota", "g", "h"] {
        for (one, all) in [("one", "all"), ("tg_one", "tg_all")] {
            let mut state = Vec::new();
            for p in [one, all] {
                let fields: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
                    .arg(format!("{p}:{lane}"))
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                state.push(fields);
            }
            let guards_only = ["g", "h"].contains(&lane);
            assert!(
                !state[0].is_empty() || (one == "tg_one" && guards_only),
                "{one}:{lane}"
            );
            assert_eq!(state[0], state[1], "{one}:{lane}");
        }
    }
}

/// The keys and arguments of one `turns` (`guard_too` set: whether each turn guards too) or
/// `guards` call, as the script (`limits/src/fleet/script.lua`) reads them: how many entries,
/// then each entry's count of asks alike (those that follow each other are sent once), longest
/// wait and guard flag (turns), lane count, and per lane its index in KEYS (after the three
/// common keys) and spec.
fn batch_call(asks: &[BatchAsk], guard_too: Option<bool>) -> (Vec<String>, Vec<String>) {
    let mut keys: Vec<String> = Vec::new();
    let mut entries: Vec<(usize, &BatchAsk)> = Vec::new();
    for ask in asks {
        match entries.last_mut() {
            Some((alike, last)) if *last == ask => *alike += 1,
            _ => entries.push((1, ask)),
        }
    }
    let mut args = vec![entries.len().to_string()];
    for (alike, (max_wait, lanes)) in entries {
        args.push(alike.to_string());
        if let Some(guard_too) = guard_too {
            args.push(max_wait.to_string());
            args.push(if guard_too { "1" } else { "0" }.into());
        }
        args.push(lanes.len().to_string());
        for (key, spec) in lanes {
            if !keys.contains(key) {
                keys.push(key.clone());
            }
            let at = keys.iter().position(|k| k == key).unwrap();
            args.extend([(at + 4).to_string(), spec.clone()]);
        }
    }
    (keys, args)
}

/// A quota counted in units per minute (batchsendmsg's 12,000 recipients, 500 a call): the
/// guard holds any 60.025 s to 12,000 units however fast calls come, and, as the state of a
/// Redis seen for the first time could be one that lost the last minute's sends, admits
/// nothing for that minute first.
#[tokio::test]
async fn the_scripts_guard_keeps_a_per_minute_quota_in_units() {
    let Some(server) = Redis::start() else { return };
    let mut redis = server.client().await;
    let t0 = 4_000_000_000_000;
    let spec = "12000/60000000/500/500".to_owned();
    // A call of 500 recipients asked every 100 ms for 4 minutes.
    let mut admitted = Vec::new();
    let mut now = t0;
    while now < t0 + 240_000_000 {
        let wait: i64 = redis::FromRedisValue::from_redis_value(
            op(
                &mut redis,
                "guard",
                now,
                &["m:batch"],
                std::slice::from_ref(&spec),
            )
            .await,
        )
        .unwrap();
        if wait == 0 {
            admitted.push(now);
        }
        now += 100_000;
    }
    // The epoch was born at t0, with no quarantine asked: a minute lane waits out its minute.
    assert!(
        admitted[0] >= t0 + 59_000_000,
        "first at {}",
        admitted[0] - t0
    );
    let busiest = support::busiest_units(&ones(&admitted), 60_025_000) * 500;
    assert!(busiest <= 12_000, "{busiest} recipients in one minute");
    // ...and serves about the quota after: 3 minutes at ≥ 85% of 12,000.
    assert!(
        admitted.len() * 500 >= 3 * 10_200,
        "{} calls",
        admitted.len()
    );
}

// ---- Whole processes ---------------------------------------------------------------------

/// A gateway process sharing app 1's limit of 200/s in `redis`, sending to `upstream`.
async fn replica(redis: &Redis, upstream: &Recorder) -> Process {
    let config = format!(
        "[fleet]\nredis_url = \"{}\"\nkey_prefix = \"t{}\"\nreplicas = 3\ntimeout_ms = 50\n{}rate_limit = 200\nmax_queue_wait_ms = 1000\n",
        redis.url(),
        redis.port,
        support::one_app(1, &upstream.url()),
    );
    Process::start(&config, &[], std::process::Stdio::null()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_limit_of_200() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = Redis::start() else { return };
    let upstream = Recorder::ok().await;
    let replicas = [
        replica(&redis, &upstream).await,
        replica(&redis, &upstream).await,
        replica(&redis, &upstream).await,
    ];
    fleet_formed(&replicas, &Caller::default()).await;
    let start = Instant::now();
    let tally = offer_each(addrs(&replicas), Post::send(), 150, 5.0).await;
    let times = arrivals(&upstream);
    assert!(
        tally.other.is_empty(),
        "only 200 and 429: {:?}",
        tally.other
    );
    let probes = times.iter().filter(|t| **t < start).count();
    assert_eq!(
        tally.ok,
        times.len() - probes,
        "every 200 went upstream once"
    );
    assert_eq!(tally.throttled_without_retry_after, 0);
    assert!(tally.ok + tally.throttled >= 2200, "every request answered");
    let busiest = support::busiest_second(&times);
    assert!(busiest <= 200, "busiest second at the upstream: {busiest}");
    let served = count_between(&times, start, start + Duration::from_secs(5));
    // What this test holds the fleet to is the ceiling above. Paced at 192/s it serves 960
    // in 5 s on a quiet host. On a busy one a slot a starved replica misses is lost, and a
    // Redis call it makes past `timeout_ms` sends it to its share (~63/s) after a pause of
    // a second or more, again each time it comes back and loses Redis again. So the floor
    // only tells a fleet that serves from one that is stuck (paused, or refusing: nothing).
    assert!(served >= 400, "served {served} in 5 s: under 40% of 200/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_busy_replica_of_three_gets_the_whole_limit() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = Redis::start() else { return };
    let upstream = Recorder::ok().await;
    let replicas = [
        replica(&redis, &upstream).await,
        replica(&redis, &upstream).await,
        replica(&redis, &upstream).await,
    ];
    fleet_formed(&replicas, &Caller::default()).await;
    let start = Instant::now();
    offer(replicas[0].addr, Post::send(), 250, 4.0).await;
    let times = arrivals(&upstream);
    assert!(support::busiest_second(&times) <= 200);
    let served = count_between(&times, start, start + Duration::from_secs(4));
    // A static split would give this replica 66/s (264 in 4 s); it gets the fleet's 200/s,
    // paced at 192/s: 768 in 4 s on a quiet machine. A slot the replica cannot use when it
    // comes (a starved process) is lost, as it must be, so the bound leaves room for a busy
    // host: 80% of 200/s, still about 2.4 times the static split.
    assert!(served >= 640, "served {served} in 4 s: under 80% of 200/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_while_redis_is_killed_and_restarted() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let upstream = Recorder::ok().await;
    let replicas = [
        replica(&redis, &upstream).await,
        replica(&redis, &upstream).await,
        replica(&redis, &upstream).await,
    ];
    fleet_formed(&replicas, &Caller::default()).await;
    let load = tokio::spawn(offer_each(addrs(&replicas), Post::send(), 150, 10.0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    redis.restart();
    let back = Instant::now();
    let tally = load.await.unwrap();
    let times = arrivals(&upstream);
    assert!(
        tally.other.is_empty(),
        "no 5xx, only 200 and 429: {:?}",
        tally.other
    );
    assert_eq!(tally.throttled_without_retry_after, 0);
    let busiest = support::busiest_second(&times);
    assert!(busiest <= 200, "busiest second at the upstream: {busiest}");
    // Three seconds after Redis is back, the fleet serves at least 90% of the limit again.
    let after = count_between(
        &times,
        back + Duration::from_secs(3),
        back + Duration::from_millis(4500),
    );
    assert!(
        after >= 270,
        "served {after} in the 1.5 s from 3 s after Redis came back"
    );
    // And during the outage, after the pause, the fallback shares still served.
    let during = count_between(&times, back - Duration::from_millis(1000), back);
    assert!(
        during >= 150,
        "served {during} in the last second of the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_is_left_within_the_timeout() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = Redis::start() else { return };
    let upstream = Recorder::ok().await;
    let gateway = replica(&redis, &upstream).await;
    let caller = Caller::default();
    fleet_formed(std::slice::from_ref(&gateway), &caller).await;
    redis.signal(rustix::process::Signal::STOP);
    let asked = Instant::now();
    let answer = caller.post(gateway.addr, SEND, SEND_BODY).await;
    let took = asked.elapsed();
    redis.signal(rustix::process::Signal::CONT);
    // Redis gave no answer: after timeout_ms (50) the replica stops waiting for it, and the
    // request is answered — 429 with Retry-After while the fallback share is not yet free.
    assert!(took < Duration::from_millis(400), "answered after {took:?}");
    assert!(
        answer.status == 429 && answer.headers.contains_key("retry-after"),
        "{:?}",
        answer.status
    );
    let text = caller.get(gateway.admin, "/metrics").await.body;
    let text = std::str::from_utf8(&text).unwrap();
    assert_eq!(
        sample(
            text,
            "timgate_fleet_fallback_transitions_total",
            &["to=\"fallback\""]
        ),
        1.0,
        "{}",
        text.lines()
            .filter(|l| l.contains("fleet"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Redis answers again: the replica goes back, and /readyz was 200 all along.
    assert_eq!(caller.get(gateway.admin, "/readyz").await.status, 200);
    let admin = gateway.admin;
    support::eventually(|| {
        let caller = caller.clone();
        async move {
            let text = caller.get(admin, "/metrics").await.body;
            sample(
                std::str::from_utf8(&text).unwrap(),
                "timgate_fleet_redis_up",
                &[],
            ) == 1.0
        }
    })
    .await;
}

#[tokio::test]
async fn every_key_of_a_script_call_is_in_one_cluster_slot() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = Redis::start_cluster().await else {
        return;
    };
    // A plain multi-key command across slots is refused by this node: the check is real.
    let mut client = redis.client().await;
    let crossed: redis::RedisResult<()> = redis::cmd("MSET")
        .arg(&["a", "1", "b", "2"])
        .query_async(&mut client)
        .await;
    let crossed = crossed.unwrap_err();
    assert_eq!(
        crossed.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::CrossSlot),
        "the node checks slots: {crossed}"
    );
    let upstream = Recorder::ok().await;
    let gateway = replica(&redis, &upstream).await;
    let caller = Caller::default();
    // Heartbeats (members, claims, epoch) and turns (those plus the app lane) all answered.
    fleet_formed(std::slice::from_ref(&gateway), &caller).await;
    for _ in 0..5 {
        assert_eq!(caller.post(gateway.addr, SEND, SEND_BODY).await.status, 200);
    }
    let text = caller.get(gateway.admin, "/metrics").await.body;
    let text = std::str::from_utf8(&text).unwrap();
    assert_eq!(sample(text, "timgate_fleet_redis_up", &[]), 1.0);
    assert_eq!(
        sample(
            text,
            "timgate_fleet_fallback_transitions_total",
            &["to=\"fallback\""]
        ),
        0.0,
        "no call was refused"
    );
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut client)
        .await
        .unwrap();
    let prefix = format!("{{t{}}}:", redis.port);
    assert!(
        keys.len() >= 4 && keys.iter().all(|k| k.starts_with(&prefix)),
        "{keys:?}"
    );
}

// ---- Quotas in a fleet -------------------------------------------------------------------
//
// The quotas beyond calls a second (costs, per-minute, keyed lanes) are kept in Redis like
// the app and API lanes: a fleet of two is held to one limit for each, not to twice it, and
// one busy replica gets each whole.

const GROUP: &str = "/v4/group_open_http_svc/send_group_msg";
const BATCH: &str = "/v4/openim/batchsendmsg";

/// A gateway process of a fleet planned at two: app 1 at 1,000/s, with batchsendmsg's
/// recipients bought up to 4,000 a second (a second, not a minute, so seconds show it).
async fn quota_replica(redis: &Redis, upstream: &Recorder) -> Process {
    let config = format!(
        "[fleet]\nredis_url = \"{}\"\nkey_prefix = \"q{}\"\nreplicas = 2\ntimeout_ms = 50\n{}\
         rate_limit = 1000\nmax_queue_wait_ms = 1000\n[[apps.api_quotas]]\n\
         api = \"openim/batchsendmsg\"\nrate = 4000\nper = \"second\"\ncost = \"To_Account\"\n",
        redis.url(),
        redis.port,
        support::one_app(1, &upstream.url()),
    );
    Process::start(&config, &[], std::process::Stdio::null()).await
}

/// Two `quota_replica`s, formed into a fleet.
async fn quota_pair(redis: &Redis, upstream: &Recorder) -> [Process; 2] {
    let replicas = [
        quota_replica(redis, upstream).await,
        quota_replica(redis, upstream).await,
    ];
    fleet_formed(&replicas, &Caller::default()).await;
    replicas
}

/// Each of `times` as one unit.
fn ones(times: &[i64]) -> Vec<(i64, usize)> {
    times.iter().map(|t| (*t, 1)).collect()
}

/// What the upstream saw of `path` from `start` on (for `key`, only that group's): when, and
/// how many units (recipients; 1 without `To_Account`).
fn units_seen(
    upstream: &Recorder,
    start: Instant,
    path: &str,
    key: Option<&str>,
) -> Vec<(Instant, usize)> {
    upstream
        .seen()
        .into_iter()
        .filter(|s| s.at >= start && s.path == path)
        .filter_map(|s| {
            let body: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
            if key.is_some_and(|k| body["GroupId"] != k) {
                return None;
            }
            let n = body["To_Account"].as_array().map_or(1, Vec::len);
            Some((s.at, n))
        })
        .collect()
}

/// A batchsendmsg body to 100 recipients.
fn batch_of_100() -> String {
    let accounts: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
    serde_json::json!({"From_Account": "a", "To_Account": accounts, "MsgRandom": 1, "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}}]})
        .to_string()
}

/// A send_group_msg body to group `id`.
fn to_group(id: &str) -> String {
    serde_json::json!({"GroupId": id, "Random": 1, "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}}]}).to_string()
}

/// Asserts that from `start` on the upstream never saw more than 4,000 recipients of
/// batchsendmsg nor 40 messages to the group "busy" in one second; returns how many of
/// each it saw.
fn quotas_held(upstream: &Recorder, start: Instant) -> (usize, usize) {
    let second = Duration::from_secs(1);
    let recipients = units_seen(upstream, start, BATCH, None);
    let busiest = support::busiest_units(&recipients, second);
    assert!(busiest <= 4000, "{busiest} recipients within one second");
    let busy = units_seen(upstream, start, GROUP, Some("busy"));
    let busiest = support::busiest_units(&busy, second);
    assert!(
        busiest <= 40,
        "{busiest} messages to one group within one second"
    );
    (recipients.iter().map(|(_, n)| n).sum(), busy.len())
}

/// The quotas are one lane each in Redis, not a part per replica: all the load on one
/// replica of a fleet planned at two gets each whole quota (a part each would hold it to
/// half), and still never more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_busy_replica_of_two_gets_each_quota_whole() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = Redis::start() else { return };
    let upstream = Recorder::ok().await;
    let replicas = quota_pair(&redis, &upstream).await;
    let start = Instant::now();
    let batch = batch_of_100();
    let addr = replicas[0].addr;
    let loads = [
        tokio::spawn(offer(addr, Post::of(BATCH, batch), 36, 4.0)),
        tokio::spawn(offer(addr, Post::of(GROUP, to_group("busy")), 45, 4.0)),
    ];
    for load in loads {
        let tally = load.await.unwrap();
        assert!(
            tally.other.is_empty(),
            "only 200 and 429: {:?}",
            tally.other
        );
        assert!(tally.ok + tally.throttled > 0);
    }
    let (recipients, busy) = quotas_held(&upstream, start);
    // The whole quota: ~3,460 recipients and ~38 group messages a second paced. Half of
    // each (a part per replica) would be ~1,485 and ~19.
    assert!(recipients >= 4 * 2800, "{recipients} recipients in 4 s");
    assert!(busy >= 4 * 30, "{busy} messages to the busy group in 4 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_two_keeps_cost_and_per_group_quotas_once_not_twice() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = Redis::start() else { return };
    let upstream = Recorder::ok().await;
    let replicas = quota_pair(&redis, &upstream).await;
    let start = Instant::now();
    let batch = batch_of_100();
    // A replica that kept the whole quota would let through ~3,900 recipients and ~38
    // messages to the busy group a second: offered 3,000 and 40 a second each, the pair
    // would send 6,000 and 80.
    let mut loads = Vec::new();
    for replica in &replicas {
        let addr = replica.addr;
        let batch = Post::of(BATCH, batch.clone());
        loads.push(tokio::spawn(offer(addr, batch, 30, 4.0)));
        let busy = Post::of(GROUP, to_group("busy"));
        loads.push(tokio::spawn(offer(addr, busy, 40, 4.0)));
        let quiet = Post::of(GROUP, to_group("quiet"));
        loads.push(tokio::spawn(offer(addr, quiet, 5, 4.0)));
    }
    let mut answered = Vec::new();
    for load in loads {
        answered.push(load.await.unwrap());
    }
    for tally in &answered {
        assert!(
            tally.other.is_empty(),
            "only 200 and 429: {:?}",
            tally.other
        );
        assert!(tally.ok + tally.throttled > 0);
    }
    // No quiet-group message was refused: its lane is its own.
    assert_eq!(
        answered[2].throttled + answered[5].throttled,
        0,
        "{answered:?}"
    );

    let (recipients, busy) = quotas_held(&upstream, start);
    // Held to the fleet's one limit, not starved: 4,000 a second, of which a guard whose
    // burst must hold one 500-recipient call refills 3,500 (paced at ~3,460).
    assert!(recipients >= 4 * 2500, "{recipients} recipients in 4 s");
    assert!(busy >= 4 * 30, "{busy} messages to the busy group in 4 s");
}

/// Every API has its own limit of 200/s beside the app's (TENCENT.md §7): an app that bought
/// 1,000/s still may not send 300/s of one API. Two replicas offer 150/s of sendmsg each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_holds_each_api_to_200_a_second_beside_a_larger_app_limit() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = Redis::start() else { return };
    let upstream = Recorder::ok().await;
    let replicas = quota_pair(&redis, &upstream).await;
    let start = Instant::now();
    let loads: Vec<_> = replicas
        .iter()
        .map(|r| tokio::spawn(offer(r.addr, Post::send(), 150, 4.0)))
        .collect();
    for load in loads {
        let tally = load.await.unwrap();
        assert!(
            tally.other.is_empty(),
            "only 200 and 429: {:?}",
            tally.other
        );
    }
    let times = arrivals(&upstream);
    let busiest = support::busiest_second(&times);
    assert!(
        busiest <= 200,
        "busiest second of sendmsg at the upstream: {busiest}"
    );
    let served = count_between(&times, start, start + Duration::from_secs(4));
    assert!(served >= 700, "served {served} in 4 s: under 87% of 200/s");
}

/// A caller's own `rate_limit` is one lane for the whole fleet (issue 12 item 3): a batch
/// job flooding through two replicas is held to its 50/s in all, not 50/s on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_own_limit_is_held_once_across_the_fleet() {
    const BEARER: &[(&str, &str)] = &[("authorization", "Bearer batch-token-0123456789")];
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = Redis::start() else { return };
    let upstream = Recorder::ok().await;
    let token = std::env::temp_dir().join(format!("timgate-batch-{}", redis.port));
    std::fs::write(&token, "batch-token-0123456789\n").unwrap();
    let config = format!(
        "[fleet]\nredis_url = \"{}\"\nkey_prefix = \"c{}\"\nreplicas = 2\ntimeout_ms = 50\n{}\
         rate_limit = 200\nmax_queue_wait_ms = 1000\n[[callers]]\nname = \"batch\"\n\
         token_file = {:?}\nrate_limit = 50\n",
        redis.url(),
        redis.port,
        support::one_app(1, &upstream.url()),
        token.display().to_string(),
    );
    let replicas = [
        Process::start(&config, &[], std::process::Stdio::null()).await,
        Process::start(&config, &[], std::process::Stdio::null()).await,
    ];
    let caller = Caller::default();
    for replica in &replicas {
        let (caller, admin) = (&caller, replica.admin);
        support::eventually(|| async move {
            let text = caller.get(admin, "/metrics").await.body;
            sample(
                std::str::from_utf8(&text).unwrap(),
                "timgate_fleet_members",
                &[],
            ) >= 2.0
        })
        .await;
    }
    let addr = replicas[0].addr;
    let caller = &caller;
    support::eventually(|| async move {
        let answer = caller
            .send_with("POST", addr, SEND, BEARER, SEND_BODY)
            .await;
        answer.status == 200
    })
    .await;
    let start = Instant::now();
    let loads: Vec<_> = replicas
        .iter()
        .map(|r| tokio::spawn(offer(r.addr, Post::send().with(BEARER), 60, 4.0)))
        .collect();
    for load in loads {
        let tally = load.await.unwrap();
        assert!(
            tally.other.is_empty(),
            "only 200 and 429: {:?}",
            tally.other
        );
    }
    let _ = std::fs::remove_file(&token);
    let times = arrivals(&upstream);
    let busiest = support::busiest_second(&times);
    assert!(
        busiest <= 50,
        "busiest second of the batch caller: {busiest}"
    );
    let served = count_between(&times, start, start + Duration::from_secs(4));
    assert!(served >= 170, "served {served} in 4 s: under 85% of 50/s");
}

/// In a fleet too, a drain answers at once the requests whose turn in Redis would come after
/// its last turn, instead of when that turn passes.
#[tokio::test]
async fn a_drain_answers_at_once_the_fleet_waiters_whose_turn_would_come_too_late() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = Redis::start() else { return };
    let fleet = format!(
        "[fleet]\nredis_url = \"{}\"\nkey_prefix = \"d{}\"\nreplicas = 1\ntimeout_ms = 200\n",
        redis.url(),
        redis.port
    );
    support::late_turns_refused_at_once_on_drain(&fleet).await;
}

/// A replica that has just started serves its first request: it does not answer 429 for the
/// heartbeat it takes to be counted live in Redis (its own claim, registered as possibly in
/// fallback until then, held the lane's whole capacity).
#[tokio::test]
async fn a_new_replica_serves_its_first_requests_rather_than_429() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = Redis::start() else { return };
    let upstream = Recorder::ok().await;
    // A fresh Redis also holds every guard for its quarantine (1.2 s, as after a restart
    // that lost its state): the queue wait allows for it.
    let config = format!(
        "[fleet]\nredis_url = \"{}\"\nkey_prefix = \"n{}\"\nreplicas = 1\ntimeout_ms = 200\n{}max_queue_wait_ms = 5000\n",
        redis.url(),
        redis.port,
        support::one_app(1, &upstream.url()),
    );
    let gateway = Process::start(&config, &[], std::process::Stdio::null()).await;
    let caller = Caller::default();
    let mut answers = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let (caller, addr) = (caller.clone(), gateway.addr);
        answers.spawn(async move { caller.post(addr, SEND, SEND_BODY).await });
    }
    while let Some(answer) = answers.join_next().await {
        let answer = answer.unwrap();
        assert_eq!(answer.status, 200, "{:?}", answer.json());
    }
    assert_eq!(upstream.seen().len(), 5);
}

/// A request that finds its lanes free and a connection idle passes its turn and the
/// fleet's send-time guard in one Redis call, not two: one after the other, 40 requests make
/// about 40 script calls (the first, with no connection open yet, makes two).
#[tokio::test]
async fn a_request_that_finds_its_lanes_free_makes_one_redis_call() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = Redis::start() else { return };
    let upstream = Recorder::ok().await;
    let config = format!(
        "[fleet]\nredis_url = \"{}\"\nkey_prefix = \"one{}\"\nreplicas = 1\ntimeout_ms = 50\n{}\
         rate_limit = 100000\n[apps.api_limits]\n\"openim/sendmsg\" = 100000\n",
        redis.url(),
        redis.port,
        support::one_app(1, &upstream.url()),
    );
    let gateway = Process::start(&config, &[], std::process::Stdio::null()).await;
    let caller = Caller::default();
    fleet_formed(std::slice::from_ref(&gateway), &caller).await;
    let calls = || async {
        let text = caller.get(gateway.admin, "/metrics").await.body;
        sample(
            std::str::from_utf8(&text).unwrap(),
            "timgate_fleet_redis_batch_asks_count",
            &[],
        )
    };
    let before = calls().await;
    for _ in 0..40 {
        let answer = caller.post(gateway.addr, SEND, SEND_BODY).await;
        assert_eq!(answer.status, 200);
    }
    let made = calls().await - before;
    assert!(
        (40.0..=44.0).contains(&made),
        "{made} script calls for 40 requests"
    );
}

// ---- A Redis that misbehaves ---------------------------------------------------------------
//
// Whatever Redis does — paused, full, a password the gateway lacks, garbage on the wire,
// gone — every request is answered within its max_queue_wait_ms for the turn plus its
// deadline_ms, in Tencent's envelope; the replica's fallback sends go first in, first out;
// and the log names the cause once, not once per request.

/// What the Redis of `misbehaving` does wrong.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    /// Stopped with SIGSTOP a second into the load: connections stay open, nothing answers.
    Paused,
    /// Set to `maxmemory` 1 with `noeviction` a second into the load: every write is
    /// refused (OOM).
    Full,
    /// It requires a password, and the gateway has another (WRONGPASS).
    WrongPassword,
    /// A loopback TCP server that answers whatever it is sent with bytes that are not
    /// Redis's protocol.
    Garbage,
    /// A loopback TCP server that takes connections and reads, and never answers.
    Hanging,
    /// A loopback TCP server that answers every command with a list of one 0: Redis's
    /// protocol, but not the script's answer.
    Zeros,
    /// Nothing listens at the port: every connection is refused.
    Gone,
}

/// The queue wait and the deadline of the app in `misbehaving`: every answer within their
/// sum (and `MARGIN`).
const QUEUE_WAIT: Duration = Duration::from_millis(1000);
const DEADLINE: Duration = Duration::from_millis(3000);
/// Room for the test's own client and the loaded machine.
const MARGIN: Duration = Duration::from_millis(200);
/// How long the replica is stopped while it spends its fallback share.
const STALL: Duration = Duration::from_millis(500);
/// The password the Redis of `Fault::WrongPassword` requires, and the one the gateway has.
const PASSWORD: &str = "redis-password-0123456789";
const NOT_THE_PASSWORD: &str = "not-the-password-0123456789";

/// A loopback server that answers every command it reads with `answer` (or, `None`, with
/// nothing), keeping the connection open.
struct Garbage {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Garbage {
    async fn start(answer: Option<&'static [u8]>) -> Garbage {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut chunk = [0u8; 4096];
                    let mut line_start = true;
                    while let Ok(n @ 1..) = socket.read(&mut chunk).await {
                        let Some(answer) = answer else { continue };
                        // One answer per command: each begins a line with `*` (an array).
                        let mut commands = 0;
                        for &byte in &chunk[..n] {
                            commands += usize::from(line_start && byte == b'*');
                            line_start = byte == b'\n';
                        }
                        if socket.write_all(&answer.repeat(commands)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Garbage { addr, task }
    }
}

impl Drop for Garbage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request of the load: its number, when it was asked, how long its answer took, and
/// the answer.
struct Asked {
    seq: usize,
    at: Instant,
    took: Duration,
    answer: support::Answer,
}

/// Offers sendmsg to `addr` at `rate` a second for `seconds`, each request numbered in its
/// body (`MsgRandom`), on a fixed schedule; waits for every answer.
async fn numbered_load(addr: SocketAddr, rate: u32, seconds: f64) -> Vec<Asked> {
    let caller = Caller::default();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut requests = Vec::new();
    for seq in 0.. {
        if Instant::now() >= end {
            break;
        }
        ticks.tick().await;
        let caller = caller.clone();
        requests.push(tokio::spawn(async move {
            let at = Instant::now();
            let body = serde_json::json!({ "To_Account": "b", "MsgRandom": seq, "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}}] })
                .to_string();
            let answer = caller.post(addr, SEND, body).await;
            Asked {
                seq,
                at,
                took: at.elapsed(),
                answer,
            }
        }));
    }
    let mut asked = Vec::new();
    for request in requests {
        asked.push(request.await.expect("every request is answered"));
    }
    asked
}

/// Stops the process `process` for `how_long`, as a CPU quota throttles a pod: every timer
/// due meanwhile fires at once when it runs again.
async fn stall(process: &Process, how_long: Duration) {
    let pid = i32::try_from(process.child.id().unwrap()).unwrap();
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    tokio::time::sleep(how_long).await;
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
}

/// The fleet's "Redis call failed" log lines so far: each one's cause and error.
fn failures(logs: &support::Logs) -> Vec<(String, String)> {
    logs.lines()
        .iter()
        .filter(|l| l["fields"]["message"] == "fleet: Redis call failed")
        .map(|l| {
            let text = |f: &str| l["fields"][f].as_str().unwrap_or_default().to_owned();
            (text("cause"), text("error"))
        })
        .collect()
}

/// A replica (the fleet planned at one, app 1 at 200/s, a 1 s queue wait, a 3 s deadline)
/// whose Redis does `fault`, offered 250 requests a second for 7 s, stopped for `STALL`
/// once it spends its fallback share. Checks every bound of the section's header, and that
/// the log names `cause` once.
async fn misbehaving(fault: Fault, cause: &str) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let password = vec!["--requirepass".to_owned(), PASSWORD.to_owned()];
    let args = if fault == Fault::WrongPassword {
        password
    } else {
        Vec::new()
    };
    let Some(redis) = Redis::start_with(args) else {
        return;
    };
    let garbage = Garbage::start(Some(b"@not redis at all\r\n")).await;
    let hanging = Garbage::start(None).await;
    let zeros = Garbage::start(Some(b"*1\r\n:0\r\n")).await;
    let (_held, refusing) = support::refusing_port();
    let url = match fault {
        Fault::Paused | Fault::Full => redis.url(),
        Fault::WrongPassword => {
            format!("redis://:{NOT_THE_PASSWORD}@127.0.0.1:{}/0", redis.port)
        }
        Fault::Garbage => format!("redis://{}/0", garbage.addr),
        Fault::Hanging => format!("redis://{}/0", hanging.addr),
        Fault::Zeros => format!("redis://{}/0", zeros.addr),
        Fault::Gone => format!("redis://{refusing}/0"),
    };
    let upstream = Recorder::ok().await;
    let config = format!(
        "[fleet]\nredis_url = \"{url}\"\nreplicas = 1\ntimeout_ms = 50\n{}rate_limit = 200\n\
         max_queue_wait_ms = {}\ndeadline_ms = {}\n",
        support::one_app(1, &upstream.url()),
        QUEUE_WAIT.as_millis(),
        DEADLINE.as_millis(),
    );
    let (gateway, logs) = Process::logged(&config).await;
    let caller = Caller::default();
    if matches!(fault, Fault::Paused | Fault::Full) {
        fleet_formed(std::slice::from_ref(&gateway), &caller).await;
    }
    let load = tokio::spawn(numbered_load(gateway.addr, 250, 7.0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    match fault {
        Fault::Paused => redis.signal(rustix::process::Signal::STOP),
        Fault::Full => {
            let mut client = redis.client().await;
            for (key, value) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1")] {
                let () = redis::cmd("CONFIG")
                    .arg("SET")
                    .arg(key)
                    .arg(value)
                    .query_async(&mut client)
                    .await
                    .unwrap();
            }
        }
        _ => {}
    }
    let spending = |logs: support::Logs| async move {
        logs.lines()
            .iter()
            .any(|l| l["fields"]["message"] == "fleet: spending this replica's fallback share")
    };
    support::eventually(|| spending(logs.clone())).await;
    let fallback = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stalled = Instant::now();
    stall(&gateway, STALL).await;
    let asked = load.await.unwrap();
    if fault == Fault::Paused {
        redis.signal(rustix::process::Signal::CONT);
    }
    answers_in_bounds(&asked);
    logged_in_bounds(&logs, asked.len()).await;
    sent_first_in_first_out(&upstream, &asked, fallback, stalled);
    assert!(support::busiest_second(&arrivals(&upstream)) <= 200);
    // The cause, once: not once per request, nor per heartbeat.
    let failed = failures(&logs);
    let named = failed.iter().filter(|(c, _)| c == cause).count();
    assert_eq!(named, 1, "{fault:?}: {failed:?}");
    assert!(failed.len() <= 3, "{fault:?}: {failed:?}");
    let text: String = logs.lines().iter().map(ToString::to_string).collect();
    assert!(!text.contains(NOT_THE_PASSWORD) && !text.contains(PASSWORD));
}

/// Every answer came within the queue wait and the deadline, as 200, or as 429 or 504 in
/// Tencent's envelope (a 429 with Retry-After); and some were served.
fn answers_in_bounds(asked: &[Asked]) {
    let bound = QUEUE_WAIT + DEADLINE + MARGIN;
    let slowest = asked.iter().map(|a| a.took).max().unwrap();
    assert!(slowest <= bound, "an answer took {slowest:?}");
    for a in asked {
        match a.answer.status.as_u16() {
            200 => {}
            429 | 504 => {
                let envelope = a.answer.json();
                assert_eq!(envelope["ActionStatus"], "FAIL", "{envelope}");
                assert!(envelope["ErrorCode"].as_i64().is_some_and(|c| c > 0));
                let retry = a.answer.headers.contains_key("retry-after");
                assert!(retry || a.answer.status == 504, "{envelope}");
            }
            status => panic!("answered {status}"),
        }
    }
    let served = asked.iter().filter(|a| a.answer.status == 200).count();
    assert!(served >= 400, "{served} of {} served", asked.len());
}

/// No request was logged `ok` after waiting past its bound; each refusal was logged as one.
async fn logged_in_bounds(logs: &support::Logs, load: usize) {
    let requests = logs.requests_reach(load).await;
    let bound = (QUEUE_WAIT + DEADLINE).as_secs_f64() * 1000.0;
    for request in &requests {
        let latency = request["latency_ms"].as_f64().unwrap();
        let outcome = request["outcome"].as_str().unwrap();
        assert!(
            latency <= bound || outcome != "ok",
            "logged ok after {latency} ms"
        );
        if request["status"] == 429 {
            assert_eq!(outcome, "throttled");
        }
    }
}

/// From a queue wait before `fallback` on (the replica spending its share; those asked
/// then waited for it), the upstream saw the requests in the order they were asked: none
/// asked 100 ms or more after another went before it. Those asked while the replica was
/// stopped (at `stalled`), or queued through it, are left out: their order is the order
/// the kernel handed them over in.
fn sent_first_in_first_out(
    upstream: &Recorder,
    asked: &[Asked],
    fallback: Instant,
    stalled: Instant,
) {
    let stalled = (stalled - QUEUE_WAIT - MARGIN)..(stalled + STALL + MARGIN);
    let arrived: std::collections::HashMap<i64, Instant> = upstream
        .seen()
        .iter()
        .filter_map(|s| {
            let body: serde_json::Value = serde_json::from_slice(&s.body).ok()?;
            Some((body["MsgRandom"].as_i64()?, s.at))
        })
        .collect();
    let mut sent: Vec<(Instant, Instant, usize)> = asked
        .iter()
        .filter(|a| a.at >= fallback - QUEUE_WAIT && !stalled.contains(&a.at))
        .filter_map(|a| Some((a.at, *arrived.get(&(a.seq as i64))?, a.seq)))
        .collect();
    sent.sort();
    assert!(sent.len() >= 200, "{} sent in fallback", sent.len());
    let (mut earlier, mut latest) = (0, None::<(Instant, usize)>);
    for &(at, arrival, seq) in &sent {
        while sent[earlier].0 + Duration::from_millis(100) <= at {
            let (_, before, seq) = sent[earlier];
            latest = latest.max(Some((before, seq)));
            earlier += 1;
        }
        if let Some((before, first)) = latest {
            assert!(
                before < arrival,
                "request {seq} went {:?} before request {first}, asked 100 ms or more before it",
                before - arrival
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_leaves_every_wait_bounded_in_order_and_is_logged_once() {
    misbehaving(Fault::Paused, "timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_leaves_every_wait_bounded_in_order_and_is_logged_once() {
    misbehaving(Fault::Full, "oom").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_redis_password_leaves_every_wait_bounded_in_order_and_is_logged_once() {
    misbehaving(Fault::WrongPassword, "auth").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_garbage_leaves_every_wait_bounded_in_order_and_is_logged_once() {
    misbehaving(Fault::Garbage, "protocol").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_leaves_every_wait_bounded_in_order_and_is_logged_once() {
    misbehaving(Fault::Hanging, "timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_numbers_leaves_every_wait_bounded_in_order_and_is_logged_once() {
    misbehaving(Fault::Zeros, "protocol").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_gone_leaves_every_wait_bounded_in_order_and_is_logged_once() {
    misbehaving(Fault::Gone, "refused").await;
}

// ---- Deployments that share a Redis ----------------------------------------------------

/// Two deployments on one Redis, both with the default `key_prefix`, serving different
/// apps: a replica of the other one dies (killed, so its heartbeat lapses and Redis keeps
/// its claim for `RETAIN`), and this one still sends its whole limit. Membership and claims
/// are the app's: the dead replica served another app, so nothing of its claim is taken off
/// this app's lanes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_keeps_its_whole_limit_when_a_replica_of_another_apps_dies() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = Redis::start() else { return };
    let (ours, theirs) = (Recorder::ok().await, Recorder::ok().await);
    let deployment = |app: u64, upstream: &Recorder, replicas: u32| {
        format!(
            "[fleet]\nredis_url = \"{}\"\nreplicas = {replicas}\ntimeout_ms = 50\n{}\
             rate_limit = 100\nmax_queue_wait_ms = 1000\n",
            redis.url(),
            support::one_app(app, &upstream.url()),
        )
    };
    let quiet = || std::process::Stdio::null();
    let ours_config = deployment(1, &ours, 1);
    let a = Process::start(&ours_config, &[], quiet()).await;
    let theirs_config = deployment(2, &theirs, 2);
    let mut b = [
        Process::start(&theirs_config, &[], quiet()).await,
        Process::start(&theirs_config, &[], quiet()).await,
    ];
    let caller = Caller::default();
    fleet_formed(std::slice::from_ref(&a), &caller).await;
    fleet_formed(&b, &caller).await;
    let start = Instant::now();
    let load = tokio::spawn(offer(a.addr, Post::send(), 150, 7.0));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    b[1].child.start_kill().unwrap();
    let killed = Instant::now();
    let tally = load.await.unwrap();
    assert!(tally.other.is_empty());
    // Its heartbeat lapses within EXPIRY (1 s); from then on, for RETAIN, a claim shared
    // across deployments would hold a third of every lane: two thirds of the rate before.
    let rate = |from: Instant, to: Instant| {
        count_between(&arrivals(&ours), from, to) as f64 / (to - from).as_secs_f64()
    };
    let before = rate(start + Duration::from_millis(500), killed);
    let from = killed + Duration::from_secs(2);
    let after = rate(from, from + Duration::from_millis(2500));
    assert!(
        after >= 0.9 * before && after >= 70.0,
        "{after:.1}/s after the other app's replica died, {before:.1}/s before (of 100/s)"
    );
    assert!(support::busiest_second(&arrivals(&ours)) <= 100);
}
