//! [`DeviceLock`]: one SQLite database is synced as its device from one place at a time.
//!
//! A device's clock lives in the process that opened it. Two processes (the app and a
//! `storex sync` run from a timer, say) or two [`SyncedStorage`]s of one process opening the
//! same database as the same device would keep two clocks, which can give two changes the
//! same timestamp; other devices could then disagree on which of them wins, for good. So
//! [`SyncedStorageBuilder::open`] takes an exclusive lock on a file beside the database
//! (`<database>.storex-lock`), and a second open is refused with
//! [`Error::DatabaseInUse`] if the first is not gone within [`DEVICE_LOCK_WAIT`]. The
//! operating system lets the lock go when its process ends, however it ends, so a crash
//! leaves nothing to clean up (Windows may take a moment to).
//!
//! The lock is held by a middleware in the storage's chain: as long as anything that can
//! write to the device (its storage, a clone of it, a background sync) is alive.
//!
//! It guards what file locks reach: not a database on a network file system whose locks are
//! per process (NFS), nor a shared in-memory one; an app on iOS whose database is in an App
//! Group container must not hold a lock while suspended, and opens without it
//! ([`SyncedStorageBuilder::without_device_lock`]).
//!
//! On PostgreSQL (with the crate's `postgres` feature) the device is the schema the storage's
//! tables are in, and the lock is a session advisory lock on it ([`postgres`]).
//!
//! [`SyncedStorage`]: crate::SyncedStorage
//! [`SyncedStorageBuilder::open`]: crate::SyncedStorageBuilder::open
//! [`SyncedStorageBuilder::without_device_lock`]: crate::SyncedStorageBuilder::without_device_lock

use std::fs::{File, OpenOptions, TryLockError};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use storex_core::{BoxFuture, Middleware, Next, Operation, Outcome, Result as CoreResult};

use crate::error::{Error, Result};

mod postgres;

/// How long [`crate::SyncedStorageBuilder::open`] waits for a database's device to be let go
/// by whatever holds it (a background sync of a storage the app dropped finishes its sync
/// first, within its `stop_grace`) before it answers [`Error::DatabaseInUse`].
pub const DEVICE_LOCK_WAIT: Duration = Duration::from_secs(5);

/// How often a held lock is tried again meanwhile.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// The lock on a database's device, held while this middleware is in a storage's chain. It
/// passes every operation on unchanged.
#[derive(Debug)]
pub(crate) struct DeviceLock {
    /// What holds the lock; dropping it lets the lock go.
    _held: Held,
}

/// What holds a device's lock.
#[derive(Debug)]
enum Held {
    /// The locked file, beside a SQLite database.
    File(#[allow(dead_code)] File),
    /// The connection holding a PostgreSQL advisory lock.
    #[cfg(feature = "postgres")]
    Postgres(#[allow(dead_code)] std::sync::Mutex<sea_orm::sqlx::postgres::PgConnection>),
}

impl DeviceLock {
    /// The lock held by `connection`, a PostgreSQL session holding the device's advisory lock.
    #[cfg(feature = "postgres")]
    fn postgres(connection: sea_orm::sqlx::postgres::PgConnection) -> DeviceLock {
        DeviceLock {
            _held: Held::Postgres(std::sync::Mutex::new(connection)),
        }
    }

    /// Locks the device of `db`: of the SQLite database it has open as its main database, or
    /// of the PostgreSQL schema its tables are in. None for an in-memory database, a file
    /// system without locks, or a connection that is not a pool of sea-orm's drivers.
    pub(crate) async fn take(
        db: &DatabaseConnection,
        wait: Duration,
    ) -> Result<Option<DeviceLock>> {
        if db.get_database_backend() == DbBackend::Postgres {
            return postgres::take(db, wait).await;
        }
        let Some(database) = sqlite_main_file(db).await? else {
            return Ok(None);
        };
        let mut path = database.clone().into_os_string();
        path.push(".storex-lock");
        let path = PathBuf::from(path);
        let file = open_lock_file(&path).map_err(|source| Error::DeviceLock {
            path: path.clone(),
            source,
        })?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => {
                    return Ok(Some(DeviceLock {
                        _held: Held::File(file),
                    }))
                }
                Err(TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(RETRY_EVERY).await;
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::DatabaseInUse {
                        database: database.display().to_string(),
                    })
                }
                // Nothing to take the lock with: sync works as it did without it.
                Err(TryLockError::Error(e)) if e.kind() == ErrorKind::Unsupported => {
                    return Ok(None)
                }
                Err(TryLockError::Error(source)) => return Err(Error::DeviceLock { path, source }),
            }
        }
    }
}

impl Middleware for DeviceLock {
    fn process<'a>(&'a self, op: Operation, next: Next<'a>) -> BoxFuture<'a, CoreResult<Outcome>> {
        next.run(op)
    }
}

/// The lock file at `path`, made if missing. A lock needs no write access: one made by
/// another account (a `storex sync` run with `sudo`) is opened for reading.
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    let writable = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path);
    match writable {
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            OpenOptions::new().read(true).open(path)
        }
        opened => opened,
    }
}

/// The file of `db`'s main database when it is SQLite and on disk.
async fn sqlite_main_file(db: &DatabaseConnection) -> Result<Option<PathBuf>> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return Ok(None);
    }
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA database_list",
        ))
        .await?;
    Ok(rows.iter().find_map(|row| {
        let name: String = row.try_get("", "name").ok()?;
        let file: String = row.try_get("", "file").ok()?;
        // An in-memory or temporary database has no file.
        (name == "main" && !file.is_empty()).then(|| PathBuf::from(file))
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    async fn sqlite(dir: &std::path::Path) -> DatabaseConnection {
        let url = format!("sqlite://{}?mode=rwc", dir.join("app.db").display());
        sea_orm::Database::connect(url).await.unwrap()
    }

    #[tokio::test]
    async fn a_database_locked_for_its_device_is_refused_until_the_lock_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let first = DeviceLock::take(&sqlite(dir.path()).await, Duration::ZERO)
            .await
            .unwrap();
        assert!(first.is_some(), "a file database is locked");
        let second = DeviceLock::take(&sqlite(dir.path()).await, Duration::from_millis(200)).await;
        match second {
            Err(Error::DatabaseInUse { database }) => {
                assert!(database.ends_with("app.db"), "{database}");
            }
            other => panic!("a second lock of the same database: {other:?}"),
        }
        drop(first);
        let again = DeviceLock::take(&sqlite(dir.path()).await, Duration::ZERO)
            .await
            .unwrap();
        assert!(again.is_some(), "taken again once the first is gone");
    }

    #[tokio::test]
    async fn an_open_waits_for_a_lock_let_go_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let first = DeviceLock::take(&sqlite(dir.path()).await, Duration::ZERO)
            .await
            .unwrap();
        let letting_go = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(first);
        });
        let second = DeviceLock::take(&sqlite(dir.path()).await, Duration::from_secs(20)).await;
        assert!(second.unwrap().is_some(), "taken once let go");
        letting_go.await.unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_lock_file_this_account_may_not_write_still_locks() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite(dir.path()).await;
        let path = dir.path().join("app.db.storex-lock");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        // (Root may write it anyway: then the read-only path is not taken, and that is all.)
        let first = DeviceLock::take(&db, Duration::ZERO).await.unwrap();
        assert!(first.is_some());
        let second = DeviceLock::take(&db, Duration::ZERO).await;
        assert!(
            matches!(second, Err(Error::DatabaseInUse { .. })),
            "{second:?}"
        );
    }

    /// A pool of at most one connection to `url`, whose connections use `schema`.
    async fn postgres(url: &str, schema: &str) -> DatabaseConnection {
        let mut options = sea_orm::ConnectOptions::new(url);
        options.max_connections(1).set_schema_search_path(schema);
        sea_orm::Database::connect(options).await.unwrap()
    }

    #[tokio::test]
    async fn a_postgres_schema_locked_for_its_device_is_refused_until_the_lock_is_gone() {
        let Some(server) = storex_test::postgres_url() else {
            return;
        };
        let url = storex_test::fresh_postgres_database(&server).await;
        let db = postgres(&url, "public").await;
        let first = DeviceLock::take(&db, Duration::ZERO).await.unwrap();
        assert!(first.is_some(), "a PostgreSQL schema is locked");
        // The lock has a connection of its own: the pool's one is still the app's.
        tokio::time::timeout(Duration::from_secs(10), db.execute_unprepared("SELECT 1"))
            .await
            .expect("the pool's one connection is free")
            .unwrap();
        let second =
            DeviceLock::take(&postgres(&url, "public").await, Duration::from_millis(200)).await;
        match second {
            Err(Error::DatabaseInUse { database }) => {
                assert!(
                    database.starts_with("schema `public` of the PostgreSQL database"),
                    "{database}"
                );
                // The holder is named, so that an operator can end a session left behind.
                assert!(
                    database.contains(", locked by server process "),
                    "{database}"
                );
                assert!(database.contains("pg_terminate_backend("), "{database}");
            }
            other => panic!("a second lock of the same schema: {other:?}"),
        }
        // Another schema of the same database is another device.
        db.execute_unprepared("CREATE SCHEMA laptop").await.unwrap();
        let laptop = DeviceLock::take(&postgres(&url, "laptop").await, Duration::ZERO)
            .await
            .unwrap();
        assert!(laptop.is_some(), "another schema");
        // The lock's session has the server's keepalives and no idle timeout.
        let Some(DeviceLock {
            _held: Held::Postgres(connection),
        }) = first
        else {
            panic!("a PostgreSQL lock is held by a connection");
        };
        let mut connection = connection.into_inner().unwrap();
        let shown: (String, String) = sea_orm::sqlx::query_as(
            "SELECT current_setting('tcp_keepalives_idle'), \
                    current_setting('idle_session_timeout')",
        )
        .fetch_one(&mut connection)
        .await
        .unwrap();
        assert_eq!(shown, ("30".to_owned(), "0".to_owned()));
        drop(connection);
        // The server lets go once it sees the connection closed.
        let again = DeviceLock::take(&postgres(&url, "public").await, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(again.is_some(), "taken again once the first is gone");
    }

    #[tokio::test]
    async fn an_in_memory_database_takes_no_lock() {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        assert!(DeviceLock::take(&db, Duration::ZERO)
            .await
            .unwrap()
            .is_none());
    }
}
