//! The end-to-end sync scenarios (see `storex_test::sync_scenarios`) through a
//! MemorySharedLog, with devices on SQLite files.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use storex_sync::{MemorySharedLog, SharedSyncLog};

fn memory() -> BoxFuture<'static, Arc<dyn SharedSyncLog>> {
    async { Arc::new(MemorySharedLog::new()) as Arc<dyn SharedSyncLog> }.boxed()
}

#[tokio::test]
async fn memory_shared_log_passes_every_sync_scenario() {
    for (name, scenario) in storex_test::sync_scenarios::all() {
        eprintln!("scenario: {name}");
        scenario(&memory).await;
    }
}

#[tokio::test]
async fn a_push_sends_what_a_reader_indexed_and_then_the_journal_page_by_page() {
    use storex_sync::ContinuousOptions;
    let mut devices = storex_test::devices::Devices::new(memory().await).await;
    let a = devices
        .add_with(ContinuousOptions::default().with_batch_size(10))
        .await;
    let b = devices.add().await;
    for n in 0..4 {
        devices.note(a, &format!("early-{n}"), "v").await;
    }
    // A reader of the log indexes the first writes: they wait as unshared log rows.
    let log = devices.device(a).log();
    assert_eq!(log.unshared_count().await.expect("count"), 4);
    // More writes than one indexing round takes, left in the journal.
    for n in 0..70 {
        devices.note(a, &format!("late-{n}"), "v").await;
    }
    assert_eq!(log.journal_records().await.expect("records"), 70);
    let report = devices.sync(a).await;
    assert_eq!(report.pushed, 74, "{report:?}");
    assert_eq!(log.journal_records().await.expect("records"), 0);
    assert_eq!(log.unshared_count().await.expect("count"), 0);
    devices.sync(b).await;
    assert_eq!(devices.count(b).await, 74);
    devices.assert_converged(&[a, b]).await;
}
