//! The reference backend passes the conformance suite.

use storex_core::MemoryBackend;

#[tokio::test]
async fn memory_backend_passes_backend_suite() {
    storex_test::backend_suite(|| async { MemoryBackend::new() }).await;
}
