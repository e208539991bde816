//! What authentication adds to a request, with 100 `[[callers]]` configured: finding the
//! caller by its bearer token (SHA-256, a map lookup, a constant-time compare) and checking
//! the app's and the caller's `apis` lists, as a ratio to the same request routed with no
//! callers configured (its path parsed into an API, its `sdkappid` read from the query, its
//! app found, the app's list checked), both measured in the same run. Also prints the
//! difference in nanoseconds a request: the issue's target is under 1 µs.
//!
//! Run: `cargo bench --bench auth`.
// Benches may unwrap and print: a panic stops a broken run, stdout is the report.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

#[path = "support/ratio.rs"]
mod ratio;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Instant;

use criterion::{Criterion, black_box};
use hyper::HeaderMap;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT};
use timgate::api::{Api, Pattern};
use timgate::auth::{self, Callers};
use timgate::config::{self, App, Config, Token, TokenSource};
use timgate::proxy::requested_app;

const CALLERS: usize = 100;
const PATH: &str = "/v4/live_engine_http_srv/set_room_metadata";
const QUERY: &str =
    "sdkappid=1400000002&identifier=administrator&usersig=x&random=7&contenttype=json";

/// Three apps, the one asked for limited to the live room and messaging APIs.
const CONFIG: &str = r#"
[[apps]]
sdkappid = 1400000001
identifier = "administrator"
secret_key = "bench-key-one"
region = "singapore"

[[apps]]
sdkappid = 1400000002
identifier = "administrator"
secret_key = "bench-key-two"
region = "singapore"
apis = ["live_engine_http_srv/*", "openim/*"]

[[apps]]
sdkappid = 1400000003
identifier = "administrator"
secret_key = "bench-key-three"
region = "germany"
"#;

/// The configured callers: each limited to two of the apps and three API patterns, the
/// API asked for matching only the last.
fn callers() -> Vec<config::Caller> {
    let apis = [
        "openim/sendmsg",
        "group_open_http_svc/*",
        "live_engine_http_srv/*",
    ];
    (0..CALLERS)
        .map(|i| config::Caller {
            name: format!("service-{i}"),
            token: Token::new(&token(i)),
            token_source: TokenSource::Env(format!("SERVICE_{i}_TOKEN")),
            apps: Some(vec![1400000002, 1400000003]),
            apis: Some(apis.iter().map(|p| Pattern::parse(p).unwrap()).collect()),
            rate_limit: NonZeroU32::new(50),
        })
        .collect()
}

fn token(i: usize) -> String {
    format!("tg_{i:04}_0123456789abcdef0123456789abcdef")
}

/// A request's head as an SDK sends it, with the token of caller 57.
fn headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HOST, "127.0.0.1:8080".parse().unwrap());
    headers.insert(USER_AGENT, "python-requests/2.32".parse().unwrap());
    headers.insert(CONTENT_TYPE, "application/json".parse().unwrap());
    headers.insert(CONTENT_LENGTH, "64".parse().unwrap());
    headers.insert(
        AUTHORIZATION,
        format!("Bearer {}", token(57)).parse().unwrap(),
    );
    headers
}

/// What every request does to find its API and app.
fn route(apps: &HashMap<u64, App>) -> (Api, &App) {
    let api = Api::from_path(black_box(PATH)).unwrap();
    let id = requested_app(Some(black_box(QUERY))).unwrap().unwrap();
    (api, &apps[&id])
}

/// Routing, then the allow-lists and the caller, as the request path does before the body.
fn authorize(apps: &HashMap<u64, App>, callers: &Callers, headers: &HeaderMap) -> bool {
    let (api, app) = route(apps);
    let caller = callers.identify(black_box(headers)).unwrap();
    auth::app_allows(app, &api).unwrap();
    if let Some(caller) = caller {
        caller.allows(app.sdkappid, &api).unwrap();
    }
    black_box(caller.is_some())
}

fn main() {
    let config = Config::from_toml(CONFIG).unwrap();
    let apps: HashMap<u64, App> = config
        .apps
        .iter()
        .map(|a| (a.sdkappid, a.clone()))
        .collect();
    let none = Callers::new(&[]);
    let hundred = Callers::new(&callers());
    let headers = headers();
    assert!(!authorize(&apps, &none, &headers));
    assert!(authorize(&apps, &hundred, &headers));

    let mut c = Criterion::default().configure_from_args();
    c.bench_function("auth_route_no_callers", |b| {
        b.iter(|| authorize(&apps, &none, &headers));
    });
    c.bench_function("auth_route_100_callers", |b| {
        b.iter(|| authorize(&apps, &hundred, &headers));
    });
    c.final_summary();

    let iterations = 20_000;
    let ratio = ratio::report(
        "100 callers / none (route and authorize one request)",
        31,
        iterations,
        || {
            authorize(&apps, &none, &headers);
        },
        || {
            authorize(&apps, &hundred, &headers);
        },
    );
    // What auth adds a request, in the same kind of interleaved rounds: the median of each
    // round's difference, so a slow stretch of the machine falls on both sides of it.
    let mut added = Vec::with_capacity(31);
    for _ in 0..31 {
        let start = Instant::now();
        for _ in 0..iterations {
            authorize(&apps, &none, &headers);
        }
        let base = start.elapsed();
        let start = Instant::now();
        for _ in 0..iterations {
            authorize(&apps, &hundred, &headers);
        }
        let with = start.elapsed();
        added.push((with.as_secs_f64() - base.as_secs_f64()) * 1e9 / iterations as f64);
    }
    added.sort_by(f64::total_cmp);
    println!(
        "auth adds {:.0} ns a request with {CALLERS} callers (median of 31 rounds, \
         quartiles {:.0}–{:.0} ns; target < 1000 ns); the ratio above is {ratio:.2}x",
        added[15], added[8], added[23]
    );
}
