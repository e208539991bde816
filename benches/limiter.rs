//! The limiter's per-attempt cost when a slot is free, with 1 and with 10,000 apps configured,
//! reported beside a baseline measured in the same run (an `Api` lookup key being formatted,
//! which every acquire does once), so the numbers read as ratios on a noisy machine.
// Benches may unwrap and print: a panic stops a broken run, stdout is the report.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, black_box, criterion_group, criterion_main};
use timgate::api::Api;
use timgate::config::Config;
use timgate::limiter::{Lanes, Limiter};

/// `n` apps whose limits are high enough that no acquire ever waits.
fn limiter(n: u64) -> Vec<Lanes> {
    let text: String = (1..=n)
        .map(|id| {
            format!(
                "[[apps]]\nsdkappid = {id}\nidentifier = \"a\"\nsecret_key = \"k\"\nregion = \"usa\"\nrate_limit = 1000000000\n"
            )
        })
        .collect();
    let limiter = Limiter::default();
    Config::from_toml(&text)
        .expect("bench config is valid")
        .apps
        .iter()
        .map(|app| limiter.lanes(app))
        .collect()
}

fn acquire(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let api = Api::from_path("/v4/openim/sendmsg").expect("valid path");
    let mut group = c.benchmark_group("limiter_acquire");
    group.bench_function("baseline_api_to_string", |b| {
        b.iter(|| black_box(&api).to_string());
    });
    for apps in [1u64, 10_000] {
        let lanes = limiter(apps);
        let mut next = 0;
        group.bench_with_input(BenchmarkId::from_parameter(apps), &apps, |b, &apps| {
            b.to_async(&runtime).iter(|| {
                next = (next + 1) % apps as usize;
                let (lanes, api) = (&lanes[next], &api);
                async move {
                    lanes
                        .acquire(api, Duration::from_secs(1))
                        .await
                        .expect("free slot");
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, acquire);
criterion_main!(benches);
