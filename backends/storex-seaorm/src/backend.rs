//! [`SeaOrmBackend`]: the storex `StorageBackend` over a SeaORM connection.
//!
//! SQLite transactions start with `BEGIN IMMEDIATE`, so two transactions that read before
//! they write never deadlock on the upgrade to a write lock; other writers wait up to the
//! busy timeout. Snapshot transactions (reads only) are deferred: on a file in WAL mode they
//! hold no lock writers wait for. On PostgreSQL every write inside a transaction runs in a
//! savepoint, so a failed write leaves the transaction usable, as storex-core's contract
//! says; not in one begun all-or-nothing (sync's logger's), whose caller rolls it back
//! whole, and which a failed operation leaves lost. Operations on one transaction take turns.
//! A transaction the database ended or aborted after an error refuses the rest of its
//! operations and its commit (`savepoint.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    AccessMode, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction,
    DbBackend, DbErr, IsolationLevel, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait,
};
use storex_core::{
    BackendFeatures, BoxFuture, Operation, Outcome, Registry, Result as CoreResult, StorageBackend,
    Transaction,
};

use crate::error::{redact, Error, Result};
use crate::exec::{run, run_batch, Ctx};
use crate::savepoint::Savepoint;
use crate::schema;

/// How long a SQLite writer waits for another one to finish.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a PostgreSQL transaction applying other devices' changes waits for a row lock
/// (as long as a SQLite writer waits for its turn).
const LOCK_TIMEOUT: Duration = SQLITE_BUSY_TIMEOUT;

/// How many result rows SQLite's connection thread may read ahead of the caller. sqlx's
/// default (50) makes it stop and wait for the caller every few rows of a large result,
/// which costs a thread switch per row; a page of sync's lookups (1,000 keys) fits in this.
const SQLITE_ROW_CHANNEL: usize = 2_048;

/// Opens a SeaORM connection to `url` with the settings storex uses: `sqlite::memory:` (one
/// connection, so every query sees the same database), `sqlite://path.db?mode=rwc` (WAL,
/// `synchronous=NORMAL`, a busy timeout so writers wait for each other), or
/// `postgres://user@host:port/db`. Shared by every storex crate that talks SQL.
pub async fn connect(url: &str) -> Result<DatabaseConnection> {
    connect_syncing(url, SqliteSynchronous::Normal).await
}

/// [`connect`] for a database whose commits others rely on once they are confirmed (a shared
/// sync log: a device that pushed lets go of its entries): a SQLite file syncs every commit
/// to disk before it returns (`synchronous=FULL`), so an OS crash or a power cut cannot take
/// back a confirmed push. (With `NORMAL`, a commit in WAL mode reaches the disk at the next
/// checkpoint, and a power cut before it undoes the commit.) PostgreSQL's commits are
/// durable already (its default `synchronous_commit=on`).
pub async fn connect_durable(url: &str) -> Result<DatabaseConnection> {
    connect_syncing(url, SqliteSynchronous::Full).await
}

/// [`connect`] with SQLite files syncing as `synchronous` says.
async fn connect_syncing(url: &str, synchronous: SqliteSynchronous) -> Result<DatabaseConnection> {
    let dialect = if url.starts_with("sqlite:") {
        Dialect::Sqlite
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Dialect::Postgres
    } else {
        return Err(Error::UnsupportedUrl { url: redact(url) });
    };
    let mut options = ConnectOptions::new(url);
    options
        .sqlx_logging(false)
        .acquire_timeout(Duration::from_secs(30));
    match dialect {
        Dialect::Sqlite if url.contains(":memory:") || url.contains("mode=memory") => {
            options
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None::<Duration>)
                .max_lifetime(None::<Duration>)
                .map_sqlx_sqlite_opts(|o| o.row_buffer_size(SQLITE_ROW_CHANNEL));
        }
        Dialect::Sqlite => {
            options.max_connections(4).map_sqlx_sqlite_opts(move |o| {
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(synchronous)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    .row_buffer_size(SQLITE_ROW_CHANNEL)
            });
        }
        Dialect::Postgres => {
            options.max_connections(10);
        }
    }
    Database::connect(options)
        .await
        .map_err(|source| Error::Connect {
            url: redact(url),
            source,
        })
}

/// The dialect of a connection, or an error for databases storex does not support.
pub fn dialect_of(db: &DatabaseConnection) -> Result<Dialect> {
    match db.get_database_backend() {
        DbBackend::Sqlite => Ok(Dialect::Sqlite),
        DbBackend::Postgres => Ok(Dialect::Postgres),
        other => Err(Error::UnsupportedDatabase {
            backend: format!("{other:?}"),
        }),
    }
}

/// Starts a transaction that writes: `BEGIN IMMEDIATE` on SQLite, so two transactions that
/// read before writing never deadlock on the upgrade to the write lock.
pub async fn begin_write(
    db: &DatabaseConnection,
) -> std::result::Result<DatabaseTransaction, DbErr> {
    let sqlite = db.get_database_backend() == DbBackend::Sqlite;
    let options = TransactionOptions {
        sqlite_transaction_mode: sqlite.then_some(SqliteTransactionMode::Immediate),
        ..TransactionOptions::default()
    };
    db.begin_with_options(options).await
}

/// The database behind a [`SeaOrmBackend`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dialect {
    /// SQLite (bundled), the embedded default.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

#[derive(Debug)]
struct Shared {
    db: DatabaseConnection,
    dialect: Dialect,
    registry: RwLock<Arc<Registry>>,
}

impl Shared {
    fn name(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "seaorm-sqlite",
            Dialect::Postgres => "seaorm-postgres",
        }
    }

    fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn ctx<'r>(&self, registry: &'r Registry) -> Ctx<'r> {
        Ctx {
            backend: self.name(),
            dialect: self.dialect,
            registry,
            lost: AtomicBool::new(false),
        }
    }

    fn db_err(&self, e: DbErr) -> storex_core::Error {
        storex_core::Error::backend(self.name(), e)
    }

    async fn begin(&self) -> CoreResult<DatabaseTransaction> {
        begin_write(&self.db).await.map_err(|e| self.db_err(e))
    }

    /// A transaction whose reads share one snapshot: on PostgreSQL read-only at REPEATABLE
    /// READ (its default, READ COMMITTED, lets each statement see newer commits); on SQLite
    /// a deferred one, whose reads see the database as it was at the first of them (a file
    /// is in WAL mode), while writers go on. (An in-memory database has one connection,
    /// which the snapshot holds until it ends; the WAL cannot be checkpointed past an open
    /// snapshot, so it grows while one lasts.)
    async fn begin_snapshot(&self) -> CoreResult<DatabaseTransaction> {
        match self.dialect {
            Dialect::Postgres => {
                let options = TransactionOptions {
                    isolation_level: Some(IsolationLevel::RepeatableRead),
                    access_mode: Some(AccessMode::ReadOnly),
                    ..TransactionOptions::default()
                };
                self.db
                    .begin_with_options(options)
                    .await
                    .map_err(|e| self.db_err(e))
            }
            Dialect::Sqlite => self.db.begin().await.map_err(|e| self.db_err(e)),
        }
    }

    /// A transaction that applies other devices' changes: on PostgreSQL at REPEATABLE READ,
    /// so that a write to a row another transaction changed and committed after this one's
    /// first read fails (a serialization failure, transient) instead of overwriting a change
    /// it did not see; and with a lock timeout, so that it does not wait without end for a
    /// transaction that waits for it in turn (an app's, whose next write waits for sync to
    /// finish). On SQLite writers take turns: a write transaction, as [`Shared::begin`].
    async fn begin_isolated(&self) -> CoreResult<DatabaseTransaction> {
        match self.dialect {
            Dialect::Postgres => {
                let options = TransactionOptions {
                    isolation_level: Some(IsolationLevel::RepeatableRead),
                    ..TransactionOptions::default()
                };
                let txn = self
                    .db
                    .begin_with_options(options)
                    .await
                    .map_err(|e| self.db_err(e))?;
                let timeout = format!("SET LOCAL lock_timeout = {}", LOCK_TIMEOUT.as_millis());
                txn.execute_raw(Statement::from_string(DbBackend::Postgres, timeout))
                    .await
                    .map_err(|e| self.db_err(e))?;
                Ok(txn)
            }
            Dialect::Sqlite => self.begin().await,
        }
    }
}

/// The URL [`connect`] opens the SQLite file at `path` by, in `mode` (`ro`, `rw`, or `rwc` to
/// create it if missing). The SQLite driver percent-decodes a URL's file name and ends it at
/// the first `?`, so `%`, `?` and `#` in the path are escaped: `budget%2024.db` opens that
/// file, not `budget 24.db`. A path that is not valid Unicode is refused
/// ([`Error::PathNotUnicode`]): the driver takes the file name as text, and would open
/// another file than the one named.
pub fn sqlite_file_url(path: &std::path::Path, mode: &str) -> Result<String> {
    let text = path.to_str().ok_or_else(|| Error::PathNotUnicode {
        path: path.display().to_string(),
    })?;
    let mut file = String::new();
    for c in text.chars() {
        match c {
            '%' => file.push_str("%25"),
            '?' => file.push_str("%3F"),
            '#' => file.push_str("%23"),
            c => file.push(c),
        }
    }
    Ok(format!("sqlite://{file}?mode={mode}"))
}

/// A storex backend on SQLite or PostgreSQL through SeaORM. Clones share one pool.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use storex_core::{object, CollectionDef, FieldType, Registry, Storage, UuidPkMiddleware};
/// use storex_seaorm::SeaOrmBackend;
///
/// let registry = Registry::builder()
///     .collection(CollectionDef::new("note").field("id", FieldType::Uuid).field("title", FieldType::Text).primary_key(["id"]))
///     .build()?;
/// let backend = SeaOrmBackend::connect("sqlite::memory:").await?;
/// let storage = Storage::builder(registry, backend).with(UuidPkMiddleware::new()).build().await?;
/// storage.create("note", object! { "title" => "stored in SQLite" }).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SeaOrmBackend {
    shared: Arc<Shared>,
}

impl SeaOrmBackend {
    /// Connects to `url`: `sqlite::memory:`, `sqlite://path/to.db?mode=rwc`, or
    /// `postgres://user@host:port/db`. SQLite files use WAL with `synchronous=NORMAL`; an
    /// in-memory database uses a single connection (all pooled connections would otherwise
    /// have to share it), so do not hold a transaction open while reading outside it.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::new(connect(url).await?)
    }

    /// Opens (creating it if needed) the SQLite database file at `path`.
    pub async fn open_sqlite_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::connect(&sqlite_file_url(path.as_ref(), "rwc")?).await
    }

    /// Wraps a connection the app already has (for instance its SeaORM data layer's).
    pub fn new(db: DatabaseConnection) -> Result<Self> {
        let dialect = dialect_of(&db)?;
        Ok(SeaOrmBackend {
            shared: Arc::new(Shared {
                db,
                dialect,
                registry: RwLock::new(Arc::new(Registry::default())),
            }),
        })
    }

    /// The SeaORM connection, for reading the same tables with plain SeaORM.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.shared.db
    }

    /// Which database this is.
    pub fn dialect(&self) -> Dialect {
        self.shared.dialect
    }
}

impl StorageBackend for SeaOrmBackend {
    fn name(&self) -> &'static str {
        self.shared.name()
    }

    fn features(&self) -> BackendFeatures {
        BackendFeatures::all()
    }

    fn prepare<'a>(&'a self, registry: &'a Arc<Registry>) -> BoxFuture<'a, CoreResult<()>> {
        Box::pin(async move {
            schema::prepare(&self.shared.db, self.shared.dialect, registry, self.name()).await?;
            *self
                .shared
                .registry
                .write()
                .unwrap_or_else(PoisonError::into_inner) = registry.clone();
            Ok(())
        })
    }

    fn make_durable(&self) -> BoxFuture<'_, CoreResult<()>> {
        Box::pin(async move {
            crate::durable::make_durable(&self.shared.db)
                .await
                .map_err(|e| storex_core::Error::backend(self.name(), e))
        })
    }

    fn execute(&self, op: Operation) -> BoxFuture<'_, CoreResult<Outcome>> {
        Box::pin(async move {
            let registry = self.shared.registry();
            let ctx = self.shared.ctx(&registry);
            // A batch, and on SQLite an update by filter that answers with its keys (it may
            // read them and then write), run in a transaction of their own.
            let own_transaction = match op {
                Operation::Batch { .. } => true,
                Operation::UpdateWhereReturningPks { .. } => ctx.dialect == Dialect::Sqlite,
                _ => false,
            };
            if !own_transaction {
                return run(&self.shared.db, &ctx, op).await;
            }
            let txn = self.shared.begin().await?;
            let ran = match op {
                Operation::Batch { steps } => {
                    run_batch(&txn, &ctx, steps).await.map(Outcome::Batch)
                }
                op => run(&txn, &ctx, op).await,
            };
            match ran {
                Ok(outcome) => {
                    // A deferred constraint fails here: a refusal, as at a transaction's
                    // commit (below), not a database failure.
                    txn.commit().await.map_err(|e| ctx.db_err("", e))?;
                    Ok(outcome)
                }
                Err(e) => {
                    // If SQLite ended the transaction itself, an empty one takes its place
                    // for the rollback to end (else the connection would stay counted as in
                    // a transaction). The operation's own error tells more than a failed
                    // rollback's: nothing of it was written either way.
                    ctx.transaction_lost(&txn).await;
                    let _ = txn.rollback().await;
                    Err(e)
                }
            }
        })
    }

    fn begin(&self) -> BoxFuture<'_, CoreResult<Box<dyn Transaction>>> {
        Box::pin(async move {
            let txn = self.shared.begin().await?;
            Ok(self.transaction(txn))
        })
    }

    fn begin_snapshot(&self) -> BoxFuture<'_, CoreResult<Box<dyn Transaction>>> {
        Box::pin(async move {
            let txn = self.shared.begin_snapshot().await?;
            Ok(self.transaction(txn))
        })
    }

    fn begin_isolated(&self) -> BoxFuture<'_, CoreResult<Box<dyn Transaction>>> {
        Box::pin(async move {
            let txn = self.shared.begin_isolated().await?;
            Ok(self.transaction(txn))
        })
    }

    /// A write transaction without a savepoint around each operation: a failed one leaves
    /// the transaction lost (its later operations and its commit are refused), since the
    /// caller rolls it back whole.
    fn begin_all_or_nothing(&self) -> BoxFuture<'_, CoreResult<Box<dyn Transaction>>> {
        Box::pin(async move {
            let txn = self.shared.begin().await?;
            Ok(self.transaction_with(txn, false))
        })
    }
}

impl SeaOrmBackend {
    fn transaction(&self, txn: DatabaseTransaction) -> Box<dyn Transaction> {
        self.transaction_with(txn, true)
    }

    /// A transaction; `undoes_failed` says whether a failed operation is undone alone (in a
    /// savepoint) and leaves it usable.
    fn transaction_with(
        &self,
        txn: DatabaseTransaction,
        undoes_failed: bool,
    ) -> Box<dyn Transaction> {
        Box::new(SeaOrmTransaction {
            undoes_failed,
            txn,
            registry: self.shared.registry(),
            shared: self.shared.clone(),
            turn: tokio::sync::Mutex::new(()),
            lost: AtomicBool::new(false),
            running: AtomicBool::new(false),
        })
    }
}

/// An open database transaction.
#[derive(Debug)]
struct SeaOrmTransaction {
    /// Whether a failed operation is undone on its own and leaves the transaction usable
    /// (see [`StorageBackend::begin_all_or_nothing`] for one whose caller rolls it back).
    undoes_failed: bool,
    txn: DatabaseTransaction,
    registry: Arc<Registry>,
    shared: Arc<Shared>,
    /// Taken by each operation for its whole run: operations run concurrently on one
    /// transaction would otherwise interleave their statements, and one's savepoint undone
    /// would undo the other's writes made since.
    turn: tokio::sync::Mutex<()>,
    /// Set once the database ended the transaction by itself, or a savepoint could not be
    /// undone: the rest of it is refused, and its commit fails.
    lost: AtomicBool,
    /// Set while an operation runs. Still set when the next one comes (or the commit), the
    /// one before was cancelled midway (its future dropped, by a timeout say): what it did
    /// is not known, its savepoint still open, so the transaction is lost.
    running: AtomicBool,
}

/// Why the operations of a lost transaction, and its commit, are refused.
const LOST: &str = "the database ended this transaction after an earlier error in it (or \
                    an undo in it failed, or an operation in it was cancelled midway): nothing \
                    of it is written; run it again from its start";

impl SeaOrmTransaction {
    /// Whether the transaction is lost; first, if an operation was cancelled midway, it
    /// becomes so (and on SQLite, if the database ended it meanwhile, an empty one stands in
    /// for the driver's end of it).
    async fn is_lost(&self) -> bool {
        if self.running.swap(false, Ordering::AcqRel) {
            self.shared.ctx(&self.registry).note_lost(&self.txn).await;
            self.lost.store(true, Ordering::Release);
        }
        self.lost.load(Ordering::Acquire)
    }

    /// Runs `op` in a savepoint: a failure undoes it and leaves the transaction usable.
    async fn in_savepoint(&self, ctx: &Ctx<'_>, op: Operation) -> CoreResult<Outcome> {
        let savepoint = Savepoint::set(&self.txn, "storex_operation")
            .await
            .map_err(|e| self.shared.db_err(e))?;
        let result = match op {
            Operation::Batch { steps } => {
                run_batch(&self.txn, ctx, steps).await.map(Outcome::Batch)
            }
            op => run(&self.txn, ctx, op).await,
        };
        match result {
            Ok(outcome) => {
                savepoint
                    .release()
                    .await
                    .map_err(|e| self.shared.db_err(e))?;
                Ok(outcome)
            }
            Err(e) => {
                if savepoint.undo().await.is_err() {
                    ctx.note_lost(&self.txn).await;
                }
                Err(e)
            }
        }
    }
}

impl Transaction for SeaOrmTransaction {
    fn execute(&self, op: Operation) -> BoxFuture<'_, CoreResult<Outcome>> {
        Box::pin(async move {
            let _turn = self.turn.lock().await;
            if self.is_lost().await {
                return Err(storex_core::Error::Transaction {
                    problem: LOST.into(),
                });
            }
            self.running.store(true, Ordering::Release);
            let ctx = self.shared.ctx(&self.registry);
            // SQLite undoes just the failing statement by itself; PostgreSQL would abort the
            // whole transaction, so writes there get a savepoint of their own.
            let own_savepoint = self.undoes_failed
                && (matches!(op, Operation::Batch { .. })
                    || (op.is_write() && self.shared.dialect == Dialect::Postgres));
            let result = match op {
                op if own_savepoint => self.in_savepoint(&ctx, op).await,
                Operation::Batch { steps } => {
                    run_batch(&self.txn, &ctx, steps).await.map(Outcome::Batch)
                }
                op => run(&self.txn, &ctx, op).await,
            };
            // After an error SQLite may have ended the whole transaction, PostgreSQL aborted
            // it (see savepoint.rs).
            // Without savepoints, a failed operation may have left part of its writes.
            if (result.is_err() && (ctx.transaction_lost(&self.txn).await || !self.undoes_failed))
                || ctx.lost()
            {
                self.lost.store(true, Ordering::Release);
            }
            self.running.store(false, Ordering::Release);
            result
        })
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, CoreResult<()>> {
        Box::pin(async move {
            let (shared, registry) = (self.shared.clone(), self.registry.clone());
            if self.is_lost().await {
                // Ends the empty transaction that stands in for the lost one.
                let _ = self.txn.rollback().await;
                return Err(storex_core::Error::Transaction {
                    problem: LOST.into(),
                });
            }
            // A deferred constraint (a foreign key or check an adopted table declares
            // DEFERRABLE) fails here: a refusal like any other, not a database failure.
            self.txn
                .commit()
                .await
                .map_err(|e| shared.ctx(&registry).db_err("", e))
        })
    }

    fn rollback(self: Box<Self>) -> BoxFuture<'static, CoreResult<()>> {
        Box::pin(async move {
            let shared = self.shared.clone();
            let lost = self.is_lost().await;
            match self.txn.rollback().await {
                // Nothing of a lost transaction is left to undo.
                Err(_) if lost => Ok(()),
                ended => ended.map_err(|e| shared.db_err(e)),
            }
        })
    }
}
