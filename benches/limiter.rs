//! The limiter's per-attempt cost when a slot is free, with 1 and with 10,000 apps configured,
//! through a keyed lane (`send_group_msg` per `GroupId`) with 1 and with 100,000 live keys,
//! and through a cost quota (`batchsendmsg`, 500 recipients a call), reported beside a
//! baseline measured in the same run (running an empty future the same way), so the numbers
//! read as differences on a noisy machine. The clock is tokio's, paused and moved on a
//! second before each timed request: a lane always has room, so what is timed is the
//! limiter's work, not the limit (a real clock made every case wait for its slot now and
//! then, and the cost case for 500 units of a 1,000,000/s lane every time).
// Benches may unwrap and print: a panic stops a broken run, stdout is the report.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::num::NonZeroU32;
use timgate::api::Api;
use timgate::config::Config;
use timgate::limiter::{Lanes, Limiter, Measured};

/// Limits high enough that no acquire ever waits.
const UNLIMITED: &str = "rate_limit = 1000000\n[apps.api_limits]\n\"openim/sendmsg\" = 1000000\n\
    \"openim/batchsendmsg\" = 1000000\n\"group_open_http_svc/send_group_msg\" = 1000000\n\
    [[apps.api_quotas]]\napi = \"group_open_http_svc/send_group_msg\"\nkey = \"GroupId\"\nrate = 1000000\n\
    [[apps.api_quotas]]\napi = \"openim/batchsendmsg\"\ncost = \"To_Account\"\nrate = 1000000\nper = \"second\"\n";

/// `n` apps whose limits are high enough that no acquire ever waits.
fn limiter(n: u64) -> Vec<Lanes> {
    let text: String = (1..=n)
        .map(|id| {
            format!(
                "[[apps]]\nsdkappid = {id}\nidentifier = \"a\"\nsecret_key = \"k\"\nregion = \"usa\"\n{UNLIMITED}"
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

/// Times `work` alone, `iters` times, each after moving the paused clock on by a second, so
/// every lane has room again: what is timed is the limiter's own work for a request whose
/// slot is free, never a wait for the limit. `block_on` of an empty future is the baseline.
fn timed<F: std::future::Future<Output = ()>>(
    runtime: &tokio::runtime::Runtime,
    iters: u64,
    mut work: impl FnMut(u64) -> F,
) -> Duration {
    let mut total = Duration::ZERO;
    for i in 0..iters {
        runtime.block_on(tokio::time::advance(Duration::from_secs(1)));
        let future = work(i);
        let started = std::time::Instant::now();
        runtime.block_on(future);
        total += started.elapsed();
    }
    total
}

fn acquire(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let api = Api::from_path("/v4/openim/sendmsg").expect("valid path");
    let mut group = c.benchmark_group("limiter_acquire");
    group.bench_function("baseline_block_on", |b| {
        b.iter_custom(|iters| timed(&runtime, iters, |_| async {}));
    });
    for apps in [1u64, 10_000] {
        let lanes = limiter(apps);
        group.bench_with_input(BenchmarkId::from_parameter(apps), &apps, |b, &apps| {
            b.iter_custom(|iters| {
                timed(&runtime, iters, |i| {
                    let (lanes, api) = (&lanes[(i % apps) as usize], &api);
                    async move {
                        lanes
                            .acquire(api, Duration::from_secs(1))
                            .await
                            .expect("free slot");
                    }
                })
            });
        });
    }
    let lanes = limiter(1).remove(0);
    let group_msg = Api::from_path("/v4/group_open_http_svc/send_group_msg").expect("valid path");
    for keys in [1u32, 100_000] {
        let measured: Vec<Vec<Measured>> = (0..keys)
            .map(|i| {
                vec![Measured {
                    cost: NonZeroU32::MIN,
                    key: Some(format!("group-{i}")),
                }]
            })
            .collect();
        group.bench_with_input(BenchmarkId::new("keyed", keys), &keys, |b, &keys| {
            b.iter_custom(|iters| {
                timed(&runtime, iters, |i| {
                    let measured = &measured[(i % u64::from(keys)) as usize];
                    let (lanes, api) = (&lanes, &group_msg);
                    async move {
                        let turn = lanes.turn(api, measured, Duration::from_secs(1)).await;
                        turn.expect("free slot").send_now().await.expect("sent");
                    }
                })
            });
        });
    }
    let batch = Api::from_path("/v4/openim/batchsendmsg").expect("valid path");
    let recipients = vec![Measured {
        cost: NonZeroU32::new(500).expect("500 > 0"),
        key: None,
    }];
    group.bench_function("cost_500", |b| {
        b.iter_custom(|iters| {
            timed(&runtime, iters, |_| async {
                let turn = lanes
                    .turn(&batch, &recipients, Duration::from_secs(1))
                    .await;
                turn.expect("free slot").send_now().await.expect("sent");
            })
        });
    });
    group.finish();
}

criterion_group!(benches, acquire);
criterion_main!(benches);
