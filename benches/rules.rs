//! Checking a 16 KB set_room_metadata request, as a ratio to merely parsing it; and what the
//! repeated-key check adds to each of the two readings of a body (`json::parse`, the tree a
//! checked API needs, and `json::validate`, the walk an unchecked one gets).
// Benches may unwrap and print: a panic stops a broken run, stdout is the report.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

#[path = "support/ratio.rs"]
mod ratio;

use criterion::{Criterion, black_box};
use serde::de::IgnoredAny;
use timgate::{json, rules};

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
    let value = json::parse(body).expect("valid JSON, each key once");
    rules::check(rules, &value).expect("the body is within the limits");
}

/// The tree alone, without looking for repeated keys.
fn tree(body: &[u8]) {
    let value: serde_json_borrow::Value = serde_json::from_slice(body).expect("valid JSON");
    black_box(value);
}

/// A 16 KB batchsendmsg: 500 recipients and a text message, 40 objects of keys in all.
fn batch() -> Vec<u8> {
    let to: Vec<String> = (0..500).map(|i| format!("\"user{i:05}\"")).collect();
    let body: Vec<String> = (0..38)
        .map(|i| {
            format!(
                r#"{{"MsgType":"TIMTextElem","MsgContent":{{"Text":"{}{i}"}}}}"#,
                "t".repeat(40)
            )
        })
        .collect();
    format!(
        r#"{{"SyncOtherMachine":2,"From_Account":"admin","To_Account":[{}],"MsgRandom":1,"MsgBody":[{}]}}"#,
        to.join(","),
        body.join(",")
    )
    .into_bytes()
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
    c.bench_function("json_parse_16k", |b| {
        b.iter(|| json::parse(black_box(&body)).expect("valid"));
    });
    c.bench_function("json_validate_16k", |b| {
        b.iter(|| json::validate(black_box(&body)).expect("valid"));
    });
    c.final_summary();
    let batch = batch();
    for (name, body) in [("set_room_metadata", &body), ("batchsendmsg", &batch)] {
        ratio::report(
            &format!("json::parse / tree without the repeated-key check (16 KB {name})"),
            31,
            2000,
            || tree(body),
            || drop(json::parse(body).expect("valid")),
        );
        ratio::report(
            &format!("json::validate / IgnoredAny parse (16 KB {name})"),
            31,
            2000,
            || parse(body),
            || json::validate(body).expect("valid"),
        );
    }
    ratio::report(
        "check / parse (16 KB set_room_metadata)",
        31,
        2000,
        || parse(&body),
        || check(&body),
    );
}
