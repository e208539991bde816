//! End-to-end load: a minimal fast upstream called directly and through a real `timgate`
//! process, in the same run, on loopback. Prints throughput and added latency (p50, p99 at a
//! fixed rate) as ratios to direct, and timgate's resident memory idle, under load, and with
//! 1,000 open connections. Stops by itself; `LOAD_SECS` sets each phase's length (default 5).
//! Where `redis-server` is installed, a second `timgate` with `[fleet]` on a loopback Redis
//! is measured in the same rounds: its throughput and added latency against local-only.
//! Where nginx is installed, its `proxy_pass` (keep-alive upstream, 2 workers) is measured in
//! the same run too, as the yardstick for what a proxy reaches on this machine.
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

const PATH: &str = "/v4/openim/query_online_status";
const BODY: &str = r#"{"To_Account":["user1","user2"]}"#;
const CONCURRENCY: usize = 64;
const FIXED_RATE: u64 = 1000;
const OPEN_CONNECTIONS: usize = 1000;

fn main() {
    let secs: u64 = std::env::var("LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let phase = Duration::from_secs(secs);
    let upstream = start_upstream();
    let mut gateway = Gateway::start(upstream, None);
    let redis = Redis::start();
    let mut shared = redis
        .as_ref()
        .map(|redis| Gateway::start(upstream, Some(redis.port)));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!("== timgate load bench (same run, loopback, {CONCURRENCY} connections) ==");
        let idle = gateway.rss_kib();
        // Warm both paths so connection set-up is not measured.
        throughput(upstream, Duration::from_millis(300)).await;
        throughput(gateway.addr, Duration::from_millis(300)).await;

        // Interleaved one-second rounds, so drift in the machine's load falls on all alike;
        // medians of the per-round numbers are reported.
        let nginx = Nginx::start(upstream);
        if let Some(nginx) = &nginx {
            throughput(nginx.addr, Duration::from_millis(300)).await;
        }
        if let Some(shared) = &shared {
            // A fresh Redis admits nothing for its first 1.2 s (the fleet's quarantine).
            tokio::time::sleep(timgate::limiter::QUARANTINE + Duration::from_millis(300)).await;
            throughput(shared.addr, Duration::from_millis(300)).await;
        }
        let sampler = Sampler::start(gateway.pid());
        let (mut direct, mut via, mut proxied, mut fleet) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..secs.max(1) {
            direct.push(throughput(upstream, Duration::from_secs(1)).await);
            via.push(throughput(gateway.addr, Duration::from_secs(1)).await);
            if let Some(nginx) = &nginx {
                proxied.push(throughput(nginx.addr, Duration::from_secs(1)).await);
            }
            if let Some(shared) = &shared {
                fleet.push(throughput(shared.addr, Duration::from_secs(1)).await);
            }
        }
        let under_load = sampler.stop();
        let per_round = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(x, y)| x / y).collect());
        let ratio = per_round(&via, &direct);
        println!(
            "throughput: direct {:.0} req/s, through timgate {:.0} req/s (medians of {} one-second rounds)",
            median(direct.clone()),
            median(via.clone()),
            direct.len()
        );
        println!("throughput ratio: timgate / direct = {ratio:.2} (median of per-round ratios; target >= 0.40)");
        if let Some(mut nginx) = nginx {
            println!(
                "yardstick: nginx proxy_pass / direct = {:.2}; timgate / nginx = {:.2}",
                per_round(&proxied, &direct),
                per_round(&via, &proxied)
            );
            nginx.stop();
        }

        if let Some(shared) = &shared {
            println!(
                "[fleet] on loopback Redis: {:.0} req/s; with [fleet] / local-only = {:.2} (median of per-round ratios; target >= 0.80)",
                median(fleet.clone()),
                per_round(&fleet, &via)
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

        let direct_latency = latency(upstream, phase).await;
        let via_latency = latency(gateway.addr, phase).await;
        let connected = open_connections(gateway.addr, &gateway).await;

        report(&direct_latency, &via_latency, idle, under_load, connected);
    });
    gateway.stop();
    if let Some(shared) = &mut shared {
        shared.stop();
    }
    drop(redis);
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

/// A minimal fast upstream on its own thread: answers Tencent's OK envelope to everything.
fn start_upstream() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
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
                timgate::server::Bounds::default().drain(Duration::ZERO),
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
             region = \"singapore\"\nendpoint = \"http://{upstream}\"\nrate_limit = 1000000\n"
        );
        std::fs::write(&config, text).expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_timgate"))
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .expect("start timgate");
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "timgate did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Gateway {
            child,
            addr,
            config,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    fn stop(&mut self) {
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
             http {{ access_log off; keepalive_requests 10000000; client_body_temp_path {dir}; proxy_temp_path {dir};\n\
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

    fn stop(&mut self) {
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
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
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
    sender.ready().await.expect("connection ready");
    let request = Request::post(format!("http://{addr}{PATH}"))
        .header("host", addr.to_string())
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.expect("body");
}

/// Requests per second with `CONCURRENCY` keep-alive connections in a closed loop.
async fn throughput(addr: SocketAddr, length: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + length;
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let done = done.clone();
            tokio::spawn(async move {
                let mut sender = connect(addr).await;
                while Instant::now() < deadline {
                    call(&mut sender, addr).await;
                    done.fetch_add(1, Ordering::Relaxed);
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
/// returns timgate's resident memory while they are all open.
async fn open_connections(addr: SocketAddr, gateway: &Gateway) -> u64 {
    let mut senders = Vec::with_capacity(OPEN_CONNECTIONS);
    for _ in 0..OPEN_CONNECTIONS {
        let mut sender = connect(addr).await;
        call(&mut sender, addr).await;
        senders.push(sender);
    }
    let rss = gateway.rss_kib();
    drop(senders);
    rss
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(d: &[Duration], v: &[Duration], idle: u64, load: u64, conns: u64) {
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let (d50, d99, v50, v99) = (
        percentile(d, 0.5),
        percentile(d, 0.99),
        percentile(v, 0.5),
        percentile(v, 0.99),
    );

    println!(
        "latency at {FIXED_RATE} req/s: direct p50 {:.3} ms p99 {:.3} ms; through timgate p50 {:.3} ms p99 {:.3} ms",
        ms(d50),
        ms(d99),
        ms(v50),
        ms(v99)
    );
    println!(
        "added latency: p50 {:.3} ms ({:.2}x direct), p99 {:.3} ms ({:.2}x direct) (target p99 added < 1 ms)",
        ms(v50.saturating_sub(d50)),
        ms(v50) / ms(d50).max(1e-9),
        ms(v99.saturating_sub(d99)),
        ms(v99) / ms(d99).max(1e-9)
    );
    println!(
        "timgate resident memory: idle {:.1} MiB (target < 10), peak under load {:.1} MiB, \
         {OPEN_CONNECTIONS} open connections {:.1} MiB (target < 30)",
        mib(idle),
        mib(load),
        mib(conns)
    );
}
