//! Checking a 16 KB set_room_metadata request, as a ratio to merely parsing it.
// Benches may unwrap and print: a panic stops a broken run, stdout is the report.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

#[path = "support/ratio.rs"]
mod ratio;

use criterion::{Criterion, black_box};
use serde::de::IgnoredAny;
use timgate::rules;

/// A request at the documented limits: 8 values of 2 KB (16 KB in all), 50-byte keys.
fn body() -> Vec<u8> {
    let entries: Vec<String> = (0..8)
        .map(|i| {
            format!(
                r#"{{"Key":"{}{i}","Value":"{}"}}"#,
                "k".repeat(49),
                "v".repeat(2048)
            )
        })
        .collect();
    format!(
        r#"{{"RoomId":"live-room","Metadata":[{}]}}"#,
        entries.join(",")
    )
    .into_bytes()
}

fn parse(body: &[u8]) {
    black_box(serde_json::from_slice::<IgnoredAny>(body).expect("valid JSON"));
}

fn check(body: &[u8]) {
    let rules = rules::for_api("live_engine_http_srv/set_room_metadata").expect("checked API");
    let value: serde_json_borrow::Value = serde_json::from_slice(body).expect("valid JSON");
    rules::check(rules, &value).expect("the body is within the limits");
}

fn main() {
    let body = body();
    let mut c = Criterion::default().configure_from_args();
    c.bench_function("rules_parse_only_16k", |b| {
        b.iter(|| parse(black_box(&body)));
    });
    c.bench_function("rules_parse_and_check_16k", |b| {
        b.iter(|| check(black_box(&body)));
    });
    c.final_summary();
    ratio::report(
        "check / parse (16 KB set_room_metadata)",
        31,
        2000,
        || parse(&body),
        || check(&body),
    );
}
