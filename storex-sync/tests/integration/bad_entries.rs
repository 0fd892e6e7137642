//! Entries a device cannot apply are held and reported, and never stop the others: a create
//! the database refuses (a unique index already filled here), a key of the wrong type, a
//! create without a required field. A database failure that may pass holds nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use storex_core::uuid::Uuid;
use storex_core::{
    object, BackendFeatures, BatchStep, BoxFuture, CollectionDef, Error as CoreError, FieldType,
    Filter, MemoryBackend, Object, Operation, Outcome, Pk, Registry, Result as CoreResult,
    StorageBackend, Transaction,
};
use storex_sync::{
    Clock, DeviceId, EntryOp, Hlc, HoldReason, LogEntry, SyncDevice, SyncOptions, STATE_COLLECTION,
};

fn registry() -> Registry {
    Registry::builder()
        .collection(
            CollectionDef::new("account")
                .field("id", FieldType::Uuid)
                .field("email", FieldType::Text)
                .primary_key(["id"])
                .unique_index(["email"]),
        )
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Int)
                .field("title", FieldType::Text)
                .primary_key(["id"]),
        )
        .build()
        .expect("registry")
}

async fn device() -> SyncDevice {
    SyncDevice::open(
        registry(),
        Arc::new(MemoryBackend::new()),
        Clock::new(DeviceId::random()),
        SyncOptions::default(),
    )
    .await
    .expect("device")
}

fn remote(collection: &str, pk: Pk, fields: Object) -> LogEntry {
    let device = DeviceId::random();
    LogEntry {
        id: Uuid::now_v7(),
        device,
        hlc: Hlc {
            millis: 1_000,
            counter: 0,
            device,
        },
        collection: collection.into(),
        pk,
        op: EntryOp::Create,
        fields,
        schema_version: 1,
    }
}

fn note(id: i64) -> LogEntry {
    remote(
        "note",
        Pk::from(id),
        object! { "id" => id, "title" => format!("n{id}") },
    )
}

#[tokio::test]
async fn a_create_the_database_refuses_is_held_and_the_rest_of_the_batch_applies() {
    let here = device().await;
    here.storage()
        .create("account", object! { "email" => "a@x" })
        .await
        .expect("own account");
    let theirs = Uuid::now_v7();
    let mut batch: Vec<LogEntry> = (1..=6).map(note).collect();
    batch.insert(
        3,
        remote(
            "account",
            Pk::from(theirs),
            object! { "id" => theirs, "email" => "a@x" },
        ),
    );
    let cursor = BatchStep::new(Operation::create(
        STATE_COLLECTION,
        object! { "key" => "test", "value" => 42 },
    ));
    let report = here
        .integrate_with(batch.clone(), vec![cursor])
        .await
        .expect("the batch is not blocked");
    assert_eq!(report.received, 7);
    assert_eq!(report.integrated, 6, "{report:?}");
    assert_eq!(report.held.len(), 1);
    assert_eq!(report.held[0].0, batch[3].id);
    assert!(
        matches!(&report.held[0].1, HoldReason::ApplyFailed { problem } if problem.contains("duplicate key in `account`")),
        "{report:?}"
    );
    assert_eq!(
        here.storage()
            .count("note", Filter::all())
            .await
            .expect("count"),
        6
    );
    assert_eq!(
        here.storage()
            .count(STATE_COLLECTION, Filter::all().eq("key", "test"))
            .await
            .expect("count"),
        1,
        "the caller's steps landed"
    );
    assert_eq!(
        here.log().held().await.expect("held").entries,
        vec![batch[3].clone()]
    );

    let again = here.integrate(batch).await.expect("again");
    assert_eq!((again.duplicates, again.integrated), (7, 0), "{again:?}");
    let retried = here.retry_held().await.expect("retry");
    assert_eq!(retried.held.len(), 1, "still refused, and reported");
}

#[tokio::test]
async fn an_entry_reusing_a_held_entrys_id_for_another_object_is_a_duplicate_not_a_failure() {
    let here = device().await;
    here.storage()
        .create("account", object! { "email" => "a@x" })
        .await
        .expect("own account");
    // Held for an unknown collection, and for a unique index this device already fills.
    let unknown = remote("gadget", Pk::from(1), object! { "id" => 1 });
    let theirs = Uuid::now_v7();
    let refused = remote(
        "account",
        Pk::from(theirs),
        object! { "id" => theirs, "email" => "a@x" },
    );
    let first = here
        .integrate(vec![unknown.clone(), refused.clone()])
        .await
        .expect("held");
    assert_eq!(first.held.len(), 2, "{first:?}");
    // A peer sends the same ids again for other objects, which would be held too.
    let again_unknown = LogEntry {
        pk: Pk::from(2),
        fields: object! { "id" => 2 },
        ..unknown
    };
    let other = Uuid::now_v7();
    let again_refused = LogEntry {
        pk: Pk::from(other),
        fields: object! { "id" => other, "email" => "a@x" },
        ..refused
    };
    for entry in [again_unknown, again_refused] {
        let report = here
            .integrate(vec![entry])
            .await
            .expect("not blocked by the log's key");
        assert_eq!((report.duplicates, report.held.len()), (1, 0), "{report:?}");
    }
    assert_eq!(here.log().held().await.expect("held").entries.len(), 2);
    // One entry twice in a batch, held: stored once.
    let twice = remote("gadget", Pk::from(3), object! { "id" => 3 });
    let report = here
        .integrate(vec![twice.clone(), twice])
        .await
        .expect("not blocked by the log's key");
    assert_eq!((report.duplicates, report.held.len()), (1, 1), "{report:?}");
    assert_eq!(here.log().held().await.expect("held").entries.len(), 3);
}

#[tokio::test]
async fn entries_with_a_bad_key_or_without_a_required_field_are_held() {
    let here = device().await;
    let wrong_key = remote(
        "note",
        Pk::from("not a number"),
        object! { "id" => "not a number", "title" => "t" },
    );
    let no_title = remote("note", Pk::from(7), object! { "id" => 7 });
    let other_key = remote("note", Pk::from(8), object! { "id" => 9, "title" => "t" });
    let report = here
        .integrate(vec![
            note(1),
            wrong_key.clone(),
            no_title.clone(),
            other_key.clone(),
        ])
        .await
        .expect("not blocked");
    assert_eq!(report.integrated, 1, "{report:?}");
    let held: Vec<Uuid> = report.held.iter().map(|(id, _)| *id).collect();
    assert_eq!(held.len(), 3, "{report:?}");
    for entry in [&wrong_key, &no_title, &other_key] {
        assert!(held.contains(&entry.id), "{report:?}");
    }
    assert!(report
        .held
        .iter()
        .all(|(_, reason)| matches!(reason, HoldReason::InvalidValue { .. })));
    assert_eq!(
        here.storage()
            .count("note", Filter::all())
            .await
            .expect("count"),
        1
    );
}

/// A change carrying a value no write may store (a NUL in text, written by an older
/// version) is held on arrival, so devices that got it before or after its object's create
/// agree: before, the one that got it first kept it in the object's versions, its create then
/// failed, and the object existed on one device and not on the other.
#[tokio::test]
async fn a_value_no_write_may_store_is_held_whatever_came_before() {
    let create = note(1);
    let mut update = remote("note", Pk::from(1i64), object! { "title" => "x\0y" });
    update.op = EntryOp::Update;
    update.hlc.millis = 2_000;
    let (first, second) = (device().await, device().await);
    let a = first.integrate(vec![create.clone()]).await.expect("create");
    assert_eq!(a.integrated, 1, "{a:?}");
    first.integrate(vec![update.clone()]).await.expect("update");
    second
        .integrate(vec![update.clone()])
        .await
        .expect("update");
    second.integrate(vec![create]).await.expect("create");
    for here in [&first, &second] {
        let row = here.storage().find_by_pk("note", 1i64).await.expect("read");
        assert_eq!(
            row.map(|r| r["title"].clone()),
            Some(storex_core::Value::from("n1"))
        );
        let held = here.log().held().await.expect("held").entries;
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(held[0].id, update.id);
    }
}

#[tokio::test]
async fn an_entry_for_syncs_own_collections_is_held_and_changes_nothing() {
    let here = device().await;
    let cursor = object! { "key" => "cursor", "value" => 1_000_000 };
    let theirs = remote(STATE_COLLECTION, Pk::from("cursor"), cursor);
    let report = here
        .integrate(vec![theirs.clone(), note(1)])
        .await
        .expect("not blocked");
    assert_eq!(report.integrated, 1, "{report:?}");
    assert_eq!(
        report.held,
        vec![(theirs.id, HoldReason::SyncCollection)],
        "{report:?}"
    );
    let state = here
        .storage()
        .count(STATE_COLLECTION, Filter::all().eq("key", "cursor"))
        .await
        .expect("count");
    assert_eq!(state, 0, "sync's state is this device's own");
}

/// A memory backend whose disk fails while armed: every batch in a transaction fails as a
/// database failure would (transient), at its first step.
#[derive(Debug, Default)]
struct FailingDisk {
    inner: MemoryBackend,
    failing: Arc<AtomicBool>,
}

#[derive(Debug)]
struct FailingTransaction {
    inner: Box<dyn Transaction>,
    failing: Arc<AtomicBool>,
}

impl StorageBackend for FailingDisk {
    fn name(&self) -> &'static str {
        "failing-disk"
    }

    fn features(&self) -> BackendFeatures {
        self.inner.features()
    }

    fn prepare<'a>(&'a self, registry: &'a Arc<Registry>) -> BoxFuture<'a, CoreResult<()>> {
        self.inner.prepare(registry)
    }

    fn execute(&self, op: Operation) -> BoxFuture<'_, CoreResult<Outcome>> {
        self.inner.execute(op)
    }

    fn begin(&self) -> BoxFuture<'_, CoreResult<Box<dyn Transaction>>> {
        Box::pin(async move {
            let inner = self.inner.begin().await?;
            Ok(Box::new(FailingTransaction {
                inner,
                failing: self.failing.clone(),
            }) as Box<dyn Transaction>)
        })
    }
}

impl Transaction for FailingTransaction {
    fn execute(&self, op: Operation) -> BoxFuture<'_, CoreResult<Outcome>> {
        if matches!(op, Operation::Batch { .. }) && self.failing.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(CoreError::BatchStep {
                    step: 0,
                    source: Box::new(CoreError::backend("failing-disk", "disk I/O error")),
                })
            });
        }
        self.inner.execute(op)
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, CoreResult<()>> {
        self.inner.commit()
    }

    fn rollback(self: Box<Self>) -> BoxFuture<'static, CoreResult<()>> {
        self.inner.rollback()
    }
}

#[tokio::test]
async fn a_database_failure_that_may_pass_holds_nothing_and_the_next_attempt_applies() {
    let failing = Arc::new(AtomicBool::new(true));
    let disk = FailingDisk {
        inner: MemoryBackend::new(),
        failing: failing.clone(),
    };
    let here = SyncDevice::open(
        registry(),
        Arc::new(disk),
        Clock::new(DeviceId::random()),
        SyncOptions::default(),
    )
    .await
    .expect("device");
    let batch: Vec<LogEntry> = (1..=6).map(note).collect();
    let err = here
        .integrate(batch.clone())
        .await
        .expect_err("the disk failed");
    assert!(
        storex_core::error_chain(&err).contains("disk I/O error"),
        "{err}"
    );
    assert!(
        here.log().is_empty().await.expect("log"),
        "nothing held, nothing applied"
    );

    failing.store(false, Ordering::SeqCst);
    let report = here.integrate(batch).await.expect("the disk is back");
    assert_eq!((report.integrated, report.held.len()), (6, 0), "{report:?}");
    assert_eq!(
        here.storage()
            .count("note", Filter::all())
            .await
            .expect("count"),
        6
    );
}

#[tokio::test]
async fn on_sqlite_an_entry_a_deferred_foreign_key_refuses_at_commit_is_held() {
    an_entry_a_foreign_key_refuses_is_held("DEFERRABLE INITIALLY DEFERRED").await;
}

#[tokio::test]
async fn on_sqlite_an_entry_an_immediate_foreign_key_refuses_is_held_and_parents_go_first() {
    an_entry_a_foreign_key_refuses_is_held("").await;
}

/// Entries for an app table whose foreign key (checked as `timing` says) one of them breaks:
/// that one is held, the others apply, children after their parents.
async fn an_entry_a_foreign_key_refuses_is_held(timing: &str) {
    use storex_seaorm::sea_orm::ConnectionTrait;
    let dir = tempfile::tempdir().expect("temporary directory");
    let backend = storex_seaorm::SeaOrmBackend::open_sqlite_file(dir.path().join("app.db"))
        .await
        .expect("open");
    // The app's own tables, with a foreign key storex does not know of.
    for table in [
        "CREATE TABLE shelf (id BIGINT PRIMARY KEY NOT NULL)".to_owned(),
        format!(
            "CREATE TABLE book (id BIGINT PRIMARY KEY NOT NULL, \
             shelf BIGINT NOT NULL REFERENCES shelf (id) {timing})"
        ),
    ] {
        backend
            .connection()
            .execute_unprepared(&table)
            .await
            .expect("the app's table");
    }
    let registry = Registry::builder()
        .collection(
            CollectionDef::new("shelf")
                .field("id", FieldType::Int)
                .primary_key(["id"]),
        )
        .collection(
            CollectionDef::new("book")
                .field("id", FieldType::Int)
                .field("shelf", FieldType::Int)
                .primary_key(["id"]),
        )
        .build()
        .expect("registry");
    let here = SyncDevice::open(
        registry,
        Arc::new(backend),
        Clock::new(DeviceId::random()),
        SyncOptions::default(),
    )
    .await
    .expect("device");
    let book = |id: i64, shelf: i64| {
        remote(
            "book",
            Pk::from(id),
            object! { "id" => id, "shelf" => shelf },
        )
    };
    // In the order the other devices made them (and sent them in): the shelf first.
    let mut batch = vec![
        remote("shelf", Pk::from(1), object! { "id" => 1 }),
        book(1, 1),
        book(2, 9), // no shelf 9, here or anywhere
        book(3, 1),
    ];
    for (n, entry) in batch.iter_mut().enumerate() {
        entry.hlc.millis += n as u64;
    }
    let report = here.integrate(batch.clone()).await.expect("not blocked");
    assert_eq!(report.integrated, 3, "{report:?}");
    assert_eq!(report.held.len(), 1, "{report:?}");
    assert_eq!(report.held[0].0, batch[2].id);
    assert!(
        matches!(&report.held[0].1, HoldReason::ApplyFailed { .. }),
        "{report:?}"
    );
    assert_eq!(
        here.storage()
            .count("book", Filter::all())
            .await
            .expect("count"),
        2
    );
}
