//! Prints how many times slower `subject` is than `baseline`, both measured in the same run,
//! interleaved, so machine noise falls on both alike. The median of per-round ratios is
//! reported, never a bare time.

use std::time::Instant;

/// Runs `baseline` and `subject` `iterations` times per round for `rounds` rounds and prints
/// the median ratio of their times.
pub fn report(
    name: &str,
    rounds: usize,
    iterations: usize,
    mut baseline: impl FnMut(),
    mut subject: impl FnMut(),
) -> f64 {
    let mut ratios = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..iterations {
            baseline();
        }
        let base = start.elapsed();
        let start = Instant::now();
        for _ in 0..iterations {
            subject();
        }
        ratios.push(start.elapsed().as_secs_f64() / base.as_secs_f64().max(1e-12));
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!("ratio {name}: {median:.2}x the baseline (median of {rounds} rounds)");
    median
}
