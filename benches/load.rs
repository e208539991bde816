//! End-to-end load: a minimal fast upstream called directly, through a real `timgate` process
//! and through nginx `proxy_pass` (keep-alive upstream, 2 workers, its default access log
//! on, as timgate writes its line per request), in the same run, on loopback. Prints, for timgate and nginx side by side: throughput as a ratio to direct and
//! to each other (medians of interleaved one-second rounds), CPU time per request (from
//! /proc/PID/stat over those rounds), p50/p99 added at a fixed rate, and resident memory
//! idle, under load, and with 1,000 busy connections (timgate's first right after 1,000
//! idle connections closed, then again once it has handed back at least half of what those
//! bursts added, with the private part). Stops by itself; `LOAD_SECS` sets each
//! phase's length in one-second rounds (default 5). Without nginx it says SKIPPED loudly for the yardstick (and
//! fails with `CI` set); CI only builds it (`cargo bench --no-run`).
//! Where `redis-server` is installed, a second `timgate` with `[fleet]` on a loopback Redis
//! is measured in the same rounds: its throughput and added latency against local-only.
//! A floor is measured in the same rounds too: this bench binary run again as a bare hyper
//! proxy (hyper's server and pooled client, one worker, nothing of timgate's work), which
//! tells what timgate's own work costs from what its HTTP stack does.
//!
//! Run: `cargo bench --bench load`.
// Benches may unwrap and print: a panic stops a broken run, stdout is the report.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

const PATH: &str = "/v4/profile/portrait_get";
const BODY: &str = r#"{"To_Account":["user1","user2"]}"#;
const CONCURRENCY: usize = 64;
const FIXED_RATE: u64 = 1000;
const OPEN_CONNECTIONS: usize = 1000;

/// Set (to `LISTEN,UPSTREAM`) in the child this bench starts as the bare hyper proxy.
const FLOOR_ROLE: &str = "TIMGATE_LOAD_FLOOR";

fn main() {
    if let Some(role) = std::env::var_os(FLOOR_ROLE) {
        bare_hyper_proxy(role.to_str().expect("LISTEN,UPSTREAM"));
        return;
    }
    let secs: u64 = std::env::var("LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let upstream = start_upstream();
    let gateway = Gateway::start(upstream, None);
    let floor = Floor::start(upstream);
    let redis = Redis::start();
    let shared = redis
        .as_ref()
        .map(|redis| Gateway::start(upstream, Some(redis.port)));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!("== timgate load bench (same run, loopback, {CONCURRENCY} connections) ==");
        println!("machine: {}", machine());
        println!("timgate binary: {}", timgate_binary().to_string_lossy());
        let nginx = Nginx::start(upstream);
        if nginx.is_none() {
            let why = "SKIPPED: nginx is not installed (apt-get install nginx-light): no yardstick";
            assert!(std::env::var_os("CI").is_none(), "{why}");
            println!("!!!!!!!! {why} !!!!!!!!");
        }
        let idle = gateway.rss_kib();
        let nginx_idle = nginx.as_ref().map(Nginx::rss_kib);
        let floor_idle = rss_kib(floor.child.id());
        // Warm all paths so connection set-up is not measured.
        throughput(upstream, Duration::from_millis(300)).await;
        throughput(gateway.addr, Duration::from_millis(300)).await;
        if let Some(nginx) = &nginx {
            throughput(nginx.addr, Duration::from_millis(300)).await;
        }
        throughput(floor.addr, Duration::from_millis(300)).await;
        if let Some(shared) = &shared {
            // A fresh Redis admits nothing for its first 1.2 s (the fleet's quarantine).
            // On a loaded machine its first heartbeats can come late and stretch that, so the
            // warm-up waits for a request to be admitted and counts a 429 as no failure.
            tokio::time::sleep(timgate::limiter::QUARANTINE).await;
            admitted(shared.addr, Duration::from_secs(10)).await;
            warm_up(shared.addr, Duration::from_millis(300)).await;
        }

        // Interleaved one-second rounds, so drift in the machine's load falls on all alike;
        // medians of the per-round numbers are reported. CPU time per request is read from
        // /proc/PID/stat around each proxy's own rounds.
        let sampler = Sampler::start(gateway.pid());
        let (mut direct, mut via, mut proxied, mut fleet) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut via_cpu, mut proxied_cpu) = (Vec::new(), Vec::new());
        let (mut fleet_cpu, mut redis_cpu) = (Vec::new(), Vec::new());
        let (mut bare, mut bare_cpu) = (Vec::new(), Vec::new());
        let asks_before = shared
            .as_ref()
            .map(|shared| histogram(shared.admin, "timgate_fleet_redis_batch_asks"));
        for _ in 0..secs.max(1) {
            direct.push(throughput(upstream, Duration::from_secs(1)).await);
            let (rate, cpu) = cpu_per_request(&[gateway.pid()], gateway.addr).await;
            via.push(rate);
            via_cpu.push(cpu);
            if let Some(nginx) = &nginx {
                let (rate, cpu) = cpu_per_request(&nginx.pids(), nginx.addr).await;
                proxied.push(rate);
                proxied_cpu.push(cpu);
            }
            let (rate, cpu) = cpu_per_request(&[floor.child.id()], floor.addr).await;
            bare.push(rate);
            bare_cpu.push(cpu);
            if let (Some(shared), Some(redis)) = (&shared, &redis) {
                let groups: [&[u32]; 2] = [&[shared.pid()], &[redis.child.id()]];
                let (rate, cpu) = cpu_per_request_of(&groups, shared.addr).await;
                fleet.push(rate);
                fleet_cpu.push(cpu[0]);
                redis_cpu.push(cpu[1]);
            }
        }
        let under_load = sampler.stop();
        let per_round = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(x, y)| x / y).collect());
        println!(
            "throughput: direct {:.0} req/s, through timgate {:.0} req/s (medians of {} one-second rounds)",
            median(direct.clone()),
            median(via.clone()),
            direct.len()
        );
        println!(
            "throughput ratio: timgate / direct = {:.2} (median of per-round ratios)",
            per_round(&via, &direct)
        );
        println!("CPU per request: timgate {:.1} µs", median(via_cpu.clone()));
        if nginx.is_some() {
            println!(
                "yardstick: nginx proxy_pass / direct = {:.2}; timgate / nginx = {:.2} (target >= 1.00); \
                 CPU per request: nginx {:.1} µs",
                per_round(&proxied, &direct),
                per_round(&via, &proxied),
                median(proxied_cpu.clone())
            );
        }

        println!(
            "floor: a bare hyper proxy (hyper's server and pooled client, bodies streamed, no \
             checks, no signing, no log line, no metrics, one worker) / direct = {:.2}; \
             timgate / bare hyper = {:.2} (target >= 0.85); CPU per request: bare hyper {:.1} µs",
            per_round(&bare, &direct),
            per_round(&via, &bare),
            median(bare_cpu.clone())
        );
        if nginx.is_some() {
            println!(
                "floor: bare hyper proxy / nginx = {:.2}: what timgate's HTTP stack allows against the target",
                per_round(&bare, &proxied)
            );
        }
        if let Some(shared) = &shared {
            println!(
                "[fleet] on loopback Redis: {:.0} req/s; with [fleet] / local-only = {:.2} (median of per-round ratios; target >= 0.80)",
                median(fleet.clone()),
                per_round(&fleet, &via)
            );
            let refused = REFUSED.load(Ordering::Relaxed);
            if refused > 0 {
                println!(
                    "[fleet]: {refused} answers 429 in the throughput rounds, not counted as served \
                     (a Redis call past timeout_ms: the replica paused)"
                );
            }
            let (sum, count) = histogram(shared.admin, "timgate_fleet_redis_batch_asks");
            let (sum0, count0) = asks_before.unwrap_or_default();
            println!(
                "[fleet] CPU per request: timgate {:.1} µs (local-only {:.1} µs), redis-server {:.1} µs; \
                 requests' turns and send checks per Redis call: {:.1} on average",
                median(fleet_cpu.clone()),
                median(via_cpu.clone()),
                median(redis_cpu.clone()),
                (sum - sum0) / (count - count0).max(1.0)
            );
            // Added latency at a fixed rate, the two gateways interleaved in short phases.
            let (mut local, mut with_fleet) = (Vec::new(), Vec::new());
            for _ in 0..secs.max(1) {
                local.extend(latency(gateway.addr, Duration::from_secs(1)).await);
                with_fleet.extend(latency(shared.addr, Duration::from_secs(1)).await);
            }
            local.sort();
            with_fleet.sort();
            let ms = |x: Duration| x.as_secs_f64() * 1000.0;
            let (l50, l99, f50, f99) = (
                percentile(&local, 0.5),
                percentile(&local, 0.99),
                percentile(&with_fleet, 0.5),
                percentile(&with_fleet, 0.99),
            );
            println!(
                "[fleet] latency at {FIXED_RATE} req/s: local-only p50 {:.3} ms p99 {:.3} ms; with [fleet] p50 {:.3} ms p99 {:.3} ms; added p50 {:.3} ms, p99 {:.3} ms (target p99 added < 1 ms)",
                ms(l50),
                ms(l99),
                ms(f50),
                ms(f99),
                ms(f50.saturating_sub(l50)),
                ms(f99.saturating_sub(l99)),
            );
        }

        // Latency at a fixed rate in interleaved one-second phases too, sorted together after.
        let (mut direct_latency, mut via_latency, mut nginx_latency) =
            (Vec::new(), Vec::new(), nginx.as_ref().map(|_| Vec::new()));
        let mut floor_latency = Vec::new();
        // CPU time over the fixed-rate phases too: what a sidecar at a steady 1,000 req/s
        // spends, wake-ups between requests included.
        let (mut via_fixed, mut floor_fixed, mut nginx_fixed) =
            (FixedCpu::default(), FixedCpu::default(), FixedCpu::default());
        let nginx_pids = nginx.as_ref().map(Nginx::pids).unwrap_or_default();
        for _ in 0..secs.max(1) {
            direct_latency.extend(latency(upstream, Duration::from_secs(1)).await);
            via_latency.extend(via_fixed.over(&[gateway.pid()], latency(gateway.addr, Duration::from_secs(1))).await);
            if let (Some(nginx), Some(samples)) = (&nginx, &mut nginx_latency) {
                samples.extend(nginx_fixed.over(&nginx_pids, latency(nginx.addr, Duration::from_secs(1))).await);
            }
            floor_latency.extend(floor_fixed.over(&[floor.child.id()], latency(floor.addr, Duration::from_secs(1))).await);
        }
        println!(
            "CPU per request at a fixed {FIXED_RATE} req/s: timgate {:.1} µs, bare hyper {:.1} µs{}; \
             timgate / bare hyper = {:.2} (target <= 1.20); at saturation (above) {:.2} (target <= 1.20)",
            via_fixed.per_request(),
            floor_fixed.per_request(),
            if nginx.is_some() {
                format!(", nginx {:.1} µs", nginx_fixed.per_request())
            } else {
                String::new()
            },
            via_fixed.per_request() / floor_fixed.per_request(),
            per_round(&via_cpu, &bare_cpu),
        );
        direct_latency.sort();
        via_latency.sort();
        floor_latency.sort();
        if let Some(samples) = &mut nginx_latency {
            samples.sort();
        }
        let p99_added = |samples: &[Duration]| {
            percentile(samples, 0.99).as_secs_f64() * 1000.0
                - percentile(&direct_latency, 0.99).as_secs_f64() * 1000.0
        };
        println!(
            "p99 added at {FIXED_RATE} req/s: timgate {:.3} ms, bare hyper {:.3} ms; timgate - bare hyper = {:.3} ms (target <= 0.05 ms)",
            p99_added(&via_latency),
            p99_added(&floor_latency),
            p99_added(&via_latency) - p99_added(&floor_latency),
        );
        let before = gateway.rss_kib();
        let connected = open_connections(gateway.addr, gateway.pid()).await;
        // Right after the idle connections closed, before timgate has handed back what they
        // held: the next burst lands on pages they already made resident.
        let (at_once, _) = busy_connections(gateway.addr, gateway.pid()).await;
        // Then once it has handed back at least half of what those two bursts added: the
        // figure compared with the target.
        let handed_back = settle(gateway.pid(), before, at_once).await;
        let (busy, private) = busy_connections(gateway.addr, gateway.pid()).await;
        report(&direct_latency, &via_latency, "timgate", idle, under_load, connected, busy);
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "timgate: of the {OPEN_CONNECTIONS} busy connections' {:.1} MiB, {:.1} MiB private (RssAnon; \
             the rest is the binary's and shared libraries' mapped pages); {OPEN_CONNECTIONS} busy \
             connections right after the idle ones closed: {:.1} MiB; half of that over the {:.1} MiB \
             before the idle ones handed back {} (the busy figure above is taken after that, \
             as nginx's is on a process that had no idle phase)",
            mib(busy),
            mib(private),
            mib(at_once),
            mib(before),
            handed_back.map_or_else(
                || format!("NOT within {} s", SETTLE_WAIT.as_secs()),
                |(took, resident)| format!(
                    "{:.1} s after the busy ones closed (at {:.1} MiB)",
                    took.as_secs_f64(),
                    mib(resident)
                )
            ),
        );
        // The floor's own memory says nothing of timgate's: its pool has no cap.
        report(&direct_latency, &floor_latency, "bare hyper proxy", floor_idle, 0, 0, 0);
        if let (Some(nginx), Some(nginx_latency), Some(nginx_idle)) = (nginx, nginx_latency, nginx_idle) {
            let (busy, _) = busy_connections_of(nginx.addr, &nginx.pids()).await;
            report(&direct_latency, &nginx_latency, "nginx", nginx_idle, 0, 0, busy);
        }
    });
    // The gateways stop before the Redis they use.
    drop((gateway, shared));
    drop(redis);
}

/// This bench binary run again as a bare hyper proxy: what timgate's HTTP stack costs with
/// none of timgate's work, measured like timgate (its own process, its own CPU time).
struct Floor {
    child: Child,
    addr: SocketAddr,
}

impl Floor {
    fn start(upstream: SocketAddr) -> Floor {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let child = Command::new(std::env::current_exe().expect("this bench's path"))
            .env(FLOOR_ROLE, format!("{addr},{upstream}"))
            .stdout(Stdio::null())
            .spawn()
            .expect("start the bare hyper proxy");
        listening(addr, "the bare hyper proxy");
        Floor { child, addr }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bare hyper proxy: one worker thread (as timgate by default), hyper's HTTP/1 server,
/// hyper-util's pooled client, the caller's body streamed up and the answer streamed back.
fn bare_hyper_proxy(role: &str) {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let (listen, upstream) = role.split_once(',').expect("LISTEN,UPSTREAM");
    let (listen, upstream): (SocketAddr, SocketAddr) = (
        listen.parse().expect("listen"),
        upstream.parse().expect("upstream"),
    );
    one_worker().block_on(async move {
        let client: Client<_, hyper::body::Incoming> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build_http();
        let listener = TcpListener::bind(listen).await.expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let client = client.clone();
                        async move {
                            let (mut parts, body) = request.into_parts();
                            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                            parts.uri = format!("http://{upstream}{path}").parse().expect("uri");
                            client.request(Request::from_parts(parts, body)).await
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// A `redis-server` on a free loopback port, without persistence, if it is installed.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let Ok(child) = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
        else {
            println!("[fleet] SKIPPED: redis-server is not on PATH");
            return None;
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "redis-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Redis { child, port })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A runtime with one worker thread, as timgate's by default.
fn one_worker() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Waits until `what`, just started, accepts connections on `addr`; panics after 10 s.
fn listening(addr: SocketAddr, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The machine the figures were taken on: CPU model, cores, load average.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    format!("{cpu}, {cores} cores, load average {load} (other work shares these cores)")
}

/// CPU time (user + system) of `pids`, in clock ticks, from /proc/PID/stat.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the command name (which may hold spaces) start at ") ".
            let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
            let field = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            field(11) + field(12)
        })
        .sum()
}

/// CPU time (user + system) of `pids`, in nanoseconds, summed over their threads from
/// /proc/PID/task/TID/schedstat: at 1,000 req/s a second's round is a few tens of ms of CPU,
/// too few clock ticks to count. Threads that ended meanwhile are not counted.
fn cpu_ns(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).ok())
        .flat_map(Iterator::flatten)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU time and requests over fixed-rate phases, summed.
#[derive(Default)]
struct FixedCpu {
    nanos: u64,
    requests: usize,
}

impl FixedCpu {
    /// Runs one fixed-rate phase, adding what `pids` spent on it.
    async fn over(
        &mut self,
        pids: &[u32],
        phase: impl std::future::Future<Output = Vec<Duration>>,
    ) -> Vec<Duration> {
        let before = cpu_ns(pids);
        let latencies = phase.await;
        self.nanos += cpu_ns(pids).saturating_sub(before);
        self.requests += latencies.len();
        latencies
    }

    /// Microseconds of CPU per request.
    fn per_request(&self) -> f64 {
        self.nanos as f64 / 1000.0 / self.requests.max(1) as f64
    }
}

/// One second of closed-loop throughput through `addr`, and the CPU time `pids` spent per
/// request in it, in microseconds (clock ticks are 10 ms: a second's round has ~1% error).
async fn cpu_per_request(pids: &[u32], addr: SocketAddr) -> (f64, f64) {
    let (rate, cpu) = cpu_per_request_of(&[pids], addr).await;
    (rate, cpu[0])
}

/// The same, with the CPU time of each group of processes in `groups` apart.
async fn cpu_per_request_of(groups: &[&[u32]], addr: SocketAddr) -> (f64, Vec<f64>) {
    let before: Vec<u64> = groups.iter().map(|pids| cpu_ticks(pids)).collect();
    let started = Instant::now();
    let rate = throughput(addr, Duration::from_secs(1)).await;
    let took = started.elapsed().as_secs_f64();
    let requests = (rate * took).max(1.0);
    let cpu = groups
        .iter()
        .zip(before)
        .map(|(pids, before)| cpu_ticks(pids).saturating_sub(before) as f64 * 10_000.0 / requests)
        .collect();
    (rate, cpu)
}

/// The sum and count of a histogram on a gateway's admin `/metrics`.
fn histogram(admin: SocketAddr, name: &str) -> (f64, f64) {
    use std::io::{Read, Write};
    let mut text = String::new();
    if let Ok(mut stream) = std::net::TcpStream::connect(admin) {
        let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n");
        let _ = stream.read_to_string(&mut text);
    }
    let value = |suffix: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}_{suffix} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (value("sum"), value("count"))
}

/// A minimal fast upstream on its own thread: answers Tencent's OK envelope to everything.
fn start_upstream() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        one_worker().block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("addr"))
                .expect("send addr");
            let ok = Bytes::from_static(
                br#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","RequestId":"Id-bench"}"#,
            );
            let handler = move |request: Request<hyper::body::Incoming>| {
                let ok = ok.clone();
                async move {
                    let _ = request.into_body().collect().await;
                    timgate::error::json_response(StatusCode::OK, ok)
                }
            };
            timgate::server::serve(
                listener,
                handler,
                std::future::pending(),
                // Tencent takes more than the edge's default 1,024 connections: nginx with
                // 1,000 busy callers opens about that many upstream and must not be refused.
                timgate::server::Bounds {
                    max_connections: 16 * 1024,
                    ..timgate::server::Bounds::default().drain(Duration::ZERO)
                },
            )
            .await;
        });
    });
    rx.recv().expect("upstream address")
}

/// A `timgate` process in front of the upstream, with no practical rate limit.
struct Gateway {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    config: std::path::PathBuf,
}

impl Gateway {
    /// Local-only, or with `[fleet]` on the Redis at `redis` (a port on loopback).
    fn start(upstream: SocketAddr, redis: Option<u16>) -> Gateway {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
        };
        let (addr, admin) = (free(), free());
        let config = std::env::temp_dir().join(format!(
            "timgate-load-{}-{}.toml",
            std::process::id(),
            redis.is_some()
        ));
        let fleet = redis
            .map(|port| format!("[fleet]\nredis_url = \"redis://127.0.0.1:{port}/0\"\n"))
            .unwrap_or_default();
        let text = format!(
            "{fleet}[server]\nlisten = \"{addr}\"\nadmin_listen = \"{admin}\"\n\
             [[apps]]\nsdkappid = 1400000001\nidentifier = \"administrator\"\nsecret_key = \"bench-key\"\n\
             region = \"singapore\"\nendpoint = \"http://{upstream}\"\nrate_limit = 1000000\n\
             [apps.api_limits]\n\"profile/portrait_get\" = 1000000\n"
        );
        std::fs::write(&config, text).expect("write config");
        let child = Command::new(timgate_binary())
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .expect("start timgate");
        listening(addr, "timgate");
        Gateway {
            child,
            addr,
            admin,
            config,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

/// Stopped when dropped, also when a panic unwinds the bench, so no child outlives it.
impl Drop for Gateway {
    fn drop(&mut self) {
        signal(self.pid(), rustix::process::Signal::TERM);
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// nginx as a plain keep-alive reverse proxy, if it is installed.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Nginx {
    fn start(upstream: SocketAddr) -> Option<Nginx> {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?;
        let dir = std::env::temp_dir().join(format!("timgate-load-nginx-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs")).ok()?;
        let conf = format!(
            "worker_processes 2; pid {dir}/nginx.pid; error_log {dir}/logs/error.log crit;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log {dir}/logs/access.log; keepalive_requests 10000000; client_body_temp_path {dir}; proxy_temp_path {dir};\n\
             upstream up {{ server {upstream}; keepalive 128; keepalive_requests 10000000; }}\n\
             server {{ listen {addr}; location / {{ proxy_pass http://up; proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\"; }} }} }}\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).ok()?;
        let child = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if started.elapsed() > Duration::from_secs(5) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Nginx { child, addr, dir })
    }

    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let parent = stat
                    .rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if parent == Some(master) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    fn rss_kib(&self) -> u64 {
        self.pids().into_iter().map(rss_kib).sum()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        signal(self.child.id(), rustix::process::Signal::QUIT);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `signal` to a child we started, in Rust rather than through a `kill` program.
fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Resident memory of `pid` that is its own: anonymous pages (heap, stacks), not the mapped
/// files that other processes mapping them share.
fn private_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

/// A field of `/proc/PID/status` in KiB; 0 if it cannot be read.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Longest wait for a process to hand back memory after a burst.
const SETTLE_WAIT: Duration = Duration::from_secs(15);

/// Waits until `pid` has handed back at least half of what a burst took its resident memory
/// to (`peak`) from `before` it; how long that took and the resident memory then, or `None`
/// if not within `SETTLE_WAIT`.
async fn settle(pid: u32, before: u64, peak: u64) -> Option<(Duration, u64)> {
    let started = Instant::now();
    let settled = before + peak.saturating_sub(before) / 2;
    while started.elapsed() < SETTLE_WAIT {
        // 0: /proc could not tell, which is not settled.
        let resident = rss_kib(pid);
        if resident > 0 && resident <= settled {
            return Some((started.elapsed(), resident));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Samples a process's resident memory every 50 ms and keeps the peak.
struct Sampler {
    running: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let running = Arc::new(AtomicBool::new(true));
        let peak = Arc::new(AtomicU64::new(0));
        let (r, p) = (running.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while r.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Sampler {
            running,
            peak,
            thread,
        }
    }

    fn stop(self) -> u64 {
        self.running.store(false, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak.load(Ordering::Relaxed)
    }
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

async fn call(sender: &mut Sender, addr: SocketAddr) {
    assert_eq!(call_status(sender, addr).await, StatusCode::OK);
}

/// One request, its body read; its status.
async fn call_status(sender: &mut Sender, addr: SocketAddr) -> StatusCode {
    sender.ready().await.expect("connection ready");
    let request = Request::post(format!("http://{addr}{PATH}"))
        .header("host", addr.to_string())
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    response.into_body().collect().await.expect("body");
    status
}

/// Waits until `addr` admits a request (a 429 is retried 50 ms later); panics after `limit`
/// or on any other status.
async fn admitted(addr: SocketAddr, limit: Duration) {
    let mut sender = connect(addr).await;
    let until = Instant::now() + limit;
    loop {
        match call_status(&mut sender, addr).await {
            StatusCode::OK => return,
            StatusCode::TOO_MANY_REQUESTS if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            status => panic!("{addr} answered {status} while warming up"),
        }
    }
}

/// `throughput`'s closed loop for `length`, for warming up only: a 429 (the limiter catching
/// up under load) is not a failure. Any other status but 200 still is.
async fn warm_up(addr: SocketAddr, length: Duration) {
    let deadline = Instant::now() + length;
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            tokio::spawn(async move {
                let mut sender = connect(addr).await;
                while Instant::now() < deadline {
                    let status = call_status(&mut sender, addr).await;
                    assert!(
                        matches!(status, StatusCode::OK | StatusCode::TOO_MANY_REQUESTS),
                        "{addr} answered {status} while warming up"
                    );
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
}

/// Answers 429 in the measured throughput rounds: not counted as served, and printed at the
/// end. Only the `[fleet]` gateway gives them, when a Redis call passes `timeout_ms` under
/// the machine's load and the replica pauses (the limiter doing its job, not a failure of
/// the run); any other status but 200 still stops the bench.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Requests answered 200 per second with `CONCURRENCY` keep-alive connections in a closed
/// loop.
async fn throughput(addr: SocketAddr, length: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + length;
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let done = done.clone();
            tokio::spawn(async move {
                let mut sender = connect(addr).await;
                while Instant::now() < deadline {
                    match call_status(&mut sender, addr).await {
                        StatusCode::OK => done.fetch_add(1, Ordering::Relaxed),
                        StatusCode::TOO_MANY_REQUESTS => REFUSED.fetch_add(1, Ordering::Relaxed),
                        status => panic!("{addr} answered {status}"),
                    };
                }
            })
        })
        .collect();
    let started = Instant::now();
    for worker in workers {
        worker.await.expect("worker");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Latencies at a fixed `FIXED_RATE`, each timed from its scheduled start (no coordinated
/// omission), over a pool of keep-alive connections.
async fn latency(addr: SocketAddr, length: Duration) -> Vec<Duration> {
    let (free_tx, free_rx) = async_channel(64);
    for _ in 0..64 {
        free_tx.send(connect(addr).await).await.expect("pool");
    }
    let free_rx = Arc::new(tokio::sync::Mutex::new(free_rx));
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / FIXED_RATE));
    let total = FIXED_RATE * length.as_secs();
    let mut tasks = Vec::with_capacity(total as usize);
    for _ in 0..total {
        ticker.tick().await;
        let scheduled = Instant::now();
        let (free_tx, free_rx) = (free_tx.clone(), free_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = free_rx.lock().await.recv().await.expect("connection");
            call(&mut sender, addr).await;
            let took = scheduled.elapsed();
            free_tx.send(sender).await.expect("return connection");
            took
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    for task in tasks {
        latencies.push(task.await.expect("task"));
    }
    latencies.sort();
    latencies
}

fn async_channel(
    size: usize,
) -> (
    tokio::sync::mpsc::Sender<Sender>,
    tokio::sync::mpsc::Receiver<Sender>,
) {
    tokio::sync::mpsc::channel(size)
}

/// Opens `OPEN_CONNECTIONS` keep-alive connections, each having made one request, and
/// returns the resident memory of `pid` (0: none) while they are all open. Returns once
/// `pid` has closed them too, so the next phase measures its own connections only.
async fn open_connections(addr: SocketAddr, pid: u32) -> u64 {
    let before = open_files(pid);
    let mut senders = Vec::with_capacity(OPEN_CONNECTIONS);
    for _ in 0..OPEN_CONNECTIONS {
        let mut sender = connect(addr).await;
        call(&mut sender, addr).await;
        senders.push(sender);
    }
    let rss = if pid == 0 { 0 } else { rss_kib(pid) };
    drop(senders);
    let until = Instant::now() + Duration::from_secs(10);
    while open_files(pid) > before && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rss
}

/// How many files (sockets among them) `pid` holds open; 0 for none.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

async fn busy_connections(addr: SocketAddr, pid: u32) -> (u64, u64) {
    busy_connections_of(addr, &[pid]).await
}

/// `OPEN_CONNECTIONS` connections each sending requests back to back for two seconds (as
/// `wrk -c1000` does); the peak resident memory of `pids` together meanwhile, and the
/// private part of it at that peak.
async fn busy_connections_of(addr: SocketAddr, pids: &[u32]) -> (u64, u64) {
    let running = Arc::new(AtomicBool::new(true));
    let workers: Vec<_> = (0..OPEN_CONNECTIONS)
        .map(|_| {
            let running = running.clone();
            tokio::spawn(async move {
                let mut sender = connect(addr).await;
                while running.load(Ordering::Relaxed) {
                    call(&mut sender, addr).await;
                }
            })
        })
        .collect();
    let (mut peak, mut private) = (0, 0);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let resident = pids.iter().map(|pid| rss_kib(*pid)).sum();
        if resident > peak {
            peak = resident;
            private = pids.iter().map(|pid| private_kib(*pid)).sum();
        }
    }
    running.store(false, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("worker");
    }
    (peak, private)
}

/// The timgate measured: `TIMGATE_BIN` if set (the deployed build:
/// `cargo build --profile dist`, then `TIMGATE_BIN=target/dist/timgate`), else this
/// profile's own build.
fn timgate_binary() -> std::ffi::OsString {
    std::env::var_os("TIMGATE_BIN")
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_timgate").into())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(d: &[Duration], v: &[Duration], name: &str, idle: u64, load: u64, conns: u64, busy: u64) {
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let (d50, d99, v50, v99) = (
        percentile(d, 0.5),
        percentile(d, 0.99),
        percentile(v, 0.5),
        percentile(v, 0.99),
    );
    println!(
        "{name}: latency at {FIXED_RATE} req/s p50 {:.3} ms p99 {:.3} ms (direct p50 {:.3} ms p99 {:.3} ms); \
         added p50 {:.3} ms, p99 {:.3} ms (target p99 added <= 0.15 ms)",
        ms(v50),
        ms(v99),
        ms(d50),
        ms(d99),
        ms(v50.saturating_sub(d50)),
        ms(v99.saturating_sub(d99)),
    );
    let or_dash = |kib: u64| {
        if kib == 0 {
            "-".to_owned()
        } else {
            format!("{:.1} MiB", mib(kib))
        }
    };
    println!(
        "{name}: resident memory idle {} (target <= 8), peak under {CONCURRENCY}-connection load {}, \
         {OPEN_CONNECTIONS} open idle connections {}, {OPEN_CONNECTIONS} busy connections {} (target <= 24)",
        or_dash(idle),
        or_dash(load),
        or_dash(conns),
        or_dash(busy)
    );
}
