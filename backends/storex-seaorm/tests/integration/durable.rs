//! `make_durable` on SQLite: a commit synced to disk that changes no value a reader sees, with
//! the connection's own `synchronous` setting kept, also when its caller gives up waiting.

use sea_orm::sqlx::{self, Connection, SqliteConnection};
use sea_orm::ConnectionTrait;
use storex_core::StorageBackend;
use storex_seaorm::{sea_orm, SeaOrmBackend};

/// One value of a PRAGMA, read on `conn`.
async fn pragma(conn: &mut SqliteConnection, name: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("PRAGMA {name}")))
        .fetch_one(conn)
        .await
        .expect("pragma")
}

#[tokio::test]
async fn making_a_sqlite_file_durable_commits_and_changes_no_value_a_reader_sees() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("app.db");
    let backend = SeaOrmBackend::open_sqlite_file(&path).await.expect("open");
    backend
        .connection()
        .execute_unprepared("PRAGMA user_version = 7")
        .await
        .expect("an app's schema version");
    let url = storex_seaorm::sqlite_file_url(&path, "rw").expect("url");
    let mut reader = SqliteConnection::connect(&url).await.expect("a reader");
    let seen = pragma(&mut reader, "data_version").await;

    backend.make_durable().await.expect("durable");

    assert_ne!(
        pragma(&mut reader, "data_version").await,
        seen,
        "a commit (whose sync takes every earlier commit to disk) was made"
    );
    assert_eq!(pragma(&mut reader, "user_version").await, 7);
    assert_pool_normal(&backend).await;
}

/// Every pooled connection of `backend` is at the setting storex opened it with (waiting for
/// each to come back to the pool).
async fn assert_pool_normal(backend: &SeaOrmBackend) {
    let pool = backend.connection().get_sqlite_connection_pool();
    let mut held = Vec::new();
    for _ in 0..pool.options().get_max_connections() {
        let mut conn = pool.acquire().await.expect("a pooled connection");
        assert_eq!(pragma(&mut conn, "synchronous").await, 1, "NORMAL");
        held.push(conn);
    }
}

#[tokio::test]
async fn a_caller_that_gives_up_waiting_leaves_no_connection_set_otherwise() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("app.db");
    let backend = SeaOrmBackend::open_sqlite_file(&path).await.expect("open");
    let url = storex_seaorm::sqlite_file_url(&path, "rw").expect("url");
    // Another writer holds the write lock: making durable waits for it.
    let mut writer = SqliteConnection::connect(&url).await.expect("a writer");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut writer)
        .await
        .expect("the write lock");
    let waited = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        backend.make_durable(),
    )
    .await;
    assert!(waited.is_err(), "it waits for the writer: {waited:?}");
    sqlx::query("COMMIT")
        .execute(&mut writer)
        .await
        .expect("the lock let go");
    assert_pool_normal(&backend).await;
}

#[tokio::test]
async fn making_a_database_in_memory_durable_does_nothing() {
    let backend = SeaOrmBackend::connect("sqlite::memory:")
        .await
        .expect("open");
    // Its one connection is taken and given back at once (a second taken meanwhile would
    // wait for ever).
    backend.make_durable().await.expect("nothing to do");
    backend.make_durable().await.expect("nothing to do, again");
}
