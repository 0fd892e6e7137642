//! The conformance suite is only worth something if it fails broken backends: each faulty
//! backend here breaks one rule, and the suite must name the checks that catch it.

use std::sync::Arc;

use storex_core::{
    BackendFeatures, BoxFuture, MemoryBackend, Operation, Outcome, Query, Registry, Result,
    StorageBackend, Transaction,
};
use storex_test::run_backend_suite;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    IgnoresLimit,
    NonAtomicBatch,
    TransactionsWriteThrough,
}

#[derive(Debug)]
struct Faulty {
    inner: MemoryBackend,
    fault: Fault,
}

#[derive(Debug)]
struct WriteThrough(MemoryBackend);

impl Transaction for WriteThrough {
    fn execute(&self, op: Operation) -> BoxFuture<'_, Result<Outcome>> {
        self.0.execute(op)
    }
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

impl StorageBackend for Faulty {
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn features(&self) -> BackendFeatures {
        BackendFeatures::all()
    }
    fn prepare<'a>(&'a self, registry: &'a Arc<Registry>) -> BoxFuture<'a, Result<()>> {
        self.inner.prepare(registry)
    }
    fn execute(&self, op: Operation) -> BoxFuture<'_, Result<Outcome>> {
        Box::pin(async move {
            match (self.fault, op) {
                (Fault::IgnoresLimit, Operation::FindMany { collection, query }) => {
                    let query = Query {
                        limit: None,
                        ..query
                    };
                    self.inner
                        .execute(Operation::find_many(collection, query))
                        .await
                }
                (Fault::NonAtomicBatch, Operation::Batch { steps }) => {
                    let mut outcomes = Vec::new();
                    for step in steps {
                        outcomes.push(self.inner.execute(step.operation).await?);
                    }
                    Ok(Outcome::Batch(outcomes))
                }
                (_, op) => self.inner.execute(op).await,
            }
        })
    }
    fn begin(&self) -> BoxFuture<'_, Result<Box<dyn Transaction>>> {
        match self.fault {
            Fault::TransactionsWriteThrough => {
                let tx: Box<dyn Transaction> = Box::new(WriteThrough(self.inner.clone()));
                Box::pin(async move { Ok(tx) })
            }
            _ => self.inner.begin(),
        }
    }
}

async fn failed_checks(fault: Fault) -> Vec<&'static str> {
    let report = run_backend_suite(|| async move {
        Faulty {
            inner: MemoryBackend::new(),
            fault,
        }
    })
    .await;
    report.failed.into_iter().map(|(name, _)| name).collect()
}

#[tokio::test]
async fn the_reference_backend_passes_every_check() {
    let report = run_backend_suite(|| async { MemoryBackend::new() }).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(
        report.passed.len() >= 70,
        "only {} checks ran",
        report.passed.len()
    );
}

#[tokio::test]
async fn a_backend_ignoring_limits_fails_the_paging_check() {
    let failed = failed_checks(Fault::IgnoresLimit).await;
    assert!(
        failed.contains(&"limit_and_skip_page_through_results"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_backend_with_non_atomic_batches_fails_the_atomicity_checks() {
    let failed = failed_checks(Fault::NonAtomicBatch).await;
    assert!(
        failed.contains(&"batch_failing_last_step_leaves_nothing"),
        "{failed:?}"
    );
    assert!(
        failed.contains(&"batch_error_names_the_failing_step"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_backend_whose_transactions_write_through_fails_the_rollback_checks() {
    let failed = failed_checks(Fault::TransactionsWriteThrough).await;
    assert!(
        failed.contains(&"transaction_rollback_discards_writes"),
        "{failed:?}"
    );
    assert!(
        failed.contains(&"transaction_dropped_without_commit_rolls_back"),
        "{failed:?}"
    );
}
