//! No log line, at any level, carries the SecretKey or a UserSig.
//!
//! Its own test binary, so the trace-level subscriber it installs sees everything.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use support::{Caller, KEY, RawUpstream, Recorder, app_entry, gateway, one_app};
use timgate::config::{Config, SecretKey};
use timgate::usersig::{self, Claims};

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
    // The failure paths: refused (502), silent (504 after the attempt deadline), and an
    // answer that is no HTTP (502).
    let (_held, refused) = support::refusing_port();
    let silent = RawUpstream::start(None).await;
    let garbage = RawUpstream::start(Some("not http at all\r\n\r\n".into())).await;
    let text = format!(
        "{}{}{}{}",
        one_app(1400000001, &upstream.url()),
        app_entry(2, "administrator", &format!("http://{refused}")),
        app_entry(3, "administrator", &silent.url()),
        app_entry(4, "administrator", &garbage.url()),
    );
    let mut config = Config::from_toml(&text).unwrap();
    tracing::info!(?config, "effective configuration");
    config.server.max_body_bytes = 1024;
    config.server.upstream_timeout = std::time::Duration::from_millis(300);
    let gw = gateway(config).await;
    let caller = Caller::default();
    let path = "/v4/profile/portrait_get";
    let first = format!("{path}?sdkappid=1400000001");
    caller.post(gw.addr, &first, "{}").await;
    caller.post(gw.addr, &first, "not json").await;
    caller
        .post(
            gw.addr,
            &format!("{path}?sdkappid=1400000001&usersig=caller-supplied"),
            "{}",
        )
        .await;
    let failed = [(2, 502), (3, 504), (4, 502)];
    for (app, status) in failed {
        let answer = caller
            .post(gw.addr, &format!("{path}?sdkappid={app}"), "{}")
            .await;
        assert_eq!(answer.status.as_u16(), status, "app {app}");
    }
    // The UserSigs those attempts carried, for every second they could have been minted in.
    let now = usersig::unix_now();
    let key = SecretKey::new(KEY);
    let minted: Vec<String> = failed
        .iter()
        .flat_map(|(app, _)| (now - 30..=now + 1).map(move |time| (*app, time)))
        .map(|(sdkappid, time)| {
            let claims = Claims {
                sdkappid,
                identifier: "administrator".into(),
                time,
                expire: 600,
                userbuf: None,
            };
            usersig::sign(&key, &claims).as_str().to_owned()
        })
        .collect();

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("portrait_get"), "the request line is logged");
    assert!(!logs.contains(KEY), "the key leaked");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    for s in seen {
        let token = s.param("usersig").unwrap();
        assert!(!logs.contains(token), "a UserSig leaked");
    }
    assert!(silent.requests() >= 1 && garbage.requests() >= 1);
    for token in &minted {
        assert!(
            !logs.contains(token.as_str()),
            "a UserSig leaked on a failure path"
        );
    }
    for status in ["502", "504"] {
        assert!(logs.contains(status), "the {status} request was logged");
    }
}
