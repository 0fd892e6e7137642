//! [`DeviceLock`]: one SQLite database is synced as its device from one place at a time.
//!
//! A device's clock lives in the process that opened it. Two processes (the app and a
//! `storex sync` run from a timer, say) or two [`SyncedStorage`]s of one process opening the
//! same database as the same device would keep two clocks, which can give two changes the
//! same timestamp; other devices could then disagree on which of them wins, for good. So
//! [`SyncedStorageBuilder::open`] takes an exclusive lock on a file beside the database
//! (`<database>.storex-lock`), and a second open is refused with
//! [`Error::DatabaseInUse`] until the first is gone. The operating system lets the lock go
//! when its process ends, however it ends, so a crash leaves nothing to clean up.
//!
//! The lock is held by a middleware in the storage's chain: as long as anything that can
//! write to the device (its storage, a clone of it, a background sync) is alive.
//!
//! [`SyncedStorage`]: crate::SyncedStorage
//! [`SyncedStorageBuilder::open`]: crate::SyncedStorageBuilder::open

use std::fs::{File, OpenOptions, TryLockError};
use std::io::ErrorKind;
use std::path::PathBuf;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use storex_core::{BoxFuture, Middleware, Next, Operation, Outcome, Result as CoreResult};

use crate::error::{Error, Result};

/// The lock on a database's device, held while this middleware is in a storage's chain. It
/// passes every operation on unchanged.
#[derive(Debug)]
pub(crate) struct DeviceLock {
    /// The locked file; closing it lets the lock go.
    _file: File,
}

impl DeviceLock {
    /// Locks the device of the SQLite database `db` has open as its main database; none for
    /// PostgreSQL (see [`crate::SyncedStorageBuilder::open`]), an in-memory database, or a
    /// file system without locks.
    pub(crate) async fn take(db: &DatabaseConnection) -> Result<Option<DeviceLock>> {
        let Some(database) = sqlite_main_file(db).await? else {
            return Ok(None);
        };
        let mut path = database.clone().into_os_string();
        path.push(".storex-lock");
        let path = PathBuf::from(path);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::DeviceLock {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Some(DeviceLock { _file: file })),
            Err(TryLockError::WouldBlock) => Err(Error::DatabaseInUse { database }),
            // Nothing to take the lock with: sync works as it did without it.
            Err(TryLockError::Error(e)) if e.kind() == ErrorKind::Unsupported => Ok(None),
            Err(TryLockError::Error(source)) => Err(Error::DeviceLock { path, source }),
        }
    }
}

impl Middleware for DeviceLock {
    fn process<'a>(&'a self, op: Operation, next: Next<'a>) -> BoxFuture<'a, CoreResult<Outcome>> {
        next.run(op)
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
        let first = DeviceLock::take(&sqlite(dir.path()).await).await.unwrap();
        assert!(first.is_some(), "a file database is locked");
        let second = DeviceLock::take(&sqlite(dir.path()).await).await;
        match second {
            Err(Error::DatabaseInUse { database }) => {
                assert_eq!(database.file_name().unwrap(), "app.db");
            }
            other => panic!("a second lock of the same database: {other:?}"),
        }
        drop(first);
        let again = DeviceLock::take(&sqlite(dir.path()).await).await.unwrap();
        assert!(again.is_some(), "taken again once the first is gone");
    }

    #[tokio::test]
    async fn an_in_memory_database_takes_no_lock() {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        assert!(DeviceLock::take(&db).await.unwrap().is_none());
    }
}
