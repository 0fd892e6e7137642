//! Making a SQLite file's committed writes durable on demand ([`make_durable`]).
//!
//! storex opens device databases in WAL mode with `synchronous=NORMAL`: a commit is in the
//! write-ahead log, but reaches the disk only at the next checkpoint, so a power cut before it
//! takes the commit back. That is right for the app's own writes, but not for writes others
//! are about to rely on (a push). A commit on a connection set to `synchronous=FULL` syncs
//! the whole log file, every connection's earlier commits with it; [`make_durable`] makes
//! such a commit, which rewrites `user_version` with the value it has. (Other connections
//! see `PRAGMA data_version` change, as after any commit.) It runs in a task of its own, so
//! that a caller that gives up waiting (a sync's timeout) cannot leave the connection it
//! set to `FULL` in the pool that way.

use sea_orm::sqlx::{self, Connection, SqlitePool};
use sea_orm::DatabaseConnection;

/// `PRAGMA synchronous` at `FULL`: every commit is synced to disk before it returns.
const FULL: i64 = 2;

/// Makes every write committed to `db` so far survive a power cut. Nothing to do for
/// PostgreSQL (its commits are durable), SQLite in memory, or SQLite files not in WAL mode
/// (their commits are synced as `synchronous` says: `NORMAL` syncs at each commit there).
/// (A file at `synchronous=FULL` gets the commit all the same: the setting is each
/// connection's own, and one connection's says nothing of the others'.)
pub(crate) async fn make_durable(db: &DatabaseConnection) -> Result<(), sqlx::Error> {
    let sea_orm::DatabaseConnectionType::SqlxSqlitePoolConnection(_) = &db.inner else {
        // PostgreSQL, or a connection storex did not open (a mock, say).
        return Ok(());
    };
    let pool = db.get_sqlite_connection_pool().clone();
    match tokio::spawn(async move { sync_wal(&pool).await }).await {
        Ok(synced) => synced,
        Err(failed) => Err(sqlx::Error::Io(std::io::Error::other(failed))),
    }
}

/// [`make_durable`] for a SQLite pool: a commit with `synchronous=FULL` on one of its
/// connections, which gets its own setting back afterwards (or is closed, not pooled again,
/// if that fails).
async fn sync_wal(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await?;
    if !journal.eq_ignore_ascii_case("wal") {
        return Ok(());
    }
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA synchronous = {FULL}")))
        .execute(&mut *conn)
        .await?;
    let synced = rewrite_user_version(&mut conn).await;
    let restored = sqlx::query(sqlx::AssertSqlSafe(format!(
        "PRAGMA synchronous = {synchronous}"
    )))
    .execute(&mut *conn)
    .await;
    if restored.is_err() {
        // Not pooled again with a setting nobody asked for.
        conn.close_on_drop();
    }
    synced?;
    restored.map(drop)
}

/// Commits `user_version` rewritten with its own value: a write SQLite cannot leave out (the
/// header page is written) that changes no value anybody reads.
async fn rewrite_user_version(conn: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
    let mut txn = conn.begin_with("BEGIN IMMEDIATE").await?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *txn)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "PRAGMA user_version = {version}"
    )))
    .execute(&mut *txn)
    .await?;
    txn.commit().await
}
