//! The sync-logging middleware: what each write logs, what it does not, and that a write and
//! its entries land together or not at all (checked on a SQLite file, reopened).

use std::sync::Arc;

use storex_core::uuid::Uuid;
use storex_core::{
    object, BatchStep, BoxFuture, CollectionDef, FieldType, Filter, MemoryBackend, Middleware,
    Next, Operation, Outcome, Pk, Query, Registry, Replacement, Result as CoreResult, Storage,
    StorageBackend, UuidPkMiddleware, Value,
};
use storex_seaorm::SeaOrmBackend;
use storex_sync::{
    with_sync_log, ClientSyncLog, Clock, ContinuousOptions, ContinuousSync, DeviceId, EntryOp,
    LogEntry, ManualClock, MemorySharedLog, SharedSyncLog, StoredEntry, SyncDevice,
    SyncLoggingMiddleware, SyncOptions, JOURNAL_COLLECTION,
};

fn registry() -> Registry {
    Registry::builder()
        .collection(
            CollectionDef::new("notebook")
                .field("id", FieldType::Uuid)
                .field("name", FieldType::Text)
                .primary_key(["id"]),
        )
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Uuid)
                .field("notebook_id", FieldType::Uuid)
                .field("title", FieldType::Text)
                .optional_field("stars", FieldType::Int)
                .primary_key(["id"])
                .child_of("notebook", "notebook_id")
                .version(3),
        )
        .collection(
            CollectionDef::new("draft")
                .field("id", FieldType::Uuid)
                .field("text", FieldType::Text)
                .primary_key(["id"]),
        )
        .build()
        .expect("valid registry")
}

async fn device() -> SyncDevice {
    SyncDevice::open(
        registry(),
        Arc::new(MemoryBackend::new()),
        Clock::new(DeviceId::random()),
        SyncOptions::default().exclude("draft"),
    )
    .await
    .expect("open")
}

/// A device on the SQLite file `device.db` in `dir`, as `id`, with `options`.
async fn sqlite_device(dir: &std::path::Path, id: DeviceId, options: SyncOptions) -> SyncDevice {
    let backend = SeaOrmBackend::open_sqlite_file(dir.join("device.db"))
        .await
        .expect("open");
    SyncDevice::open(
        registry(),
        Arc::new(backend) as Arc<dyn StorageBackend>,
        Clock::new(id),
        options,
    )
    .await
    .expect("device")
}

async fn entries(d: &SyncDevice) -> Vec<LogEntry> {
    d.log()
        .all()
        .await
        .expect("log")
        .entries
        .into_iter()
        .map(|s| s.entry)
        .collect()
}

async fn notebook(d: &SyncDevice) -> Value {
    let pk = d
        .storage()
        .create("notebook", object! { "name" => "home" })
        .await
        .expect("create");
    pk.single().cloned().expect("one-field key")
}

#[tokio::test]
async fn a_create_is_logged_with_every_field_it_wrote() {
    let d = device().await;
    let book = notebook(&d).await;
    let log = d.log().all().await.expect("log").entries;
    assert_eq!(log.len(), 1);
    let StoredEntry {
        entry,
        shared,
        integrated,
    } = &log[0];
    assert_eq!(
        (entry.op, entry.collection.as_str()),
        (EntryOp::Create, "notebook")
    );
    assert_eq!(entry.pk, Pk(vec![book.clone()]));
    assert_eq!(entry.fields, object! { "id" => book, "name" => "home" });
    assert_eq!(entry.device, d.device());
    assert_eq!(entry.schema_version, 1);
    assert!(!shared && *integrated);
}

#[tokio::test]
async fn updates_and_deletes_by_key_are_logged() {
    let d = device().await;
    let book = notebook(&d).await;
    // Indexed (as a sync would) before the delete: a create whose row is gone by then
    // leaves no entry (the journal's tests show it).
    d.log().index_journal().await.expect("indexed");
    d.storage()
        .update_by_pk("notebook", book.clone(), object! { "name" => "work" })
        .await
        .expect("update");
    d.storage()
        .delete_by_pk("notebook", book.clone())
        .await
        .expect("delete");
    let log = entries(&d).await;
    let ops: Vec<EntryOp> = log.iter().map(|e| e.op).collect();
    assert_eq!(ops, vec![EntryOp::Create, EntryOp::Update, EntryOp::Delete]);
    assert_eq!(log[1].fields, object! { "name" => "work" });
    assert!(log[2].fields.is_empty());
    assert!(
        log[0].hlc < log[1].hlc && log[1].hlc < log[2].hlc,
        "entries follow the order of the writes"
    );
}

#[tokio::test]
async fn a_create_changed_before_the_next_sync_sends_the_rows_values_and_converges() {
    let a = device().await;
    let book = notebook(&a).await;
    let note = a
        .storage()
        .create(
            "note",
            object! { "notebook_id" => book.clone(), "title" => "first" },
        )
        .await
        .expect("create");
    a.storage()
        .update_by_pk("note", note.clone(), object! { "title" => "second" })
        .await
        .expect("update");
    a.storage()
        .delete_by_pk("notebook", book)
        .await
        .expect("delete");
    // Nothing read the log in between: every write is still in the journal.
    let log = entries(&a).await;
    let summary: Vec<(EntryOp, Option<&Value>)> =
        log.iter().map(|e| (e.op, e.fields.get("title"))).collect();
    let second = Value::from("second");
    assert_eq!(
        summary,
        vec![
            (EntryOp::Create, Some(&second)),
            (EntryOp::Update, Some(&second)),
            (EntryOp::Delete, None),
        ],
        "the note's create carries its row as indexed; the notebook's create, whose row \
         a later delete removed, is left out"
    );
    let b = device().await;
    b.integrate(log).await.expect("integrate");
    for collection in ["note", "notebook"] {
        assert_eq!(
            a.digest(collection).await.expect("digest"),
            b.digest(collection).await.expect("digest"),
            "{collection}"
        );
    }
}

#[tokio::test]
async fn a_batch_logs_each_step_with_its_placeholders_resolved() {
    let d = device().await;
    let outcomes = d
        .storage()
        .batch(vec![
            BatchStep::new(Operation::create("notebook", object! { "name" => "home" }))
                .placeholder("book"),
            BatchStep::new(Operation::create("note", object! { "title" => "milk" }))
                .replace(Replacement::field("notebook_id", "book")),
            BatchStep::new(Operation::create(
                "draft",
                object! { "text" => "local only" },
            )),
        ])
        .await
        .expect("batch");
    assert_eq!(
        outcomes.len(),
        3,
        "the app sees one outcome per step of its own"
    );
    let book = outcomes[0]
        .created_pk()
        .and_then(Pk::single)
        .cloned()
        .expect("key");
    let log = entries(&d).await;
    assert_eq!(log.len(), 2, "the draft is excluded");
    assert_eq!(log[1].collection, "note");
    assert_eq!(
        log[1].fields["notebook_id"], book,
        "the placeholder's value, not a reference"
    );
    assert_eq!(log[1].schema_version, 3);
}

#[tokio::test]
async fn an_update_where_logs_exactly_the_objects_it_changed() {
    let d = device().await;
    let book = notebook(&d).await;
    for (title, stars) in [("a", 1), ("b", 5), ("c", 5)] {
        d.storage()
            .create(
                "note",
                object! { "notebook_id" => book.clone(), "title" => title, "stars" => stars },
            )
            .await
            .expect("create");
    }
    let updated = d
        .storage()
        .update_where(
            "note",
            Filter::all().eq("stars", 5),
            object! { "title" => "starred" },
        )
        .await
        .expect("update");
    assert_eq!(updated, 2);
    let starred: Vec<Pk> = d
        .storage()
        .find_many("note", Query::new(Filter::all().eq("stars", 5)))
        .await
        .expect("find")
        .iter()
        .map(|o| Pk(vec![o["id"].clone()]))
        .collect();
    let updates: Vec<LogEntry> = entries(&d)
        .await
        .into_iter()
        .filter(|e| e.op == EntryOp::Update)
        .collect();
    assert_eq!(updates.len(), 2);
    for e in &updates {
        assert!(starred.contains(&e.pk));
        assert_eq!(e.fields, object! { "title" => "starred" });
    }
}

#[tokio::test]
async fn a_delete_where_logs_each_deleted_object() {
    let d = device().await;
    let book = notebook(&d).await;
    for title in ["a", "b", "c"] {
        d.storage()
            .create(
                "note",
                object! { "notebook_id" => book.clone(), "title" => title },
            )
            .await
            .expect("create");
    }
    let deleted = d
        .storage()
        .delete_where("note", Filter::all().ne("title", "b"))
        .await
        .expect("delete");
    assert_eq!(deleted, 2);
    let deletes = entries(&d)
        .await
        .into_iter()
        .filter(|e| e.op == EntryOp::Delete)
        .count();
    assert_eq!(deletes, 2);
}

#[tokio::test]
async fn a_where_write_in_a_batch_sees_the_earlier_steps() {
    let d = device().await;
    let book = notebook(&d).await;
    let outcomes = d
        .storage()
        .batch(vec![
            BatchStep::new(Operation::create(
                "note",
                object! { "notebook_id" => book.clone(), "title" => "new" },
            )),
            BatchStep::new(Operation::update_where(
                "note",
                Filter::all().eq("title", "new"),
                object! { "stars" => 3 },
            )),
            BatchStep::new(Operation::create("notebook", object! { "name" => "after" })),
        ])
        .await
        .expect("batch");
    assert_eq!(outcomes[1], Outcome::Updated { count: 1 });
    let ops: Vec<(String, EntryOp)> = entries(&d)
        .await
        .into_iter()
        .map(|e| (e.collection, e.op))
        .collect();
    assert_eq!(
        ops,
        vec![
            ("notebook".into(), EntryOp::Create),
            ("note".into(), EntryOp::Create),
            ("note".into(), EntryOp::Update),
            ("notebook".into(), EntryOp::Create),
        ]
    );
}

#[tokio::test]
async fn reads_and_excluded_collections_are_not_logged() {
    let d = device().await;
    d.storage()
        .create("draft", object! { "text" => "x" })
        .await
        .expect("create");
    d.storage()
        .update_where("draft", Filter::all(), object! { "text" => "y" })
        .await
        .expect("update");
    d.storage()
        .count("draft", Filter::all())
        .await
        .expect("count");
    assert!(d.log().is_empty().await.expect("len"));
}

#[tokio::test]
async fn excluding_a_collection_the_registry_does_not_define_is_refused() {
    let opened = SyncDevice::open(
        registry(),
        Arc::new(MemoryBackend::new()),
        Clock::new(DeviceId::random()),
        SyncOptions::default().exclude("drafts"),
    )
    .await;
    let err = opened.expect_err("a misspelt exclusion");
    assert!(
        matches!(&err, storex_sync::Error::ExcludedUnknown { collection } if collection == "drafts"),
        "{err:?}"
    );
    assert!(err.to_string().contains("misspelt"), "{err}");
}

/// A put (create, or replace every field) is logged as a create, alone or in a batch: a
/// create of an object that exists replaces it wherever its timestamp wins. On an excluded
/// collection it runs and logs nothing.
#[tokio::test]
async fn a_put_on_a_synced_collection_is_logged_as_a_create_of_every_field() {
    let d = device().await;
    let book = notebook(&d).await;
    d.storage()
        .put(
            "notebook",
            object! { "id" => book.clone(), "name" => "renamed" },
        )
        .await
        .expect("put over the notebook");
    let note = Uuid::now_v7();
    let put_note = object! {
        "id" => note, "notebook_id" => book.clone(), "title" => "t", "stars" => 2
    };
    d.storage()
        .batch(vec![
            BatchStep::new(Operation::create("draft", object! { "text" => "x" })),
            BatchStep::new(Operation::put("note", put_note)),
        ])
        .await
        .expect("a batch with a put");
    // Put again without its optional field: it is null now, here and in the entry.
    let again = object! { "id" => note, "notebook_id" => book.clone(), "title" => "u" };
    d.storage().put("note", again).await.expect("put again");
    let found = d
        .storage()
        .find_by_pk("note", note)
        .await
        .expect("find")
        .expect("the note");
    assert_eq!(found["stars"], Value::Null);
    let log = entries(&d).await;
    let ops: Vec<(&str, EntryOp)> = log.iter().map(|e| (e.collection.as_str(), e.op)).collect();
    assert_eq!(
        ops,
        vec![
            ("notebook", EntryOp::Create),
            ("notebook", EntryOp::Create),
            ("note", EntryOp::Create),
            ("note", EntryOp::Create),
        ]
    );
    assert_eq!(log[1].fields["name"], Value::from("renamed"));
    assert_eq!(log[3].fields["title"], Value::from("u"));
    assert_eq!(log[3].fields.get("stars"), Some(&Value::Null));
    // Local-only data may be put, and logs nothing.
    let draft = Uuid::now_v7();
    d.storage()
        .put("draft", object! { "id" => draft, "text" => "x" })
        .await
        .expect("put on an excluded collection");
    d.storage()
        .put("draft", object! { "id" => draft, "text" => "y" })
        .await
        .expect("put again");
    let found = d
        .storage()
        .find_by_pk("draft", draft)
        .await
        .expect("find")
        .expect("the draft");
    assert_eq!(found["text"], Value::from("y"));
    assert_eq!(d.log().len().await.expect("len"), 4);
}

#[tokio::test]
async fn a_failed_write_logs_nothing() {
    let d = device().await;
    let book = notebook(&d).await;
    let err = d
        .storage()
        .create("notebook", object! { "id" => book, "name" => "again" })
        .await;
    assert!(err.is_err());
    assert_eq!(d.log().len().await.expect("len"), 1);
}

#[tokio::test]
async fn changes_applied_by_sync_are_not_logged_again() {
    let (a, b) = (device().await, device().await);
    notebook(&a).await;
    let report = b
        .integrate(a.log().unshared(10).await.expect("unshared"))
        .await
        .expect("integrate");
    assert_eq!((report.integrated, report.operations), (1, 1));
    // The received entry went into the versions index, not the log.
    assert!(b.log().all().await.expect("log").entries.is_empty());
    assert!(
        b.log().unshared(10).await.expect("unshared").is_empty(),
        "nothing of b's own to push"
    );
}

/// Makes the sync log's write fail: gives every new journal record (alone or in a batch) the
/// id of one already stored.
#[derive(Debug)]
struct BreakLogWrites {
    taken_id: Uuid,
}

impl BreakLogWrites {
    fn break_record(&self, op: &mut Operation) {
        if let Operation::Create { collection, object } = op {
            if collection == JOURNAL_COLLECTION {
                object.insert("id".into(), self.taken_id.into());
            }
        }
    }
}

impl Middleware for BreakLogWrites {
    fn process<'a>(
        &'a self,
        mut op: Operation,
        next: Next<'a>,
    ) -> BoxFuture<'a, CoreResult<Outcome>> {
        match &mut op {
            Operation::Batch { steps } => {
                for step in steps {
                    self.break_record(&mut step.operation);
                }
            }
            single => self.break_record(single),
        }
        next.run(op)
    }
}

async fn sqlite_storage(path: &std::path::Path, saboteur: Option<BreakLogWrites>) -> Storage {
    let backend = SeaOrmBackend::open_sqlite_file(path).await.expect("open");
    let mut builder = Storage::builder(with_sync_log(&registry()).expect("registry"), backend)
        .with(UuidPkMiddleware::new())
        .with(SyncLoggingMiddleware::new(Arc::new(Clock::new(
            DeviceId::random(),
        ))));
    if let Some(saboteur) = saboteur {
        builder = builder.with(saboteur);
    }
    builder.build().await.expect("storage")
}

#[tokio::test]
async fn a_tool_without_the_apps_collections_neither_indexes_nor_loses_pending_creates() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("device.db");
    let app = sqlite_storage(&path, None).await;
    app.create("notebook", object! { "name" => "home" })
        .await
        .expect("create");
    // A tool opened on sync's tables alone (like `storex log`).
    let tool = Storage::builder(
        with_sync_log(&Registry::default()).expect("registry"),
        SeaOrmBackend::open_sqlite_file(&path).await.expect("open"),
    )
    .build()
    .await
    .expect("tool storage");
    let read = ClientSyncLog::new(tool.clone())
        .all()
        .await
        .expect("the record is passed over");
    assert!(read.entries.is_empty(), "{read:?}");
    let view = ClientSyncLog::inspect(tool);
    assert_eq!(view.journal_records().await.expect("count"), 1, "kept");
    // The app's own storage indexes it, values and all.
    let log = ClientSyncLog::new(app).all().await.expect("log").entries;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].entry.fields["name"], Value::from("home"));
    assert_eq!(view.journal_records().await.expect("count"), 0);
}

/// An app whose new version dropped a collection it had creates in, not pushed yet: the
/// device still syncs the rest, each sync says why those creates wait, and they stay in the
/// journal (a version that defines the collection again syncs them).
#[tokio::test]
async fn an_app_that_dropped_a_collection_with_unsynced_creates_still_syncs_the_rest() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("device.db");
    // The same app but for its notebooks (and the notes in them).
    let without_notebooks = || {
        let all = registry();
        let draft = all.collection("draft").expect("draft").clone();
        Registry::builder()
            .collection(draft)
            .build()
            .expect("registry")
    };
    let shared: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let open = |registry: Registry, path: std::path::PathBuf, id: DeviceId| {
        let shared = shared.clone();
        async move {
            let device = SyncDevice::open(
                registry,
                Arc::new(SeaOrmBackend::open_sqlite_file(&path).await.expect("open")),
                Clock::new(id),
                SyncOptions::default(),
            )
            .await
            .expect("opening reads the journal's timestamps, it does not index");
            ContinuousSync::new(device, shared, ContinuousOptions::default())
        }
    };
    let id = shared.create_device("ann").await.expect("device");
    let old_app = open(registry(), path.clone(), id).await;
    old_app
        .device()
        .storage()
        .create("notebook", object! { "name" => "home" })
        .await
        .expect("create");
    drop(old_app);
    let moved = open(without_notebooks(), path.clone(), id).await;
    moved
        .device()
        .storage()
        .create("draft", object! { "text" => "after the update" })
        .await
        .expect("draft");
    let report = moved.sync_once().await.expect("sync");
    assert_eq!(report.pushed, 1, "{report:?}");
    assert!(
        report.problems.iter().any(|p| p.contains("`notebook`")),
        "{report:?}"
    );
    assert_eq!(
        moved.device().log().journal_records().await.expect("count"),
        1,
        "kept"
    );
    // Another device sees the draft, and later the notebook from a version that has it.
    let other_id = shared.create_device("ann").await.expect("device");
    let other = open(registry(), dir.path().join("other.db"), other_id).await;
    other.sync_once().await.expect("sync");
    let drafts = other
        .device()
        .storage()
        .find_many("draft", Query::default());
    assert_eq!(drafts.await.expect("drafts").len(), 1);
    drop(moved);
    let back = open(registry(), path, id).await;
    let report = back.sync_once().await.expect("sync");
    assert_eq!(report.pushed, 1, "{report:?}");
    assert!(report.problems.is_empty(), "{report:?}");
    other.sync_once().await.expect("sync");
    let notebooks = other
        .device()
        .storage()
        .find_many("notebook", Query::default());
    assert_eq!(notebooks.await.expect("notebooks").len(), 1);
}

#[tokio::test]
async fn on_sqlite_a_failing_log_write_leaves_neither_data_nor_entries() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("device.db");
    let (book, taken_id) = {
        let storage = sqlite_storage(&path, None).await;
        let book = storage
            .create("notebook", object! { "name" => "home" })
            .await
            .expect("seed");
        // The seed's journal record, not indexed yet: a record reusing its id fails to land.
        let records = storage
            .find_many(JOURNAL_COLLECTION, Query::default())
            .await
            .expect("journal");
        let taken = records[0]["id"].as_uuid().expect("record id");
        (book.single().cloned().expect("key"), taken)
    };
    {
        let storage = sqlite_storage(&path, Some(BreakLogWrites { taken_id })).await;
        let create = storage
            .create(
                "note",
                object! { "notebook_id" => book.clone(), "title" => "lost" },
            )
            .await;
        assert!(create.is_err(), "the log write must fail");
        let update = storage
            .update_where("notebook", Filter::all(), object! { "name" => "renamed" })
            .await;
        assert!(
            update.is_err(),
            "the log write of a where-write must fail too"
        );
        let delete = storage.delete_by_pk("notebook", book.clone()).await;
        assert!(delete.is_err());
    }
    let reopened = sqlite_storage(&path, None).await;
    assert_eq!(
        reopened.count("note", Filter::all()).await.expect("count"),
        0,
        "no data without its entry"
    );
    let kept = reopened
        .find_by_pk("notebook", book)
        .await
        .expect("find")
        .expect("not deleted");
    assert_eq!(kept["name"], Value::from("home"), "not renamed");
    assert_eq!(
        ClientSyncLog::new(reopened).len().await.expect("len"),
        1,
        "no entry without its data"
    );
}

#[tokio::test]
async fn in_the_callers_transaction_a_failing_log_write_undoes_the_where_write() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("device.db");
    let taken_id = {
        let storage = sqlite_storage(&path, None).await;
        storage
            .create("notebook", object! { "name" => "home" })
            .await
            .expect("seed");
        let records = storage
            .find_many(JOURNAL_COLLECTION, Query::default())
            .await
            .expect("journal");
        records[0]["id"].as_uuid().expect("record id")
    };
    {
        let storage = sqlite_storage(&path, Some(BreakLogWrites { taken_id })).await;
        let tx = storage.begin().await.expect("begin");
        for op in [
            Operation::update_where("notebook", Filter::all(), object! { "name" => "renamed" }),
            Operation::update_where_returning_pks(
                "notebook",
                Filter::all(),
                object! { "name" => "renamed" },
            ),
            Operation::delete_where("notebook", Filter::all()),
        ] {
            let kind = op.kind();
            assert!(tx.execute(op).await.is_err(), "{kind}: the log write fails");
        }
        // The caller commits what it has: none of the failed writes is part of it.
        tx.commit().await.expect("commit");
    }
    let reopened = sqlite_storage(&path, None).await;
    let kept = reopened
        .find_many("notebook", Query::default())
        .await
        .expect("find");
    assert_eq!(kept.len(), 1, "not deleted");
    assert_eq!(kept[0]["name"], Value::from("home"), "not renamed");
    assert_eq!(
        ClientSyncLog::new(reopened).len().await.expect("len"),
        1,
        "the seed's entry only"
    );
}

#[tokio::test]
async fn where_writes_returning_keys_answer_with_and_log_exactly_those_objects() {
    let d = device().await;
    let book = notebook(&d).await;
    let mut notes = Vec::new();
    for stars in [1, 2, 1, 3] {
        let pk = d
            .storage()
            .create(
                "note",
                object! { "notebook_id" => book.clone(), "title" => "t", "stars" => stars },
            )
            .await
            .expect("create");
        notes.push(pk);
    }
    let sorted = |mut pks: Vec<Pk>| {
        pks.sort_by_key(|pk| format!("{pk}"));
        pks
    };
    let updated = d
        .storage()
        .update_where_returning_pks(
            "note",
            Filter::all().eq("stars", 1),
            object! { "title" => "one" },
        )
        .await
        .expect("update");
    assert_eq!(
        sorted(updated),
        sorted(vec![notes[0].clone(), notes[2].clone()])
    );
    let deleted = d
        .storage()
        .delete_where_returning_pks("note", Filter::all().gte("stars", 2))
        .await
        .expect("delete");
    assert_eq!(
        sorted(deleted),
        sorted(vec![notes[1].clone(), notes[3].clone()])
    );
    let log = entries(&d).await;
    let logged = |op: EntryOp| {
        sorted(
            log.iter()
                .filter(|e| e.op == op && e.collection == "note")
                .map(|e| e.pk.clone())
                .collect(),
        )
    };
    assert_eq!(
        logged(EntryOp::Update),
        sorted(vec![notes[0].clone(), notes[2].clone()])
    );
    assert_eq!(
        logged(EntryOp::Delete),
        sorted(vec![notes[1].clone(), notes[3].clone()])
    );
    let update = log
        .iter()
        .find(|e| e.op == EntryOp::Update)
        .expect("an update");
    assert_eq!(update.fields, object! { "title" => "one" });
}

#[tokio::test]
async fn the_clock_continues_after_a_restart_even_if_the_wall_clock_went_back() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("device.db");
    let device_id = DeviceId::random();
    let open = |millis: u64| {
        let path = path.clone();
        async move {
            let backend = SeaOrmBackend::open_sqlite_file(&path).await.expect("open");
            let clock = Clock::with_wall_clock(device_id, ManualClock::new(millis));
            SyncDevice::open(
                registry(),
                Arc::new(backend) as Arc<dyn StorageBackend>,
                clock,
                SyncOptions::default(),
            )
            .await
            .expect("device")
        }
    };
    let before = {
        let d = open(5_000_000).await;
        notebook(&d).await;
        d.log().max_hlc().await.expect("hlc").expect("an entry")
    };
    let d = open(1_000).await; // the wall clock is now far behind
    notebook(&d).await;
    let after = d.log().max_hlc().await.expect("hlc").expect("entries");
    assert!(after > before, "{after} must follow {before}");
}

#[tokio::test]
async fn a_where_write_on_more_than_a_thousand_objects_changes_and_logs_exactly_those() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let d = sqlite_device(dir.path(), DeviceId::random(), SyncOptions::default()).await;
    let book = notebook(&d).await;
    let steps: Vec<BatchStep> = (0..2_500)
        .map(|i| {
            BatchStep::new(Operation::create(
                "note",
                object! { "notebook_id" => book.clone(), "title" => format!("n{i}"), "stars" => i % 2 },
            ))
        })
        .collect();
    d.storage().batch(steps).await.expect("batch");
    let odd = Filter::all().eq("stars", 1);
    let updated = d
        .storage()
        .update_where("note", odd.clone(), object! { "title" => "odd" })
        .await
        .expect("update");
    assert_eq!(updated, 1_250);
    let titled = |title: &'static str| Filter::all().eq("title", title);
    assert_eq!(
        d.storage()
            .count("note", titled("odd"))
            .await
            .expect("count"),
        1_250
    );
    assert_eq!(
        d.storage()
            .count("note", Filter::all().eq("stars", 1).eq("title", "odd"))
            .await
            .expect("count"),
        1_250,
        "only the matched notes changed"
    );
    let deleted = d
        .storage()
        .delete_where("note", titled("odd"))
        .await
        .expect("delete");
    assert_eq!(deleted, 1_250);
    assert_eq!(
        d.storage()
            .count("note", Filter::all())
            .await
            .expect("count"),
        1_250
    );
    let log = entries(&d).await;
    let count = |op: EntryOp| log.iter().filter(|e| e.op == op).count();
    assert_eq!(count(EntryOp::Update), 1_250);
    assert_eq!(count(EntryOp::Delete), 1_250);
    let remaining: Vec<Pk> = d
        .storage()
        .find_many("note", Query::default())
        .await
        .expect("find")
        .iter()
        .map(|o| Pk(vec![o["id"].clone()]))
        .collect();
    for e in log.iter().filter(|e| e.op != EntryOp::Create) {
        assert!(
            !remaining.contains(&e.pk),
            "a logged change names a note that was not matched"
        );
    }
}

#[tokio::test]
async fn a_where_write_on_a_two_field_key_logs_each_object() {
    let registry = Registry::builder()
        .collection(
            CollectionDef::new("tag")
                .field("note", FieldType::Text)
                .field("name", FieldType::Text)
                .optional_field("color", FieldType::Text)
                .primary_key(["note", "name"]),
        )
        .build()
        .expect("registry");
    let d = SyncDevice::open(
        registry,
        Arc::new(MemoryBackend::new()),
        Clock::new(DeviceId::random()),
        SyncOptions::default(),
    )
    .await
    .expect("device");
    for (note, name) in [("a", "x"), ("a", "y"), ("b", "x")] {
        d.storage()
            .create("tag", object! { "note" => note, "name" => name })
            .await
            .expect("create");
    }
    let updated = d
        .storage()
        .update_where(
            "tag",
            Filter::all().eq("name", "x"),
            object! { "color" => "red" },
        )
        .await
        .expect("update");
    assert_eq!(updated, 2);
    let red = d
        .storage()
        .count("tag", Filter::all().eq("color", "red"))
        .await
        .expect("count");
    assert_eq!(red, 2);
    let deleted = d
        .storage()
        .delete_where("tag", Filter::all().eq("note", "a"))
        .await
        .expect("delete");
    assert_eq!(deleted, 2);
    let log = entries(&d).await;
    let pks = |op: EntryOp| {
        let mut pks: Vec<Pk> = log
            .iter()
            .filter(|e| e.op == op)
            .map(|e| e.pk.clone())
            .collect();
        pks.sort_by_key(|pk| format!("{pk:?}"));
        pks
    };
    let pk = |note: &str, name: &str| Pk(vec![note.into(), name.into()]);
    assert_eq!(pks(EntryOp::Update), vec![pk("a", "x"), pk("b", "x")]);
    assert_eq!(pks(EntryOp::Delete), vec![pk("a", "x"), pk("a", "y")]);
    let left = d
        .storage()
        .find_many("tag", Query::default())
        .await
        .expect("find");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["color"], Value::from("red"));
}

/// Holds the app's next logged write (as the logger passes it on, holding the write-order
/// lock, in the write's transaction) until released.
#[derive(Debug, Default)]
struct Gate {
    armed: std::sync::atomic::AtomicBool,
    reached: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl Middleware for Gate {
    fn process<'a>(&'a self, op: Operation, next: Next<'a>) -> BoxFuture<'a, CoreResult<Outcome>> {
        Box::pin(async move {
            let app_write = next.origin() == storex_core::Origin::App && op.is_write();
            if app_write && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                self.reached.notify_one();
                self.release.notified().await;
            }
            next.run(op).await
        })
    }
}

#[tokio::test]
async fn a_write_stamped_before_a_received_change_is_applied_cannot_land_after_it() {
    let gate = Arc::new(Gate::default());
    let here = SyncDevice::open(
        registry(),
        Arc::new(MemoryBackend::new()),
        Clock::new(DeviceId::random()),
        SyncOptions::default().with_middleware(gate.clone()),
    )
    .await
    .expect("device");
    let book = notebook(&here).await;
    let pk = here
        .storage()
        .create(
            "note",
            object! { "notebook_id" => book, "title" => "first" },
        )
        .await
        .expect("note");
    let Value::Uuid(id) = pk.0[0].clone() else {
        panic!("a uuid key")
    };
    // A change from a device whose clock runs two seconds ahead (within the allowed drift).
    let other = DeviceId::random();
    let now = here.clock().now();
    let remote = LogEntry {
        id: Uuid::now_v7(),
        device: other,
        hlc: storex_sync::Hlc {
            millis: now.millis + 2_000,
            counter: 0,
            device: other,
        },
        collection: "note".into(),
        pk: Pk(vec![Value::Uuid(id)]),
        op: EntryOp::Update,
        fields: object! { "title" => "remote" },
        schema_version: 3,
    };
    gate.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let writer = here.clone();
    let app = tokio::spawn(async move {
        writer
            .storage()
            .update_by_pk("note", id, object! { "title" => "app" })
            .await
    });
    gate.reached.notified().await;
    let receiver = here.clone();
    let received = tokio::spawn({
        let remote = remote.clone();
        async move { receiver.integrate(vec![remote]).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    gate.release.notify_one();
    app.await.expect("task").expect("app write");
    received.await.expect("task").expect("integrate");

    // What the device's entries say must be what it holds: a device that applies the same
    // entries (its own, in its log, and the received one) from scratch ends with the same
    // note.
    let fresh = device().await;
    let mut everything: Vec<LogEntry> = entries(&here).await;
    everything.push(remote);
    fresh.integrate(everything).await.expect("fresh device");
    assert_eq!(
        here.digest("note").await.expect("digest"),
        fresh.digest("note").await.expect("digest"),
        "the device disagrees with its own log"
    );
}

/// Reads the sync log while an app write passes through it.
#[derive(Debug, Default)]
struct ReadsTheLog {
    log: std::sync::OnceLock<ClientSyncLog>,
}

impl Middleware for ReadsTheLog {
    fn process<'a>(&'a self, op: Operation, next: Next<'a>) -> BoxFuture<'a, CoreResult<Outcome>> {
        Box::pin(async move {
            if let (true, Some(log)) = (op.is_write(), self.log.get()) {
                if let Err(e) = log.unshared_count().await {
                    return Err(storex_core::Error::invalid_operation(
                        "",
                        storex_core::error_chain(&e),
                    ));
                }
            }
            next.run(op).await
        })
    }
}

#[tokio::test]
async fn a_middleware_reading_the_log_during_a_write_gets_an_error_not_a_hang() {
    let reader = Arc::new(ReadsTheLog::default());
    let d = SyncDevice::open(
        registry(),
        Arc::new(MemoryBackend::new()),
        Clock::new(DeviceId::random()),
        SyncOptions::default()
            .exclude("draft")
            .with_middleware(reader.clone()),
    )
    .await
    .expect("open");
    reader.log.set(d.log().clone()).expect("set once");
    // An excluded collection's write takes no lock: the read is fine.
    d.storage()
        .create("draft", object! { "text" => "local" })
        .await
        .expect("unlogged write");
    let write = d.storage().create("notebook", object! { "name" => "n" });
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), write)
        .await
        .expect("the write must not wait for itself");
    let problem = storex_core::error_chain(&outcome.expect_err("refused"));
    assert!(problem.contains("from inside a sync write"), "{problem}");
    assert_eq!(
        d.storage()
            .count("notebook", Filter::all())
            .await
            .expect("count"),
        0
    );
    assert_eq!(d.log().journal_records().await.expect("records"), 0);
    // Outside a write the same read works.
    assert_eq!(d.log().unshared_count().await.expect("count"), 0);
}

#[tokio::test]
async fn a_batch_with_a_where_write_is_whole_or_nothing_and_names_its_failing_step() {
    let d = device().await;
    let book = notebook(&d).await;
    let batch = || Operation::Batch {
        steps: vec![
            BatchStep::new(Operation::create("notebook", object! { "name" => "first" })),
            BatchStep::new(Operation::update_where(
                "note",
                Filter::all(),
                object! { "stars" => 1 },
            )),
            BatchStep::new(Operation::create(
                "notebook",
                object! { "id" => book.clone(), "name" => "taken" },
            )),
        ],
    };
    let first = || Filter::all().eq("name", "first");
    let logged = entries(&d).await.len();
    // On its own: the third step fails, and is named so; nothing of the batch stays.
    let err = d.storage().execute(batch()).await.expect_err("a taken key");
    assert!(
        matches!(err, storex_core::Error::BatchStep { step: 2, .. }),
        "{err:?}"
    );
    assert_eq!(
        d.storage().count("notebook", first()).await.expect("count"),
        0
    );
    // In the app's own transaction, which its parts would leave half applied: refused
    // before anything runs.
    let tx = d.storage().begin().await.expect("begin");
    let err = tx.execute(batch()).await.expect_err("refused");
    assert!(err.to_string().contains("own transaction"), "{err}");
    tx.commit().await.expect("commit");
    assert_eq!(
        d.storage().count("notebook", first()).await.expect("count"),
        0
    );
    assert_eq!(entries(&d).await.len(), logged, "nothing logged");
}

#[tokio::test]
async fn a_write_that_waits_for_an_app_transaction_is_stamped_after_its_writes() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let d = sqlite_device(dir.path(), DeviceId::random(), SyncOptions::default()).await;
    let book = notebook(&d).await;
    // The app's transaction holds SQLite's write lock from its start.
    let tx = d.storage().begin().await.expect("begin");
    let storage = d.storage().clone();
    let key = book.clone();
    let plain = tokio::spawn(async move {
        let changes = object! { "name" => "plain write" };
        storage.update_by_pk("notebook", key, changes).await
    });
    // The plain write is on its way (waiting for the lock) when the transaction writes the
    // same field, and commits first.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!plain.is_finished(), "the plain write waits for the lock");
    tx.execute(Operation::update_by_pk(
        "notebook",
        book.clone(),
        object! { "name" => "app transaction" },
    ))
    .await
    .expect("update in the transaction");
    tx.commit().await.expect("commit");
    plain.await.expect("task").expect("plain write");
    // The row keeps the value written last; its entry must be the one that wins on every
    // other device, the latest stamped.
    let row = d
        .storage()
        .find_by_pk("notebook", book.clone())
        .await
        .expect("find")
        .expect("row");
    assert_eq!(row["name"], Value::from("plain write"));
    let winner = entries(&d)
        .await
        .into_iter()
        .filter(|e| e.op == EntryOp::Update && e.pk == Pk(vec![book.clone()]))
        .max_by_key(|e| e.hlc)
        .expect("the updates are logged");
    assert_eq!(
        winner.fields["name"],
        Value::from("plain write"),
        "{winner:?}"
    );
}

#[tokio::test]
async fn a_sync_that_starts_while_a_write_is_under_way_pushes_it() {
    let gate = Arc::new(Gate::default());
    let dir = tempfile::tempdir().expect("temporary directory");
    let shared: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let id = shared.create_device("ann").await.expect("device id");
    let options = SyncOptions::default().with_middleware(gate.clone());
    let d = sqlite_device(dir.path(), id, options).await;
    let sync = Arc::new(ContinuousSync::new(
        d.clone(),
        shared,
        ContinuousOptions::default(),
    ));
    // A first sync writes its state rows: the next one only reads until it pushes.
    sync.sync_once().await.expect("first sync");
    gate.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let writer = d.clone();
    let write = tokio::spawn(async move {
        let book = object! { "name" => "home" };
        writer.storage().create("notebook", book).await
    });
    // A change watcher after the logger signals here, before the write commits; the sync it
    // wakes starts at once.
    gate.reached.notified().await;
    let syncing = tokio::spawn({
        let sync = sync.clone();
        async move { sync.sync_once().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    gate.release.notify_one();
    write.await.expect("task").expect("write");
    let report = syncing.await.expect("task").expect("sync");
    assert_eq!(report.pushed, 1, "{report:?}");
}

#[tokio::test]
async fn a_single_write_fails_with_the_error_it_has_without_sync() {
    let dir = tempfile::tempdir().expect("dir");
    let d = sqlite_device(dir.path(), DeviceId::random(), SyncOptions::default()).await;
    let storage = d.storage();
    let id = Uuid::now_v7();
    let notebook = object! { "id" => id, "name" => "home" };
    storage
        .create("notebook", notebook.clone())
        .await
        .expect("create");
    let is_duplicate =
        |e: &storex_core::Error| matches!(e, storex_core::Error::DuplicateKey { .. });
    // In the logger's own transaction, and in the app's.
    let again = storage.create("notebook", notebook.clone()).await;
    assert!(again.as_ref().is_err_and(is_duplicate), "{again:?}");
    let tx = storage.begin().await.expect("begin");
    let again = tx
        .execute(Operation::create("notebook", notebook.clone()))
        .await;
    assert!(again.as_ref().is_err_and(is_duplicate), "{again:?}");
    tx.rollback().await.expect("rollback");
    // A batch names the step that failed.
    let steps = vec![BatchStep::new(Operation::create("notebook", notebook))];
    let batch = storage.execute(Operation::Batch { steps }).await;
    assert!(
        matches!(&batch, Err(storex_core::Error::BatchStep { step: 0, source }) if is_duplicate(source)),
        "{batch:?}"
    );
    assert_eq!(d.log().len().await.expect("log"), 1);
}
