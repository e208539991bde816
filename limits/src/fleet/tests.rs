//! The fallback state machine, driven deterministically: three replicas under tokio's paused
//! clock, each reaching one real `redis-server` through a link that runs the real script at a
//! fixed Redis time (derived from the paused clock) without letting the clock move during
//! the call. Cutting a replica's link stalls its calls, as a paused Redis does: each call
//! ends at exactly `timeout_ms`. Every send is recorded at the virtual instant the limiter
//! let it go, and the tests assert the module doc's argument on those records.
//!
//! Without `redis-server` on PATH these tests say so loudly and pass, unless `CI` is set,
//! where they fail (`.ci/run` installs it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::batch::{self, Kind, Wait};
use super::link::{Answer, Call, Link};
use super::{Ask, EXPIRY, Fleet, Group, MARGIN, NonZeroU32, WINDOW};
use crate::series::FleetSeries;
use crate::spec::AppSpec;
use crate::table::{Per, Quota};
use crate::{Asked, Lanes, Limiter, Scope};

/// The replicas' script, timing values and all.
static SCRIPT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| super::script(EXPIRY, super::QUARANTINE));
const TIMEOUT: Duration = Duration::from_millis(50);
const LIMIT: usize = 200;
const MAX_WAIT: Duration = Duration::from_millis(1000);
/// The app every replica serves: SDKAppID 1 at 200 calls a second.
fn app() -> AppSpec {
    AppSpec::new(1, NonZeroU32::new(200).unwrap())
}
/// Redis's clock at the test's start: far from the replicas' own.
const REDIS_EPOCH: i64 = 1_700_000_000_000_000;

/// A `redis-server` on a free loopback port, without persistence; killed when dropped.
struct Server {
    child: std::process::Child,
    port: u16,
}

impl Server {
    /// Starts one, or `None` (after saying so) when the program is missing outside CI.
    fn start() -> Option<Server> {
        let found = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join("redis-server").is_file())
        });
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not on PATH, and CI is set: .ci/run installs it"
            );
            eprintln!(
                "\n*** SKIPPED: redis-server is not on PATH; install it (apt-get install redis-server) to run the fleet state-machine tests ***\n"
            );
            return None;
        }
        // A port free a moment ago is only free until someone binds it (another test's
        // server, a connection's local port): should the server find it taken, another.
        let mut failed = Vec::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server starts");
            match serving(&mut child, port) {
                Ok(()) => return Some(Server { child, port }),
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    failed.push(why);
                }
            }
        }
        panic!("redis-server did not start: {failed:?}");
    }

    fn connection(&self) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/0", self.port))
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the `redis-server` `child` serves on `port`: `Err` when it exits first (the
/// port was taken meanwhile) or does not serve within 10 s.
fn serving(child: &mut std::process::Child, port: u16) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("exited ({status}) before serving on port {port}"));
        }
        if answers_as(child.id(), port) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("not serving on port {port} within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the server on `port` is the process `pid`: a connection that merely succeeds may
/// reach another server that holds the port, or the probe's own socket (a connection to a
/// port of the ephemeral range nobody listens on can be given that very port, and connects
/// to itself).
fn answers_as(pid: u32, port: u16) -> bool {
    let info = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(1)))
        .and_then(|mut connection| {
            connection.set_read_timeout(Some(Duration::from_secs(1)))?;
            redis::cmd("INFO")
                .arg("server")
                .query::<String>(&mut connection)
        });
    info.is_ok_and(|info| {
        info.lines()
            .any(|line| line.trim() == format!("process_id:{pid}"))
    })
}

/// One replica's way to Redis: the real script on a real server, at Redis time
/// `REDIS_EPOCH` + the paused clock's progress, run on a blocking thread (which keeps a
/// paused clock from moving). While cut, a call never answers; a call Redis runs within
/// `late`'s span is answered that long after it ran (a slow way back); a call whose op is
/// `held` waits, unrun, until it is let go.
struct FixedRedis {
    connection: Arc<Mutex<redis::Connection>>,
    /// `SCRIPT`, run by EVAL at the fixed time, whatever hash heads a call.
    script: redis::Script,
    start: Instant,
    cut: AtomicBool,
    late: Mutex<Option<Late>>,
    held: tokio::sync::watch::Sender<Vec<&'static str>>,
    /// Every call Redis ran: when, and its arguments.
    calls: Mutex<Vec<(Instant, Vec<String>)>>,
}

/// Calls Redis runs from `from` until `until` are answered `by` after they ran. Set by the
/// instant a call runs, not when the answer is read, so a call at the span's first or last
/// instant is late or not whatever order the tasks woken then run in.
#[derive(Clone, Copy)]
struct Late {
    from: Instant,
    until: Instant,
    by: Duration,
}

impl FixedRedis {
    /// Redis's clock now (µs).
    fn now(&self) -> i64 {
        REDIS_EPOCH + (Instant::now() - self.start).as_micros() as i64
    }

    /// The script run at Redis time `now`: never answered while cut, late within `late`'s
    /// span, not before it is let go while its op is held.
    async fn run(&self, keys: Vec<String>, args: Vec<String>) -> Result<redis::Value, String> {
        if self.cut.load(Ordering::SeqCst) {
            return std::future::pending().await;
        }
        let mut held = self.held.subscribe();
        let _ = held.wait_for(|ops| !ops.contains(&args[0].as_str())).await;
        let ran = Instant::now();
        self.calls.lock().unwrap().push((ran, args.clone()));
        let connection = self.connection.clone();
        let value = tokio::task::spawn_blocking(move || {
            redis::cmd("EVAL")
                .arg(&*SCRIPT)
                .arg(keys.len())
                .arg(keys)
                .arg(args)
                .query::<redis::Value>(&mut connection.lock().unwrap())
        })
        .await
        .unwrap()
        .map_err(|e| e.to_string())?;
        let late = *self.late.lock().unwrap();
        if let Some(late) = late.filter(|l| (l.from..l.until).contains(&ran)) {
            tokio::time::sleep(late.by).await;
        }
        Ok(value)
    }

    /// Holds the calls of `ops` until they are let go (`hold(&[])`).
    fn hold(&self, ops: &[&'static str]) {
        self.held.send_replace(ops.to_vec());
    }

    /// The Redis times of the heartbeats this replica's Redis ran, and whether each was live.
    fn beats(&self) -> Vec<(Instant, bool)> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, args)| args[0] == "beat")
            .map(|(at, args)| (*at, args[5] == "1"))
            .collect()
    }
}

/// The second way to Redis: the script at this link's fixed Redis time.
impl Link for FixedRedis {
    fn script(&self) -> &redis::Script {
        &self.script
    }

    /// Reads the call's keys and arguments back as the text Redis receives.
    fn eval(&self, call: Call, timeout: Duration) -> Answer<'_> {
        let text = |word: &[u8]| String::from_utf8(word.to_vec()).unwrap();
        let keys = call.keys().map(text).collect();
        let mut args: Vec<String> = call.args().map(text).collect();
        args[1] = self.now().to_string();
        Box::pin(async move {
            match tokio::time::timeout(timeout, self.run(keys, args)).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            }
        })
    }
}

struct Replica {
    redis: Arc<FixedRedis>,
    fleet: Arc<Fleet>,
    lanes: Arc<Lanes>,
}

impl Replica {
    /// A replica named `member` of `app`, `replicas = 3`, `timeout_ms = 50`, on its own link
    /// to `server` at Redis time `REDIS_EPOCH` + the time since `start`.
    fn start(server: &Server, start: Instant, member: &str, app: &AppSpec) -> Replica {
        let redis = Arc::new(FixedRedis {
            connection: Arc::new(Mutex::new(server.connection())),
            script: redis::Script::new(&SCRIPT),
            start,
            cut: AtomicBool::new(false),
            late: Mutex::default(),
            held: tokio::sync::watch::Sender::new(Vec::new()),
            calls: Mutex::default(),
        });
        let fleet = Fleet::with_link(
            redis.clone(),
            Arc::default(),
            "sim",
            member,
            TIMEOUT,
            NonZeroU32::new(3).unwrap(),
            FleetSeries::default(),
        );
        let limiter = Limiter::on(fleet.clone());
        let lanes = Arc::new(limiter.lanes(app));
        Replica {
            redis,
            fleet,
            lanes,
        }
    }

    /// Killed: it never answers or calls again, and gives nothing back (a SIGKILL).
    fn kill(self) {
        self.redis.cut.store(true, Ordering::SeqCst);
    }
}

/// One send the limiter let go: which replica, when, and whether on its fallback share.
#[derive(Clone, Copy, Debug)]
struct Send {
    replica: usize,
    at: Instant,
    fallback: bool,
}

#[derive(Default)]
struct Record {
    sends: Vec<Send>,
    throttled: usize,
}

struct Sim {
    server: Server,
    /// Redis time's origin, shared by every replica's link.
    start: Instant,
    replicas: Vec<Replica>,
    record: Arc<Mutex<Record>>,
}

impl Sim {
    /// Three replicas of one app limited to 200/s, `replicas = 3`, `timeout_ms = 50`, all
    /// formed: each has beaten live and the new Redis epoch's quarantine is over.
    async fn formed(server: Server) -> Sim {
        Sim::formed_with(server, app()).await
    }

    /// The same with the app configured by `app`.
    async fn formed_with(server: Server, app: AppSpec) -> Sim {
        let start = Instant::now();
        let replicas = (0..3)
            .map(|i| Replica::start(&server, start, &format!("replica-{i}"), &app))
            .collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
        Sim {
            server,
            start,
            replicas,
            record: Arc::default(),
        }
    }

    /// Offers `rate` requests per second to every replica until `until`, each request
    /// taking its turn and passing the send-time guard as the proxy does.
    fn offer(&self, rate: u32, until: Instant) -> tokio::task::JoinHandle<()> {
        self.offer_from(&[Instant::now(); 3], rate, until)
    }

    /// The same, each replica from its own start.
    fn offer_from(
        &self,
        from: &[Instant],
        rate: u32,
        until: Instant,
    ) -> tokio::task::JoinHandle<()> {
        let load: Vec<_> = self
            .replicas
            .iter()
            .enumerate()
            .map(|(replica, r)| {
                let (lanes, fleet, record) =
                    (r.lanes.clone(), r.fleet.clone(), self.record.clone());
                let from = from[replica];
                tokio::spawn(async move {
                    let api = String::from("openim/sendmsg");
                    tokio::time::sleep_until(from).await;
                    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate);
                    let mut requests = Vec::new();
                    while Instant::now() < until {
                        ticks.tick().await;
                        let (lanes, fleet, record, api) =
                            (lanes.clone(), fleet.clone(), record.clone(), api.clone());
                        // Every other request holds a connection through its turn, so the
                        // guard taken with a turn is under every step too.
                        let held = (requests.len() % 2 == 0).then_some(());
                        requests.push(tokio::spawn(async move {
                            let turned = take_turn(&lanes, &api, held);
                            let sent = match turned.await {
                                Ok((turn, _)) => turn.send_now().await.is_ok(),
                                Err(_) => false,
                            };
                            let mut record = record.lock().unwrap();
                            if sent {
                                // No await since the guard let it go: the mode is the one
                                // it was sent in.
                                let fallback = fleet.fallback_in() == Some(Duration::ZERO);
                                let at = Instant::now();
                                record.sends.push(Send {
                                    replica,
                                    at,
                                    fallback,
                                });
                            } else {
                                record.throttled += 1;
                            }
                        }));
                    }
                    for request in requests {
                        request.await.unwrap();
                    }
                })
            })
            .collect();
        tokio::spawn(async move {
            for replica in load {
                replica.await.unwrap();
            }
        })
    }

    fn cut(&self, replica: usize, cut: bool) {
        self.replicas[replica]
            .redis
            .cut
            .store(cut, Ordering::SeqCst);
    }

    fn sends(&self) -> Vec<Send> {
        self.record.lock().unwrap().sends.clone()
    }
}

/// The most sends in any closed one-second window.
fn busiest_second(sends: &[Send]) -> usize {
    busiest_window(sends, WINDOW)
}

/// The most sends in any closed window of `width`.
fn busiest_window(sends: &[Send], width: Duration) -> usize {
    let mut times: Vec<Instant> = sends.iter().map(|s| s.at).collect();
    times.sort();
    let mut start = 0;
    let mut most = 0;
    for end in 0..times.len() {
        while times[end] - times[start] > width {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

fn between(sends: &[Send], from: Instant, to: Instant) -> usize {
    sends.iter().filter(|s| s.at >= from && s.at < to).count()
}

/// The module doc's two steps for one replica cut off from `cut` to `back`:
/// - at the switch, its first fallback send comes more than a second after every send Redis
///   admitted while its share still counted as Redis's (until its last live beat lapsed),
///   and no earlier than `live_until` + 1 s + `MARGIN`;
/// - at the switch back, its share is given back to Redis (its first live beat) more than a
///   second after its last fallback send.
fn assert_the_argument(sim: &Sim, replica: usize, cut: Instant, back: Instant, sends: &[Send]) {
    let beats = sim.replicas[replica].redis.beats();
    let last_live = beats
        .iter()
        .filter(|(at, live)| *live && *at <= cut)
        .map(|(at, _)| *at)
        .max()
        .expect("a live beat before the cut");
    let lapsed = last_live + EXPIRY;
    let ours: Vec<&Send> = sends.iter().filter(|s| s.replica == replica).collect();
    let fallback: Vec<Instant> = ours.iter().filter(|s| s.fallback).map(|s| s.at).collect();
    let (first, last) = (fallback[0], *fallback.last().unwrap());
    assert!(
        ours.iter()
            .all(|s| !s.fallback || (s.at > cut && s.at <= back + super::BEAT)),
        "fallback sends only while cut off"
    );
    // Redis counts it lapsed no later than the replica's own bound says.
    let live_until = last_live + TIMEOUT + EXPIRY;
    assert!(lapsed <= live_until);
    assert!(
        first >= live_until + WINDOW + MARGIN,
        "first fallback send {:?} after the cut, lapsed at {:?}",
        first - cut,
        lapsed - cut
    );
    let shared_before_lapse = sends
        .iter()
        .filter(|s| !s.fallback && s.at <= lapsed)
        .map(|s| s.at)
        .max()
        .unwrap();
    assert!(first - shared_before_lapse > WINDOW);
    // Back: the first live beat after the cut gives the share back.
    let rejoined = beats
        .iter()
        .find(|(at, live)| *live && *at > cut)
        .map(|(at, _)| *at)
        .expect("a live beat after Redis came back");
    assert!(
        rejoined - last > WINDOW,
        "share given back {:?} after the last fallback send",
        rejoined - last
    );
    // Until then every shared send ran without that share: no second holds a fallback
    // send together with a send made on the share given back.
    assert!(rejoined >= back);
}

#[tokio::test(start_paused = true)]
async fn a_replica_whose_answers_come_back_late_sends_on_none_of_them() {
    // Past the pacing rate: every turn waits, and each send asks the guard itself.
    late_answers(150, 100, 100).await;
}

#[tokio::test(start_paused = true)]
async fn a_replica_whose_answers_come_back_late_sends_on_none_of_its_turns_guards() {
    // Well under it: turns need no wait, and a request holding a connection gets its guard
    // with its turn.
    late_answers(20, 30, 30).await;
}

/// Three replicas offered `rate` each; replica 0's answers come back 30 ms after Redis ran
/// them from 2 s to 7 s. It must send on none of those admissions, serve at least `own` on
/// its fallback share meanwhile, beat as lapsed until Redis is fast again, and send at least
/// `again` on the shared lanes from 3 s after that.
async fn late_answers(rate: u32, own: usize, again: usize) {
    let Some(server) = Server::start() else {
        return;
    };
    let sim = Sim::formed(server).await;
    let t0 = Instant::now();
    let (slow, fast, end) = (
        t0 + Duration::from_secs(2),
        t0 + Duration::from_secs(7),
        t0 + Duration::from_secs(12),
    );
    // Later than FRESH and BACK, sooner than timeout_ms: nothing times out.
    let late = Duration::from_millis(30);
    assert!(late > super::FRESH && late > super::BACK && late < TIMEOUT);
    let link = &sim.replicas[0].redis;
    *link.late.lock().unwrap() = Some(Late {
        from: slow,
        until: fast,
        by: late,
    });
    sim.offer(rate, end).await.unwrap();
    let sends = sim.sends();

    let busiest = busiest_second(&sends);
    assert!(busiest <= LIMIT, "busiest second {busiest}");
    let ours = |fallback: bool, from: Instant, to: Instant| {
        sends
            .iter()
            .filter(|s| s.replica == 0 && s.fallback == fallback && s.at > from && s.at <= to)
            .count()
    };
    // Every call Redis ran from `slow` until `fast` came back 30 ms late, and a send follows
    // the answer that admits it at once: no shared send from `slow` until `fast` (at `fast`
    // itself, Redis answers at once again).
    let on_late: Vec<Duration> = sends
        .iter()
        .filter(|s| s.replica == 0 && !s.fallback && (slow..fast).contains(&s.at))
        .map(|s| s.at - slow)
        .collect();
    assert!(
        on_late.is_empty(),
        "shared sends on late answers, at these times after the first: {on_late:?}"
    );
    // Two late answers to one guard lose Redis; after the pause that takes, it serves on
    // its own share (66 × 0.96 ≈ 63/s).
    let served = ours(true, slow, fast);
    assert!(
        served >= own,
        "{served} sends on its own share while Redis answered late"
    );
    // A late heartbeat does not bring it back: it beats as lapsed until Redis is fast again.
    let live_while_late = link
        .beats()
        .iter()
        .filter(|(at, live)| *live && *at > slow + Duration::from_millis(500) && *at <= fast)
        .count();
    assert_eq!(live_while_late, 0, "live beats while Redis answered late");
    // Operators see why (`timgate_fleet_late_answers_total`); the others saw nothing late.
    let series = |replica: usize| &sim.replicas[replica].fleet.series;
    assert!(series(0).late_checks.get() >= 2 && series(0).late_beats.get() >= 1);
    assert_eq!(series(1).late_checks.get() + series(1).late_beats.get(), 0);
    // Fast again: back to the shared lanes.
    let shared = ours(false, fast + Duration::from_secs(3), end);
    assert!(
        shared >= again,
        "{shared} shared sends once Redis was fast again"
    );
}

/// Waits until `at`, then cuts (or restores) the links of `replicas`.
async fn at(sim: &Sim, at: Instant, replicas: &[usize], cut: bool) {
    tokio::time::sleep_until(at).await;
    for replica in replicas {
        sim.cut(*replica, cut);
    }
}

#[tokio::test(start_paused = true)]
async fn a_partial_partition_keeps_the_sum_under_the_limit_and_the_others_serving() {
    let Some(server) = Server::start() else {
        return;
    };
    let sim = Sim::formed(server).await;
    let t0 = Instant::now();
    let (cut, back) = (t0 + Duration::from_secs(2), t0 + Duration::from_secs(7));
    // The worst case for the switch: the cut replica held no reservations in Redis (it was
    // idle), the others keep the shared lane full, and its own load starts with the cut.
    let load = sim.offer_from(&[cut, t0, t0], 150, t0 + Duration::from_secs(12));
    at(&sim, cut, &[0], true).await;
    at(&sim, back, &[0], false).await;
    load.await.unwrap();
    let sends = sim.sends();

    let busiest = busiest_second(&sends);
    assert!(busiest <= LIMIT, "busiest second {busiest}");
    assert_the_argument(&sim, 0, cut, back, &sends);
    // The other two never pause: their shared lane runs at the whole limit until the cut
    // replica's heartbeat lapses, then without its share, at (200 − 66) × 0.96 ≈ 129/s.
    // (Had the cut replica held reservations, the others would lose those slots, up to
    // max_queue_wait_ms ahead: nobody can use them any more.)
    let others = |from: Instant, to: Instant| {
        let theirs: Vec<Send> = sends.iter().filter(|s| s.replica != 0).copied().collect();
        between(&theirs, from, to)
    };
    for second in 0..5 {
        let from = cut + Duration::from_secs(second);
        let n = others(from, from + WINDOW);
        assert!(
            n >= 115,
            "the others served {n} in second {second} of the cut"
        );
    }
    // The cut replica serves its share (66 × 0.96 ≈ 63/s) after its pause.
    let own = sends
        .iter()
        .filter(|s| s.replica == 0 && s.at >= cut + Duration::from_secs(3) && s.at < back)
        .count();
    assert!(own >= 110, "the cut replica served {own} in its last 2 s");
    // The whole fleet: at least 90% of 200/s in steady partition and within 3 s of the return.
    let during = between(&sends, cut + Duration::from_secs(3), back);
    assert!(
        during >= 360,
        "fleet served {during} in 2 s of the partition"
    );
    let after = between(
        &sends,
        back + Duration::from_secs(3),
        back + Duration::from_secs(5),
    );
    assert!(
        after >= 360,
        "fleet served {after} in 2 s from 3 s after the return"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_outage_pauses_then_serves_the_shares_and_the_sum_stays_under_the_limit() {
    let Some(server) = Server::start() else {
        return;
    };
    let sim = Sim::formed(server).await;
    let t0 = Instant::now();
    let load = sim.offer(150, t0 + Duration::from_secs(12));
    let (cut, back) = (t0 + Duration::from_secs(2), t0 + Duration::from_secs(7));
    at(&sim, cut, &[0, 1, 2], true).await;
    // Each replica leaves Redis timeout_ms after its first call into the stall (a request
    // every 6.7 ms: by cut + 6.7 ms each has made one), and a request that arrives then is
    // answered at once (429 until the share may be spent), not stuck.
    tokio::time::sleep_until(cut + TIMEOUT + Duration::from_millis(10)).await;
    let api = String::from("openim/sendmsg");
    for replica in &sim.replicas {
        assert!(
            replica
                .fleet
                .fallback_in()
                .is_some_and(|wait| !wait.is_zero())
        );
        let asked = Instant::now();
        assert!(replica.lanes.turn(&api, &[], MAX_WAIT).await.is_err());
        assert_eq!(Instant::now(), asked, "answered without waiting");
    }
    at(&sim, back, &[0, 1, 2], false).await;
    load.await.unwrap();
    let sends = sim.sends();

    let busiest = busiest_second(&sends);
    assert!(busiest <= LIMIT, "busiest second {busiest}");
    for replica in 0..3 {
        assert_the_argument(&sim, replica, cut, back, &sends);
    }
    // A pause of a few seconds at most, then the fleet at about L: three shares of 66 at
    // 0.96 ≈ 190/s.
    let first = sends
        .iter()
        .filter(|s| s.fallback)
        .map(|s| s.at)
        .min()
        .unwrap();
    assert!(
        first - cut <= Duration::from_millis(2500),
        "{:?}",
        first - cut
    );
    let during = between(&sends, cut + Duration::from_secs(3), back);
    assert!(during >= 360, "fleet served {during} in 2 s of the outage");
    let after = between(
        &sends,
        back + Duration::from_secs(3),
        back + Duration::from_secs(5),
    );
    assert!(
        after >= 360,
        "fleet served {after} in 2 s from 3 s after the return"
    );
    assert!(sim.record.lock().unwrap().throttled > 0);
}

#[tokio::test(start_paused = true)]
async fn redis_that_lost_its_state_admits_nothing_until_no_second_can_hold_old_and_new() {
    let Some(server) = Server::start() else {
        return;
    };
    let sim = Sim::formed(server).await;
    let t0 = Instant::now();
    let load = sim.offer(150, t0 + Duration::from_secs(10));
    // Replica 0 is cut off and spends its share; Redis restarts empty; replica 0 comes back
    // within the quarantine, so its probe registers its claim before the new Redis admits
    // anything. (A replica that stays cut off from the new Redis is not accounted there: the
    // module doc's known limit 3.)
    let (cut, back) = (t0 + Duration::from_secs(2), t0 + Duration::from_secs(5));
    at(&sim, cut, &[0], true).await;
    tokio::time::sleep_until(t0 + Duration::from_millis(4400)).await;
    let mut connection = sim.server.connection();
    redis::cmd("FLUSHALL").query::<()>(&mut connection).unwrap();
    let flushed = Instant::now();
    at(&sim, back, &[0], false).await;
    load.await.unwrap();
    let sends = sim.sends();

    let busiest = busiest_second(&sends);
    assert!(busiest <= LIMIT, "busiest second {busiest}");
    // Nothing admitted in Redis from the flush for the quarantine: the first shared send
    // after it is more than a second after the last one before it.
    let before = sends
        .iter()
        .filter(|s| !s.fallback && s.at <= flushed)
        .map(|s| s.at)
        .max()
        .unwrap();
    let after = sends
        .iter()
        .filter(|s| !s.fallback && s.at > flushed)
        .map(|s| s.at)
        .min()
        .unwrap();
    assert!(after - before > WINDOW, "{:?}", after - before);
    assert_the_argument(&sim, 0, cut, back, &sends);
}

/// The guard op at Redis time `now` (µs) for one lane at `limit`: whether it admitted.
fn guard_at(connection: &mut redis::Connection, now: i64, limit: u32) -> bool {
    let keys = ["t:members", "t:claims", "t:epoch", "t:lane:1"];
    let args = ["guard".to_owned(), now.to_string(), limit.to_string()];
    let wait: i64 = redis::cmd("EVAL")
        .arg(super::script(EXPIRY, Duration::ZERO))
        .arg(keys.len())
        .arg(&keys)
        .arg(&args)
        .query(connection)
        .unwrap();
    wait == 0
}

/// The most of `admitted` (µs, sorted) in any window of `width` µs, counting only windows
/// that hold one at or after `from`.
fn busiest_window_from(admitted: &[i64], width: i64, from: i64) -> usize {
    let mut most = 0;
    let mut start = 0;
    for end in 0..admitted.len() {
        while admitted[end] - admitted[start] >= width {
            start += 1;
        }
        if admitted[end] >= from {
            most = most.max(end - start + 1);
        }
    }
    most
}

#[test]
fn a_lowered_limit_holds_in_every_second_that_holds_a_send_under_it() {
    let Some(server) = Server::start() else {
        return;
    };
    let mut connection = server.connection();
    // One replica asks every millisecond: at 100/s for 3 s, then at 50/s.
    let switch = REDIS_EPOCH + 3_000_000;
    let end = switch + 4_000_000;
    let admitted: Vec<i64> = (REDIS_EPOCH..end)
        .step_by(1_000)
        .filter(|&now| guard_at(&mut connection, now, if now < switch { 100 } else { 50 }))
        .collect();
    let second = 1_000_000;
    assert!(busiest_window_from(&admitted, second, REDIS_EPOCH) <= 100);
    assert!(
        busiest_window_from(&admitted, second, switch) <= 50,
        "{} in a second that holds a send at the lowered limit",
        busiest_window_from(&admitted, second, switch)
    );
    // The lowered lane serves again: after its quiet second, close to its new pace.
    let after = admitted
        .iter()
        .filter(|&&t| t >= switch + 2 * second)
        .count();
    assert!(after >= 90, "{after} sends in the last two seconds at 50/s");

    // Replicas that still ask with the old limit beside one that asks with the new do not
    // keep the lane quiet: the lowering is seen once, and sends go on.
    let mixed: Vec<i64> = (end..end + 3 * second)
        .step_by(1_000)
        .filter(|&now| {
            guard_at(
                &mut connection,
                now,
                if now % 2_000 == 0 { 100 } else { 50 },
            )
        })
        .collect();
    assert!(
        mixed.len() >= 100,
        "{} sends in 3 s of mixed limits",
        mixed.len()
    );
}

/// A quota over a minute through a full outage: the replicas spend their shares of it only
/// a minute after Redis surely counted them out (the shared lane admitted up to the whole
/// quota until then), and after the return Redis keeps their shares off that lane until
/// their fallback sends' minute is over — while they beat live again at once, so the
/// second-long lanes get their shares back within a second. No closed minute holds more
/// than the quota.
#[tokio::test(start_paused = true)]
async fn a_per_minute_quota_holds_through_an_outage_and_the_return() {
    let Some(server) = Server::start() else {
        return;
    };
    const QUOTA: usize = 1200;
    let mut app = app();
    app.api_quotas.push(Quota {
        api: "openim/sendmsg".to_owned(),
        rate: NonZeroU32::new(QUOTA as u32).unwrap(),
        per: Per::Minute,
        cost: None,
        key: None,
        max_cost: None,
    });
    let sim = Sim::formed_with(server, app).await;
    // Its quota keeps lanes on each replica too, which pace before Redis: its turns never
    // guard in the same call, so no request takes a connection for it (another API does).
    let lanes = &sim.replicas[0].lanes;
    assert!(!lanes.guards_with_turn("openim/sendmsg"));
    assert!(lanes.guards_with_turn("openim/querystate"));
    let t0 = Instant::now();
    let minute = Duration::from_secs(60);
    // The quota lane opens a minute after Redis's epoch (`formed` waited 2 s of it); the cut
    // comes after it admitted for a whole minute.
    let end = t0 + Duration::from_secs(330);
    let load = sim.offer(15, end);
    let (cut, back) = (t0 + Duration::from_secs(130), t0 + Duration::from_secs(230));
    at(&sim, cut, &[0, 1, 2], true).await;
    at(&sim, back, &[0, 1, 2], false).await;
    load.await.unwrap();
    let sends = sim.sends();

    let busiest = busiest_window(&sends, minute);
    assert!(busiest <= QUOTA, "{busiest} sends in one minute");
    // The shares are spent a minute (and the lapse) after the cut, and serve about the quota.
    let fallback: Vec<Instant> = sends.iter().filter(|s| s.fallback).map(|s| s.at).collect();
    let first = *fallback.iter().min().expect("fallback sends in the outage");
    assert!(
        first >= cut + minute,
        "first fallback send {:?} after the cut",
        first - cut
    );
    let during = between(&sends, cut + Duration::from_secs(65), back);
    assert!(
        during >= 30 * 18,
        "{during} sent in the last 35 s of the outage"
    );
    // Back: live again within a couple of beats...
    for replica in &sim.replicas {
        let rejoined = replica
            .redis
            .beats()
            .iter()
            .find(|(at, live)| *live && *at > back)
            .map(|(at, _)| *at)
            .expect("a live beat after the return");
        assert!(
            rejoined - back < 2 * WINDOW,
            "live {:?} after the return",
            rejoined - back
        );
    }
    // ...while the minute lane serves again once the fallback sends' minute is over.
    // Until then the lane has only what no share claims: 1,200 − 3 × 399 = 3 a minute.
    let last = *fallback.iter().max().unwrap();
    let unclaimed = QUOTA - 3 * (QUOTA * 333_333 / 1_000_000);
    let early = sends
        .iter()
        .filter(|s| !s.fallback && s.at > back && s.at <= last + minute)
        .count();
    assert!(
        early <= unclaimed,
        "{early} shared sends within the fallback sends' minute"
    );
    assert!(between(&sends, last + minute + Duration::from_secs(5), end) >= 30 * 18);
}

/// Which ops this replica's Redis ran, and how many times each.
fn ops_run(redis: &FixedRedis, op: &str) -> usize {
    redis
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, args)| args[0] == op)
        .count()
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_share_script_calls() {
    let Some(server) = Server::start() else {
        return;
    };
    // Limits far above the load: no turn waits, so the guards are asked together too.
    let mut high = app();
    high.rate_limit = NonZeroU32::new(100_000).unwrap();
    high.api_limits.insert(
        "openim/sendmsg".to_owned(),
        NonZeroU32::new(100_000).unwrap(),
    );
    let sim = Sim::formed_with(server, high).await;
    let replica = &sim.replicas[0];
    let group = replica.fleet.group(1);
    let api = String::from("openim/sendmsg");
    // Each kind's calls are held until all 100 asks are in (in calls or queued), as when
    // they arrive together: otherwise how many ride one call would depend on how fast the
    // real Redis answers beside the tasks still asking (the paused clock stands still while
    // a call is on the wire, however long it takes).
    replica.redis.hold(&["turns", "guards"]);
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let (lanes, api) = (replica.lanes.clone(), api.clone());
            tokio::spawn(async move {
                let turn = lanes.turn(&api, &[], MAX_WAIT).await.ok()?;
                turn.send_now().await.ok()?;
                Some(Instant::now())
            })
        })
        .collect();
    let all_in = |batches: &batch::Batches| {
        let (out, queued) = batches.load();
        out + queued == 100
    };
    while !all_in(&group.turns) {
        tokio::task::yield_now().await;
    }
    // The sends pass this replica's own guard first, which spreads them over a millisecond
    // or so: the paused clock moves on, well within `timeout_ms`, until all have asked.
    replica.redis.hold(&["guards"]);
    let deadline = Instant::now() + TIMEOUT / 2;
    while !all_in(&group.guards) {
        assert!(Instant::now() < deadline, "{:?}", group.guards.load());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    replica.redis.hold(&[]);
    for request in requests {
        request.await.unwrap().expect("a turn and a send");
    }
    // 100 turns and 100 guards went to Redis in far fewer calls than 200: one per batch.
    let (turns, guards) = (
        ops_run(&replica.redis, "turns"),
        ops_run(&replica.redis, "guards"),
    );
    assert!(
        turns + guards <= 20,
        "{turns} turn calls, {guards} guard calls"
    );
    assert_eq!(
        ops_run(&replica.redis, "turn") + ops_run(&replica.redis, "guard"),
        0
    );
    assert_eq!(replica.fleet.fallback_in(), None, "still in Redis");
}

#[tokio::test(start_paused = true)]
async fn an_ask_whose_call_was_dropped_asks_again_and_the_call_place_passes_on() {
    let Some(server) = Server::start() else {
        return;
    };
    let sim = Sim::formed(server).await;
    // The group app 1's lanes hold: the one whose calls they make.
    let fleet = sim.replicas[0].fleet.group(1);
    let lane = [Ask::calls(
        fleet.key(1, None).into(),
        NonZeroU32::new(200).unwrap(),
        Scope::App,
    )];
    let wait = Wait {
        longest: 1_000_000,
        guard_too: false,
    };
    let ask = |fleet: &Arc<Group>| {
        let (fleet, lane) = (fleet.clone(), lane.clone());
        tokio::spawn(async move { fleet.ask(Kind::Turns, Some(wait), &lane).await })
    };
    async fn until(fleet: &Group, load: (usize, usize)) {
        while fleet.turns.load() != load {
            tokio::task::yield_now().await;
        }
    }
    // Two calls out on a stalled link; five asks queued behind them.
    sim.cut(0, true);
    let leaders = [ask(&fleet), ask(&fleet)];
    until(&fleet, (2, 0)).await;
    let followers: Vec<_> = (0..5).map(|_| ask(&fleet)).collect();
    until(&fleet, (2, 5)).await;
    // The first leader's caller leaves: its place goes to the first follower, whose call
    // takes the other four along (and stalls too).
    leaders[0].abort();
    until(&fleet, (2, 0)).await;
    sim.cut(0, false);
    // That follower's caller leaves as well: the four it carried ask again, on their own.
    followers[0].abort();
    let mut answered = 0;
    for follower in followers.into_iter().skip(1) {
        let answer = follower.await.unwrap().expect("asked again, and answered");
        assert_eq!(answer[0], 1, "one lane reserved: {answer:?}");
        answered += 1;
    }
    assert_eq!(answered, 4);
    leaders[1].abort();
    // Every place came back: none is held by a caller that left.
    until(&fleet, (0, 0)).await;
}

/// A turn in the limiter's two phases, as the proxy takes it: `held` (a stand-in for a ready
/// connection) is kept through a turn granted at once, and let go before a wait.
async fn take_turn<'a, T>(
    lanes: &'a Lanes,
    api: &str,
    held: Option<T>,
) -> Result<(crate::Turn<'a>, Option<T>), crate::Throttled> {
    match lanes.ask(api, None, &[], MAX_WAIT, held.is_some()).await? {
        Asked::Granted(turn) => Ok((turn, held)),
        Asked::Waiting(waiting) => {
            drop(held);
            Ok((waiting.await?, None))
        }
    }
}

/// Stands for a ready connection a request holds through its turn; notes when it is let go.
struct HeldFlag(Arc<Mutex<Option<Instant>>>);

impl HeldFlag {
    fn new() -> (HeldFlag, Arc<Mutex<Option<Instant>>>) {
        let at = Arc::new(Mutex::new(None));
        (HeldFlag(at.clone()), at)
    }
}

impl Drop for HeldFlag {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(Instant::now());
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_holding_a_connection_whose_turn_is_free_makes_one_redis_call() {
    let Some(server) = Server::start() else {
        return;
    };
    let sim = Sim::formed(server).await;
    let replica = &sim.replicas[0];
    let api = String::from("openim/sendmsg");
    assert!(replica.lanes.guards_with_turn(&api));
    let calls = || ops_run(&replica.redis, "turns") + ops_run(&replica.redis, "guards");
    // A free lane: the turn and the send-time guard in one call; the connection comes back.
    let before = calls();
    let (held, let_go) = HeldFlag::new();
    let (turn, held) = take_turn(&replica.lanes, &api, Some(held)).await.unwrap();
    assert!(held.is_some() && let_go.lock().unwrap().is_none());
    turn.send_now().await.unwrap();
    assert_eq!(calls() - before, 1, "one call for the turn and the guard");
    assert_eq!(ops_run(&replica.redis, "guards"), 0);
    drop(held);
    // Requests back to back outrun the lane's pacing (192/s), so turns wait: a turn that
    // waits lets its connection go before the wait (the paused clock moves only by waits),
    // and its send asks the guard itself.
    let mut waited = 0;
    for _ in 0..20 {
        let before = calls();
        let (held, let_go) = HeldFlag::new();
        let asked = Instant::now();
        let (turn, held) = take_turn(&replica.lanes, &api, Some(held)).await.unwrap();
        let granted = Instant::now();
        turn.send_now().await.unwrap();
        if held.is_some() {
            assert_eq!(calls() - before, 1);
            continue;
        }
        waited += 1;
        assert!(granted > asked, "a turn without a wait kept no connection");
        let at = let_go.lock().unwrap().expect("let go");
        assert!(at < granted, "the connection was held through the wait");
        assert_eq!(calls() - before, 2, "a turn, then a guard of its own");
    }
    assert!(waited >= 10, "only {waited} of 20 turns waited");
}

/// The app's members in Redis (name → last beat's Redis time, µs) and its claims hash.
fn membership(sim: &Sim) -> (HashMap<String, i64>, HashMap<String, String>) {
    let mut connection = sim.server.connection();
    let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg("{sim}:members:1")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut connection)
        .unwrap();
    let claims: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("{sim}:claims:1")
        .query(&mut connection)
        .unwrap();
    let members = members.into_iter().map(|(m, s)| (m, s as i64)).collect();
    (members, claims)
}

/// The members live at Redis time `now` (last live beat within `EXPIRY`).
fn live(members: &HashMap<String, i64>, now: i64) -> usize {
    let expiry = EXPIRY.as_micros() as i64;
    members.values().filter(|at| **at >= now - expiry).count()
}

/// The sum of the members' claims (the `~` and `@` fields are not claims).
fn claimed(claims: &HashMap<String, String>) -> u64 {
    claims
        .iter()
        .filter(|(name, _)| !name.starts_with(['~', '@', '#']))
        .map(|(_, claim)| claim.parse::<u64>().unwrap())
        .sum()
}

/// The incarnation token that holds `name` in Redis.
fn holder(claims: &HashMap<String, String>, name: &str) -> String {
    let held = &claims[&format!("@{name}")];
    held.split(' ').next().unwrap().to_owned()
}

/// This replica's claim on app 1 (millionths).
fn held(replica: &Replica) -> u32 {
    replica.fleet.group(1).claim().held
}

#[tokio::test(start_paused = true)]
async fn a_replica_restarted_under_its_name_takes_its_place_claim_and_all() {
    let Some(server) = Server::start() else {
        return;
    };
    let mut sim = Sim::formed(server).await;
    let old_token = sim.replicas[2].fleet.token.clone();
    let killed = Instant::now();
    sim.replicas.remove(2).kill();
    // Started again 300 ms later, under its name: its predecessor's last beat is younger
    // than EXPIRY, so Redis cannot tell it from a live one yet and refuses the name.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = Replica::start(&sim.server, sim.start, "replica-2", &app());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(held(&again), 0, "no claim while the name is held");
    assert_eq!(holder(&membership(&sim).1, "replica-2"), old_token);
    sim.replicas.push(again);
    // Its place, a beat after the predecessor's last beat lapsed: three live members, one
    // claim each, and the whole limit shared again.
    tokio::time::sleep_until(killed + EXPIRY + 3 * super::BEAT).await;
    let (members, claims) = membership(&sim);
    let now = sim.replicas[0].redis.now();
    assert_eq!((members.len(), live(&members, now)), (3, 3), "{members:?}");
    assert!(claimed(&claims) <= 1_000_000, "{claims:?}");
    assert_eq!(claims["#"].parse::<u64>().unwrap(), claimed(&claims));
    let new_token = sim.replicas[2].fleet.token.clone();
    assert_eq!(holder(&claims, "replica-2"), new_token);
    assert_eq!(sim.replicas[2].fleet.name(), "replica-2", "not renamed");
    assert!(held(&sim.replicas[2]) > 0);
    let t0 = Instant::now();
    let load = sim.offer(150, t0 + Duration::from_secs(3));
    load.await.unwrap();
    let sends = sim.sends();
    assert!(busiest_second(&sends) <= LIMIT);
    // 0.96 × 200 a second with the whole limit; with the dead member's share still held
    // off the lanes (its claim kept for RETAIN, as before names) 0.96 × 134.
    let served = between(&sends, t0 + WINDOW, t0 + 3 * WINDOW);
    assert!(served >= 360, "served {served} in 2 s after the restart");
    // A process's leave takes away only its own incarnation's place.
    let leave = |token: &str| {
        let _: i64 = redis::cmd("EVAL")
            .arg(&*SCRIPT)
            .arg(3)
            .arg(&["{sim}:members:1", "{sim}:claims:1", "{sim}:epoch"])
            .arg(&["leave", "", "replica-2", token])
            .query(&mut sim.server.connection())
            .unwrap();
    };
    leave(&old_token);
    assert!(membership(&sim).0.contains_key("replica-2"));
    leave(&new_token);
    let (members, claims) = membership(&sim);
    assert!(!members.contains_key("replica-2"));
    assert!(!claims.keys().any(|field| field.ends_with("replica-2")));
    assert_eq!(claims["#"].parse::<u64>().unwrap(), claimed(&claims));
}

#[tokio::test(start_paused = true)]
async fn a_second_live_process_under_one_name_holds_no_share_and_is_renamed() {
    let Some(server) = Server::start() else {
        return;
    };
    let sim = Sim::formed(server).await;
    let first = sim.replicas[0].fleet.token.clone();
    let before = held(&sim.replicas[0]);
    let t0 = Instant::now();
    let second = Replica::start(&sim.server, sim.start, "replica-0", &app());
    // Refused while the first beats: no claim, no place, the first's untouched.
    for _ in 0..5 {
        tokio::time::sleep(super::BEAT).await;
        let (members, claims) = membership(&sim);
        assert_eq!(members.len(), 3);
        assert_eq!(holder(&claims, "replica-0"), first);
        assert_eq!(held(&second), 0);
        assert_eq!(second.fleet.name(), "replica-0");
        assert_eq!(held(&sim.replicas[0]), before);
    }
    // Past HELD it takes its own name, and a claim under it from what is free.
    tokio::time::sleep_until(t0 + super::HELD + 4 * super::BEAT).await;
    let renamed = format!("replica-0-{}", second.fleet.token);
    assert_eq!(second.fleet.name(), renamed);
    let (members, claims) = membership(&sim);
    let now = sim.replicas[0].redis.now();
    assert_eq!((members.len(), live(&members, now)), (4, 4), "{members:?}");
    assert_eq!(holder(&claims, "replica-0"), first);
    assert_eq!(holder(&claims, &renamed), second.fleet.token);
    assert!(claimed(&claims) <= 1_000_000, "{claims:?}");
    assert_eq!(claims["#"].parse::<u64>().unwrap(), claimed(&claims));
}

#[tokio::test(start_paused = true)]
async fn cut_off_a_call_over_half_the_quotas_share_waits_for_redis_then_is_refused_saying_so() {
    let Some(server) = Server::start() else {
        return;
    };
    // 900 recipients a second, one call up to 500: 299 each on three replicas' shares, so
    // while cut off a call of at most 149 goes on the share and a larger one cannot.
    let mut small = app();
    small.api_quotas = vec![Quota {
        api: "openim/batchsendmsg".to_owned(),
        rate: NonZeroU32::new(900).unwrap(),
        per: Per::Second,
        cost: Some("To_Account".to_owned()),
        key: None,
        max_cost: Some((NonZeroU32::new(500).unwrap(), 90011)),
    }];
    let sim = Sim::formed_with(server, small).await;
    let (lanes, fleet) = (&sim.replicas[0].lanes, &sim.replicas[0].fleet);
    let api = "openim/batchsendmsg";
    let costing = |n: u32| {
        [crate::Measured {
            cost: NonZeroU32::new(n).unwrap(),
            key: None,
        }]
    };
    let send = |n: u32| async move {
        let turn = lanes.turn_as(api, None, &costing(n), MAX_WAIT).await?;
        turn.send_now().await
    };
    // In Redis, the whole quota: a call of 400 goes.
    send(400).await.unwrap();
    sim.cut(0, true);
    send(1).await.unwrap_err();
    // In fallback once Redis surely counts it lapsed and a second more has passed.
    let deadline = Instant::now() + 4 * WINDOW;
    while fleet.fallback_in() != Some(Duration::ZERO) {
        assert!(Instant::now() < deadline, "in fallback by now");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    send(149).await.unwrap();
    let asked = Instant::now();
    let refused = send(150).await.unwrap_err();
    assert_eq!(refused.scope, Scope::Share);
    assert!(
        asked.elapsed() >= MAX_WAIT - super::BEAT,
        "refused after {:?}: it waits for Redis first",
        asked.elapsed()
    );
    // Redis back while it waits: through Redis, the whole quota again.
    let asked = Instant::now();
    let back = tokio::spawn({
        let sim_redis = sim.replicas[0].redis.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sim_redis.cut.store(false, Ordering::SeqCst);
        }
    });
    send(400).await.unwrap();
    back.await.unwrap();
    assert!(
        asked.elapsed() < MAX_WAIT,
        "sent {:?} after",
        asked.elapsed()
    );
    assert_eq!(fleet.fallback_in(), None);
}
