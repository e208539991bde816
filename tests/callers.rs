//! Who may call what (issue 12): caller tokens, the app and caller allow-lists, and each
//! caller's own share of an app's limit, against a recording upstream.
//!
//! Every test here logs into one TRACE-level capture installed for this binary, so the
//! token checks see whatever any request path wrote, at any level.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use support::{Caller, Recorder, app_entry, gateway, sample};
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

/// Everything logged by this test binary so far, at TRACE.
fn logs() -> String {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    let capture = CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let writer = capture.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        capture
    });
    String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned()
}

/// A `[[callers]]` entry whose token is `token`, read from a file of its own.
fn caller_entry(name: &str, token: &str, extra: &str) -> String {
    let path = std::env::temp_dir().join(format!(
        "timgate-caller-{}-{name}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    format!(
        "[[callers]]\nname = \"{name}\"\ntoken_file = {:?}\n{extra}",
        path.display().to_string()
    )
}

const LIVE_TOKEN: &str = "live-token-3f9a1c77e2b54d08";
const OPS_TOKEN: &str = "ops-token-91d2c0aa5b7e4f16";
const ROOM: &str = "/v4/live_engine_http_srv/get_room_info";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn refused_callers_get_401_or_403_and_never_reach_the_upstream() {
    logs();
    let upstream = Recorder::ok().await;
    // App 1 may be used for live rooms and messages only; app 2 for anything.
    let text = format!(
        "{}apis = [\"live_engine_http_srv/*\", \"openim/*\"]\n{}{}{}",
        app_entry(1, "administrator", &upstream.url()),
        app_entry(2, "administrator", &upstream.url()),
        caller_entry(
            "live",
            LIVE_TOKEN,
            "apps = [1]\napis = [\"live_engine_http_srv/*\"]\n"
        ),
        caller_entry("ops", OPS_TOKEN, ""),
    );
    let mut config = Config::from_toml(&text).unwrap();
    config.server.max_body_bytes = 1024;
    let gw = gateway(config).await;
    let caller = Caller::default();
    let send = |path: String, token: Option<&'static str>, body: &'static str| {
        let caller = caller.clone();
        async move {
            let auth = token.map(bearer);
            let headers: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| vec![("authorization", a)])
                .unwrap_or_default();
            caller
                .send_with("POST", gw.addr, &path, &headers, body)
                .await
        }
    };
    let room = |app: u64| format!("{ROOM}?sdkappid={app}");
    let body = r#"{"RoomId":"r"}"#;

    let none = send(room(1), None, body).await;
    let wrong = send(room(1), Some("live-token-3f9a1c77e2b54d09"), body).await;
    let api = send(
        "/v4/openim/sendmsg?sdkappid=1".into(),
        Some(LIVE_TOKEN),
        r#"{"To_Account":"b","MsgRandom":1,"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"hi"}}]}"#,
    )
    .await;
    let app = send(room(2), Some(LIVE_TOKEN), body).await;
    let by_app_list = send(
        "/v4/im_open_login_svc/account_delete?sdkappid=1".into(),
        Some(OPS_TOKEN),
        "{}",
    )
    .await;
    // No token and a body over max_body_bytes: refused for the token, before the body.
    let big: &'static str = Box::leak("x".repeat(4096).into_boxed_str());
    let unread = send(room(1), None, big).await;
    let allowed = send(room(1), Some(LIVE_TOKEN), body).await;

    for (answer, status, code) in [
        (&none, 401, 60005),
        (&wrong, 401, 60005),
        (&api, 403, 60021),
        (&app, 403, 60021),
        (&by_app_list, 403, 60021),
        (&unread, 401, 60005),
    ] {
        assert_eq!(answer.status.as_u16(), status, "{:?}", answer.json());
        assert_eq!(answer.json()["ActionStatus"], "FAIL");
        assert_eq!(answer.code(), code);
        assert_eq!(answer.headers["x-timgate-attempts"], "0");
    }
    for answer in [&none, &wrong, &unread] {
        let challenge = answer.headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        let info = answer.json()["ErrorInfo"].as_str().unwrap().to_owned();
        assert!(!info.contains("live-token"), "{info}");
    }
    assert!(
        app.json()["ErrorInfo"]
            .as_str()
            .unwrap()
            .contains("caller live may not use app 2")
    );
    assert!(
        by_app_list.json()["ErrorInfo"]
            .as_str()
            .unwrap()
            .contains("app 1 may not be used for im_open_login_svc/account_delete")
    );
    assert_eq!(allowed.status.as_u16(), 200);
    assert_eq!(allowed.code(), 0);

    // Only the allowed request reached Tencent, and without the caller's header.
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, ROOM);
    assert!(seen[0].headers.get("authorization").is_none());
    let forwarded = format!("{:?}", seen[0]);
    assert!(!forwarded.contains(LIVE_TOKEN), "{forwarded}");

    // The caller's name in metrics, its token nowhere.
    let metrics = caller.get(gw.admin.unwrap(), "/metrics").await;
    let metrics = String::from_utf8(metrics.body.to_vec()).unwrap();
    for token in [LIVE_TOKEN, OPS_TOKEN, "live-token-3f9a1c77e2b54d09"] {
        assert!(!metrics.contains(token));
    }
    let by = |caller: &str, outcome: &str| {
        sample(
            &metrics,
            "timgate_caller_requests_total",
            &[
                &format!("caller=\"{caller}\""),
                &format!("outcome=\"{outcome}\""),
            ],
        )
    };
    assert_eq!(by("live", "ok"), 1.0, "{metrics}");
    assert_eq!(by("live", "forbidden"), 2.0);
    assert_eq!(by("ops", "forbidden"), 1.0);
    assert_eq!(by("none", "unauthorized"), 3.0);

    // Every request has its line, the caller's name in it, and no token in any line.
    let logs = logs();
    for token in [LIVE_TOKEN, OPS_TOKEN, "live-token-3f9a1c77e2b54d09"] {
        assert!(!logs.contains(token), "a token was logged");
    }
    assert!(
        logs.lines()
            .any(|l| l.contains("caller=\"live\"") && l.contains("outcome=\"ok\"")),
        "{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("outcome=\"unauthorized\"") && l.contains("status=401")),
        "{logs}"
    );
}

#[tokio::test]
async fn without_callers_requests_need_no_token_and_the_header_is_not_forwarded() {
    logs();
    let upstream = Recorder::ok().await;
    let config = Config::from_toml(&app_entry(1, "administrator", &upstream.url())).unwrap();
    let gw = gateway(config).await;
    let answer = Caller::default()
        .send_with(
            "POST",
            gw.addr,
            ROOM,
            &[("authorization", "Bearer anything-at-all-here")],
            r#"{"RoomId":"r"}"#,
        )
        .await;
    assert_eq!(answer.code(), 0);
    let seen = upstream.seen();
    assert!(seen[0].headers.get("authorization").is_none());
    assert!(!logs().contains("anything-at-all-here"));
}

/// The share: two callers on one app at 200/s, one capped at 50/s and flooding. The other's
/// requests still go through at once (p50 wait under 50 ms), the flooder's are held to its
/// own 50 in any second at the upstream, and its 429s name its own limit.
#[tokio::test]
async fn a_flooding_caller_is_held_to_its_share_and_the_other_gets_through() {
    logs();
    let upstream = Recorder::ok().await;
    let text = format!(
        "{}rate_limit = 200\n{}{}",
        app_entry(1, "administrator", &upstream.url()),
        caller_entry("live", LIVE_TOKEN, ""),
        caller_entry("batch", OPS_TOKEN, "rate_limit = 50\n"),
    );
    let gw = gateway(Config::from_toml(&text).unwrap()).await;
    let addr = gw.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let mut flood = Vec::new();
    // More than the batch lane can hold within max_queue_wait_ms (about 48 at 48/s).
    for _ in 0..100 {
        let (stop, refused) = (stop.clone(), refused.clone());
        flood.push(tokio::spawn(async move {
            let caller = Caller::default();
            let auth = bearer(OPS_TOKEN);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = caller
                    .send_with(
                        "POST",
                        addr,
                        "/v4/openim/sendmsg",
                        &[("authorization", &auth)],
                        r#"{"To_Account":"b","MsgRandom":1,"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"hi"}}]}"#,
                    )
                    .await;
                if answer.status.as_u16() == 429 {
                    refused.lock().unwrap().push(answer.json());
                    // A flooder that honours nothing, but leaves the CPU to the gateway.
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        }));
    }
    // Let the flood fill the batch lane's queue before the interactive caller starts.
    support::eventually(|| {
        let refused = refused.clone();
        async move { !refused.lock().unwrap().is_empty() }
    })
    .await;
    let live = Caller::default();
    let auth = bearer(LIVE_TOKEN);
    let mut waits = Vec::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(25));
    for _ in 0..80 {
        tick.tick().await;
        let started = tokio::time::Instant::now();
        let answer = live
            .send_with(
                "POST",
                addr,
                ROOM,
                &[("authorization", &auth)],
                r#"{"RoomId":"r"}"#,
            )
            .await;
        assert_eq!(answer.code(), 0, "{:?}", answer.json());
        waits.push(started.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in flood {
        task.await.unwrap();
    }
    waits.sort();
    let p50 = waits[waits.len() / 2];
    assert!(p50 < std::time::Duration::from_millis(50), "p50 {p50:?}");

    // The batch caller's sends at the upstream: at most its 50 in any second.
    let mut sent: Vec<_> = upstream
        .seen()
        .into_iter()
        .filter(|s| s.path == "/v4/openim/sendmsg")
        .map(|s| s.at)
        .collect();
    sent.sort();
    let mut start = 0;
    let mut most = 0;
    for end in 0..sent.len() {
        while sent[end] - sent[start] > std::time::Duration::from_secs(1) {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    assert!(
        sent.len() >= 60,
        "the batch caller still got its share: {}",
        sent.len()
    );
    assert!(most <= 50, "{most} batch sends in one second");
    let refusal = refused.lock().unwrap()[0].clone();
    assert_eq!(refusal["ErrorCode"], 60011);
    let info = refusal["ErrorInfo"].as_str().unwrap();
    assert!(info.contains("caller batch's rate_limit of 50/s"), "{info}");
}

/// Two `Authorization` headers, in either order and whichever tokens they carry: refused with
/// 401, no caller chosen (no caller's series moves), nothing sent to Tencent.
#[tokio::test]
async fn two_authorization_headers_choose_no_caller() {
    logs();
    let upstream = Recorder::ok().await;
    let text = format!(
        "{}{}{}",
        app_entry(1, "administrator", &upstream.url()),
        caller_entry("live", LIVE_TOKEN, ""),
        caller_entry("batch", OPS_TOKEN, ""),
    );
    let gw = gateway(Config::from_toml(&text).unwrap()).await;
    let caller = Caller::default();
    let body = r#"{"RoomId":"r"}"#;
    let wrong = "live-token-3f9a1c77e2b54d09";
    for (first, second) in [
        (LIVE_TOKEN, wrong),
        (wrong, LIVE_TOKEN),
        (OPS_TOKEN, LIVE_TOKEN),
        (LIVE_TOKEN, LIVE_TOKEN),
    ] {
        let (first, second) = (bearer(first), bearer(second));
        let headers = [
            ("authorization", first.as_str()),
            ("authorization", second.as_str()),
        ];
        let answer = caller
            .send_with("POST", gw.addr, ROOM, &headers, body)
            .await;
        assert_eq!(answer.status.as_u16(), 401, "{:?}", answer.json());
        assert_eq!(answer.code(), 60005);
        let info = answer.json()["ErrorInfo"].as_str().unwrap().to_owned();
        assert!(
            info.contains("more than one Authorization header"),
            "{info}"
        );
        assert_eq!(answer.headers["x-timgate-attempts"], "0");
    }
    assert_eq!(upstream.seen().len(), 0);
    let metrics = caller.get(gw.admin.unwrap(), "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    for name in ["live", "batch"] {
        let label = format!("caller=\"{name}\"");
        let counted = sample(&text, "timgate_caller_requests_total", &[&label]);
        assert_eq!(counted, 0.0, "{name}");
    }
    // The control: one header with the same token is served as that caller.
    let one = caller
        .send_with(
            "POST",
            gw.addr,
            ROOM,
            &[("authorization", &bearer(OPS_TOKEN))],
            body,
        )
        .await;
    assert_eq!(one.code(), 0, "{:?}", one.json());
    assert_eq!(upstream.seen().len(), 1);
}
