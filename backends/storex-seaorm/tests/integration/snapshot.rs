//! A snapshot transaction (what a fast-sync sender reads in) sees the data as it was when it
//! began, whatever commits meanwhile, on SQLite and PostgreSQL, does not hold writers up, and
//! refuses writes.

use std::time::Duration;

use storex_core::{object, Filter, Storage, StorageTransaction};
use storex_seaorm::SeaOrmBackend;
use storex_test::fixture_registry;

async fn count(tx: &StorageTransaction) -> Option<u64> {
    let op = storex_core::Operation::count("item", Filter::all());
    tx.execute(op).await.expect("count").count()
}

async fn a_snapshot_does_not_see_later_commits(backend: SeaOrmBackend) {
    let storage = Storage::builder(fixture_registry(), backend)
        .build()
        .await
        .expect("prepare");
    for id in 1..=3 {
        storage
            .create(
                "item",
                object! { "id" => id, "name" => format!("item {id}") },
            )
            .await
            .expect("seed");
    }
    let snapshot = storage.begin_snapshot().await.expect("snapshot");
    assert_eq!(count(&snapshot).await, Some(3));
    // Another writer commits while the snapshot is open (on SQLite too: the snapshot does
    // not hold the write lock, so an app's writes go on during a fast sync).
    let writer = storage.clone();
    let write = writer.create("item", object! { "id" => 4, "name" => "later" });
    tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .expect("the write waited for the snapshot")
        .expect("the write");
    assert_eq!(
        count(&snapshot).await,
        Some(3),
        "the snapshot saw a later commit"
    );
    // It only reads: on SQLite it holds no lock, so a write in it could not be ordered
    // with the others.
    let create = storex_core::Operation::create("item", object! { "id" => 5, "name" => "x" });
    let write = snapshot.execute(create).await;
    assert!(
        matches!(write, Err(storex_core::Error::InvalidOperation { .. })),
        "{write:?}"
    );
    snapshot.rollback().await.expect("end");
    assert_eq!(
        storage.count("item", Filter::all()).await.expect("count"),
        4
    );
}

#[tokio::test]
async fn sqlite_snapshot_sees_one_state() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let backend = SeaOrmBackend::open_sqlite_file(dir.path().join("snapshot.db"))
        .await
        .expect("open");
    a_snapshot_does_not_see_later_commits(backend).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_snapshot_sees_one_state() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let url = storex_test::fresh_postgres_database(&server).await;
    let backend = SeaOrmBackend::connect(&url).await.expect("connect");
    a_snapshot_does_not_see_later_commits(backend).await;
}
