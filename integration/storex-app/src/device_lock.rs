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

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use storex_core::{BoxFuture, Middleware, Next, Operation, Origin, Outcome, Result as CoreResult};

use crate::change_notifier::writes_outside;
use crate::error::{Error, Result};

mod postgres;

/// How long [`crate::SyncedStorageBuilder::open`] waits for a database's device to be let go
/// by whatever holds it (a background sync of a storage the app dropped finishes its sync
/// first, within its `stop_grace`) before it answers [`Error::DatabaseInUse`].
pub const DEVICE_LOCK_WAIT: Duration = Duration::from_secs(5);

/// How often a held lock is tried again meanwhile.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// The lock on a database's device, held while this middleware is in a storage's chain. It
/// passes every operation on unchanged, but the app's writes to synced collections while a
/// PostgreSQL lock is not held (see [`postgres`]).
#[derive(Debug)]
pub(crate) struct DeviceLock {
    /// What holds the lock; dropping it lets the lock go.
    held: Held,
    /// The collections left out of sync, whose writes stamp nothing and are never refused.
    left_out: HashSet<String>,
}

/// What holds a device's lock.
#[derive(Debug)]
enum Held {
    /// The locked file, beside a SQLite database.
    File(#[allow(dead_code)] File),
    /// A PostgreSQL advisory lock, held by a session of its own.
    #[cfg(feature = "postgres")]
    Postgres(postgres::PostgresLock),
}

impl DeviceLock {
    /// The device lock `lock` is.
    #[cfg(feature = "postgres")]
    fn postgres(lock: postgres::PostgresLock) -> DeviceLock {
        DeviceLock {
            held: Held::Postgres(lock),
            left_out: HashSet::new(),
        }
    }

    /// The lock, never refusing writes to `collections` (those left out of sync).
    pub(crate) fn leaving_out(mut self, collections: impl IntoIterator<Item = String>) -> Self {
        self.left_out = collections.into_iter().collect();
        self
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
                        held: Held::File(file),
                        left_out: HashSet::new(),
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

    /// Why the app's write `op` may not run now, if it may not.
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    fn refusal(&self, op: &Operation) -> Option<storex_core::Error> {
        match &self.held {
            Held::File(_) => None,
            #[cfg(feature = "postgres")]
            Held::Postgres(lock) => lock.refusal(self.synced_collection(op)),
        }
    }

    /// The synced collection `op` writes to (a batch's first such step's).
    #[cfg(feature = "postgres")]
    fn synced_collection<'o>(&self, op: &'o Operation) -> &'o str {
        match op {
            Operation::Batch { steps } => steps
                .iter()
                .find(|step| writes_outside(&step.operation, &self.left_out))
                .and_then(|step| step.operation.collection())
                .unwrap_or_default(),
            op => op.collection().unwrap_or_default(),
        }
    }
}

impl Middleware for DeviceLock {
    fn process<'a>(&'a self, op: Operation, next: Next<'a>) -> BoxFuture<'a, CoreResult<Outcome>> {
        // Only the app's writes to synced collections stamp the device's clock; what sync
        // applies was stamped elsewhere.
        if next.origin() == Origin::App && writes_outside(&op, &self.left_out) {
            if let Some(refusal) = self.refusal(&op) {
                return Box::pin(std::future::ready(Err(refusal)));
            }
        }
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
        // A lock's session has the server's keepalives and no idle timeout.
        let mut session = postgres::connect(&postgres::lock_options(&db))
            .await
            .unwrap();
        let shown: (String, String) = sea_orm::sqlx::query_as(
            "SELECT current_setting('tcp_keepalives_idle'), \
                    current_setting('idle_session_timeout')",
        )
        .fetch_one(&mut session)
        .await
        .unwrap();
        assert_eq!(shown, ("30".to_owned(), "0".to_owned()));
        drop(first);
        // The server lets go once it sees the connection closed.
        let again = DeviceLock::take(&postgres(&url, "public").await, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(again.is_some(), "taken again once the first is gone");
    }

    #[tokio::test]
    async fn a_postgres_search_path_without_a_schema_is_refused() {
        let Some(server) = storex_test::postgres_url() else {
            return;
        };
        let url = storex_test::fresh_postgres_database(&server).await;
        let db = postgres(&url, "nowhere").await;
        match DeviceLock::take(&db, Duration::ZERO).await {
            Err(Error::Database(e)) => {
                assert!(e.to_string().contains("no schema"), "{e}");
            }
            other => panic!("a lock of no schema: {other:?}"),
        }
    }

    /// A watch that notices a session gone within a fraction of a second.
    const QUICK: postgres::Watch = postgres::Watch {
        every: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(500),
        retake_every: Duration::from_millis(100),
        attempt_timeout: Duration::from_secs(5),
    };

    /// Where `lock`, a PostgreSQL lock, stands.
    fn standing_of(lock: &DeviceLock) -> tokio::sync::watch::Receiver<postgres::Standing> {
        match &lock.held {
            Held::Postgres(lock) => lock.standing.clone(),
            Held::File(_) => panic!("a PostgreSQL lock"),
        }
    }

    /// Waits until the lock stands as `wanted` says.
    async fn until(
        standing: &mut tokio::sync::watch::Receiver<postgres::Standing>,
        wanted: impl FnMut(&postgres::Standing) -> bool,
    ) -> postgres::Standing {
        let seen = tokio::time::timeout(Duration::from_secs(20), standing.wait_for(wanted))
            .await
            .expect("the lock's watcher got there within 20 s")
            .unwrap();
        seen.clone()
    }

    /// The server process holding a lock that stands as `standing`.
    fn holding(standing: postgres::Standing) -> i32 {
        match standing {
            postgres::Standing::Held {
                process: Some(process),
            } => process,
            other => panic!("a held lock: {other:?}"),
        }
    }

    /// A storage of notes and drafts (left out of sync) whose chain holds `lock`.
    async fn storage_holding(lock: DeviceLock) -> storex_core::Storage {
        use storex_core::{CollectionDef, FieldType, MemoryBackend, Registry, Storage};
        let collection = |name| {
            CollectionDef::new(name)
                .field("id", FieldType::Int)
                .primary_key(["id"])
        };
        let registry = Registry::builder()
            .collection(collection("note"))
            .collection(collection("draft"))
            .build()
            .unwrap();
        Storage::builder(registry, MemoryBackend::new())
            .with(lock.leaving_out(["draft".to_owned()]))
            .build()
            .await
            .unwrap()
    }

    /// A storage of notes and drafts holding `db`'s lock, watched as `watch` says; where the
    /// lock stands, and the server process holding it.
    async fn locked_storage(
        db: &DatabaseConnection,
        watch: postgres::Watch,
    ) -> (
        storex_core::Storage,
        tokio::sync::watch::Receiver<postgres::Standing>,
        i32,
    ) {
        let lock = postgres::take_watched(db, Duration::ZERO, watch)
            .await
            .unwrap()
            .unwrap();
        let standing = standing_of(&lock);
        let process = holding(standing.borrow().clone());
        (storage_holding(lock).await, standing, process)
    }

    /// A note, or a draft, with this key.
    fn note(id: i64) -> storex_core::Object {
        storex_core::object! { "id" => id }
    }

    #[tokio::test]
    async fn a_postgres_lock_whose_session_ended_is_taken_again() {
        let Some(server) = storex_test::postgres_url() else {
            return;
        };
        let url = storex_test::fresh_postgres_database(&server).await;
        // A schema whose name must be quoted, and quoted again inside.
        let odd = r#"Phone "A".1"#;
        postgres(&url, "public")
            .await
            .execute_unprepared(r#"CREATE SCHEMA "Phone ""A"".1""#)
            .await
            .unwrap();
        let db = postgres(&url, r#""Phone ""A"".1""#).await;
        let (storage, mut standing, first) = locked_storage(&db, QUICK).await;
        storage.create("note", note(1)).await.unwrap();
        // What a server restart or an administrator does to the session.
        db.execute_unprepared(&format!("SELECT pg_terminate_backend({first})"))
            .await
            .unwrap();
        let again = holding(
            until(
                &mut standing,
                |s| matches!(s, postgres::Standing::Held { process: Some(p) } if *p != first),
            )
            .await,
        );
        // The server agrees: the new session holds the lock.
        let mut other = postgres::connect(&postgres::lock_options(&db))
            .await
            .unwrap();
        let holder = postgres::holder(&mut other, odd).await.unwrap().unwrap();
        assert_eq!(holder.session.process, again);
        storage.create("note", note(2)).await.unwrap();
    }

    /// A storage of notes and drafts holding the lock of a new database's `public` schema,
    /// pinged every 5 s, whose session was ended and whose lock another opener then took
    /// (trying every 50 ms, it gets there before the next ping). The app's connection to the
    /// database, the storage, where its lock stands, its first server process, and the other
    /// opener's lock.
    async fn taken_by_another_meanwhile(
        server: &str,
    ) -> (
        DatabaseConnection,
        storex_core::Storage,
        tokio::sync::watch::Receiver<postgres::Standing>,
        i32,
        DeviceLock,
    ) {
        let url = storex_test::fresh_postgres_database(server).await;
        let db = postgres(&url, "public").await;
        let slow = postgres::Watch {
            every: Duration::from_secs(5),
            ..QUICK
        };
        let (storage, standing, first) = locked_storage(&db, slow).await;
        db.execute_unprepared(&format!("SELECT pg_terminate_backend({first})"))
            .await
            .unwrap();
        let second = DeviceLock::take(&postgres(&url, "public").await, Duration::from_secs(10))
            .await
            .unwrap()
            .expect("the other opener takes the lock");
        (db, storage, standing, first, second)
    }

    #[tokio::test]
    async fn a_postgres_lock_another_opener_took_while_its_session_was_gone_refuses_the_apps_writes(
    ) {
        let Some(server) = storex_test::postgres_url() else {
            return;
        };
        let (_db, storage, mut standing, _, second) = taken_by_another_meanwhile(&server).await;
        until(&mut standing, |s| {
            matches!(s, postgres::Standing::Lost { .. })
        })
        .await;
        match storage.create("note", note(1)).await {
            Err(storex_core::Error::Refused { collection, detail }) => {
                assert_eq!(collection, "note");
                assert!(
                    detail.contains(
                        "lost the device lock of schema `public` of the PostgreSQL database"
                    ) && detail.contains("another opener took the lock meanwhile"),
                    "{detail}"
                );
            }
            other => panic!("an app's write with the lock lost: {other:?}"),
        }
        // A batch is refused too, naming the synced collection it writes to.
        let batch = ["draft", "note"]
            .map(|collection| {
                storex_core::BatchStep::new(storex_core::Operation::create(collection, note(2)))
            })
            .to_vec();
        match storage.batch(batch).await {
            Err(storex_core::Error::Refused { collection, .. }) => assert_eq!(collection, "note"),
            other => panic!("a batch with the lock lost: {other:?}"),
        }
        // Reads go on, and so do the writes sync applies, stamped elsewhere, and those to
        // collections left out of sync, which stamp nothing.
        storage.create("draft", note(1)).await.unwrap();
        assert_eq!(
            storage
                .count("note", storex_core::Filter::all())
                .await
                .unwrap(),
            0
        );
        storage
            .execute_as(
                storex_core::Operation::create("note", note(3)),
                storex_core::Origin::Sync,
            )
            .await
            .unwrap();
        // Not taken back once the other lets go: this storage's clock may be behind.
        drop(second);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(matches!(
            *standing.borrow(),
            postgres::Standing::Lost { .. }
        ));
        assert!(storage.create("note", note(4)).await.is_err());
    }

    #[tokio::test]
    async fn a_postgres_lock_another_opener_held_and_let_go_while_its_session_was_gone_is_lost() {
        let Some(server) = storex_test::postgres_url() else {
            return;
        };
        let (db, storage, mut standing, first, second) = taken_by_another_meanwhile(&server).await;
        drop(second);
        let mut direct = postgres::connect(&postgres::lock_options(&db))
            .await
            .unwrap();
        until_free(&mut direct, "public")
            .await
            .expect("the other opener lets the lock go");
        // The watcher has not looked yet: when it does, the lock is free to take.
        assert_eq!(
            *standing.borrow(),
            postgres::Standing::Held {
                process: Some(first)
            }
        );
        until(&mut standing, |s| {
            matches!(s, postgres::Standing::Lost { .. })
        })
        .await;
        match storage.create("note", note(1)).await {
            Err(storex_core::Error::Refused { detail, .. }) => {
                assert!(
                    detail.contains("mark is no more this storage's"),
                    "{detail}"
                );
            }
            other => panic!("an app's write once the lock is lost: {other:?}"),
        }
        // The watcher let go of what it took to look.
        until_free(&mut direct, "public")
            .await
            .expect("the watcher lets the lock go");
    }

    /// Waits, up to 5 s, until nothing holds `schema`'s lock.
    async fn until_free(
        connection: &mut sea_orm::sqlx::PgConnection,
        schema: &str,
    ) -> std::result::Result<(), tokio::time::error::Elapsed> {
        tokio::time::timeout(Duration::from_secs(5), async {
            while postgres::holder(connection, schema)
                .await
                .unwrap()
                .is_some()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    #[tokio::test]
    async fn a_postgres_lock_whose_mark_was_dropped_or_emptied_while_its_session_was_gone_is_lost()
    {
        let Some(server) = storex_test::postgres_url() else {
            return;
        };
        // A schema tool that drops what it does not know, or empties it: whoever held the
        // lock meanwhile can no longer be told apart.
        for (damage, found) in [
            ("DROP TABLE storex_device_lock", "mark does not read"),
            ("DELETE FROM storex_device_lock", "mark is gone"),
        ] {
            let url = storex_test::fresh_postgres_database(&server).await;
            let db = postgres(&url, "public").await;
            let (storage, mut standing, first) = locked_storage(&db, QUICK).await;
            db.execute_unprepared(damage).await.unwrap();
            db.execute_unprepared(&format!("SELECT pg_terminate_backend({first})"))
                .await
                .unwrap();
            let seen = until(&mut standing, |s| {
                !matches!(
                    s,
                    postgres::Standing::Held { .. } | postgres::Standing::Retaking { failed: None }
                )
            })
            .await;
            match seen {
                postgres::Standing::Lost { why } => {
                    assert!(why.contains(found), "{damage}: {why}");
                }
                other => panic!("{damage}: {other:?}"),
            }
            assert!(storage.create("note", note(1)).await.is_err());
        }
    }

    #[tokio::test]
    async fn a_postgres_schema_with_another_kind_of_object_named_as_the_lock_table_is_refused() {
        let Some(server) = storex_test::postgres_url() else {
            return;
        };
        let url = storex_test::fresh_postgres_database(&server).await;
        let db = postgres(&url, "public").await;
        db.execute_unprepared("CREATE VIEW storex_device_lock AS SELECT 1 AS id")
            .await
            .unwrap();
        match DeviceLock::take(&db, Duration::ZERO).await {
            Err(Error::Database(e)) => {
                let e = e.to_string();
                assert!(
                    e.contains("cannot mark the device lock of schema `public`")
                        && e.contains("something else than a table"),
                    "{e}"
                );
            }
            other => panic!("a lock table that is a view: {other:?}"),
        }
        // The lock was let go with the failed open.
        let mut direct = postgres::connect(&postgres::lock_options(&db))
            .await
            .unwrap();
        until_free(&mut direct, "public")
            .await
            .expect("the failed open lets the lock go");
    }

    #[test]
    fn a_postgres_lock_whose_watcher_stopped_with_its_runtime_refuses_the_apps_writes() {
        let Some(server) = storex_test::postgres_url() else {
            return;
        };
        // Opened on a runtime that is gone by the time the app writes: its tasks, the lock's
        // watcher among them, and with it the lock's session, went with it.
        let opening = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let lock = opening.block_on(async {
            let url = storex_test::fresh_postgres_database(&server).await;
            let db = postgres(&url, "public").await;
            postgres::take_watched(&db, Duration::ZERO, QUICK)
                .await
                .unwrap()
                .unwrap()
        });
        drop(opening);
        let app = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        app.block_on(async {
            let storage = storage_holding(lock).await;
            match storage.create("note", note(1)).await {
                Err(storex_core::Error::Refused { detail, .. }) => {
                    assert!(detail.contains("stopped"), "{detail}");
                }
                other => panic!("an app's write with the watcher gone: {other:?}"),
            }
        });
    }

    /// A TCP proxy to `server` on 127.0.0.1 whose connections can be made to stop passing
    /// anything on, as a broken network leaves them: neither side hears from the other, and
    /// neither sees the connection closed.
    struct FreezingProxy {
        address: std::net::SocketAddr,
        /// Connections numbered below it pass nothing on.
        frozen_below: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        /// The number of the next connection.
        next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl FreezingProxy {
        /// A proxy to `server` (host:port), passing everything on until frozen.
        async fn start(server: String) -> FreezingProxy {
            use std::sync::atomic::{AtomicUsize, Ordering};
            use std::sync::Arc;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let frozen_below = Arc::new(AtomicUsize::new(0));
            let next = Arc::new(AtomicUsize::new(0));
            let (frozen, numbers) = (frozen_below.clone(), next.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let number = numbers.fetch_add(1, Ordering::SeqCst);
                    let upstream = tokio::net::TcpStream::connect(&server).await.unwrap();
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = upstream.into_split();
                    for (from, to) in [(client_read, server_write), (server_read, client_write)] {
                        let frozen = frozen.clone();
                        tokio::spawn(async move {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let (mut from, mut to) = (from, to);
                            let mut buffer = vec![0; 16 * 1024];
                            loop {
                                let Ok(read) = from.read(&mut buffer).await else {
                                    return;
                                };
                                if read == 0 {
                                    return;
                                }
                                if number < frozen.load(Ordering::SeqCst) {
                                    // Held open, passing nothing on.
                                    std::future::pending::<()>().await;
                                }
                                if to.write_all(&buffer[..read]).await.is_err() {
                                    return;
                                }
                            }
                        });
                    }
                }
            });
            FreezingProxy {
                address,
                frozen_below,
                next,
            }
        }

        /// Freezes every connection made so far.
        fn freeze(&self) {
            use std::sync::atomic::Ordering;
            self.frozen_below
                .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_postgres_lock_whose_session_no_longer_answers_ends_it_and_is_taken_again() {
        let Some(server) = storex_test::postgres_url() else {
            return;
        };
        let url = storex_test::fresh_postgres_database(&server).await;
        // postgres://user@host:port/database, through the proxy.
        let (user, rest) = url.rsplit_once('@').expect("a URL with a user");
        let (host, database) = rest.split_once('/').unwrap();
        let proxy = FreezingProxy::start(host.to_owned()).await;
        let through_proxy = format!("{user}@{}/{database}", proxy.address);
        let db = postgres(&through_proxy, "public").await;
        // Taken again slowly, so that the app can be seen waiting meanwhile.
        let patient = postgres::Watch {
            retake_every: Duration::from_secs(10),
            ..QUICK
        };
        let (storage, mut standing, first) = locked_storage(&db, patient).await;
        // The network breaks: the lock's ping is not answered, and the server, which has not
        // seen the connection close, keeps its session and the lock.
        proxy.freeze();
        until(&mut standing, |s| {
            matches!(s, postgres::Standing::Retaking { .. })
        })
        .await;
        assert!(
            matches!(
                storage.create("note", note(1)).await,
                Err(e @ storex_core::Error::Backend { .. }) if e.is_transient()
            ),
            "an app's write meanwhile fails as transient"
        );
        // The new session, through a new connection, ends the old one and takes the lock.
        let again = holding(
            until(&mut standing, |s| {
                !matches!(s, postgres::Standing::Retaking { .. })
            })
            .await,
        );
        assert_ne!(again, first);
        let mut direct =
            postgres::connect(&postgres::lock_options(&postgres(&url, "public").await))
                .await
                .unwrap();
        let gone: bool = sea_orm::sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
        )
        .bind(first)
        .fetch_one(&mut direct)
        .await
        .unwrap();
        assert!(gone, "the old session was ended");
        storage.create("note", note(2)).await.unwrap();
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
