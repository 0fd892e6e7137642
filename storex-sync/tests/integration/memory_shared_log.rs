//! MemorySharedLog passes the shared-log conformance suite.

use storex_sync::MemorySharedLog;

#[tokio::test]
async fn memory_shared_log_passes_the_suite() {
    storex_test::shared_log_suite(|| async { MemorySharedLog::new() }).await;
}
