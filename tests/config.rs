//! The configuration's promises, through the `timgate` binary: `check` and `run` agree on
//! every value, a taken port names its listener, `check` prints TOML that reads back, keys
//! come from the environment, and the in-process emulator listens on `emulator.listen`.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;

use hyper::StatusCode;
use support::{Caller, Launched, one_app};
use timgate::config::Config;

/// A config file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "timgate-config-{}-{}.toml",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn timgate(args: &[&str], config: &TempFile) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_timgate"));
    command
        .args(args)
        .arg("--config")
        .arg(&config.0)
        .env("TIMGATE__LOG__FORMAT", "json")
        .env("RUST_LOG", "info");
    command
}

/// `[server]` on port 0 everywhere, an in-process emulator, and `server` / `app` lines added.
fn edge_config(server: &str, app: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{server}\n\
         [emulator]\nlisten = \"127.0.0.1:0\"\n{}{app}\n",
        one_app(1400000001, "emulator")
    )
}

const INFO: &str = "/v4/live_engine_http_srv/get_room_info";

/// Every numeric key at and around its limits, and beyond what the types hold.
fn edge_values() -> Vec<(String, String)> {
    let huge = ["4294967295", "4294967296", "9223372036854775807"];
    let mut cases = Vec::new();
    let mut add = |server: bool, key: &str, values: &[&str]| {
        for value in values.iter().chain(&huge) {
            let line = format!("{key} = {value}");
            cases.push(if server {
                (line, String::new())
            } else {
                (String::new(), line)
            });
        }
    };
    let ms = ["0", "1", "3600000", "3600001"];
    for key in [
        "body_read_timeout_ms",
        "connect_timeout_ms",
        "drain_timeout_ms",
        "header_read_timeout_ms",
        "write_timeout_ms",
    ] {
        add(true, key, &ms);
    }
    add(
        true,
        "upstream_timeout_ms",
        &["3000", "3001", "3600000", "3600001"],
    );
    add(true, "max_body_bytes", &["0", "1", "131072"]);
    add(
        true,
        "max_body_bytes_in_flight",
        &["1", "131072", "8388608"],
    );
    add(
        true,
        "max_header_bytes",
        &["8191", "8192", "1048576", "1048577"],
    );
    add(true, "max_connections", &["0", "1", "1024"]);
    for key in ["max_queue_wait_ms", "retry_cap_ms", "deadline_ms"] {
        add(false, key, &ms);
    }
    add(false, "retry_base_ms", &["0", "1", "1000"]);
    add(
        false,
        "rate_limit",
        &["0", "1", "1000000", "1000001", "4000000000"],
    );
    add(false, "max_attempts", &["0", "1", "10", "11"]);
    add(false, "usersig_ttl_secs", &["59", "60", "86400", "86401"]);
    add(false, "sdkappid", &["0", "1"]);
    for value in ["0", "1", "1000000", "1000001", "4000000000"] {
        let line = format!("[apps.api_limits]\n\"live_engine_http_srv/get_room_info\" = {value}");
        cases.push((String::new(), line));
    }
    // A Redis URL the client cannot use (a wildcard host, a database that is no number, a
    // fragment other than #insecure) is refused by `check`, not by `run` after binding; one
    // it can use starts even with nothing listening there (an outage like any other).
    for url in [
        "redis://127.0.0.1:1/0",
        "redis://0.0.0.0:6379",
        "redis://127.0.0.1:1/not-a-db",
        "rediss://127.0.0.1:1/0#unsafe",
    ] {
        cases.push((String::new(), format!("[fleet]\nredis_url = \"{url}\"")));
    }
    cases
}

/// `check` and `run` agree on every edge value: what `check` accepts, `run` starts with and
/// serves a request through; what `check` refuses (exit 64, naming the key), `run` refuses
/// the same way, before binding anything.
#[tokio::test]
async fn check_and_run_agree_on_every_edge_value() {
    let caller = Caller::default();
    let (mut accepted, mut refused) = (0, 0);
    for (server, app) in edge_values() {
        // Each case's key is set once; the sdkappid case replaces the app's own line.
        let mut text = edge_config(&server, &app);
        if app.starts_with("sdkappid") {
            text = text.replacen("sdkappid = 1400000001\n", "", 1);
        }
        let config = TempFile::new(&text);
        let checked = timgate(&["check"], &config).output().await.unwrap();
        let ran = Launched::start(timgate(&[], &config)).await;
        let case = format!("{server}{app}");
        match (checked.status.code(), ran) {
            (Some(0), Ok(gateway)) => {
                let answer = caller.post(gateway.addr, INFO, r#"{"RoomId":"r"}"#).await;
                let envelope = answer.json();
                assert!(
                    envelope["ActionStatus"].is_string() && envelope["ErrorCode"].is_i64(),
                    "{case}: {:?} {envelope}",
                    answer.status
                );
                assert_eq!(gateway.stop().await, Some(0), "{case}");
                accepted += 1;
            }
            (Some(64), Err(exited)) => {
                // The same message, naming the same key: `timgate: invalid configuration
                // PATH: KEY: why`.
                let said = String::from_utf8_lossy(&checked.stderr);
                let key = said.split(": ").nth(2).unwrap_or_default();
                assert!(
                    key.contains('.') || key.starts_with("config"),
                    "{case}: {said}"
                );
                assert_eq!(exited.code, Some(64), "{case}: {}", exited.stderr);
                assert!(
                    exited.stderr.contains(said.trim()),
                    "{case}: check said {said}, run said {}",
                    exited.stderr
                );
                refused += 1;
            }
            (code, ran) => panic!(
                "{case}: check exited {code:?} ({}), run: {:?}",
                String::from_utf8_lossy(&checked.stderr),
                ran.err()
            ),
        }
    }
    assert!(
        accepted > 20 && refused > 20,
        "{accepted} accepted, {refused} refused"
    );
}

#[tokio::test]
async fn a_taken_port_names_the_listener_and_its_address() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap();
    let config = TempFile::new(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"{taken}\"\n{}",
        one_app(1400000001, "http://127.0.0.1:1")
    ));
    let exited = Launched::start(timgate(&[], &config)).await.err().unwrap();
    assert_eq!(exited.code, Some(1));
    assert!(
        exited.stderr.contains(&format!(
            "server.admin_listen {taken}: Address already in use"
        )),
        "{}",
        exited.stderr
    );
}

#[tokio::test]
async fn check_prints_toml_that_reads_back_as_the_same_configuration() {
    let text = format!(
        "[server]\nlisten = \"0.0.0.0:8080\"\nallow_anonymous = true\n{}rate_limit = 300\n[apps.api_limits]\n\
         \"openim/sendmsg\" = 50\n",
        one_app(1400000001, "emulator")
    )
    .replace("test-key-0123456789", "s3cr3t-value");
    let config = TempFile::new(&text);
    let out = timgate(&["check"], &config).output().await.unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(!printed.contains("s3cr3t-value"), "{printed}");
    assert!(printed.contains("secret_key = \"***\""), "{printed}");
    // The effective configuration: the file with the environment's overrides.
    let env = [("TIMGATE__LOG__FORMAT".into(), "json".into())];
    let original = Config::from_toml_with(&text, env).unwrap();
    assert!(printed.contains("format = \"json\""), "{printed}");
    let again = Config::from_toml(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(format!("{again:?}"), format!("{original:?}"));
    assert_eq!(
        again.apps[0].api_limits.len(),
        timgate::limiter::table::CALLS.len() + 1,
        "the documented per-API limits (limiter::table::CALLS) and sendmsg"
    );
}

#[tokio::test]
async fn an_apps_secret_key_can_come_from_the_environment_alone() {
    let config =
        TempFile::new(&edge_config("", "").replace("secret_key = \"test-key-0123456789\"\n", ""));
    let refused = timgate(&["check"], &config).output().await.unwrap();
    assert_eq!(refused.status.code(), Some(64));
    let mut run = timgate(&[], &config);
    run.env("TIMGATE__APPS__0__SECRET_KEY", "from-the-environment");
    let gateway = Launched::start(run).await.unwrap();
    let answer = Caller::default()
        .post(gateway.addr, INFO, r#"{"RoomId":"r"}"#)
        .await;
    assert_eq!((answer.status, answer.code()), (StatusCode::OK, 0));
    assert_eq!(gateway.stop().await, Some(0));
}

/// A FIFO as the configuration is refused at once (exit 64, naming what it is), by `check`
/// and by `run`, instead of waiting for a writer that never comes.
#[tokio::test]
async fn a_fifo_as_the_configuration_is_refused_at_start_not_waited_on() {
    let config = TempFile::new("");
    std::fs::remove_file(&config.0).unwrap();
    nix::unistd::mkfifo(&config.0, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let checked = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        timgate(&["check"], &config).output(),
    )
    .await
    .expect("check answers without waiting on the FIFO")
    .unwrap();
    assert_eq!(checked.status.code(), Some(64));
    let said = String::from_utf8_lossy(&checked.stderr);
    assert!(
        said.contains(&format!(
            "config: {} is a FIFO, not a regular file",
            config.0.display()
        )),
        "{said}"
    );
    let exited = Launched::start(timgate(&[], &config)).await.err().unwrap();
    assert_eq!(exited.code, Some(64));
    assert!(exited.stderr.contains(said.trim()), "{}", exited.stderr);
}

/// The recipe of docs/operating.md (`timgate emulate`), with the committed configuration:
/// faults posted to `emulator.listen` make the gateway's next request retry.
#[tokio::test]
async fn the_in_process_emulator_listens_on_emulator_listen_for_fault_injection() {
    let (gateway, port) = support::start_on_free_port(|port| {
        let mut run = tokio::process::Command::new(env!("CARGO_BIN_EXE_timgate"));
        run.arg("--config")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/timgate.toml"))
            .env("TIMGATE__LOG__FORMAT", "json")
            .env("TIMGATE__SERVER__LISTEN", "127.0.0.1:0")
            .env("TIMGATE__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
            .env("TIMGATE__CALLBACKS__LISTEN", "127.0.0.1:0")
            .env("TIMGATE__EMULATOR__LISTEN", format!("127.0.0.1:{port}"));
        run
    })
    .await;
    let emulator = gateway
        .emulator
        .expect("the in-process emulator's log line");
    assert_eq!(emulator.port(), port);

    let caller = Caller::default();
    let fault = r#"{"Api":"live_engine_http_srv/get_room_info","ErrorCode":100001,"Times":2}"#;
    let told = caller.post(emulator, "/_emulator/faults", fault).await;
    assert_eq!(told.status, StatusCode::OK, "{:?}", told.json());
    let answer = caller
        .post(gateway.addr, INFO, r#"{"RoomId":"demo"}"#)
        .await;
    assert_eq!(answer.code(), 0, "{:?}", answer.json());
    assert_eq!(answer.headers["x-timgate-attempts"], "3");
    assert_eq!(gateway.stop().await, Some(0));
}
