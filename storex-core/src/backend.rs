//! The backend side: what a database must offer to run storex operations.
//!
//! A [`StorageBackend`] executes validated operations. It must apply an
//! [`crate::Operation::Batch`] atomically and offer [`Transaction`]s, in which a middleware
//! reads and writes atomically (the sync logger resolves a where-clause's keys and logs them
//! in the same transaction as the write). What a backend cannot do it refuses with
//! [`crate::Error::Unsupported`], before doing anything.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::Result;
use crate::operation::{Operation, Outcome};
use crate::registry::Registry;

/// A boxed, sendable future: what object-safe async trait methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The optional abilities of a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendFeatures {
    /// [`StorageBackend::begin`] works.
    pub transactions: bool,
    /// `UpdateWhere` and `DeleteWhere` work, and so do `UpdateWhereReturningPks` and
    /// `DeleteWhereReturningPks`.
    pub where_writes: bool,
    /// `Batch` works (atomically).
    pub batches: bool,
    /// `FindValues` is read by the backend itself. Without it, [`crate::Storage`] asks the
    /// backend for the objects (`FindMany`) and takes the values from them, so every backend
    /// answers it.
    pub find_values: bool,
}

impl BackendFeatures {
    /// Every optional feature.
    pub fn all() -> Self {
        BackendFeatures {
            transactions: true,
            where_writes: true,
            batches: true,
            find_values: true,
        }
    }

    /// No optional feature.
    pub fn none() -> Self {
        BackendFeatures::default()
    }

    /// This set with transactions on or off.
    pub fn with_transactions(mut self, on: bool) -> Self {
        self.transactions = on;
        self
    }

    /// This set with where-clause writes on or off.
    pub fn with_where_writes(mut self, on: bool) -> Self {
        self.where_writes = on;
        self
    }

    /// This set with `FindValues` read by the backend or not.
    pub fn with_find_values(mut self, on: bool) -> Self {
        self.find_values = on;
        self
    }

    /// This set with batches on or off.
    pub fn with_batches(mut self, on: bool) -> Self {
        self.batches = on;
        self
    }

    /// The feature `op` needs that this set lacks, if any.
    pub fn missing_for(&self, op: &Operation) -> Option<&'static str> {
        match op {
            Operation::UpdateWhere { .. }
            | Operation::DeleteWhere { .. }
            | Operation::UpdateWhereReturningPks { .. }
            | Operation::DeleteWhereReturningPks { .. }
                if !self.where_writes =>
            {
                Some("where-clause writes")
            }
            Operation::Batch { steps } => {
                if !self.batches {
                    return Some("batches");
                }
                steps.iter().find_map(|s| self.missing_for(&s.operation))
            }
            _ => None,
        }
    }
}

/// Executes operations against one database.
///
/// Operations arrive validated against the registry given to [`StorageBackend::prepare`].
/// An [`Operation::Batch`] is applied atomically. Found objects carry every field of their
/// collection (absent optional fields as `Null`), sorted as [`crate::Query::apply`] sorts;
/// found values ([`Operation::FindValues`], with [`BackendFeatures::find_values`]) are those
/// objects' values of the fields asked, in the order asked.
pub trait StorageBackend: Send + Sync + fmt::Debug + 'static {
    /// Stable short name used in errors and logs, e.g. `"memory"` or `"seaorm-sqlite"`.
    fn name(&self) -> &'static str;

    /// What this backend supports beyond the basic operations.
    fn features(&self) -> BackendFeatures {
        BackendFeatures::default()
    }

    /// Makes the backend ready to store the registry's collections (creates tables,
    /// idempotently). Called again with a larger registry when collections are added.
    fn prepare<'a>(&'a self, registry: &'a Arc<Registry>) -> BoxFuture<'a, Result<()>>;

    /// Executes one operation on its own (a batch in its own transaction).
    fn execute(&self, op: Operation) -> BoxFuture<'_, Result<Outcome>>;

    /// Starts a transaction; [`crate::Error::Unsupported`] if the backend has none.
    fn begin(&self) -> BoxFuture<'_, Result<Box<dyn Transaction>>>;

    /// Starts a transaction for reading a great deal at once (a fast-sync sender's): every
    /// read in it sees the same snapshot of the data, whatever commits meanwhile. The default
    /// is [`StorageBackend::begin`], right for backends whose transactions are serializable;
    /// a backend with weaker transactions by default overrides it.
    fn begin_snapshot(&self) -> BoxFuture<'_, Result<Box<dyn Transaction>>> {
        self.begin()
    }

    /// Starts a transaction that applies changes other devices made (a sync engine's) while
    /// the app may have transactions of its own open: a write of it that meets data such a
    /// transaction changed fails with a transient error (the work is tried again later)
    /// rather than overwrite that change, which it could not see, once it commits; and a
    /// wait for another transaction's lock is bounded. The default is
    /// [`StorageBackend::begin`], right for backends whose writers take turns.
    fn begin_isolated(&self) -> BoxFuture<'_, Result<Box<dyn Transaction>>> {
        self.begin()
    }

    /// Starts a transaction that its caller rolls back whole on any error (sync's logger,
    /// writing an app's change and its log record): none of its operations needs undoing on
    /// its own, so the backend may leave out what keeps a transaction usable after a failed
    /// operation (on PostgreSQL, a savepoint around each write: two more round trips each).
    /// After an operation in it failed, its commit may be refused. The default is
    /// [`StorageBackend::begin`].
    fn begin_all_or_nothing(&self) -> BoxFuture<'_, Result<Box<dyn Transaction>>> {
        self.begin()
    }

    /// Makes every write committed so far survive an operating-system crash or a power cut,
    /// if the backend's commits do not already (a SQLite file in WAL mode with
    /// `synchronous=NORMAL` writes its commits to disk only at the next checkpoint). A sync
    /// engine calls it before it lets others rely on this device's writes: before it pushes
    /// them (once the others have a write, a power cut that undid it here would leave this
    /// device without it for good: a device never pulls its own writes back), before it
    /// sends a copy of the database to another device, and before it tells the shared log
    /// how far it applied. The default does nothing: right for backends whose commits are
    /// durable (PostgreSQL) or that keep nothing across a restart.
    fn make_durable(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// An open transaction. Dropping it without [`Transaction::commit`] rolls it back.
///
/// A batch executed inside a transaction is atomic on its own: if a step fails, the batch's
/// earlier steps are undone and the transaction stays usable. Unless the database itself
/// ended or aborted the whole transaction after the error (a SQLite trigger's
/// `RAISE(ROLLBACK)`, a failed read on PostgreSQL): then its later operations and its commit
/// fail with [`crate::Error::Transaction`], and nothing of it is written.
pub trait Transaction: Send + Sync + fmt::Debug {
    /// Executes an operation inside the transaction; it sees the transaction's own writes.
    fn execute(&self, op: Operation) -> BoxFuture<'_, Result<Outcome>>;

    /// Makes every write of the transaction durable and visible.
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<()>>;

    /// Undoes every write of the transaction.
    fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
}
