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
