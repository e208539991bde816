//! UserSig signing and verifying: the per-request cost of minting (every ttl/2) and of the
//! emulator's check (every request).
// Benches may unwrap and print: a panic stops a broken run, stdout is the report.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use timgate::config::SecretKey;
use timgate::usersig::{self, Claims};

fn usersig(c: &mut Criterion) {
    let key = SecretKey::new("5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e");
    let claims = Claims {
        sdkappid: 1400000000,
        identifier: "administrator".into(),
        time: 1_700_000_000,
        expire: 600,
        userbuf: None,
    };
    let token = usersig::sign(&key, &claims);
    c.bench_function("usersig_sign", |b| {
        b.iter(|| usersig::sign(&key, black_box(&claims)));
    });
    c.bench_function("usersig_verify", |b| {
        b.iter(|| {
            usersig::verify(
                &key,
                black_box(token.as_str()),
                1400000000,
                "administrator",
                1_700_000_100,
            )
        });
    });
    c.bench_function("usersig_hmac_only", |b| {
        b.iter(|| usersig::signature(&key, black_box(&claims)));
    });
}

criterion_group!(benches, usersig);
criterion_main!(benches);
