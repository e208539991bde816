//! A turn through the fleet's Redis on loopback against the same turn local-only, in the
//! same run: the latency each request gains (median and p99 of one turn plus its send-time
//! check) and the throughput of one replica (sequential turns per second), as a ratio.
//! The baseline is a plain `PING` round trip to the same Redis, interleaved with the turns in
//! the same rounds: a turn is two script calls (the turn, then the send-time guard), so on a
//! quiet machine it costs about two PINGs, and noise from other load moves both alike.
//! Starts its own `redis-server` on a free port; without one on PATH it says so and exits.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use timgate::api::Api;
use timgate::config::Config;
use timgate::limiter::{Lanes, Limiter};
use timgate::metrics::Metrics;

const APP: &str = "[[apps]]\nsdkappid = 1\nidentifier = \"a\"\nsecret_key = \"k\"\nregion = \"usa\"\nrate_limit = 1000000\n";

/// Times `n` acquisitions one after another; returns each one's duration.
async fn times(lanes: &Lanes, api: &Api, n: usize) -> Vec<Duration> {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        lanes.acquire(api, Duration::from_secs(1)).await.unwrap();
        took.push(start.elapsed());
    }
    took
}

/// Times `n` PING round trips one after another.
async fn pings(redis: &mut redis::aio::ConnectionManager, n: usize) -> Vec<Duration> {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let _: String = redis::cmd("PING").query_async(redis).await.unwrap();
        took.push(start.elapsed());
    }
    took
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
        let local_config = Config::from_toml(APP).unwrap();
        let fleet_config = Config::from_toml(&format!(
            "[fleet]\nredis_url = \"redis://127.0.0.1:{port}/0\"\ntimeout_ms = 50\n{APP}"
        ))
        .unwrap();
        let local = Limiter::default().lanes(&local_config.apps[0]);
        let metrics = Metrics::new(&fleet_config.apps);
        let limiter = Limiter::new(fleet_config.fleet.as_ref(), metrics.fleet()).unwrap();
        let shared = limiter.lanes(&fleet_config.apps[0]);
        let api = Api::from_path("/v4/openim/sendmsg").unwrap();
        let url = format!("redis://127.0.0.1:{port}/0");
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).unwrap();
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        let client = redis::Client::open(info.set_tcp_settings(tcp)).unwrap();
        let mut ping = redis::aio::ConnectionManager::new(client).await.unwrap();
        // A fresh Redis holds its guard shut for the quarantine: wait it out, warm up.
        tokio::time::sleep(timgate::limiter::QUARANTINE + Duration::from_millis(300)).await;
        times(&shared, &api, 1000).await;
        let (mut local_times, mut shared_times) = (Vec::new(), Vec::new());
        let (mut local_total, mut shared_total) = (Duration::ZERO, Duration::ZERO);
        let mut ping_times = Vec::new();
        for _ in 0..10 {
            ping_times.extend(pings(&mut ping, 2000).await);
            let start = Instant::now();
            local_times.extend(times(&local, &api, 2000).await);
            local_total += start.elapsed();
            let start = Instant::now();
            shared_times.extend(times(&shared, &api, 2000).await);
            shared_total += start.elapsed();
        }
        local_times.sort();
        shared_times.sort();
        ping_times.sort();
        let added = |p| percentile(&shared_times, p).saturating_sub(percentile(&local_times, p));
        println!(
            "fleet turn on loopback Redis: median {:?} (local {:?}), p99 {:?} (local {:?}); added median {:?}, p99 {:?}",
            percentile(&shared_times, 0.5),
            percentile(&local_times, 0.5),
            percentile(&shared_times, 0.99),
            percentile(&local_times, 0.99),
            added(0.5),
            added(0.99),
        );
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "baseline PING round trip: median {:?}, p99 {:?}; a fleet turn costs median {:.2} PINGs, p99 {:.2} PINGs (two script calls: ~2 on a quiet machine)",
            percentile(&ping_times, 0.5),
            percentile(&ping_times, 0.99),
            ms(percentile(&shared_times, 0.5)) / ms(percentile(&ping_times, 0.5)),
            ms(percentile(&shared_times, 0.99)) / ms(percentile(&ping_times, 0.99)),
        );
        println!(
            "one replica, sequential turns: fleet {:.0}/s, local {:.0}/s, ratio {:.4}",
            20_000.0 / shared_total.as_secs_f64(),
            20_000.0 / local_total.as_secs_f64(),
            local_total.as_secs_f64() / shared_total.as_secs_f64(),
        );
    });
}
