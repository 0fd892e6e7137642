//! Transactions the database ends by itself, and operations run at once on one transaction.
//!
//! SQLite ends the whole transaction, not only the statement, when a trigger raises
//! `RAISE(ROLLBACK, …)` (and for a constraint declared `ON CONFLICT ROLLBACK`, at times for a
//! full disk). The write's own error is reported, the rest of the transaction is refused and
//! its commit fails, nothing of it is written (no write after it is committed alone), and the
//! connection serves later transactions as before. PostgreSQL aborts a transaction on a
//! failed read (reads have no savepoint): the same holds there, where its commit would
//! otherwise answer the rollback as a success. Operations run concurrently on one
//! transaction take turns: a failing one undoes only itself.

use sea_orm::ConnectionTrait;
use storex_core::{
    object, BatchStep, CollectionDef, Error, FieldType, Filter, Operation, Registry, Storage,
};
use storex_seaorm::SeaOrmBackend;

fn registry() -> Registry {
    Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Int)
                .field("title", FieldType::Text)
                .primary_key(["id"]),
        )
        .build()
        .expect("registry")
}

/// Storage over an app's `note` table whose trigger ends the transaction of any insert of a
/// note titled `bad`.
async fn storage_with_a_rollback_trigger(dir: &std::path::Path) -> Storage {
    let backend = SeaOrmBackend::open_sqlite_file(dir.join("notes.db"))
        .await
        .expect("open");
    for sql in [
        "CREATE TABLE note (id BIGINT PRIMARY KEY NOT NULL, title TEXT NOT NULL)",
        "CREATE TRIGGER no_bad_notes BEFORE INSERT ON note WHEN NEW.title = 'bad' \
         BEGIN SELECT RAISE(ROLLBACK, 'no bad notes'); END",
    ] {
        backend
            .connection()
            .execute_unprepared(sql)
            .await
            .expect("the app's table");
    }
    Storage::builder(registry(), backend)
        .build()
        .await
        .expect("prepare")
}

/// A storage of [`registry`] on the backend opened.
async fn storage_on(backend: storex_seaorm::Result<SeaOrmBackend>) -> Storage {
    Storage::builder(registry(), backend.expect("open"))
        .build()
        .await
        .expect("prepare")
}

fn create(id: i64, title: &str) -> Operation {
    Operation::create("note", object! { "id" => id, "title" => title })
}

async fn count(storage: &Storage) -> u64 {
    storage.count("note", Filter::all()).await.expect("count")
}

/// After the transaction was lost, its later writes are refused and its commit fails: none of
/// its writes is in the table.
async fn the_rest_is_refused(storage: &Storage, tx: storex_core::StorageTransaction, next: i64) {
    let err = tx
        .execute(create(next, "after"))
        .await
        .expect_err("a write after the lost transaction must be refused");
    assert!(matches!(err, Error::Transaction { .. }), "{err}");
    let err = tx.commit().await.expect_err("its commit must fail");
    assert!(matches!(err, Error::Transaction { .. }), "{err}");
    assert!(
        err.is_transient(),
        "the whole transaction may run again: {err}"
    );
    assert_eq!(
        count(storage).await,
        0,
        "nothing of the transaction is written"
    );
}

#[tokio::test]
async fn a_transaction_sqlite_ended_is_refused_to_its_end_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let storage = storage_with_a_rollback_trigger(dir.path()).await;

    // A single write ends it.
    let tx = storage.begin().await.expect("begin");
    tx.execute(create(1, "good")).await.expect("a good note");
    let err = tx
        .execute(create(2, "bad"))
        .await
        .expect_err("the trigger refuses it");
    assert!(
        !matches!(err, Error::Transaction { .. }),
        "the write's own error: {err}"
    );
    the_rest_is_refused(&storage, tx, 3).await;

    // A batch ends it (its savepoint cannot be undone any more).
    let tx = storage.begin().await.expect("begin");
    tx.execute(create(4, "good")).await.expect("a good note");
    let err = tx
        .execute(Operation::Batch {
            steps: vec![
                BatchStep::new(create(5, "fine")),
                BatchStep::new(create(6, "also fine")),
                BatchStep::new(create(7, "bad")),
            ],
        })
        .await
        .expect_err("the trigger refuses it");
    assert!(matches!(err, Error::BatchStep { .. }), "{err}");
    the_rest_is_refused(&storage, tx, 8).await;

    // So does a batch of its own transaction: its error is the step's, and its rows, one
    // group replayed row by row after the failure, are not committed one by one.
    let err = storage
        .batch(vec![
            BatchStep::new(create(9, "fine")),
            BatchStep::new(create(10, "bad")),
            BatchStep::new(create(11, "fine too")),
        ])
        .await
        .expect_err("the trigger refuses it");
    match &err {
        Error::BatchStep { source, .. } => assert!(
            !matches!(**source, Error::Backend { .. } | Error::Transaction { .. }),
            "the refusal, not a failure of the rollback: {err}"
        ),
        other => panic!("wrong error: {other}"),
    }
    assert_eq!(count(&storage).await, 0, "nothing of the batch is written");
    // A lost transaction rolled back: nothing to undo, no error.
    let tx = storage.begin().await.expect("begin");
    tx.execute(create(12, "bad")).await.expect_err("refused");
    tx.rollback().await.expect("rolled back");

    // The connections serve the next transactions as before (more than the pool holds).
    for id in 100..120 {
        let tx = storage.begin().await.expect("begin");
        tx.execute(create(id, "later")).await.expect("a later note");
        tx.commit().await.expect("commit");
        storage
            .batch(vec![
                BatchStep::new(create(id + 100, "later")),
                BatchStep::new(create(id + 200, "later")),
            ])
            .await
            .expect("a later batch");
    }
    assert_eq!(count(&storage).await, 60);
}

/// Batches run at once on one transaction, from tasks of their own, half of them failing:
/// each failure undoes only its own writes.
async fn concurrent_operations_undo_only_their_own(storage: Storage) {
    storage
        .batch(
            (0..200)
                .map(|id| BatchStep::new(create(id, "old")))
                .collect(),
        )
        .await
        .expect("notes");
    let tx = std::sync::Arc::new(storage.begin().await.expect("begin"));
    let mut updates = Vec::new();
    let mut refusals = Vec::new();
    for id in 0..100 {
        let update = Operation::Batch {
            steps: vec![
                BatchStep::new(Operation::update_by_pk(
                    "note",
                    id,
                    object! { "title" => "new" },
                )),
                BatchStep::new(Operation::update_by_pk(
                    "note",
                    id + 100,
                    object! { "title" => "new" },
                )),
            ],
        };
        let refused = Operation::Batch {
            steps: vec![
                BatchStep::new(create(1_000 + id, "extra")),
                BatchStep::new(create(id, "a duplicate")),
            ],
        };
        let (a, b) = (tx.clone(), tx.clone());
        updates.push(tokio::spawn(async move { a.execute(update).await }));
        refusals.push(tokio::spawn(async move { b.execute(refused).await }));
    }
    for update in updates {
        update.await.expect("task").expect("an update");
    }
    for refused in refusals {
        refused.await.expect("task").expect_err("a duplicate");
    }
    // Each batch's savepoint was its own: no update was undone by another batch's failure,
    // and nothing of a failed batch stayed.
    let counted = |filter| tx.execute(Operation::count("note", filter));
    let new = counted(Filter::all().eq("title", "new")).await;
    let extra = counted(Filter::all().eq("title", "extra")).await;
    assert_eq!(
        (new.expect("count"), extra.expect("count")),
        (
            storex_core::Outcome::Counted(200),
            storex_core::Outcome::Counted(0)
        ),
        "every update stays in the transaction, no extra note does"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_operations_run_at_once_on_a_transaction_undo_only_their_own() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let storage =
        storage_on(SeaOrmBackend::open_sqlite_file(dir.path().join("notes.db")).await).await;
    concurrent_operations_undo_only_their_own(storage).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_operations_run_at_once_on_a_transaction_undo_only_their_own() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let url = storex_test::fresh_postgres_database(&server).await;
    let storage = storage_on(SeaOrmBackend::connect(&url).await).await;
    concurrent_operations_undo_only_their_own(storage).await;
}

/// A transaction begun all-or-nothing runs its operations without a savepoint each: after
/// one failed, the rest of it and its commit are refused, so nothing of it is written (on
/// SQLite, which undoes only the failing statement, the batch's first step would otherwise
/// be committed).
async fn all_or_nothing_refuses_the_commit_after_a_failed_operation(backend: SeaOrmBackend) {
    use storex_core::StorageBackend;
    let storage = storage_on(Ok(backend.clone())).await;
    let tx = backend.begin_all_or_nothing().await.expect("begin");
    let create = |id: i64| Operation::create("note", object! { "id" => id, "title" => "t" });
    tx.execute(create(1)).await.expect("first write");
    let batch = vec![BatchStep::new(create(2)), BatchStep::new(create(1))];
    let failed = tx.execute(Operation::Batch { steps: batch }).await;
    assert!(failed.is_err(), "a duplicate key");
    assert!(
        tx.execute(create(3)).await.is_err(),
        "refused after the failure"
    );
    assert!(tx.commit().await.is_err(), "the commit is refused");
    assert_eq!(count(&storage).await, 0, "nothing of it is written");
    storage
        .create("note", object! { "id" => 4, "title" => "later" })
        .await
        .expect("the connection serves later writes");
}

#[tokio::test]
async fn sqlite_all_or_nothing_refuses_the_commit_after_a_failed_operation() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let backend = SeaOrmBackend::open_sqlite_file(dir.path().join("notes.db"))
        .await
        .expect("open");
    all_or_nothing_refuses_the_commit_after_a_failed_operation(backend).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_all_or_nothing_refuses_the_commit_after_a_failed_operation() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let url = storex_test::fresh_postgres_database(&server).await;
    let backend = SeaOrmBackend::connect(&url).await.expect("connect");
    all_or_nothing_refuses_the_commit_after_a_failed_operation(backend).await;
}

/// On PostgreSQL a read that fails aborts the transaction (reads run without a savepoint):
/// its later writes are refused, and its commit fails instead of answering a rollback as
/// success, which would lose the writes made before without a word.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_a_transaction_aborted_by_a_failed_read_does_not_commit_as_if_written() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let url = storex_test::fresh_postgres_database(&server).await;
    let backend = SeaOrmBackend::connect(&url).await.expect("connect");
    let registry = Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Int)
                .field("title", FieldType::Text)
                .primary_key(["id"]),
        )
        .collection(
            CollectionDef::new("gone")
                .field("id", FieldType::Int)
                .primary_key(["id"]),
        )
        .build()
        .expect("registry");
    let storage = Storage::builder(registry, backend.clone())
        .build()
        .await
        .expect("prepare");
    // A table dropped behind storex's back: reading it is an error of the database.
    backend
        .connection()
        .execute_unprepared("DROP TABLE gone")
        .await
        .expect("drop");
    let tx = storage.begin().await.expect("begin");
    tx.execute(create(1, "first")).await.expect("a note");
    tx.execute(Operation::count("gone", Filter::all()))
        .await
        .expect_err("the table is gone");
    let err = tx
        .execute(create(2, "second"))
        .await
        .expect_err("the transaction is aborted");
    assert!(matches!(err, Error::Transaction { .. }), "{err}");
    let err = tx
        .commit()
        .await
        .expect_err("nothing of it can be committed");
    assert!(matches!(err, Error::Transaction { .. }), "{err}");
    assert_eq!(count(&storage).await, 0);
}

/// An operation cancelled midway (its future dropped by a timeout) leaves the transaction
/// with what it did so far in a savepoint still open: the transaction is refused from then
/// on, and its commit writes nothing of it, not half a batch.
#[tokio::test]
async fn a_transaction_whose_operation_was_cancelled_midway_writes_nothing() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let storage =
        storage_on(SeaOrmBackend::open_sqlite_file(dir.path().join("notes.db")).await).await;
    let tx = storage.begin().await.expect("begin");
    tx.execute(create(1, "first")).await.expect("a note");
    // Creates and updates in turn: a statement each, far more than run in the time given.
    let steps = (0..25_000)
        .flat_map(|i| {
            [
                BatchStep::new(create(1_000 + i, "new")),
                BatchStep::new(Operation::update_by_pk(
                    "note",
                    1,
                    object! { "title" => format!("edit {i}") },
                )),
            ]
        })
        .collect();
    let cut = tokio::time::timeout(
        std::time::Duration::from_millis(50),
        tx.execute(Operation::Batch { steps }),
    )
    .await;
    assert!(
        cut.is_err(),
        "the batch must still run when it is cancelled"
    );
    let err = tx
        .execute(create(2, "after"))
        .await
        .expect_err("refused after a cancelled operation");
    assert!(matches!(err, Error::Transaction { .. }), "{err}");
    let err = tx.commit().await.expect_err("its commit must fail");
    assert!(matches!(err, Error::Transaction { .. }), "{err}");
    assert_eq!(
        count(&storage).await,
        0,
        "nothing of the transaction is written"
    );
    // The connection serves the next transactions.
    let tx = storage.begin().await.expect("begin");
    tx.execute(create(3, "later")).await.expect("a later note");
    tx.commit().await.expect("commit");
    assert_eq!(count(&storage).await, 1);
}
