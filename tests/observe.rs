//! The operators' view holds against a real Prometheus: with real traffic through a gateway
//! (OK, a 100001 retried, a 60011 from the emulator, 429s, Tencent's callbacks forwarded and
//! one refused), every query of the shipped dashboard returns series, the shipped alert rules
//! pass `promtool check rules`, and the Tencent-rate-limit, 429 and refused-callback alerts
//! fire under the traffic that should trigger them and stay quiet under the traffic that
//! should not.
//!
//! Prometheus is started by the test on a free port with its storage in a temp dir, scraping
//! the gateway's admin port every second, with a copy of the shipped rules whose `for:`
//! durations are shortened to 1 s (the shipped file keeps realistic ones). Outside CI, a
//! machine without `prometheus` skips the Prometheus test and says so; with `CI` set it fails.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};
use support::{Caller, Recorder, emulator, free_port, gateway, one_app};
use timgate::config::Config;

const DASHBOARD: &str = include_str!("../deploy/grafana/timgate.json");
const RULES: &str = include_str!("../deploy/prometheus/timgate-rules.yaml");
const RULES_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/timgate-rules.yaml"
);

const APP: u64 = 1400000001;
const INFO: &str = "/v4/live_engine_http_srv/get_room_info";
const ROOM_LIST: &str = "/v4/live_engine_http_srv/get_room_list";
const ROOM: &str = r#"{"RoomId":"r"}"#;

/// The alerts this test drives; the others must stay quiet throughout.
const RATE_LIMITED: &str = "TimgateTencentRateLimited";
const SUSTAINED_429S: &str = "TimgateSustained429s";
const CALLBACKS_REFUSED: &str = "TimgateCallbacksRefused";
/// The callback token of the gateway's app.
const CALLBACK_TOKEN: &str = "observe-callback-token-0123";

/// `prometheus` and `promtool` on PATH; outside CI, `None` after saying so loudly.
fn programs() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    };
    match (find("prometheus"), find("promtool")) {
        (Some(prometheus), Some(promtool)) => Some((prometheus, promtool)),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "prometheus/promtool not found; .ci/run installs them (apt-get install prometheus)"
            )
        }
        _ => {
            eprintln!(
                "\n*** SKIPPED: prometheus/promtool not installed (apt-get install prometheus); \
                 the dashboard and alert rules were NOT checked against a real Prometheus ***\n"
            );
            None
        }
    }
}

#[test]
fn the_shipped_rules_pass_promtool() {
    let Some((_, promtool)) = programs() else {
        return;
    };
    let out = Command::new(promtool)
        .args(["check", "rules", RULES_PATH])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every metric the dashboard and the rules name is one a gateway exports: the fleet's names
/// from a gateway with `[fleet]` set (registered only then), the rest from any gateway.
#[test]
fn every_metric_the_dashboard_and_rules_name_is_exported() {
    let config = Config::from_toml(&one_app(APP, "http://127.0.0.1:1")).unwrap();
    let mut metrics = timgate::metrics::Metrics::new(&config.apps);
    metrics.register_fleet();
    // The series a family of each `# TYPE` yields, whether or not it has any yet.
    // Requests have no series before the first one; nor have callbacks without [callbacks].
    metrics.request(None, None, "ok");
    let callbacks = metrics.callbacks();
    callbacks.counted(None, timgate::metrics::OTHER, "refused_sign");
    callbacks.served(APP, timgate::metrics::OTHER, 0.001);
    let exported: Vec<String> = metrics
        .render(0)
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .flat_map(|declared| {
            let (name, kind) = declared.split_once(' ').unwrap();
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_count", "_sum"],
                _ => &[""],
            };
            suffixes.iter().map(move |s| format!("{name}{s}"))
        })
        .collect();
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut named: Vec<String> = targets(&dashboard)
        .iter()
        .flat_map(|(_, expr)| metric_names(expr))
        .collect();
    named.extend(metric_names(RULES));
    assert!(named.iter().any(|n| n.starts_with("timgate_fleet_")));
    for name in named {
        assert!(
            exported.contains(&name),
            "{name} is named in deploy/ but no gateway exports it"
        );
    }
}

#[test]
fn the_dashboard_takes_its_datasource_app_and_api_as_variables() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let variables: BTreeMap<&str, &str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["type"].as_str().unwrap()))
        .collect();
    assert_eq!(variables.get("datasource"), Some(&"datasource"));
    assert_eq!(variables.get("app"), Some(&"query"));
    assert_eq!(variables.get("api"), Some(&"query"));
    let targets = targets(&dashboard);
    assert!(targets.len() >= 20, "{} queries", targets.len());
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
        }
    }
}

/// A rule file with every `for:` shortened to 1 s, so pending turns firing within the test.
fn rules_with_short_for() -> String {
    RULES
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: 1s", &line[..line.len() - line.trim_start().len()]),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A Prometheus process; killed when dropped, its temp dir removed.
struct Prometheus {
    child: tokio::process::Child,
    addr: SocketAddr,
    dir: PathBuf,
    caller: Caller,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second with `rules` loaded, and waits until
    /// it is ready.
    async fn start(binary: &Path, target: SocketAddr, rules: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("timgate-observe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rules.yaml"), rules).unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}}\n\
             rule_files: [rules.yaml]\n\
             scrape_configs:\n  - job_name: timgate\n    static_configs:\n      \
             - targets: [\"{target}\"]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = tokio::process::Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let prometheus = Prometheus {
            child,
            addr,
            dir,
            caller: Caller::default(),
        };
        prometheus
            .until("Prometheus ready", || async {
                prometheus.get_status("/-/ready").await == Some(StatusCode::OK)
            })
            .await;
        prometheus
    }

    /// The status of `GET path`, or `None` while nothing listens yet.
    async fn get_status(&self, path: &str) -> Option<StatusCode> {
        let stream = tokio::net::TcpStream::connect(self.addr).await.ok()?;
        drop(stream);
        Some(self.caller.get(self.addr, path).await.status)
    }

    /// `GET /api/v1/...`'s `data`, after checking the API said success.
    async fn api(&self, path: &str) -> Value {
        let answer = self.caller.get(self.addr, path).await;
        let body = answer.json();
        assert_eq!(body["status"], "success", "{path}: {body}");
        body["data"].clone()
    }

    /// An instant query's result vector.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(promql)))
            .await;
        assert_eq!(data["resultType"], "vector", "{promql}: {data}");
        data["result"].as_array().unwrap().clone()
    }

    /// An instant query's single value, or `None` when it has no series.
    async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await;
        result.first().map(sample)
    }

    /// The values of `label` on the series `selector` matches: what Grafana's
    /// `label_values(selector, label)` lists.
    async fn label_values(&self, selector: &str, label: &str) -> Vec<String> {
        let data = self
            .api(&format!(
                "/api/v1/label/{label}/values?match[]={}",
                encode(selector)
            ))
            .await;
        data.as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    /// Every alerting rule of the loaded rules: name → (state, health).
    async fn rules(&self) -> BTreeMap<String, (String, String)> {
        let data = self.api("/api/v1/rules?type=alert").await;
        let mut rules = BTreeMap::new();
        for group in data["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                let field = |name: &str| rule[name].as_str().unwrap().to_owned();
                rules.insert(field("name"), (field("state"), field("health")));
            }
        }
        rules
    }

    /// The rule groups' last evaluation times, as Prometheus prints them.
    async fn evaluations(&self) -> Vec<String> {
        let data = self.api("/api/v1/rules?type=alert").await;
        data["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["lastEvaluation"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits until the rules have been evaluated twice more: at least one evaluation then
    /// started after every sample already queryable now.
    async fn rules_evaluated(&self) {
        for _ in 0..2 {
            let before = self.evaluations().await;
            self.until("a rule evaluation", || async {
                self.evaluations().await != before
            })
            .await;
        }
    }

    /// Polls `probe` every 100 ms until it holds, for at most 30 s (Prometheus scrapes and
    /// evaluates on its own one-second clock).
    async fn until<F: std::future::Future<Output = bool>>(
        &self,
        what: &str,
        mut probe: impl FnMut() -> F,
    ) {
        for _ in 0..300 {
            if probe().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let tail: Vec<_> = log.lines().rev().take(20).collect();
        panic!(
            "{what}: not within 30 s; Prometheus' log ends:\n{}",
            tail.join("\n")
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The value of one instant-vector sample, `[time, "value"]`.
fn sample(series: &Value) -> f64 {
    series["value"][1].as_str().unwrap().parse().unwrap()
}

/// Every panel's queries: (panel title, PromQL with Grafana's variables in it).
fn targets(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let nested = panel["panels"].as_array().cloned().unwrap_or_default();
        for panel in std::iter::once(panel).chain(nested.iter()) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push((
                    panel["title"].as_str().unwrap().to_owned(),
                    target["expr"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

/// The dashboard's `app` and `api` variables as Grafana resolves them with every value
/// selected: each variable's `label_values(...)` query run against Prometheus, its values
/// joined into a regex alternation.
async fn resolve_variables(prometheus: &Prometheus, dashboard: &Value) -> Vec<(String, String)> {
    let mut resolved: Vec<(String, String)> = vec![("$__rate_interval".into(), "1m".into())];
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] != "query" {
            continue;
        }
        let definition = substitute(variable["definition"].as_str().unwrap(), &resolved);
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not label_values(selector, label): {definition}"));
        let (selector, label) = inner.rsplit_once(", ").unwrap();
        let values = prometheus.label_values(selector, label).await;
        assert!(!values.is_empty(), "{definition} lists no values");
        let name = variable["name"].as_str().unwrap();
        resolved.push((format!("${name}"), format!("({})", values.join("|"))));
    }
    resolved
}

/// The `timgate_*` metric names a query reads.
fn metric_names(promql: &str) -> Vec<String> {
    promql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("timgate_"))
        .map(str::to_owned)
        .collect()
}

fn substitute(text: &str, variables: &[(String, String)]) -> String {
    variables
        .iter()
        .fold(text.to_owned(), |text, (name, value)| {
            text.replace(name.as_str(), value)
        })
}

/// The states of the two driven alerts, after asserting that every rule evaluates without
/// error and that the alerts this traffic gives no cause stay inactive (`may_fire` names
/// those it may: a burst that waits up to max_queue_wait_ms is what the queue-wait alert
/// is for, but whether its p99 crosses 80% in a few samples is not this test's business).
async fn driven_alerts(prometheus: &Prometheus, may_fire: &[&str]) -> (String, String) {
    let rules = prometheus.rules().await;
    assert!(rules.len() >= 8, "{rules:?}");
    for (name, (state, health)) in &rules {
        assert_eq!(health, "ok", "{name} fails to evaluate");
        if ![RATE_LIMITED, SUSTAINED_429S].contains(&name.as_str())
            && !may_fire.contains(&name.as_str())
        {
            assert_eq!(state, "inactive", "{name} fired: {rules:?}");
        }
    }
    (
        rules[RATE_LIMITED].0.clone(),
        rules[SUSTAINED_429S].0.clone(),
    )
}

/// Posts a `C2C.CallbackAfterSendMsg` callback signed with `token` to the callback listener
/// at `addr`, as Tencent would; the answer's ErrorCode.
async fn callback(caller: &Caller, addr: SocketAddr, token: &str) -> i64 {
    let query = timgate::callback::verify::query(
        APP,
        "C2C.CallbackAfterSendMsg",
        Some(token),
        timgate::usersig::unix_now(),
    );
    caller.post(addr, &format!("/?{query}"), "{}").await.code()
}

async fn inject(caller: &Caller, emulator: SocketAddr, code: u32) {
    let fault = json!({"Api": "live_engine_http_srv/get_room_info", "ErrorCode": code, "Times": 1});
    let injected = caller
        .post(emulator, timgate::emulator::FAULTS_PATH, fault.to_string())
        .await;
    assert_eq!(injected.code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_and_alerts_hold_against_a_real_prometheus() {
    let Some((binary, _)) = programs() else {
        return;
    };
    // get_room_list keeps its documented 10/s; with 100 ms of waiting allowed, a burst of
    // 40 gets a few through and the rest 429 (60007).
    let emu = emulator(&Config::from_toml(&one_app(APP, "http://127.0.0.1:1")).unwrap()).await;
    let service = Recorder::ok().await;
    let token = std::env::temp_dir().join(format!("timgate-observe-token-{}", std::process::id()));
    std::fs::write(&token, CALLBACK_TOKEN).unwrap();
    let text = format!(
        "[callbacks]\nlisten = \"127.0.0.1:0\"\n{}max_queue_wait_ms = 100\nretry_base_ms = 1\n\
         retry_cap_ms = 5\ncallback_token_file = {:?}\n[[apps.callbacks]]\ncommands = [\"C2C.*\"]\n\
         forward = \"{}\"\n",
        one_app(APP, &format!("http://{}", emu.addr)),
        token.display().to_string(),
        service.url()
    );
    let gw = gateway(Config::from_toml(&text).unwrap()).await;
    let prometheus = Prometheus::start(&binary, gw.admin.unwrap(), &rules_with_short_for()).await;
    prometheus
        .until("the gateway scraped", || async {
            prometheus.value("up{job=\"timgate\"}").await == Some(1.0)
        })
        .await;
    let caller = Caller::default();

    // Quiet traffic: all OK, one of them after a 100001 that timgate retried.
    inject(&caller, emu.addr, 100001).await;
    let retried = caller.post(gw.addr, INFO, ROOM).await;
    assert_eq!(
        (retried.code(), &retried.headers["x-timgate-attempts"]),
        (0, &"2".parse().unwrap())
    );
    for _ in 0..19 {
        assert_eq!(caller.post(gw.addr, INFO, ROOM).await.code(), 0);
    }
    // Tencent's callbacks, signed: forwarded to the service.
    for _ in 0..2 {
        assert_eq!(
            callback(&caller, gw.callbacks.unwrap(), CALLBACK_TOKEN).await,
            0
        );
    }
    assert_eq!(
        caller
            .post(gw.addr, ROOM_LIST, r#"{"Next":""}"#)
            .await
            .code(),
        0
    );
    prometheus
        .until("the quiet traffic scraped", || async {
            prometheus
                .value("sum(timgate_requests_total{outcome=\"ok\"})")
                .await
                == Some(21.0)
        })
        .await;
    prometheus.rules_evaluated().await;
    assert_eq!(
        driven_alerts(&prometheus, &[]).await,
        ("inactive".into(), "inactive".into()),
        "OK traffic and a retried 100001 must not alert"
    );

    // Traffic that should alert: a callback with a forged sign, Tencent answers 60011 once,
    // and a burst gets 429s.
    let forged = callback(&caller, gw.callbacks.unwrap(), "forged-token-0123456789").await;
    assert_eq!(forged, 60005);
    inject(&caller, emu.addr, 60011).await;
    let slowed = caller.post(gw.addr, INFO, ROOM).await;
    assert_eq!(
        (slowed.code(), &slowed.headers["x-timgate-attempts"]),
        (0, &"2".parse().unwrap())
    );
    let burst: Vec<_> = (0..40)
        .map(|_| {
            let caller = caller.clone();
            let addr = gw.addr;
            tokio::spawn(async move { caller.post(addr, ROOM_LIST, r#"{"Next":""}"#).await })
        })
        .collect();
    let mut refused = 0;
    for answer in burst {
        let answer = answer.await.unwrap();
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(answer.code(), 60007);
            refused += 1;
        }
    }
    assert!(refused >= 20, "only {refused} of 40 got 429");
    prometheus
        .until("the three alerts firing", || async {
            let may_fire = ["TimgateQueueWaitNearMax", CALLBACKS_REFUSED];
            let driven = driven_alerts(&prometheus, &may_fire).await;
            let refused = &prometheus.rules().await[CALLBACKS_REFUSED].0;
            driven == ("firing".into(), "firing".into()) && refused == "firing"
        })
        .await;

    // Every dashboard query returns series for this traffic.
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let variables = resolve_variables(&prometheus, &dashboard).await;
    assert!(
        variables
            .iter()
            .any(|(n, v)| n == "$app" && v.contains(&APP.to_string()))
    );
    // The fleet panels draw a gateway with `[fleet]` set (and a Redis), which this one is
    // not: their queries must run, and name metrics the gateway exports once it has any.
    let names = prometheus
        .label_values("{job=\"timgate\"}", "__name__")
        .await;
    let fleet_exported = names.iter().any(|n| n.starts_with("timgate_fleet_"));
    eprintln!("note: the fleet panels' queries run but are not required to return series here");
    let mut empty = Vec::new();
    let mut seen = BTreeMap::new();
    for (title, expr) in targets(&dashboard) {
        let promql = substitute(&expr, &variables);
        let result = prometheus.query(&promql).await;
        if expr.contains("timgate_fleet_") {
            for name in metric_names(&expr) {
                let exported = names.iter().any(|n| n == &name);
                assert!(
                    !fleet_exported || exported,
                    "{title}: {name} is not exported"
                );
            }
            continue;
        }
        if result.is_empty() {
            empty.push(format!("{title}: {promql}"));
        }
        seen.insert(promql, result);
    }
    assert!(
        empty.is_empty(),
        "queries without series:\n{}",
        empty.join("\n")
    );

    // And the series say what happened.
    let codes = seen
        .iter()
        .find(|(q, _)| q.contains("code=~\"60007|60011|60018|60019|100001\""))
        .unwrap()
        .1;
    for code in ["60011", "100001"] {
        assert!(
            codes
                .iter()
                .any(|s| s["metric"]["code"] == code && sample(s) > 0.0),
            "{code} not seen: {codes:?}"
        );
    }
    let by_scope = seen
        .iter()
        .find(|(q, _)| q.contains("timgate_throttle_rejections_total"))
        .unwrap()
        .1;
    assert!(
        by_scope
            .iter()
            .any(|s| s["metric"]["scope"] == "api" && sample(s) > 0.0)
    );
    let api_limit = seen
        .iter()
        .find(|(q, _)| q.contains("timgate_api_limit_per_second"))
        .unwrap()
        .1;
    assert!(api_limit.iter().any(|s| {
        s["metric"]["api"] == "live_engine_http_srv/get_room_list" && sample(s) == 10.0
    }));
}
