//! Keyed lanes under a flood of distinct keys: memory stays bounded and returns once idle.
//! Its own test binary, so the process's resident memory is this test's alone.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

use std::num::NonZeroU32;
use std::time::Duration;

use timgate::api::Api;
use timgate::config::Config;
use timgate::limiter::{Limiter, Measured};

/// This process's resident memory, MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

#[tokio::test]
async fn a_million_distinct_group_ids_leave_memory_where_it_was() {
    let text = "[[apps]]\nsdkappid = 1\nidentifier = \"a\"\nsecret_key = \"k\"\nregion = \"usa\"\n\
                rate_limit = 1000000\n[apps.api_limits]\n\"group_open_http_svc/send_group_msg\" = 1000000\n";
    let config = Config::from_toml(text).unwrap();
    let lanes = Limiter::default().lanes(&config.apps[0]);
    let api = Api::from_path("/v4/group_open_http_svc/send_group_msg").unwrap();
    let send = |key: String| {
        let measured = [Measured {
            cost: NonZeroU32::MIN,
            key: Some(key),
        }];
        let (lanes, api) = (&lanes, &api);
        async move {
            match lanes.turn(api, &measured, Duration::ZERO).await {
                Ok(turn) => turn.send_now().await.is_ok(),
                Err(_) => false,
            }
        }
    };
    // Warm up: the table's sets and the allocator's pools as a working gateway has them.
    for i in 0..10_000 {
        send(format!("warm-{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = rss_mib();
    let (mut sent, mut peak) = (0u32, start);
    for i in 0..1_000_000u32 {
        sent += u32::from(send(format!("group-{i}")).await);
        if i % 100_000 == 0 {
            peak = peak.max(rss_mib());
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let idle = rss_mib();
    println!("rss: start {start:.1} MiB, peak {peak:.1} MiB, idle {idle:.1} MiB; {sent} sent");
    assert!(sent > 0);
    // A lane kept per key ever seen would hold ~100 MiB here.
    assert!(peak - start < 8.0, "peak {peak:.1} MiB from {start:.1}");
    assert!(idle <= start * 1.1, "idle {idle:.1} MiB from {start:.1}");
    // And every lane is free again: a fresh key goes at once.
    assert!(send("after".into()).await);
}
