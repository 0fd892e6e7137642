//! SeaOrmBackend passes the storex-core conformance suite on SQLite in memory, on a SQLite
//! file, and on PostgreSQL.

use std::sync::atomic::{AtomicU32, Ordering};

use storex_seaorm::SeaOrmBackend;
use storex_test::backend_suite;

#[tokio::test]
async fn sqlite_in_memory_passes_backend_suite() {
    backend_suite(|| async {
        SeaOrmBackend::connect("sqlite::memory:")
            .await
            .expect("connect")
    })
    .await;
}

#[tokio::test]
async fn sqlite_file_passes_backend_suite() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let counter = AtomicU32::new(0);
    backend_suite(|| {
        let path = dir.path().join(format!(
            "check-{}.db",
            counter.fetch_add(1, Ordering::Relaxed)
        ));
        async move { SeaOrmBackend::open_sqlite_file(path).await.expect("open") }
    })
    .await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_passes_backend_suite() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    backend_suite(|| {
        let server = server.clone();
        async move {
            let url = storex_test::fresh_postgres_database(&server).await;
            SeaOrmBackend::connect(&url).await.expect("connect")
        }
    })
    .await;
}
