//! No log line, at any level, carries the SecretKey or a UserSig.
//!
//! Its own test binary, so the trace-level subscriber it installs sees everything.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use support::{Caller, KEY, Recorder, gateway, one_app};
use timgate::config::Config;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn trace_logs_never_carry_the_key_or_a_usersig() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    let upstream = Recorder::ok().await;
    let mut config = Config::from_toml(&one_app(1400000001, &upstream.url())).unwrap();
    tracing::info!(?config, "effective configuration");
    config.server.max_body_bytes = 1024;
    let gw = gateway(config).await;
    let caller = Caller::default();
    let path = "/v4/openim/query_online_status";
    caller.post(gw.addr, path, "{}").await;
    caller.post(gw.addr, path, "not json").await;
    caller
        .post(gw.addr, &format!("{path}?usersig=caller-supplied"), "{}")
        .await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("query_online_status"),
        "the request line is logged"
    );
    assert!(!logs.contains(KEY), "the key leaked");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    for s in seen {
        let token = s.param("usersig").unwrap();
        assert!(!logs.contains(token), "a UserSig leaked");
    }
}
