//! What the conformance suites share: running named checks that panic on failure, and the
//! report of which passed.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

/// What a suite run found.
#[derive(Debug, Default)]
pub struct SuiteReport {
    /// Names of the checks that passed.
    pub passed: Vec<&'static str>,
    /// Names of the checks that failed, with the failure message.
    pub failed: Vec<(&'static str, String)>,
}

impl SuiteReport {
    /// Runs one check, recording a panic as its failure.
    pub(crate) async fn run(&mut self, name: &'static str, check: impl Future<Output = ()>) {
        match AssertUnwindSafe(check).catch_unwind().await {
            Ok(()) => self.passed.push(name),
            Err(payload) => self.fail(name, panic_text(payload)),
        }
    }

    /// Records a check that could not even start.
    pub(crate) fn fail(&mut self, name: &'static str, why: String) {
        self.failed.push((name, why));
    }

    /// Panics listing every failed check of the `suite`.
    pub(crate) fn assert_all_passed(&self, suite: &str) {
        assert!(
            self.failed.is_empty(),
            "{} of {} {suite} checks failed:\n{}",
            self.failed.len(),
            self.failed.len() + self.passed.len(),
            self.failed
                .iter()
                .map(|(name, why)| format!("  {name}: {why}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".to_owned())
}
