//! A turn through the fleet's Redis on loopback against the same turn local-only, in the
//! same run: the latency each request gains (median and p99 of one turn plus its send-time
//! check) and the throughput of one replica (sequential turns per second), as a ratio.
//! The baseline is a plain `PING` round trip to the same Redis, interleaved with the turns in
//! the same rounds: a turn is two script calls (the turn, then the send-time guard), so on a
//! quiet machine it costs about two PINGs, and noise from other load moves both alike. A
//! request that holds a ready connection through its turn (the gateway's usual case) makes
//! one call, the turn with the guard: timed as its own row.
//! Last, Redis's own figures for the one-call row (`INFO commandstats` and `INFO cpu`: time
//! per script call and the server's CPU per call), which other load on the machine moves
//! far less than round trips.
//! Starts its own `redis-server` on a free port; without one on PATH it says so and exits.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use timgate::api::Api;
use timgate::config::Config;
use timgate::limiter::{Asked, Lanes, Limiter};
use timgate::metrics::Metrics;

/// Apps taken in turn: at 1,000,000/s (the highest limit) a lane paces one turn per ~1 µs,
/// and a local turn can be quicker than that; with 16 lanes none of them ever has to wait
/// (a wait would be a timer of at least 1 ms, which is the bench, not the limiter). The API
/// gets an `api_limits` entry as high: without one it keeps its implicit 200/s lane, and
/// the bench would time that limit.
const APPS: u64 = 16;

fn apps() -> String {
    (1..=APPS)
        .map(|id| format!("[[apps]]\nsdkappid = {id}\nidentifier = \"a\"\nsecret_key = \"k\"\nregion = \"usa\"\nrate_limit = 1000000\n[apps.api_limits]\n\"openim/sendmsg\" = 1000000\n"))
        .collect()
}

/// Times `n` acquisitions one after another, on the apps in turn; returns each one's duration.
/// `hold`: each turn is taken holding a (stand-in) ready connection.
async fn times(lanes: &[Lanes], api: &Api, n: usize, hold: bool) -> Vec<Duration> {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        let asked = lanes[i % lanes.len()].ask(api, None, &[], Duration::from_secs(1), hold);
        let turn = match asked.await.unwrap() {
            Asked::Granted(turn) => turn,
            Asked::Waiting(waiting) => waiting.await.unwrap(),
        };
        turn.send_now().await.unwrap();
        took.push(start.elapsed());
    }
    took
}

/// Times `n` calls of `cmd` one after another.
async fn round_trips(
    redis: &mut redis::aio::ConnectionManager,
    cmd: &redis::Cmd,
    n: usize,
) -> Vec<Duration> {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let _: redis::Value = cmd.query_async(redis).await.unwrap();
        took.push(start.elapsed());
    }
    took
}

/// Redis's `INFO section`.
async fn info(redis: &mut redis::aio::ConnectionManager, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(redis)
        .await
        .unwrap()
}

/// The script calls Redis ran while `work` ran, their time (µs, commandstats) and the
/// server's main thread's CPU time (µs) meanwhile.
async fn redis_time<T>(
    redis: &mut redis::aio::ConnectionManager,
    work: impl std::future::Future<Output = T>,
) -> (u64, f64, f64) {
    let cpu = |info: &str| -> f64 {
        ["used_cpu_user_main_thread:", "used_cpu_sys_main_thread:"]
            .iter()
            .map(|name| field(info, name))
            .sum::<f64>()
            * 1e6
    };
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(redis)
        .await
        .unwrap();
    let before = info(redis, "cpu").await;
    work.await;
    let after = info(redis, "cpu").await;
    let stats = info(redis, "commandstats").await;
    let evalsha = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:"))
        .unwrap_or_default()
        .replace(',', "\n");
    (
        field(&evalsha, "calls=") as u64,
        field(&evalsha, "usec="),
        cpu(&after) - cpu(&before),
    )
}

/// The number after `name` at the start of one of `text`'s lines (0 without one).
fn field(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Kills the `redis-server` it holds, also when the bench panics.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn main() {
    let Some(port) = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port())
    else {
        return;
    };
    let Ok(server) = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
    else {
        println!("fleet bench SKIPPED: redis-server is not on PATH");
        return;
    };
    let _server = Server(server);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let local_config = Config::from_toml(&apps()).unwrap();
        let fleet_config = Config::from_toml(&format!(
            "[fleet]\nredis_url = \"redis://127.0.0.1:{port}/0\"\ntimeout_ms = 50\n{}",
            apps()
        ))
        .unwrap();
        let plain = Limiter::default();
        let local: Vec<Lanes> = local_config.apps.iter().map(|a| plain.lanes(a)).collect();
        let metrics = Metrics::new(&fleet_config.apps);
        let limiter = Limiter::new(fleet_config.fleet.as_ref(), metrics.fleet());
        let shared: Vec<Lanes> = fleet_config.apps.iter().map(|a| limiter.lanes(a)).collect();
        let api = Api::from_path("/v4/openim/sendmsg").unwrap();
        let url = format!("redis://127.0.0.1:{port}/0");
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).unwrap();
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        let client = redis::Client::open(info.set_tcp_settings(tcp)).unwrap();
        let mut redis = redis::aio::ConnectionManager::new(client).await.unwrap();
        // Baselines on the same kind of connection: a PING, and the smallest script.
        let ping = redis::cmd("PING");
        let mut eval = redis::cmd("EVAL");
        eval.arg("return 0").arg(0);
        // A fresh Redis holds its guard shut for the quarantine: wait it out, warm up.
        tokio::time::sleep(timgate::limiter::QUARANTINE + Duration::from_millis(300)).await;
        times(&shared, &api, 1000, false).await;
        times(&local, &api, 1000, false).await;
        let (mut local_times, mut shared_times) = (Vec::new(), Vec::new());
        let mut held_times = Vec::new();
        let (mut local_total, mut shared_total) = (Duration::ZERO, Duration::ZERO);
        let (mut ping_times, mut eval_times) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            ping_times.extend(round_trips(&mut redis, &ping, 2000).await);
            eval_times.extend(round_trips(&mut redis, &eval, 2000).await);
            let start = Instant::now();
            local_times.extend(times(&local, &api, 2000, false).await);
            local_total += start.elapsed();
            let start = Instant::now();
            shared_times.extend(times(&shared, &api, 2000, false).await);
            shared_total += start.elapsed();
            held_times.extend(times(&shared, &api, 2000, true).await);
        }
        for series in [
            &mut local_times,
            &mut shared_times,
            &mut held_times,
            &mut ping_times,
            &mut eval_times,
        ] {
            series.sort();
        }
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let row = |name: &str, t: &[Duration]| {
            println!(
                "{name:<34} p50 {:>8.1} µs  p90 {:>8.1} µs  p99 {:>8.1} µs  p99.9 {:>8.1} µs",
                us(percentile(t, 0.5)),
                us(percentile(t, 0.9)),
                us(percentile(t, 0.99)),
                us(percentile(t, 0.999)),
            );
        };
        row("PING round trip (baseline)", &ping_times);
        row("EVAL 'return 0' round trip", &eval_times);
        row("local-only turn + send check", &local_times);
        row("fleet turn + send check (2 calls)", &shared_times);
        row("fleet, connection held (1 call)", &held_times);
        let added = |p| us(percentile(&shared_times, p)) - us(percentile(&local_times, p));
        println!(
            "added per request by [fleet]: median {:.1} µs, p99 {:.1} µs (target p99 < 1000 µs); in PING round trips: median {:.2}, p99 {:.2} (two calls: 2 if a script call cost a PING)",
            added(0.5),
            added(0.99),
            us(percentile(&shared_times, 0.5)) / us(percentile(&ping_times, 0.5)),
            us(percentile(&shared_times, 0.99)) / us(percentile(&ping_times, 0.99)),
        );
        let held = |p| us(percentile(&held_times, p)) - us(percentile(&local_times, p));
        println!(
            "added with the connection held (one call): median {:.1} µs, p99 {:.1} µs",
            held(0.5),
            held(0.99),
        );
        println!(
            "one replica, one turn at a time: fleet {:.0}/s, local {:.0}/s (request throughput with concurrency: the load bench)",
            20_000.0 / shared_total.as_secs_f64(),
            20_000.0 / local_total.as_secs_f64(),
        );
        let (calls, usec, cpu) = redis_time(&mut redis, times(&shared, &api, 5000, true)).await;
        println!(
            "Redis's own, a turn with its send check (one call): {calls} calls, {:.1} µs a call \
             (INFO commandstats), {:.1} µs of redis-server CPU a call (INFO cpu)",
            usec / calls as f64,
            cpu / calls as f64,
        );
    });
}
