//! Savepoints of storex's own inside a transaction, and telling a transaction that the
//! database ended by itself.
//!
//! A savepoint here is plain SQL under a name of storex's (`SAVEPOINT`, `RELEASE`,
//! `ROLLBACK TO`), not one of the driver's nested transactions: the driver counts those per
//! connection and undoes "the latest" rather than the caller's, and when the database ended
//! the whole transaction its count stays wrong for the connection's later transactions.
//!
//! SQLite ends the whole transaction, not only the statement, after some errors: a
//! trigger's `RAISE(ROLLBACK, …)`, a constraint declared `ON CONFLICT ROLLBACK`, and at
//! times a full disk or an I/O error. What came next would run outside any transaction,
//! each statement committed alone. PostgreSQL aborts the transaction on an error outside a
//! savepoint (writes have one; a read does not), and then answers its `COMMIT` as a rollback
//! without an error. [`Ctx::transaction_lost`] tells either (on SQLite it starts an empty
//! transaction in place of the lost one, which the end of the driver's transaction ends); the
//! caller then refuses the rest of the transaction, and its commit.

use std::sync::atomic::Ordering;

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr};

use crate::backend::Dialect;
use crate::exec::Ctx;

/// A savepoint set in a transaction; [`Savepoint::release`] keeps what was done since,
/// [`Savepoint::undo`] undoes it. Dropped without either, it stays until the transaction ends.
pub(crate) struct Savepoint<'t> {
    txn: &'t DatabaseTransaction,
    name: &'static str,
}

impl<'t> Savepoint<'t> {
    /// Sets savepoint `name` (an identifier of storex's own, never an input) in `txn`.
    pub(crate) async fn set(
        txn: &'t DatabaseTransaction,
        name: &'static str,
    ) -> Result<Self, DbErr> {
        txn.execute_unprepared(&format!("SAVEPOINT {name}")).await?;
        Ok(Savepoint { txn, name })
    }

    /// Keeps what was done since the savepoint was set.
    pub(crate) async fn release(self) -> Result<(), DbErr> {
        let name = self.name;
        self.txn
            .execute_unprepared(&format!("RELEASE SAVEPOINT {name}"))
            .await
            .map(|_| ())
    }

    /// Undoes what was done since the savepoint was set, and removes it. An error means the
    /// transaction is not as it was at the savepoint (the database may have ended it).
    pub(crate) async fn undo(self) -> Result<(), DbErr> {
        let name = self.name;
        self.txn
            .execute_unprepared(&format!("ROLLBACK TO SAVEPOINT {name}"))
            .await?;
        self.txn
            .execute_unprepared(&format!("RELEASE SAVEPOINT {name}"))
            .await
            .map(|_| ())
    }
}

impl Ctx<'_> {
    /// Whether the transaction `txn` is lost after an error: asked after an operation in it
    /// failed. On SQLite, ended by the database: asked by starting one, which is refused
    /// inside a transaction, and where there is none starts a new, empty one, so that the
    /// driver's `COMMIT` or `ROLLBACK` at the end of `txn` still has one to end. On
    /// PostgreSQL, aborted (an error outside a savepoint, in a read): it refuses every
    /// statement until it ends, and its `COMMIT` would answer as a rollback, without an
    /// error. Once known, remembered (a second start would be refused: the first made it).
    pub(crate) async fn transaction_lost(&self, txn: &DatabaseTransaction) -> bool {
        if self.lost.load(Ordering::Acquire) {
            return true;
        }
        let lost = match self.dialect {
            Dialect::Sqlite => txn.execute_unprepared("BEGIN").await.is_ok(),
            Dialect::Postgres => txn.execute_unprepared("SELECT 1").await.is_err(),
        };
        if lost {
            self.lost.store(true, Ordering::Release);
        }
        lost
    }

    /// Notes that what `txn` holds is no longer known (a savepoint could not be undone): the
    /// rest of the transaction is refused. If SQLite ended it, a new empty one takes its place
    /// as [`Ctx::transaction_lost`] says.
    pub(crate) async fn note_lost(&self, txn: &DatabaseTransaction) {
        self.transaction_lost(txn).await;
        self.lost.store(true, Ordering::Release);
    }

    /// Whether the transaction was found lost.
    pub(crate) fn lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }
}
