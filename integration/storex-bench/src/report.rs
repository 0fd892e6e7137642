//! Printing figures in the one format every suite uses.

use std::future::Future;
use std::time::{Duration, Instant};

/// The error type of the suites.
pub(crate) type BoxError = Box<dyn std::error::Error>;

/// The size of the SQLite database `name` in `dir` with its write-ahead log, in bytes.
pub(crate) fn database_bytes(dir: &std::path::Path, name: &str) -> std::io::Result<u64> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|f| f.ok())
        .filter(|f| f.file_name().to_string_lossy().starts_with(name))
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum())
}

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

/// Accumulated time of a baseline path and the storex path, measured in turns.
#[derive(Default)]
pub(crate) struct Pair {
    pub(crate) plain: Duration,
    pub(crate) storex: Duration,
}

async fn timed<F: Future<Output = Result<(), BoxError>>>(
    total: &mut Duration,
    f: F,
) -> Result<(), BoxError> {
    let start = Instant::now();
    f.await?;
    *total += start.elapsed();
    Ok(())
}

impl Pair {
    /// Runs one plain and one storex operation, which first depending on `turn`.
    pub(crate) async fn turn<P, S>(
        &mut self,
        turn: u64,
        plain: P,
        storex: S,
    ) -> Result<(), BoxError>
    where
        P: Future<Output = Result<(), BoxError>>,
        S: Future<Output = Result<(), BoxError>>,
    {
        // Which goes first is a fixed pseudo-random bit of the turn, not plain alternation:
        // with alternation, periodic costs (a SQLite WAL checkpoint every so many pages)
        // fell on the same side turn after turn, and two identical paths read 1.12x-1.23x.
        if turn.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 63 == 0 {
            timed(&mut self.plain, plain).await?;
            timed(&mut self.storex, storex).await
        } else {
            timed(&mut self.storex, storex).await?;
            timed(&mut self.plain, plain).await
        }
    }

    /// Prints both rates and storex's time over the plain SeaORM path's.
    pub(crate) fn report(&self, suite: &str, name: &str, rows: u64) {
        self.report_as(
            suite,
            name,
            rows,
            ("plain_seaorm", "storex", "storex_time_vs_plain"),
        );
    }

    /// Prints both rates under the given labels (baseline, measured, ratio).
    pub(crate) fn report_as(&self, suite: &str, name: &str, rows: u64, labels: (&str, &str, &str)) {
        let plain = rate(&format!("{suite}.{name}.{}", labels.0), rows, self.plain);
        let storex = rate(&format!("{suite}.{name}.{}", labels.1), rows, self.storex);
        cost(&format!("{suite}.{name}.{}", labels.2), storex, plain);
    }
}
