//! The HTTP edge under hostile callers: what a connection may hold (connections, header
//! bytes, body bytes, a stalled write) is bounded, and malformed HTTP gets a clear answer.
//! Where memory is the point, a real `timgate` process is started and its resident memory
//! read from /proc while the attack runs: under 64 MiB (the Kubernetes manifest's limit)
//! throughout, and back near idle after.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use support::{Caller, Process, Recorder, gateway, one_app};
use timgate::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The Kubernetes manifest's memory limit.
const POD_MIB: f64 = 64.0;
/// An API without request rules: any JSON body goes through.
const PLAIN: &str = "/v4/openim/query_online_status";

/// Writes `request` on a new connection, then reads the answer until the server closes.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_answer(&mut stream).await
}

/// Everything the server sends until it closes, within five seconds.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let reading = stream.read_to_end(&mut answer);
    match tokio::time::timeout(Duration::from_secs(5), reading).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("read failed after {} bytes: {e}", answer.len()),
        Err(_) => panic!(
            "no close within 5 s; read {:?}",
            String::from_utf8_lossy(&answer)
        ),
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of a raw HTTP/1.1 answer.
fn status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

/// The envelope's ErrorCode in a raw answer's body.
fn error_code(answer: &str) -> i64 {
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str::<serde_json::Value>(body).unwrap()["ErrorCode"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn host_rules_and_an_http2_preface_get_clear_answers() {
    let upstream = Recorder::ok().await;
    let gw = gateway(Config::from_toml(&one_app(1, &upstream.url())).unwrap()).await;
    let post = |head: &str| {
        format!("POST {PLAIN} {head}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}")
    };

    let no_host = exchange(gw.addr, post("HTTP/1.1").as_bytes()).await;
    assert_eq!(
        (status(&no_host), error_code(&no_host)),
        (400, 60002),
        "{no_host}"
    );
    let two_hosts = post("HTTP/1.1\r\nhost: a\r\nhost: b");
    let two_hosts = exchange(gw.addr, two_hosts.as_bytes()).await;
    assert_eq!(
        (status(&two_hosts), error_code(&two_hosts)),
        (400, 60002),
        "{two_hosts}"
    );
    // HTTP/1.0 needs no Host; one Host is what every client sends.
    let old = exchange(gw.addr, post("HTTP/1.0").as_bytes()).await;
    assert_eq!((status(&old), error_code(&old)), (200, 0), "{old}");
    let one_host = exchange(gw.addr, post("HTTP/1.1\r\nhost: t").as_bytes()).await;
    assert_eq!(
        (status(&one_host), error_code(&one_host)),
        (200, 0),
        "{one_host}"
    );

    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let h2 = exchange(gw.addr, preface).await;
    assert_eq!((status(&h2), error_code(&h2)), (505, 60002), "{h2}");
    assert_eq!(
        upstream.seen().len(),
        2,
        "only the well-formed requests reached Tencent"
    );
}

#[tokio::test]
async fn a_caller_that_writes_a_3_mb_body_before_reading_sees_its_413() {
    let upstream = Recorder::ok().await;
    let gw = gateway(Config::from_toml(&one_app(1, &upstream.url())).unwrap()).await;
    let body = vec![b' '; 3 << 20];
    let head = format!(
        "POST {PLAIN} HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(&body)
        .await
        .expect("the gateway reads (and drops) the body while closing, so the write completes");
    let answer = read_answer(&mut stream).await;
    assert_eq!(
        (status(&answer), error_code(&answer)),
        (413, 60002),
        "{answer}"
    );
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn a_head_over_the_header_bound_is_answered_431() {
    let upstream = Recorder::ok().await;
    let gw = gateway(Config::from_toml(&one_app(1, &upstream.url())).unwrap()).await;
    let long_path = format!(
        "POST /v4/{} HTTP/1.1\r\nhost: t\r\n\r\n",
        "a".repeat(65_400)
    );
    assert_eq!(status(&exchange(gw.addr, long_path.as_bytes()).await), 431);
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn past_the_connection_cap_callers_get_503_and_healthz_still_answers() {
    let upstream = Recorder::ok().await;
    let mut config = Config::from_toml(&one_app(1, &upstream.url())).unwrap();
    config.server.max_connections = 20;
    let gw = gateway(config).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        // A request answered proves the connection was accepted and is being served.
        let request = format!("POST {PLAIN} HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n{{}}");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut first = [0u8; 12];
        stream.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        held.push(stream);
    }
    let request = format!(
        "POST {PLAIN} HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    let refused = exchange(gw.addr, request.as_bytes()).await;
    assert_eq!(
        (status(&refused), error_code(&refused)),
        (503, 60008),
        "{refused}"
    );
    assert!(refused.contains("retry-after: 1"), "{refused}");

    let caller = Caller::default();
    let health = caller.get(gw.admin.unwrap(), "/healthz").await;
    assert_eq!(health.status, 200);

    drop(held.pop());
    // The freed place is taken again: a new caller is served.
    support::eventually(|| async {
        let answer = exchange(gw.addr, request.as_bytes()).await;
        status(&answer) == 200
    })
    .await;
}

#[tokio::test]
async fn a_caller_that_never_reads_is_closed_after_the_write_timeout() {
    let upstream = Recorder::ok().await;
    let gateway = Process::start(
        &format!("write_timeout_ms = 500\n{}", one_app(1, &upstream.url())),
        &[],
        Stdio::null(),
    )
    .await;
    // Pipelined requests, never an answer read: once the answers fill the socket buffers,
    // the gateway's writes stall. Each answer is a 405 envelope; nothing goes upstream.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gateway.addr).await.unwrap();
    let (_unread, mut writer) = stream.into_split();
    let batch = format!("GET {PLAIN} HTTP/1.1\r\nhost: t\r\n\r\n").repeat(1000);
    let sent = Arc::new(AtomicU64::new(0));
    let counted = sent.clone();
    let writing = async move {
        loop {
            if writer.write_all(batch.as_bytes()).await.is_err() {
                return;
            }
            counted.fetch_add(1000, Ordering::Relaxed);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), writing)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "still open 20 s after {} requests, none of them read",
                sent.load(Ordering::Relaxed)
            )
        });
    let caller = Caller::default();
    assert_eq!(caller.get(gateway.admin, "/healthz").await.status, 200);
    assert!(gateway.rss_mib() < POD_MIB);
}
