//! Printing figures in the one format every suite uses.

use std::time::Duration;

/// Prints `bench: <name> <value> <unit>`.
pub(crate) fn figure(name: &str, value: f64, unit: &str) {
    println!("bench: {name} {value:.2} {unit}");
}

/// Prints the rate of `ops` operations done in `elapsed` and returns it.
pub(crate) fn rate(name: &str, ops: u64, elapsed: Duration) -> f64 {
    let per_second = ops as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    figure(name, per_second, "ops/s");
    per_second
}

/// Prints how `measured` compares with `baseline` (a ratio of rates: below 1 is slower).
pub(crate) fn ratio(name: &str, measured: f64, baseline: f64) {
    figure(name, measured / baseline, "ratio");
}

/// Prints how much time `measured` takes per operation compared with `baseline`, from their
/// rates (above 1 is slower): `<name> <ratio> x`.
pub(crate) fn cost(name: &str, measured_rate: f64, baseline_rate: f64) {
    figure(name, baseline_rate / measured_rate, "x");
}
