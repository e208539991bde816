//! Changing it while it runs (issue 13, item 1): a reload on SIGHUP or a changed file, under
//! load, with a raised limit, a rotated key and a new app; a bad file refused; a Kubernetes
//! Secret's symlink swap picked up on its own; a FIFO, a device or an oversized file at a
//! watched path refused without stopping later reloads, and a change anywhere in the file
//! seen (issue 27, item 5). Each test runs a real `timgate` process in
//! front of a recording upstream that checks every UserSig against the keys.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::StatusCode;
use serde_json::Value;
use support::{Caller, KEY, Logs, Process, Recorder, app_entry, eventually, one_app, sample};
use timgate::config::SecretKey;
use timgate::usersig;
use tokio::time::Instant;

const APP: u64 = 1400000001;
const ADDED: u64 = 1400000002;
const NEW_KEY: &str = "rotated-key-9876543210";
const INFO: &str = "/v4/live_engine_http_srv/get_room_info";
const ROOM: &str = r#"{"RoomId":"r"}"#;
const LATE: &str = r#"{"RoomId":"late"}"#;

/// Sends SIGHUP, as `kill -HUP` and `systemctl reload` do.
fn hangup(process: &Process) {
    let pid = i32::try_from(process.child.id().unwrap()).unwrap();
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
}

/// Rewrites the running process's configuration file, as an operator would: a whole new file
/// renamed over the old one.
fn rewrite(process: &Process, edit: impl FnOnce(String) -> String) {
    let path = process.config_path();
    let text = edit(std::fs::read_to_string(path).unwrap());
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// `timgate_config_reloads_total{result}` now.
async fn reloads(caller: &Caller, process: &Process, result: &str) -> f64 {
    let text = caller.get(process.admin, "/metrics").await.body;
    let text = String::from_utf8(text.to_vec()).unwrap();
    let label = format!("result=\"{result}\"");
    sample(&text, "timgate_config_reloads_total", &[&label])
}

/// Waits until `timgate_config_reloads_total{result}` reaches `n`.
async fn reloads_reach(caller: &Caller, process: &Process, result: &str, n: f64) {
    eventually(|| async move { reloads(caller, process, result).await >= n }).await;
}

/// Which key signed `seen`'s UserSig for `app`: `Some(key)` among `keys`, `None` for neither.
fn signed_with<'k>(seen: &support::Seen, app: u64, keys: &[&'k str]) -> Option<&'k str> {
    let sig = seen.param("usersig")?;
    keys.iter().copied().find(|key| {
        usersig::verify(
            &SecretKey::new(key),
            sig,
            app,
            "administrator",
            usersig::unix_now(),
        )
        .is_ok()
    })
}

/// Asks `/readyz` every 20 ms until `stop`, and returns every status it got.
fn watch_readiness(
    caller: &Caller,
    process: &Process,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<StatusCode>> {
    let (caller, admin) = (caller.clone(), process.admin);
    tokio::spawn(async move {
        let mut statuses = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            statuses.push(caller.get(admin, "/readyz").await.status);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        statuses
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_answers_every_request_and_keeps_both_limits() {
    let upstream = Recorder::ok().await;
    let config = format!(
        "{}rate_limit = 50\nmax_queue_wait_ms = 20000\ndeadline_ms = 30000\n",
        one_app(APP, &upstream.url())
    );
    let process = Process::start(&config, &[], std::process::Stdio::null()).await;
    let caller = Caller::default();
    let stop = Arc::new(AtomicBool::new(false));
    let readiness = watch_readiness(&caller, &process, stop.clone());

    // 300 at once: at 50/s most of them are still queued when the file changes.
    let path = format!("{INFO}?sdkappid={APP}");
    let requests: Vec<_> = (0..300)
        .map(|_| {
            let (caller, addr, path) = (caller.clone(), process.addr, path.clone());
            tokio::spawn(async move { caller.post(addr, &path, ROOM).await })
        })
        .collect();
    upstream.arrived(60).await;
    // Stamped before the file changes: the file watcher (once a second) may apply the change
    // before the SIGHUP does, and what it admits then is not held to the old limit.
    let sent = Instant::now();
    rewrite(&process, |text| {
        format!(
            "{}{}",
            text.replace("rate_limit = 50", "rate_limit = 100")
                .replace(KEY, NEW_KEY),
            app_entry(ADDED, "administrator", &upstream.url())
        )
    });
    hangup(&process);
    reloads_reach(&caller, &process, "ok", 1.0).await;
    let applied = Instant::now();
    // The operators' view shows the new limits: the raised one, and the added app's.
    let text = caller.get(process.admin, "/metrics").await.body;
    let text = String::from_utf8(text.to_vec()).unwrap();
    let shown = |app: u64| {
        let label = format!("app=\"{app}\"");
        sample(&text, "timgate_app_limit_per_second", &[&label])
    };
    assert_eq!((shown(APP), shown(ADDED)), (100.0, 200.0));
    // Requests queued before the switch keep their slots; these come after them, at the new
    // limit.
    let later: Vec<_> = (0..150)
        .map(|_| {
            let (caller, addr, path) = (caller.clone(), process.addr, path.clone());
            tokio::spawn(async move { caller.post(addr, &path, LATE).await })
        })
        .collect();

    for request in requests.into_iter().chain(later) {
        let answer = request.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        assert_eq!(answer.code(), 0, "{:?}", answer.json());
    }
    let added = caller
        .post(process.addr, &format!("{INFO}?sdkappid={ADDED}"), ROOM)
        .await;
    assert_eq!(
        added.code(),
        0,
        "the added app is served: {:?}",
        added.json()
    );
    stop.store(true, Ordering::SeqCst);
    let statuses = readiness.await.unwrap();
    assert!(statuses.len() > 10, "readiness was watched throughout");
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );

    let seen = upstream.seen();
    let of_app: Vec<_> = seen
        .iter()
        .filter(|s| s.param("sdkappid") == Some("1400000001"))
        .collect();
    assert_eq!(of_app.len(), 450, "each request reached Tencent once");
    for s in &of_app {
        let key = signed_with(s, APP, &[KEY, NEW_KEY]);
        assert!(key.is_some(), "a UserSig of neither key");
        if s.at < sent {
            assert_eq!(key, Some(KEY), "the new key before the reload");
        }
        if s.at > applied {
            assert_eq!(key, Some(NEW_KEY), "the rotated-away key after the reload");
        }
    }
    let last = seen.last().unwrap();
    assert_eq!(signed_with(last, ADDED, &[KEY]), Some(KEY));

    // No sliding second above the old limit before the switch, nor above the new one across
    // and after it; and the raised limit is used once the switch is a second old.
    let times: Vec<Instant> = of_app.iter().map(|s| s.at).collect();
    let before: Vec<Instant> = times.iter().copied().filter(|t| *t < sent).collect();
    assert!(
        support::busiest_second(&before) <= 50,
        "{}",
        support::busiest_second(&before)
    );
    assert!(
        support::busiest_second(&times) <= 100,
        "{}",
        support::busiest_second(&times)
    );
    let after: Vec<Instant> = of_app
        .iter()
        .filter(|s| s.body == LATE)
        .map(|s| s.at)
        .collect();
    assert!(
        support::busiest_second(&after) > 80,
        "the raised limit in use: {} in the busiest second after the switch",
        support::busiest_second(&after)
    );
}

#[tokio::test]
async fn a_bad_file_on_reload_keeps_the_running_configuration() {
    let upstream = Recorder::ok().await;
    let (process, logs) = Process::logged(&one_app(APP, &upstream.url())).await;
    let caller = Caller::default();

    rewrite(&process, |text| format!("{text}rate_limit = 0\n"));
    hangup(&process);
    reloads_reach(&caller, &process, "error", 1.0).await;
    refused_naming(&logs, "apps[0].rate_limit").await;
    let answer = caller.post(process.addr, INFO, ROOM).await;
    assert_eq!(answer.code(), 0, "{:?}", answer.json());
    assert_eq!(signed_with(&upstream.seen()[0], APP, &[KEY]), Some(KEY));

    // A listen address cannot change while it runs: refused as a whole, even with a new key.
    rewrite(&process, |text| {
        text.replace("rate_limit = 0\n", "")
            .replace(KEY, NEW_KEY)
            .replacen(
                &process.addr.to_string(),
                &format!("127.0.0.1:{}", support::free_port()),
                1,
            )
    });
    hangup(&process);
    refused_naming(&logs, "server.listen").await;
    let answer = caller.post(process.addr, INFO, ROOM).await;
    assert_eq!(answer.code(), 0, "{:?}", answer.json());
    assert_eq!(signed_with(&upstream.seen()[1], APP, &[KEY]), Some(KEY));
    assert_eq!(reloads(&caller, &process, "ok").await, 0.0);
    assert_eq!(
        caller.get(process.admin, "/readyz").await.status,
        StatusCode::OK
    );
}

/// Waits until a refused reload's log line names `key`.
async fn refused_naming(logs: &Logs, key: &str) {
    eventually(|| async move {
        logs.lines().iter().any(|line: &Value| {
            line["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("configuration reload refused"))
                && line["fields"]["key"] == key
        })
    })
    .await;
}

/// A file laid out as kubelet mounts a Secret: `key -> ..data/key`, `..data -> ..<version>`;
/// a new version is written beside the old and `..data` swapped to it in one rename.
struct Secret {
    dir: std::path::PathBuf,
    versions: usize,
}

impl Secret {
    fn new(name: &str, value: &str) -> Secret {
        let dir = std::env::temp_dir().join(format!("timgate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut secret = Secret { dir, versions: 0 };
        secret.write(value);
        std::os::unix::fs::symlink("..data/key", secret.dir.join("key")).unwrap();
        secret
    }

    /// The path a configuration names.
    fn path(&self) -> String {
        self.dir.join("key").display().to_string()
    }

    /// Swaps in a new version holding `value`.
    fn write(&mut self, value: &str) {
        self.versions += 1;
        let version = format!("..2026_11_26_{}", self.versions);
        std::fs::create_dir_all(self.dir.join(&version)).unwrap();
        std::fs::write(self.dir.join(&version).join("key"), format!("{value}\n")).unwrap();
        std::os::unix::fs::symlink(&version, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_secret_swapped_by_symlink_is_picked_up_without_a_signal() {
    let mut secret = Secret::new("secret", KEY);
    let upstream = Recorder::ok().await;
    let config = one_app(APP, &upstream.url()).replace(
        &format!("secret_key = \"{KEY}\""),
        &format!("secret_key_file = {:?}", secret.path()),
    );
    let process = Process::start(&config, &[], std::process::Stdio::null()).await;
    let caller = Caller::default();
    assert_eq!(caller.post(process.addr, INFO, ROOM).await.code(), 0);
    assert_eq!(signed_with(&upstream.seen()[0], APP, &[KEY]), Some(KEY));

    secret.write(NEW_KEY);
    reloads_reach(&caller, &process, "ok", 1.0).await;
    assert_eq!(caller.post(process.addr, INFO, ROOM).await.code(), 0);
    let seen = upstream.seen();
    assert_eq!(signed_with(&seen[1], APP, &[KEY, NEW_KEY]), Some(NEW_KEY));
}

/// A fresh folder for one test's files, removed when dropped.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "timgate-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Puts a FIFO at `path` in one rename, as a careless operator or a broken mount might.
fn fifo_at(path: &std::path::Path) {
    let fifo = path.with_extension("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::fs::rename(&fifo, path).unwrap();
}

/// Waits until a refused reload's log line names `key` with an error that contains `error`.
async fn refused_saying(logs: &Logs, key: &str, error: &str) {
    eventually(|| async move {
        logs.lines().iter().any(|line: &Value| {
            let fields = &line["fields"];
            fields["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("configuration reload refused"))
                && fields["key"] == key
                && fields["error"].as_str().is_some_and(|e| e.contains(error))
        })
    })
    .await;
}

/// `timgate_app_limit_per_second{app}` now.
async fn limit_shown(caller: &Caller, process: &Process, app: u64) -> f64 {
    let text = caller.get(process.admin, "/metrics").await.body;
    let text = String::from_utf8(text.to_vec()).unwrap();
    let label = format!("app=\"{app}\"");
    sample(&text, "timgate_app_limit_per_second", &[&label])
}

/// A FIFO at a watched key file is a refused reload (counted, logged, naming the key and
/// what is there), not a read that waits for a writer: requests and probes are answered
/// meanwhile, and once a real file is back, the next reload applies it.
#[tokio::test]
async fn a_fifo_at_a_key_file_is_a_refused_reload_and_later_reloads_work() {
    let dir = Dir::new("fifo-key");
    let key = dir.0.join("key");
    std::fs::write(&key, KEY).unwrap();
    let upstream = Recorder::ok().await;
    let config = one_app(APP, &upstream.url()).replace(
        &format!("secret_key = \"{KEY}\""),
        &format!("secret_key_file = {key:?}"),
    );
    let (process, logs) = Process::logged(&config).await;
    let caller = Caller::default();
    assert_eq!(caller.post(process.addr, INFO, ROOM).await.code(), 0);

    fifo_at(&key);
    hangup(&process);
    reloads_reach(&caller, &process, "error", 1.0).await;
    refused_saying(
        &logs,
        "apps[0].secret_key_file",
        "is a FIFO, not a regular file",
    )
    .await;
    for _ in 0..3 {
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            caller.post(process.addr, INFO, ROOM),
        )
        .await
        .expect("a request is answered while a FIFO is at the key's path");
        assert_eq!(answer.code(), 0);
    }
    let probe = caller.get(process.admin, "/healthz").await;
    assert_eq!(probe.status, StatusCode::OK);

    // The real file back, with a rotated key: applied, and the next UserSig is signed with it.
    let next = dir.0.join("key.next");
    std::fs::write(&next, NEW_KEY).unwrap();
    std::fs::rename(&next, &key).unwrap();
    hangup(&process);
    reloads_reach(&caller, &process, "ok", 1.0).await;
    assert_eq!(caller.post(process.addr, INFO, ROOM).await.code(), 0);
    let seen = upstream.seen();
    assert_eq!(signed_with(&seen[0], APP, &[KEY, NEW_KEY]), Some(KEY));
    let last = seen.last().unwrap();
    assert_eq!(signed_with(last, APP, &[KEY, NEW_KEY]), Some(NEW_KEY));
}

/// A FIFO, then a device, at the configuration file's own path: each a refused reload naming
/// what is there; the running limits stay, and the real file back is applied.
#[tokio::test]
async fn a_fifo_or_a_device_as_the_configuration_is_refused_and_later_reloads_work() {
    let upstream = Recorder::ok().await;
    let config = format!("{}rate_limit = 50\n", one_app(APP, &upstream.url()));
    let (process, logs) = Process::logged(&config).await;
    let caller = Caller::default();
    let path = process.config_path().to_owned();
    let text = std::fs::read_to_string(&path).unwrap();

    fifo_at(&path);
    hangup(&process);
    refused_saying(&logs, "config", "is a FIFO, not a regular file").await;
    let zero = path.with_extension("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    std::fs::rename(&zero, &path).unwrap();
    hangup(&process);
    refused_saying(&logs, "config", "is a character device, not a regular file").await;
    assert_eq!(limit_shown(&caller, &process, APP).await, 50.0);
    assert_eq!(caller.post(process.addr, INFO, ROOM).await.code(), 0);
    assert_eq!(reloads(&caller, &process, "ok").await, 0.0);

    let next = path.with_extension("next");
    std::fs::write(&next, text.replace("rate_limit = 50", "rate_limit = 70")).unwrap();
    std::fs::rename(&next, &path).unwrap();
    hangup(&process);
    reloads_reach(&caller, &process, "ok", 1.0).await;
    assert_eq!(limit_shown(&caller, &process, APP).await, 70.0);
    assert!(reloads(&caller, &process, "error").await >= 2.0);
}

/// A configuration file over its cap (1 MiB) on reload is refused naming the cap, without
/// being read: the running limits stay, and the process's peak memory does not move by the
/// file's size.
#[tokio::test]
async fn an_oversized_configuration_on_reload_is_refused_without_being_held() {
    const PADDING: usize = 40 * 1024 * 1024;
    let upstream = Recorder::ok().await;
    let config = format!("{}rate_limit = 50\n", one_app(APP, &upstream.url()));
    let (process, logs) = Process::logged(&config).await;
    let caller = Caller::default();
    let pid = process.child.id().unwrap();
    let peak = support::peak_rss_mib(pid);

    // Valid TOML that would raise the limit, were it read.
    rewrite(&process, |text| {
        let line = "# padding padding padding padding padding padding padding padding\n";
        format!(
            "{}{}",
            text.replace("rate_limit = 50", "rate_limit = 70"),
            line.repeat(PADDING / line.len())
        )
    });
    hangup(&process);
    reloads_reach(&caller, &process, "error", 1.0).await;
    refused_saying(&logs, "config", "is larger than 1 MiB").await;
    assert_eq!(limit_shown(&caller, &process, APP).await, 50.0);
    assert_eq!(caller.post(process.addr, INFO, ROOM).await.code(), 0);
    let grown = support::peak_rss_mib(pid) - peak;
    assert!(grown < 8.0, "peak resident memory grew by {grown:.1} MiB");
}

/// The watcher hashes the whole configuration file: a change past its first 64 KiB is seen
/// and applied without a signal.
#[tokio::test]
async fn a_change_past_the_first_64_kib_of_the_configuration_is_reloaded() {
    let upstream = Recorder::ok().await;
    let line = "# a long comment, as a configuration with many apps has many lines\n";
    let config = format!(
        "{}{}rate_limit = 50\n",
        line.repeat(70 * 1024 / line.len()),
        one_app(APP, &upstream.url())
    );
    let process = Process::start(&config, &[], std::process::Stdio::null()).await;
    let caller = Caller::default();
    let text = std::fs::read_to_string(process.config_path()).unwrap();
    assert!(text.find("rate_limit = 50").unwrap() > 64 * 1024);
    assert_eq!(limit_shown(&caller, &process, APP).await, 50.0);

    rewrite(&process, |text| {
        text.replace("rate_limit = 50", "rate_limit = 60")
    });
    reloads_reach(&caller, &process, "ok", 1.0).await;
    assert_eq!(limit_shown(&caller, &process, APP).await, 60.0);
}

#[tokio::test]
async fn a_rotated_caller_token_is_picked_up_and_the_old_one_refused() {
    const OLD: &str = "first-token-0123456789";
    const NEW: &str = "second-token-9876543210";
    let mut token = Secret::new("token", OLD);
    let upstream = Recorder::ok().await;
    let config = format!(
        "{}\n[[callers]]\nname = \"live\"\ntoken_file = {:?}\n",
        one_app(APP, &upstream.url()),
        token.path()
    );
    let process = Process::start(&config, &[], std::process::Stdio::null()).await;
    let caller = Caller::default();
    let call = |token: &'static str| {
        let caller = caller.clone();
        let addr = process.addr;
        async move {
            let bearer = format!("Bearer {token}");
            caller
                .send_with("POST", addr, INFO, &[("authorization", &bearer)], ROOM)
                .await
                .status
        }
    };
    assert_eq!(call(OLD).await, StatusCode::OK);
    assert_eq!(call(NEW).await, StatusCode::UNAUTHORIZED);

    token.write(NEW);
    reloads_reach(&caller, &process, "ok", 1.0).await;
    assert_eq!(call(NEW).await, StatusCode::OK);
    assert_eq!(call(OLD).await, StatusCode::UNAUTHORIZED);
    assert_eq!(upstream.seen().len(), 2, "no refused call reached Tencent");
}
