//! Test support: the real gateway, the real emulator and a recording upstream, each started
//! in-process on 127.0.0.1:0, a `timgate` process on free ports, and a plain HTTP client.

#![allow(dead_code)]

pub mod fleet;
pub mod net;
pub mod redis;
pub mod stamp;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use timgate::config::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The demo key every test app signs with.
pub const KEY: &str = "test-key-0123456789";

/// A one-app config pointing at `endpoint`.
pub fn one_app(sdkappid: u64, endpoint: &str) -> String {
    app_entry(sdkappid, "administrator", endpoint)
}

/// One `[[apps]]` entry.
pub fn app_entry(sdkappid: u64, identifier: &str, endpoint: &str) -> String {
    format!(
        "[[apps]]\nsdkappid = {sdkappid}\nidentifier = \"{identifier}\"\nsecret_key = \"{KEY}\"\n\
         region = \"singapore\"\nendpoint = \"{endpoint}\"\n"
    )
}

/// A server running in this process; stops when dropped.
pub struct Running {
    pub addr: SocketAddr,
    /// The admin listener's address (the gateway only).
    pub admin: Option<SocketAddr>,
    /// The callback listener's address (a gateway with `[callbacks] listen`).
    pub callbacks: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<bool>,
}

impl Running {
    /// Asks the server to drain and waits until it has; returns whether it drained in time.
    pub async fn stop(mut self) -> bool {
        self.begin_stop();
        (&mut self.task)
            .await
            .expect("server task ends without panicking")
    }

    /// Asks the server to drain, without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn spawn<F, Fut>(start: F) -> Running
where
    F: FnOnce(TcpListener, oneshot::Receiver<()>) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(start(listener, stopped));
    Running {
        addr,
        admin: None,
        callbacks: None,
        stop: Some(stop),
        task,
    }
}

/// Starts the gateway for `config` as `timgate run` does (`timgate::bind`, then
/// `timgate::run`), with its listeners (and the in-process emulator's, and the callback
/// listener when configured) on free ports.
pub async fn gateway(mut config: Config) -> Running {
    let loopback: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    config.server.listen = loopback;
    config.server.admin_listen = loopback;
    config.emulator.listen = loopback;
    if config.callbacks.listen.is_some() {
        config.callbacks.listen = Some(loopback);
    }
    let (resolved, listeners) = timgate::bind(config).await.unwrap();
    let addr = listeners.proxy.local_addr().unwrap();
    let admin = listeners.admin.local_addr().unwrap();
    let callbacks = listeners
        .callbacks
        .as_ref()
        .map(|l| l.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        timgate::run(resolved, listeners, async {
            let _ = stopped.await;
        })
        .await
        .unwrap()
    });
    Running {
        addr,
        admin: Some(admin),
        callbacks,
        stop: Some(stop),
        task,
    }
}

/// Starts the emulator for `config`'s apps.
pub async fn emulator(config: &Config) -> Running {
    let config = config.clone();
    spawn(|listener, stopped| async move {
        timgate::emulate(&config, listener, async {
            let _ = stopped.await;
        })
        .await;
        true
    })
    .await
}

/// Starts the emulator for `config`'s apps on a thread and runtime of its own, as `timgate
/// emulate` runs beside a gateway: when it counts a call against Tencent's frequency limits,
/// its clock does not wait behind the gateway's and the callers' work on the test's runtime.
pub async fn emulator_apart(config: &Config) -> Running {
    let config = config.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            timgate::emulate(&config, listener, async {
                let _ = stopped.await;
            })
            .await;
        });
        true
    });
    Running {
        addr,
        admin: None,
        callbacks: None,
        stop: Some(stop),
        task: tokio::task::spawn_blocking(move || thread.join().unwrap()),
    }
}

/// One request as an upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: tokio::time::Instant,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// The query as it arrived, percent-encoding and all.
    pub raw_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    /// The value of query parameter `name`, if given once or more (the first).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A recording upstream whose answers come from `reply`.
pub struct Recorder {
    pub server: Running,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    arrivals: tokio::sync::watch::Receiver<usize>,
}

impl Recorder {
    /// Answers every request with Tencent's OK envelope.
    pub async fn ok() -> Recorder {
        Self::with(|_| ok_envelope()).await
    }

    /// Answers the first `n` requests with ErrorCode `code`, then OK.
    pub async fn failing(n: usize, code: i64) -> Recorder {
        let count = std::sync::atomic::AtomicUsize::new(0);
        Self::with(move |_| {
            if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < n {
                serde_json::json!({"ActionStatus": "FAIL", "ErrorCode": code, "ErrorInfo": "scripted", "RequestId": "Id-f"})
            } else {
                ok_envelope()
            }
        })
        .await
    }

    /// Answers every request with `reply(seen)`.
    pub async fn with(reply: impl Fn(&Seen) -> Value + Send + Sync + 'static) -> Recorder {
        Self::slow(std::time::Duration::ZERO, reply).await
    }

    /// Answers every request with `reply(seen)`, `delay` after it arrived: a slow Tencent.
    pub async fn slow(
        delay: std::time::Duration,
        reply: impl Fn(&Seen) -> Value + Send + Sync + 'static,
    ) -> Recorder {
        Self::answering(delay, move |seen| {
            (StatusCode::OK, Bytes::from(reply(seen).to_string()))
        })
        .await
    }

    /// Answers every request with the HTTP status and exact body bytes `reply(seen)` gives,
    /// `delay` after it arrived.
    pub async fn answering(
        delay: std::time::Duration,
        reply: impl Fn(&Seen) -> (StatusCode, Bytes) + Send + Sync + 'static,
    ) -> Recorder {
        Self::start(None, delay, reply).await
    }

    /// Answers OK over HTTPS only, each TLS handshake taking `handshake` longer (the round
    /// trips to a faraway data center); also returns the certificate to trust, as PEM.
    pub async fn tls(handshake: std::time::Duration) -> (Recorder, String) {
        let (acceptor, pem) = net::self_signed();
        let recorder = Self::start(
            Some((acceptor, handshake)),
            std::time::Duration::ZERO,
            |_| (StatusCode::OK, Bytes::from(ok_envelope().to_string())),
        )
        .await;
        (recorder, pem)
    }

    /// Serves HTTP/1 (over TLS when `tls` is given), recording each request with the kernel's
    /// arrival stamp of its bytes (see `stamp`).
    async fn start(
        tls: Option<(tokio_rustls::TlsAcceptor, std::time::Duration)>,
        delay: std::time::Duration,
        reply: impl Fn(&Seen) -> (StatusCode, Bytes) + Send + Sync + 'static,
    ) -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let reply = Arc::new(reply);
        let (arrived, arrivals) = tokio::sync::watch::channel(0);
        let arrived = Arc::new(arrived);
        let handler = move |request: Request<Incoming>, stamps: stamp::Arrivals| {
            let (log, reply, arrived) = (log.clone(), reply.clone(), arrived.clone());
            async move {
                let at = stamps.take();
                let mut seen = record(request).await;
                seen.at = at;
                let answer = reply(&seen);
                let count = {
                    let mut log = log.lock().unwrap();
                    log.push(seen);
                    log.len()
                };
                arrived.send_replace(count);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let (status, body) = answer;
                Ok::<_, std::convert::Infallible>(timgate::error::json_response(status, body))
            }
        };
        let server = spawn(|listener, stopped| async move {
            let graceful = hyper_util::server::graceful::GracefulShutdown::new();
            tokio::pin!(stopped);
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = &mut stopped => break,
                };
                let (io, stamps) = stamp::Stamped::new(stream).unwrap();
                let handler = handler.clone();
                let service =
                    hyper::service::service_fn(move |request| handler(request, stamps.clone()));
                let http = hyper::server::conn::http1::Builder::new();
                match &tls {
                    None => {
                        let connection = graceful.watch(
                            http.serve_connection(hyper_util::rt::TokioIo::new(io), service),
                        );
                        tokio::spawn(connection);
                    }
                    Some((acceptor, handshake)) => {
                        let (acceptor, handshake) = (acceptor.clone(), *handshake);
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            tokio::time::sleep(handshake).await;
                            let Ok(io) = acceptor.accept(io).await else {
                                return;
                            };
                            let io = hyper_util::rt::TokioIo::new(io);
                            let _ = watcher.watch(http.serve_connection(io, service)).await;
                        });
                    }
                }
            }
            tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown())
                .await
                .is_ok()
        })
        .await;
        Recorder {
            server,
            seen,
            arrivals,
        }
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn arrived(&self, n: usize) {
        let mut arrivals = self.arrivals.clone();
        arrivals.wait_for(|count| *count >= n).await.unwrap();
    }

    /// The endpoint URL to configure.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn record(request: Request<Incoming>) -> Seen {
    let at = tokio::time::Instant::now();
    let path = request.uri().path().to_owned();
    let raw_query = request.uri().query().unwrap_or("").to_owned();
    let query = form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let headers = request.headers().clone();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    Seen {
        at,
        path,
        query,
        raw_query,
        headers,
        body,
    }
}

/// Tencent's OK envelope.
pub fn ok_envelope() -> Value {
    serde_json::json!({"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": "", "RequestId": "Id-test"})
}

/// An answer as the caller saw it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The envelope's ErrorCode.
    pub fn code(&self) -> i64 {
        self.json()["ErrorCode"]
            .as_i64()
            .expect("ErrorCode is an integer")
    }
}

/// A keep-alive HTTP client.
#[derive(Clone)]
pub struct Caller {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Caller {
    fn default() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Caller {
    /// A caller that opens a new connection for every request, as a client with pooling
    /// off does.
    pub fn unpooled() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
        }
    }

    /// Sends `method path_and_query` to `addr` with `body`.
    pub async fn send(
        &self,
        method: &str,
        addr: SocketAddr,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Answer {
        self.send_with(method, addr, path, &[], body).await
    }

    /// Sends `method path_and_query` to `addr` with `headers` and `body`.
    pub async fn send_with(
        &self,
        method: &str,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.into())).unwrap();
        self.exchange(request).await.unwrap()
    }

    /// POSTs `body` to `addr` at `path`; an error where the connection failed (a gateway
    /// killed with the request in flight) rather than a panic.
    pub async fn try_post(
        &self,
        addr: SocketAddr,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<Answer, String> {
        let request = Request::post(format!("http://{addr}{path}"))
            .body(Full::new(body.into()))
            .unwrap();
        self.exchange(request).await
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<Answer, String> {
        let response: Response<Incoming> = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{e:?}"))?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// GETs `path` from `addr`.
    pub async fn get(&self, addr: SocketAddr, path: &str) -> Answer {
        self.send("GET", addr, path, Bytes::new()).await
    }

    /// POSTs `body` to `addr` at `path`.
    pub async fn post(&self, addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Answer {
        self.send("POST", addr, path, body).await
    }
}

/// The value of the first sample of `metric` whose line contains all of `labels`, or 0.
pub fn sample(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && labels.iter().all(|label| l.contains(label)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Scrapes the admin listener at `admin` and reads `metric` (without labels).
pub async fn scrape(caller: &Caller, admin: SocketAddr, metric: &str) -> f64 {
    let text = String::from_utf8(caller.get(admin, "/metrics").await.body.to_vec()).unwrap();
    sample(&text, metric, &[])
}

/// Polls `probe` until it holds, for at most five seconds: for states that another task or
/// process reaches on its own time, such as a signal handled or a caller gone.
pub async fn eventually<F: Future<Output = bool>>(mut probe: impl FnMut() -> F) {
    for _ in 0..500 {
        if probe().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 5 s");
}

/// A `timgate` process on free ports, its configuration in a temporary file.
pub struct Process {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    config: std::path::PathBuf,
}

impl Process {
    /// Starts `timgate ARGS --config FILE` and waits until its admin port answers. `config`
    /// follows the `[server]` table's `listen` and `admin_listen`: lines before its first
    /// table header are more `[server]` keys.
    pub async fn start(config: &str, args: &[&str], stderr: std::process::Stdio) -> Process {
        let (port, admin_port) = (free_port(), free_port());
        let path = std::env::temp_dir().join(format!("timgate-{}-{port}.toml", std::process::id()));
        // Each process its own fleet member name, as each pod has its own host name, unless
        // the test names it (a restart under its name).
        let member = format!("[fleet]\nmember = \"replica-{port}\"\n");
        let config = if config.contains("\nmember = ") {
            config.to_owned()
        } else {
            config.replacen("[fleet]\n", &member, 1)
        };
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n{config}"
        );
        std::fs::write(&path, text).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_timgate"))
            .args(args)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        eventually(|| async move { tokio::net::TcpStream::connect(admin).await.is_ok() }).await;
        Process {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            admin,
            config: path,
        }
    }

    /// Starts it with JSON logs, and a task that collects its log lines as they come.
    pub async fn logged(config: &str) -> (Process, Logs) {
        let mut process = Self::start(
            config,
            &["--log-format", "json"],
            std::process::Stdio::piped(),
        )
        .await;
        let stderr = process.child.stderr.take().unwrap();
        (process, Logs::collect(stderr))
    }

    /// The configuration file it was started with.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// Sends SIGTERM, as Kubernetes and systemd do.
    pub fn terminate(&self) {
        let pid = i32::try_from(self.child.id().unwrap()).unwrap();
        let pid = rustix::process::Pid::from_raw(pid).expect("a child's pid is positive");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    }

    /// Resident memory now, in MiB (VmRSS from /proc).
    pub fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id().unwrap())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Resident memory of process `pid` now, in MiB (VmRSS from /proc).
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS")
}

/// The most resident memory process `pid` has had, in MiB (VmHWM from /proc): what a
/// passing allocation left, after it was freed.
pub fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM")
}

/// A size in kB from /proc/PID/status, in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/PID/status"));
    kib / 1024.0
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Launches the process `command(port)` makes, `port` one that was free a moment before. A
/// port another test took meanwhile (`bind(0)` hands recently freed ports out again) is
/// tried again with another, up to five times.
pub async fn start_on_free_port(
    command: impl Fn(u16) -> tokio::process::Command,
) -> (Launched, u16) {
    let mut taken = Vec::new();
    for _ in 0..5 {
        let port = free_port();
        match Launched::start(command(port)).await {
            Ok(launched) => return (launched, port),
            Err(exited) if exited.stderr.contains("Address already in use") => taken.push(exited),
            Err(exited) => panic!("{exited:?}"),
        }
    }
    panic!("five ports taken before the process could listen: {taken:?}");
}

/// A process's JSON log lines, collected as they are written.
#[derive(Clone)]
pub struct Logs {
    lines: Arc<Mutex<Vec<Value>>>,
    count: tokio::sync::watch::Receiver<usize>,
}

impl Logs {
    fn collect(stderr: tokio::process::ChildStderr) -> Logs {
        use tokio::io::AsyncBufReadExt;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (count, counted) = tokio::sync::watch::channel(0);
        let log = lines.clone();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(value);
                    log.len()
                };
                count.send_replace(n);
            }
        });
        Logs {
            lines,
            count: counted,
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// The `fields` of every "request" line so far.
    pub fn requests(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["fields"]["message"] == "request")
            .map(|l| l["fields"].clone())
            .collect()
    }

    /// Waits, at most ten seconds, until `n` request lines have been written.
    pub async fn requests_reach(&self, n: usize) -> Vec<Value> {
        let mut count = self.count.clone();
        let waiting = async {
            loop {
                if self.requests().len() >= n {
                    return;
                }
                if count.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await;
        self.requests()
    }
}

/// An upstream that answers every request with the same raw bytes, written as given and then
/// the connection closed, or (with `None`) never answers: for answers a well-behaved server
/// would not give (101, an encoded body, a body in a million chunks, silence).
pub struct RawUpstream {
    pub addr: SocketAddr,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    /// Starts it on a free port.
    pub async fn start(answer: Option<Bytes>) -> RawUpstream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (answer, counted) = (answer.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut read = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // The head, then as many body bytes as Content-Length says.
                    loop {
                        let Ok(n) = socket.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        read.extend_from_slice(&chunk[..n]);
                        if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&read[..end]).to_lowercase();
                            let length: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if read.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    match answer {
                        Some(answer) => {
                            let _ = socket.write_all(&answer).await;
                            let _ = socket.shutdown().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                });
            }
        });
        RawUpstream {
            addr,
            requests,
            task,
        }
    }

    /// The endpoint URL to configure.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many whole requests arrived.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `timgate` process started from a whole command line (which must log JSON, e.g. with
/// `TIMGATE__LOG__FORMAT=json`), found by its log lines rather than by guessed ports, so its
/// listeners may be on port 0.
pub struct Launched {
    pub child: tokio::process::Child,
    /// `server.listen` as bound (`timgate emulate`: where the emulator listens).
    pub addr: SocketAddr,
    /// `server.admin_listen` as bound (none for `timgate emulate`).
    pub admin: Option<SocketAddr>,
    /// The in-process emulator's address, when it started one.
    pub emulator: Option<SocketAddr>,
    /// `callbacks.listen` as bound, when configured.
    pub callbacks: Option<SocketAddr>,
}

/// How a process that never got to listening ended: its exit code and its stderr.
#[derive(Debug)]
pub struct Exited {
    pub code: Option<i32>,
    pub stderr: String,
}

impl Launched {
    /// Spawns `command` and waits (at most 20 s) until it logs "gateway listening" (or, for
    /// `timgate emulate`, "emulator listening"), or exits.
    pub async fn start(mut command: tokio::process::Command) -> Result<Launched, Exited> {
        use tokio::io::AsyncBufReadExt;
        let mut child = command
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        let mut emulator = None;
        let reading = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                seen.push_str(&line);
                seen.push('\n');
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let fields = &value["fields"];
                let addr = |name: &str| fields[name].as_str().and_then(|a| a.parse().ok());
                match fields["message"].as_str() {
                    Some("in-process emulator listening") => emulator = addr("addr"),
                    Some("gateway listening") => {
                        return Some((addr("addr"), addr("admin"), addr("callbacks")));
                    }
                    Some("emulator listening") => return Some((addr("addr"), None, None)),
                    _ => {}
                }
            }
            None
        };
        let found = tokio::time::timeout(std::time::Duration::from_secs(20), reading)
            .await
            .expect("timgate neither listened nor exited within 20 s");
        if let Some((Some(addr), admin, callbacks)) = found {
            // Keep draining stderr so the process never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(Launched {
                child,
                addr,
                admin,
                emulator,
                callbacks,
            });
        }
        let status = child.wait().await.unwrap();
        Err(Exited {
            code: status.code(),
            stderr: seen,
        })
    }

    /// Sends SIGTERM and waits for the exit code.
    pub async fn stop(mut self) -> Option<i32> {
        let pid = i32::try_from(self.child.id().unwrap()).unwrap();
        let pid = rustix::process::Pid::from_raw(pid).expect("a child's pid is positive");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        self.child.wait().await.unwrap().code()
    }
}

/// A loopback address that refuses connections and that no other test can take: a socket
/// is bound to it and never listens (connecting gets a reset), for as long as the returned
/// socket lives. Binding, closing and reusing the number would race other tests' listeners.
pub fn refusing_port() -> (socket2::Socket, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, addr)
}

/// A drain answers 503 at once the waiting requests whose turn would come too late to finish
/// (not when the last turn passes), and logs each. `before_apps` goes between the `[server]`
/// keys and the app (a `[fleet]` section, say).
pub async fn late_turns_refused_at_once_on_drain(before_apps: &str) {
    const APP: u64 = 1400000001;
    const INFO: &str = "/v4/live_engine_http_srv/get_room_info";
    const ROOM: &str = r#"{"RoomId":"r"}"#;
    let upstream = Recorder::ok().await;
    // 1 request a second, 10 waiting, 10 s to drain: the last turn that can finish is
    // 10 s - 0.5 s grace - 3.5 s for an attempt = 6 s after the signal. Turns later than that
    // are answered 503 the moment the drain starts, not when the last turn passes.
    let config = format!(
        "drain_timeout_ms = 10000\nconnect_timeout_ms = 499\nupstream_timeout_ms = 3001\n{before_apps}{}\
         rate_limit = 1\nmax_queue_wait_ms = 60000\ndeadline_ms = 60000\n",
        one_app(APP, &upstream.url())
    );
    let (mut gateway, logs) = Process::logged(&config).await;
    let (addr, admin) = (gateway.addr, gateway.admin);
    let caller = Caller::default();
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let caller = caller.clone();
            tokio::spawn(async move {
                let answer = caller.post(addr, INFO, ROOM).await;
                (answer, tokio::time::Instant::now())
            })
        })
        .collect();
    eventually(|| {
        let (caller, served) = (caller.clone(), upstream.seen().len());
        async move {
            let inflight = scrape(&caller, admin, "timgate_inflight_requests").await;
            inflight as usize + served >= 10
        }
    })
    .await;
    let signalled = tokio::time::Instant::now();
    gateway.terminate();

    let (mut served, mut refused) = (0, 0);
    for request in requests {
        let (answer, at) = request.await.unwrap();
        match (answer.status, answer.code()) {
            (StatusCode::OK, 0) => served += 1,
            (StatusCode::SERVICE_UNAVAILABLE, 60008) => {
                assert_eq!(answer.headers["retry-after"], "1");
                assert_eq!(answer.headers["x-timgate-attempts"], "0");
                let after = at.saturating_duration_since(signalled);
                assert!(
                    after < std::time::Duration::from_secs(3),
                    "refused {after:?} after the signal: at once, not at the last turn (6 s)"
                );
                refused += 1;
            }
            other => panic!("{other:?}: {:?}", answer.json()),
        }
    }
    assert!(
        served >= 2 && refused >= 2,
        "{served} served, {refused} refused"
    );
    assert_eq!(gateway.child.wait().await.unwrap().code(), Some(0));
    let lines = logs.requests_reach(10).await;
    assert_eq!(
        lines.iter().filter(|l| l["outcome"] == "draining").count(),
        refused
    );
}

/// The most units in any closed window of `width`, of `sent` (time, units) in any order:
/// what a limit "in any sliding second (minute)" is checked against.
pub fn busiest_units<T, W>(sent: &[(T, usize)], width: W) -> usize
where
    T: Copy + Ord + std::ops::Sub<Output = W>,
    W: PartialOrd,
{
    let mut sent = sent.to_vec();
    sent.sort_by_key(|(at, _)| *at);
    let (mut start, mut units, mut most) = (0, 0, 0);
    for end in 0..sent.len() {
        units += sent[end].1;
        while sent[end].0 - sent[start].0 > width {
            units -= sent[start].1;
            start += 1;
        }
        most = most.max(units);
    }
    most
}

/// The most of `times` in any closed second.
pub fn busiest_second(times: &[tokio::time::Instant]) -> usize {
    let sent: Vec<_> = times.iter().map(|at| (*at, 1)).collect();
    busiest_units(&sent, std::time::Duration::from_secs(1))
}
