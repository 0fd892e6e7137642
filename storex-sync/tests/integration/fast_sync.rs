//! Fast initial sync between devices on SQLite files: a whole database moves and matches, the
//! handoff to continuous sync loses nothing, a dropped channel resumes, and bad frames, bad
//! data, unknown collections, cancels and stalls end the session cleanly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use storex_core::{
    object, BatchStep, BoxFuture, CollectionDef, FieldType, Filter, Operation, Registry,
    StorageBackend, Value,
};
use storex_seaorm::SeaOrmBackend;
use storex_sync::fast_sync::{
    memory_channel_pair, receive_snapshot, send_snapshot, CancelHandle, ChannelError,
    EncodedObjects, FastSyncChannel, FastSyncError, FastSyncOptions, MemoryChannel, Package,
    Progress, SnapshotSender,
};
use storex_sync::{
    Clock, ContinuousOptions, ContinuousSync, DeviceId, EntryOp, Error, Hlc, MemorySharedLog,
    SharedSyncLog, SyncDevice, SyncOptions,
};

fn registry() -> Registry {
    Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Uuid)
                .field("title", FieldType::Text)
                .optional_field("body", FieldType::Text)
                .primary_key(["id"]),
        )
        .collection(
            CollectionDef::new("tag")
                .field("note", FieldType::Text)
                .field("name", FieldType::Text)
                .primary_key(["note", "name"]),
        )
        .collection(
            CollectionDef::new("draft")
                .field("id", FieldType::Int)
                .field("text", FieldType::Text)
                .primary_key(["id"]),
        )
        .build()
        .expect("registry")
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// Two fresh devices, the one moving out and the one moving in.
    async fn old_and_new(&self) -> (SyncDevice, SyncDevice) {
        (
            self.device("old", DeviceId::random()).await,
            self.device("new", DeviceId::random()).await,
        )
    }

    async fn device(&self, name: &str, id: DeviceId) -> SyncDevice {
        self.device_of(name, id, registry()).await
    }

    /// A device of an app whose collections are `registry`'s.
    async fn device_of(&self, name: &str, id: DeviceId, registry: Registry) -> SyncDevice {
        let backend: Arc<dyn StorageBackend> = Arc::new(
            SeaOrmBackend::open_sqlite_file(self.dir.path().join(format!("{name}.db")))
                .await
                .expect("open"),
        );
        SyncDevice::open(
            registry,
            backend,
            Clock::new(id),
            SyncOptions::default().exclude("draft"),
        )
        .await
        .expect("device")
    }
}

async fn fill(device: &SyncDevice, notes: usize) {
    for chunk in 0..notes.div_ceil(500) {
        let steps = (chunk * 500..((chunk + 1) * 500).min(notes))
            .map(|i| {
                BatchStep::new(Operation::create(
                    "note",
                    object! { "title" => format!("note {i}"), "body" => "x".repeat(i % 300) },
                ))
            })
            .collect();
        device.storage().batch(steps).await.expect("notes");
    }
    for i in 0..300 {
        device
            .storage()
            .create(
                "tag",
                object! { "note" => format!("n{}", i % 40), "name" => format!("t{i}") },
            )
            .await
            .expect("tag");
    }
    device
        .storage()
        .create("draft", object! { "id" => 1, "text" => "local" })
        .await
        .expect("draft");
}

fn small_batches() -> FastSyncOptions {
    FastSyncOptions::default()
        .with_batch_bytes(16 * 1024)
        .with_window(3)
}

/// One transfer from `old` to `new` over a fresh in-memory channel: (sent, received).
async fn transfer(
    old: &SyncDevice,
    new: &SyncDevice,
    sending: &FastSyncOptions,
    receiving: &FastSyncOptions,
) -> (
    storex_sync::Result<storex_sync::fast_sync::TransferReport>,
    storex_sync::Result<storex_sync::fast_sync::TransferReport>,
) {
    let (mut a, mut b) = memory_channel_pair(4);
    tokio::join!(
        send_snapshot(old, &mut a, sending),
        receive_snapshot(new, &mut b, receiving)
    )
}

async fn assert_same(a: &SyncDevice, b: &SyncDevice) {
    for collection in ["note", "tag", "draft"] {
        assert_eq!(
            a.digest(collection).await.expect("digest"),
            b.digest(collection).await.expect("digest"),
            "collection {collection}"
        );
    }
}

/// A table made by another program whose key column has no type, holding numbers, read
/// through a registry that calls the key text: SQLite sorts the numbers before any text but
/// compares them with the text of the last key as they are, so the second page is empty.
/// The sender counts what it read against its snapshot's count and fails, by name, instead
/// of ending the copy short.
#[tokio::test]
async fn a_collection_read_short_in_key_order_fails_the_copy_by_name() {
    let fixture = Fixture::new();
    let cache = || {
        Registry::builder()
            .collection(
                CollectionDef::new("cache")
                    .field("id", FieldType::Text)
                    .field("v", FieldType::Text)
                    .primary_key(["id"]),
            )
            .build()
            .expect("registry")
    };
    let open = |name: &'static str| {
        let path = fixture.dir.path().join(format!("{name}.db"));
        async move {
            let backend = SeaOrmBackend::open_sqlite_file(path).await.expect("open");
            if name == "old" {
                use storex_seaorm::sea_orm::ConnectionTrait;
                backend
                    .connection()
                    .execute_unprepared(
                        "CREATE TABLE cache (id PRIMARY KEY, v TEXT NOT NULL); \
                         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
                         WHERE i < 1000) INSERT INTO cache SELECT i, 'value ' || i FROM n",
                    )
                    .await
                    .expect("another program's table");
            }
            let backend: Arc<dyn StorageBackend> = Arc::new(backend);
            SyncDevice::open(
                cache(),
                backend,
                Clock::new(DeviceId::random()),
                SyncOptions::default().exclude("cache"),
            )
            .await
            .expect("device")
        }
    };
    let (old, new) = (open("old").await, open("new").await);
    let (sent, received) = transfer(&old, &new, &small_batches(), &small_batches()).await;
    match sent {
        Err(Error::FastSync(FastSyncError::Verification {
            collection,
            problem,
        })) => {
            assert_eq!(collection, "cache");
            assert!(problem.contains("of its 1000 rows"), "{problem}");
        }
        other => panic!("expected the sender to fail verification, got {other:?}"),
    }
    assert!(received.is_err(), "the receiver is told: {received:?}");
}

#[tokio::test]
async fn the_sender_reports_its_changes_not_pushed_yet() {
    let fx = Fixture::new();
    let (old, new) = fx.old_and_new().await;
    fill(&old, 10).await;
    let unshared = old.log().unshared_count().await.expect("count");
    assert!(unshared > 0);
    let options = FastSyncOptions::default();
    let (sent, received) = transfer(&old, &new, &options, &options).await;
    assert_eq!(sent.expect("send").unpushed, unshared);
    assert_eq!(received.expect("receive").unpushed, 0);
}

#[tokio::test]
async fn a_whole_database_moves_and_matches() {
    let fx = Fixture::new();
    let (old, new) = fx.old_and_new().await;
    fill(&old, 3_000).await;
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let recorder = seen.clone();
    let options = small_batches().with_progress(Arc::new(move |p: &Progress| {
        recorder.lock().expect("lock").push(p.clone())
    }));
    let receiving = small_batches();
    let (sent, received) = transfer(&old, &new, &options, &receiving).await;
    let (sent, received) = (sent.expect("send"), received.expect("receive"));
    assert_eq!(sent.objects, received.objects);
    assert!(sent.batches > 10, "small batches: {}", sent.batches);
    assert_same(&old, &new).await;
    // The sender's log came along folded into the versions: no log row to push, and when
    // the sender's entries arrive again (pushed by it, pulled here), each is a duplicate
    // (each object has one entry here: one overwritten later would lose to what overwrote
    // it, a conflict that changes nothing).
    assert!(new.log().all().await.expect("log").entries.is_empty());
    let entries = log_entries(&old).await;
    let count = entries.len() as u64;
    assert_eq!(count, 3_300, "the notes and the tags");
    let report = new.integrate(entries).await.expect("again");
    assert_eq!(
        (report.duplicates, report.operations),
        (count, 0),
        "{report:?}"
    );
    assert_same(&old, &new).await;
    // Progress climbs to the totals.
    let seen = seen.lock().expect("lock");
    let notes: Vec<&Progress> = seen.iter().filter(|p| p.collection == "note").collect();
    assert!(notes
        .windows(2)
        .all(|w| w[0].objects_done < w[1].objects_done));
    assert_eq!(
        notes.last().map(|p| (p.objects_done, p.objects_total)),
        Some((3_000, 3_000))
    );
}

#[tokio::test]
async fn continuous_sync_takes_over_from_the_handed_over_cursor() {
    let fx = Fixture::new();
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let (old_id, new_id) = (
        log.create_device("ann").await.expect("old"),
        log.create_device("ann").await.expect("new"),
    );
    let old = ContinuousSync::new(
        fx.device("old", old_id).await,
        log.clone(),
        ContinuousOptions::default(),
    );
    fill(old.device(), 500).await;
    old.sync_once().await.expect("push");
    // A change the old device has not pushed yet travels in the snapshot.
    old.device()
        .storage()
        .create("note", object! { "title" => "unpushed" })
        .await
        .expect("write");

    let new_device = fx.device("new", new_id).await;
    let options = small_batches();
    let (sent, received) = transfer(old.device(), &new_device, &options, &options).await;
    sent.expect("send");
    assert!(
        received.expect("receive").cursor > 0,
        "the cursor is handed over"
    );
    let new = ContinuousSync::new(new_device, log, ContinuousOptions::default());
    assert_eq!(
        new.cursor().await.expect("cursor"),
        old.cursor().await.expect("cursor")
    );

    // Changes after the snapshot, and the unpushed one, reach the new device; none twice.
    old.device()
        .storage()
        .create("note", object! { "title" => "after the move" })
        .await
        .expect("write");
    old.sync_once().await.expect("push");
    let report = new.sync_once().await.expect("sync");
    assert_eq!(
        report.pushed, 0,
        "the new device re-pushes nothing of the old one's"
    );
    assert_eq!(
        report.duplicates, 1,
        "the unpushed entry came in the snapshot already"
    );
    assert_eq!(report.integrated, 1);
    assert_eq!(
        old.device().digest("note").await.expect("digest"),
        new.device().digest("note").await.expect("digest")
    );
}

#[tokio::test]
async fn a_device_joining_after_the_shared_log_was_compacted_recovers_by_a_copy() {
    let fx = Fixture::new();
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let engine =
        |device: SyncDevice| ContinuousSync::new(device, log.clone(), ContinuousOptions::default());
    let a = engine(
        fx.device("a", log.create_device("ann").await.expect("a"))
            .await,
    );
    let b = engine(
        fx.device("b", log.create_device("ann").await.expect("b"))
            .await,
    );
    fill(a.device(), 200).await;
    a.sync_once().await.expect("a pushes");
    b.sync_once().await.expect("b pulls");
    a.sync_once().await.expect("a acknowledges");
    assert!(log.compact("ann").await.expect("compact") > 0);

    // A device added now starts before the compacted entries: it pushes its own writes, then
    // cannot pull, and is told to copy from a device instead.
    let c = engine(
        fx.device("c", log.create_device("ann").await.expect("c"))
            .await,
    );
    c.device()
        .storage()
        .create("note", object! { "title" => "written on c first" })
        .await
        .expect("write");
    let error = c.sync_once().await.expect_err("pulls over a compacted log");
    assert!(
        matches!(
            error,
            Error::SharedLog(storex_sync::SharedLogError::CursorCompacted { .. })
        ),
        "{error:?}"
    );
    assert!(!error.is_transient(), "retrying alone never gets past it");
    assert!(
        c.sync_once().await.is_err(),
        "it does not pass by itself either"
    );

    // The copy from b hands b's cursor over, and sync goes on from there.
    let options = small_batches();
    copy_with(&b, &c, &options).await;
    let report = c.sync_once().await.expect("c syncs after the copy");
    assert!(report.problems.is_empty(), "{report:?}");
    for (device, title) in [(&a, "from a"), (&b, "from b"), (&c, "from c")] {
        device
            .device()
            .storage()
            .create("note", object! { "title" => title })
            .await
            .expect("write");
    }
    for _ in 0..2 {
        for device in [&a, &b, &c] {
            device.sync_once().await.expect("sync");
        }
    }
    for collection in ["note", "tag"] {
        let digest = a.device().digest(collection).await.expect("digest");
        for device in [&b, &c] {
            assert_eq!(
                device.device().digest(collection).await.expect("digest"),
                digest,
                "{collection}"
            );
        }
    }
    let notes = |device: &ContinuousSync| {
        let storage = device.device().storage().clone();
        async move { storage.count("note", Filter::all()).await.expect("count") }
    };
    assert_eq!(
        notes(&c).await,
        200 + 1 + 3,
        "a's notes, c's first one, and one each"
    );
}

/// Devices of user ann on `log`, each with its engine.
async fn engine(
    fx: &Fixture,
    log: &Arc<dyn SharedSyncLog>,
    name: &str,
    options: ContinuousOptions,
) -> ContinuousSync {
    let id = log.create_device("ann").await.expect("device");
    ContinuousSync::new(fx.device(name, id).await, log.clone(), options)
}

/// [`engine`] on a device whose operations `stalls` can hold up.
async fn engine_stalling(
    fx: &Fixture,
    log: &Arc<dyn SharedSyncLog>,
    name: &str,
    options: ContinuousOptions,
    stalls: &[&Arc<crate::durability::Stall>],
) -> ContinuousSync {
    let id = log.create_device("ann").await.expect("device");
    let backend: Arc<dyn StorageBackend> = Arc::new(
        SeaOrmBackend::open_sqlite_file(fx.dir.path().join(format!("{name}.db")))
            .await
            .expect("open"),
    );
    let mut device_options = SyncOptions::default().exclude("draft");
    for stall in stalls {
        device_options = device_options.with_middleware(Arc::clone(*stall) as _);
    }
    let device = SyncDevice::open(registry(), backend, Clock::new(id), device_options)
        .await
        .expect("device");
    ContinuousSync::new(device, log.clone(), options)
}

/// A copy from `from` into `to` with `options` on both sides, which both must finish:
/// (sent, received).
async fn copy_with(
    from: &ContinuousSync,
    to: &ContinuousSync,
    options: &FastSyncOptions,
) -> (
    storex_sync::fast_sync::TransferReport,
    storex_sync::fast_sync::TransferReport,
) {
    let (sent, received) = transfer(from.device(), to.device(), options, options).await;
    (sent.expect("send"), received.expect("receive"))
}

/// `report` is of a sync that pulled nothing because a copy into its device is unfinished,
/// and says so.
fn assert_waiting_for_copy(report: &storex_sync::SyncReport) {
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("has not finished")),
        "{report:?}"
    );
    assert!(report.waiting_for_copy, "{report:?}");
}

/// Writes a note titled `title` on `device` and pushes it.
async fn push_note(device: &ContinuousSync, title: &str) {
    let note = object! { "title" => title };
    let storage = device.device().storage();
    storage.create("note", note).await.expect("write");
    device.sync_once().await.expect("push");
}

/// Asserts that `a` and `b` hold the same `collection`.
async fn assert_agree(a: &ContinuousSync, b: &ContinuousSync, collection: &str) {
    assert_eq!(
        a.device().digest(collection).await.expect("digest"),
        b.device().digest(collection).await.expect("digest"),
        "{collection}"
    );
}

/// The tags of `device`'s database.
async fn tags(device: &ContinuousSync) -> u64 {
    device
        .device()
        .storage()
        .count("tag", Filter::all())
        .await
        .expect("count")
}

/// A writer (pulling everything) whose notes and tags are pushed, and a device `old` that
/// pulled them with its options, on a fresh shared log of user ann.
struct Written {
    fx: Fixture,
    log: Arc<dyn SharedSyncLog>,
    writer: ContinuousSync,
    old: ContinuousSync,
}

async fn written(old_options: ContinuousOptions) -> Written {
    let fx = Fixture::new();
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let writer = engine(&fx, &log, "writer", ContinuousOptions::default()).await;
    let old = engine(&fx, &log, "old", old_options).await;
    fill(writer.device(), 50).await;
    writer.sync_once().await.expect("push");
    old.sync_once().await.expect("pull");
    Written {
        fx,
        log,
        writer,
        old,
    }
}

#[tokio::test]
async fn a_copy_from_a_device_that_pulls_some_collections_leaves_the_others_to_be_pulled() {
    let all = ContinuousOptions::default();
    let Written {
        fx,
        log,
        writer,
        old,
    } = written(all.clone().with_collections(["note"])).await;
    assert_eq!(tags(&old).await, 0, "old pulls notes only");

    // The copy carries old's cursor, which holds for notes only: the new device, which pulls
    // everything, pulls the tags from before it too.
    let new = engine(&fx, &log, "new", all).await;
    let options = small_batches();
    copy_with(&old, &new, &options).await;
    new.sync_once().await.expect("sync");
    assert_eq!(tags(&new).await, 300);
    for collection in ["note", "tag"] {
        assert_agree(&new, &writer, collection).await;
    }
}

#[tokio::test]
async fn a_copy_that_leaves_out_a_collection_hands_over_no_cursor() {
    let all = ContinuousOptions::default();
    let Written {
        fx,
        log,
        writer,
        old,
    } = written(all.clone()).await;

    let new = engine(&fx, &log, "new", all).await;
    let options = small_batches().with_collections(["note"]);
    let (_, received) = copy_with(&old, &new, &options).await;
    assert_eq!(received.cursor, 0);
    assert_eq!(tags(&new).await, 0, "left out of the copy");
    new.sync_once().await.expect("sync");
    assert_eq!(tags(&new).await, 300, "pulled from the start instead");
    assert_agree(&new, &writer, "tag").await;
}

#[tokio::test]
async fn a_copy_that_leaves_out_objects_hands_over_no_cursor() {
    let all = ContinuousOptions::default();
    let Written {
        fx,
        log,
        writer,
        old,
    } = written(all.clone()).await;
    // A device with data and a cursor of its own, as far along as old.
    let merging = engine(&fx, &log, "merging", all).await;
    merging.sync_once().await.expect("pull");
    // Then one note changes, and old pulls the change: its cursor is past it.
    let changed = writer
        .device()
        .storage()
        .find_one(
            "note",
            storex_core::Query::new(Filter::all().eq("title", "note 7")),
        )
        .await
        .expect("find")
        .expect("note 7");
    writer
        .device()
        .storage()
        .update_by_pk(
            "note",
            storex_core::Pk(vec![changed["id"].clone()]),
            object! { "title" => "note 7, changed" },
        )
        .await
        .expect("change");
    writer.sync_once().await.expect("push");
    old.sync_once().await.expect("pull");

    // A copy that leaves that note out carries neither its row nor its change: taking old's
    // cursor would skip the change for good.
    let options = small_batches().with_filter(Arc::new(
        |collection: &str, object: &storex_core::Object| {
            collection != "note" || object.get("title") != Some(&Value::from("note 7, changed"))
        },
    ));
    let (sent, received) = copy_with(&old, &merging, &options).await;
    assert_eq!((sent.cursor, received.cursor), (0, 0));
    merging.sync_once().await.expect("sync");
    assert_agree(&merging, &writer, "note").await;
}

#[tokio::test]
async fn the_changes_an_older_app_holds_for_a_collection_it_does_not_know_go_with_its_cursor() {
    let fx = Fixture::new();
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    // A later version of the app has a collection `label`; the old device's does not.
    let later = || {
        let label = CollectionDef::new("label")
            .field("id", FieldType::Uuid)
            .field("name", FieldType::Text)
            .primary_key(["id"]);
        let mut builder = Registry::builder().collection(label);
        for def in registry().collections() {
            builder = builder.collection(def.clone());
        }
        builder.build().expect("registry")
    };
    let open = |name: &'static str, registry: Registry| {
        let (fx, log) = (&fx, log.clone());
        async move {
            let id = log.create_device("ann").await.expect("device");
            let device = fx.device_of(name, id, registry).await;
            ContinuousSync::new(device, log, ContinuousOptions::default())
        }
    };
    let writer = open("writer", later()).await;
    let old = open("old", registry()).await;
    for i in 0..5 {
        let label = object! { "name" => format!("label {i}") };
        writer
            .device()
            .storage()
            .create("label", label)
            .await
            .expect("label");
    }
    push_note(&writer, "a note").await;
    let pulled = old.sync_once().await.expect("pull");
    assert_eq!((pulled.held, pulled.integrated), (5, 1), "{pulled:?}");

    // The new device runs the later version: the labels old holds come with its cursor,
    // which lies past them.
    let new = open("new", later()).await;
    let (_, received) = copy_with(&old, &new, &small_batches()).await;
    assert!(received.cursor > 0);
    new.sync_once().await.expect("sync");
    for collection in ["label", "note"] {
        assert_agree(&new, &writer, collection).await;
    }
    let labels = new.device().storage().count("label", Filter::all()).await;
    assert_eq!(labels.expect("count"), 5);
}

#[tokio::test]
async fn a_device_pulling_some_collections_goes_on_from_a_copy_of_everything() {
    let all = ContinuousOptions::default();
    let Written {
        fx,
        log,
        writer,
        old,
    } = written(all.clone()).await;
    writer.sync_once().await.expect("acknowledge");
    assert!(log.compact("ann").await.expect("compact") > 0);

    // The new device joins after the compaction and pulls notes only: the copy of
    // everything holds for that too, so it goes on from the cursor rather than from the
    // compacted start.
    let new = engine(&fx, &log, "new", all.with_collections(["note"])).await;
    let options = small_batches();
    copy_with(&old, &new, &options).await;
    push_note(&writer, "after the copy").await;
    let report = new
        .sync_once()
        .await
        .expect("sync from the handed-over cursor");
    assert_eq!(report.integrated, 1, "{report:?}");
    assert_agree(&new, &writer, "note").await;
}

#[tokio::test]
async fn a_device_keeps_its_own_cursor_when_the_senders_holds_for_other_collections() {
    let fx = Fixture::new();
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let all = ContinuousOptions::default();
    let writer = engine(&fx, &log, "writer", all.clone()).await;
    let notes_only = engine(&fx, &log, "notes", all.clone().with_collections(["note"])).await;
    let everything = engine(&fx, &log, "all", all).await;
    fill(writer.device(), 50).await;
    writer.sync_once().await.expect("push");
    for device in [&notes_only, &everything, &writer] {
        device.sync_once().await.expect("sync");
    }
    assert!(log.compact("ann").await.expect("compact") > 0);
    // A copy from the device that pulls notes only, as far along: the receiver, which pulls
    // everything, keeps its own cursor rather than start over on a compacted log.
    let options = small_batches();
    copy_with(&notes_only, &everything, &options).await;
    let report = everything.sync_once().await.expect("sync after the copy");
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(tags(&everything).await, 300);
}

#[tokio::test]
async fn a_copy_into_a_running_device_does_not_mislabel_what_it_pulls_next() {
    let fx = Fixture::new();
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let all = ContinuousOptions::default();
    let writer = engine(&fx, &log, "writer", all.clone()).await;
    let full = engine(&fx, &log, "full", all.clone()).await;
    let notes_only = engine(&fx, &log, "notes", all.clone().with_collections(["note"])).await;
    fill(writer.device(), 20).await;
    writer.sync_once().await.expect("push");
    notes_only.sync_once().await.expect("pull notes");
    push_note(&writer, "one more").await;
    full.sync_once().await.expect("pull");
    // The device pulling notes takes a copy from one that pulls everything and is further
    // along (its own engine keeps running), then pulls notes again while a tag is written.
    let options = small_batches();
    copy_with(&full, &notes_only, &options).await;
    let tag = object! { "note" => "n1", "name" => "later" };
    writer
        .device()
        .storage()
        .create("tag", tag)
        .await
        .expect("a tag");
    writer.sync_once().await.expect("push");
    notes_only.sync_once().await.expect("pull notes");
    // Its cursor now holds for notes only: a device pulling everything that copies from it
    // pulls the tag too.
    let new = engine(&fx, &log, "new", all).await;
    copy_with(&notes_only, &new, &options).await;
    new.sync_once().await.expect("sync");
    assert_eq!(tags(&new).await, tags(&writer).await);
}

/// Options that seal payloads with one key.
fn sealed() -> ContinuousOptions {
    ContinuousOptions::default().with_encryption_key([7u8; 32])
}

/// A writer's note, [`sealed`], that a device `old` without the key pulled into its
/// quarantine, after `new` (which has the key) ran its first sync with nothing to pull:
/// (writer, old).
async fn note_quarantined_on_old(
    fx: &Fixture,
    log: &Arc<dyn SharedSyncLog>,
    new: &ContinuousSync,
) -> (ContinuousSync, ContinuousSync) {
    let writer = engine(fx, log, "writer", sealed()).await;
    let old = engine(fx, log, "old", ContinuousOptions::default()).await;
    new.sync_once().await.expect("first sync");
    push_note(&writer, "sealed").await;
    assert_eq!(old.sync_once().await.expect("pull").quarantined, 1);
    (writer, old)
}

#[tokio::test]
async fn payloads_the_sender_could_not_open_go_with_its_cursor() {
    let fx = Fixture::new();
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let new = engine(&fx, &log, "new", sealed()).await;
    let (writer, old) = note_quarantined_on_old(&fx, &log, &new).await;

    // A copy that may leave objects out hands over no cursor, so nothing is left behind it.
    let other = engine(&fx, &log, "other", ContinuousOptions::default()).await;
    let keep_all = small_batches().with_filter(Arc::new(|_: &str, _: &storex_core::Object| true));
    let (sent, _) = copy_with(&old, &other, &keep_all).await;
    assert_eq!((sent.quarantine_left, sent.cursor), (0, 0));

    // The copy hands over old's cursor, past the payload: the payload comes along, and the
    // new device's next sync (not only its next start) opens it.
    let options = small_batches();
    let (sent, _) = copy_with(&old, &new, &options).await;
    assert_eq!(sent.quarantine_left, 0);
    let report = new.sync_once().await.expect("sync");
    assert_eq!((report.released, report.integrated), (1, 1), "{report:?}");
    assert_agree(&new, &writer, "note").await;
    let quarantined = new
        .device()
        .storage()
        .count(storex_sync::QUARANTINE_COLLECTION, Filter::all())
        .await
        .expect("count");
    assert_eq!(quarantined, 0, "what opened left the quarantine");
}

#[tokio::test]
async fn payloads_a_copy_brought_are_opened_by_the_sync_after_one_stopped_while_opening_them() {
    use std::sync::atomic::Ordering;
    let fx = Fixture::new();
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    // The new device's sync has run once already: what it had set aside at its start has
    // been tried.
    let stall = Arc::new(crate::durability::Stall::notes());
    let new = engine_stalling(&fx, &log, "new", sealed(), &[&stall]).await;
    let (writer, old) = note_quarantined_on_old(&fx, &log, &new).await;
    copy_with(&old, &new, &small_batches()).await;
    // The sync that opens the payload the copy brought is stopped midway (a background
    // sync's timeout, say).
    stall.armed.store(true, Ordering::SeqCst);
    tokio::select! {
        () = stall.stalled.notified() => {}
        finished = new.sync_once() => panic!("opening the payload did not stall: {finished:?}"),
    }
    // The next sync of the same engine, never restarted, opens it.
    stall.armed.store(false, Ordering::SeqCst);
    let report = new.sync_once().await.expect("sync");
    assert_eq!((report.released, report.integrated), (1, 1), "{report:?}");
    assert_agree(&new, &writer, "note").await;
}

/// A device `old` with a note, pushed, then changed (titled "second"), not pushed yet; and the
/// note's key.
async fn note_pushed_then_changed(
    fx: &Fixture,
    log: &Arc<dyn SharedSyncLog>,
) -> (ContinuousSync, storex_core::Pk) {
    let old = engine(fx, log, "old", ContinuousOptions::default()).await;
    let storage = old.device().storage();
    let id = storage
        .create("note", object! { "title" => "first" })
        .await
        .expect("create");
    old.sync_once().await.expect("push");
    storage
        .update_by_pk("note", id.clone(), object! { "title" => "second" })
        .await
        .expect("update");
    (old, id)
}

/// Once the change of [`note_pushed_then_changed`] came through the shared log too, `new`
/// holds it, and agrees with `old`.
async fn assert_holds_the_change(old: &ContinuousSync, new: &ContinuousSync, id: storex_core::Pk) {
    old.sync_once().await.expect("push");
    new.sync_once().await.expect("sync again");
    let note = new
        .device()
        .storage()
        .find_by_pk("note", id)
        .await
        .expect("find")
        .expect("the note");
    assert_eq!(note["title"], Value::from("second"));
    assert_agree(new, old, "note").await;
}

#[tokio::test]
async fn a_copy_that_begins_while_the_first_pull_applies_does_not_pass_over_what_it_applied() {
    use crate::durability::Stall;
    use std::sync::atomic::Ordering;
    let fx = Fixture::new();
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let (old, id) = note_pushed_then_changed(&fx, &log).await;
    // The new device, empty, starts a copy from the old one and its sync together, as an
    // app's first launch may. The copy, asking whether the device has data of its own, is
    // held up once it has read the (empty) log, and the sync pulls the note as created and
    // applies it meanwhile (held up until the copy has decided).
    let counts_versions = |op: &Operation| matches!(op, Operation::Count { collection, .. } if collection == storex_sync::VERSIONS_COLLECTION);
    let asking = Arc::new(Stall::new(counts_versions));
    let applying = Arc::new(Stall::notes());
    let plain = ContinuousOptions::default();
    let new = engine_stalling(&fx, &log, "new", plain, &[&asking, &applying]).await;
    asking.armed.store(true, Ordering::SeqCst);
    applying.armed.store(true, Ordering::SeqCst);
    let options = small_batches();
    let (began_tx, began_rx) = tokio::sync::oneshot::channel();
    let releasing = async {
        asking.stalled.notified().await;
        began_tx.send(()).expect("the sync waits");
        tokio::time::sleep(Duration::from_millis(300)).await;
        asking.armed.store(false, Ordering::SeqCst);
        asking.release.notify_one();
        tokio::time::sleep(Duration::from_millis(300)).await;
        applying.armed.store(false, Ordering::SeqCst);
        applying.release.notify_one();
    };
    let syncing = async {
        began_rx.await.expect("the copy began");
        new.sync_once().await
    };
    let copying = transfer(old.device(), new.device(), &options, &options);
    let ((), synced, (sent, received)) = tokio::join!(releasing, syncing, copying);
    // However the steps fell, the sync waits for the copy (which holds the write-order lock
    // from its question until its start is stored): nothing is counted as pulled or applied.
    let synced = synced.expect("sync");
    assert!(synced.waiting_for_copy, "{synced:?}");
    assert_eq!((synced.pulled, synced.applied), (0, 0), "{synced:?}");
    sent.expect("send");
    received.expect("receive");
    assert_holds_the_change(&old, &new, id).await;
}

#[tokio::test]
async fn a_copy_that_begins_after_the_sync_checked_for_one_holds_back_the_page_it_pulled() {
    use crate::durability::Stall;
    use std::sync::atomic::Ordering;
    let fx = Fixture::new();
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let (old, id) = note_pushed_then_changed(&fx, &log).await;
    // The new device's sync pulls the note as created, and checks that no copy into the
    // device has begun (the second check of a sync, after the page came): none has. Held up
    // there, it applies the page only once a copy from the old device has begun (and
    // stopped before its first batch).
    let reads_transfers = |op: &Operation| {
        matches!(op, Operation::FindMany { collection, .. }
            if collection == storex_sync::TRANSFER_COLLECTION)
    };
    let checking = Arc::new(Stall::after_running(reads_transfers));
    checking.passing.store(1, Ordering::SeqCst);
    checking.armed.store(true, Ordering::SeqCst);
    let plain = ContinuousOptions::default();
    let new = engine_stalling(&fx, &log, "new", plain, &[&checking]).await;
    let gate = Arc::new(BatchGate::default());
    let options = small_batches();
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    let syncing = async {
        let synced = new.sync_once().await;
        synced_tx.send(()).expect("told");
        synced
    };
    let copying = async {
        checking.stalled.notified().await;
        let mut sender = SnapshotSender::open(old.device(), options.clone())
            .await
            .expect("snapshot");
        let (a, mut b) = memory_channel_pair(4);
        let mut a = Gated {
            inner: a,
            gate: gate.clone(),
        };
        let conducting = async {
            gate.reached.notified().await;
            checking.armed.store(false, Ordering::SeqCst);
            checking.release.notify_one();
            synced_rx.await.expect("the sync ended");
            gate.open.notify_one();
        };
        let (sent, received, ()) = tokio::join!(
            sender.send(&mut a),
            receive_snapshot(new.device(), &mut b, &options),
            conducting
        );
        sender.close().await.expect("close");
        (sent, received)
    };
    let (synced, (sent, received)) = tokio::join!(syncing, copying);
    let synced = synced.expect("sync");
    assert!(synced.waiting_for_copy, "{synced:?}");
    // The page held back is pulled again once the copy is done: not counted now.
    assert_eq!((synced.pulled, synced.applied), (0, 0), "{synced:?}");
    sent.expect("send");
    received.expect("receive");
    assert_holds_the_change(&old, &new, id).await;
}

/// Where [`Gated`] holds the sender's first batch: `reached` is told when it does, and
/// `open` lets it go.
#[derive(Debug, Default)]
struct BatchGate {
    reached: tokio::sync::Notify,
    open: tokio::sync::Notify,
}

/// A sender's channel that holds its first batch at `gate` (the receiver has begun the
/// copy, and applied nothing of it).
#[derive(Debug)]
struct Gated {
    inner: MemoryChannel,
    gate: Arc<BatchGate>,
}

impl FastSyncChannel for Gated {
    fn send(&mut self, package: Package) -> BoxFuture<'_, Result<(), ChannelError>> {
        Box::pin(async move {
            if matches!(package, Package::Batch { seq: 1, .. }) {
                self.gate.reached.notify_one();
                self.gate.open.notified().await;
            }
            self.inner.send(package).await
        })
    }

    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Package>, ChannelError>> {
        self.inner.recv()
    }
}

/// A copy from `old` into `new` that breaks off after some packages; returns its sender,
/// which resumes it on a new channel.
async fn cut_copy(old: &SyncDevice, new: &SyncDevice, options: &FastSyncOptions) -> SnapshotSender {
    let mut sender = SnapshotSender::open(old, options.clone())
        .await
        .expect("snapshot");
    let (a, mut b) = memory_channel_pair(4);
    let mut a = Dropping {
        inner: Some(a),
        left: 20,
    };
    let (sent, received) =
        tokio::join!(sender.send(&mut a), receive_snapshot(new, &mut b, options));
    assert!(sent.is_err() && received.is_err(), "cut");
    sender
}

#[tokio::test]
async fn a_device_receiving_a_copy_pulls_nothing_until_the_copy_is_done_or_given_up() {
    let fx = Fixture::new();
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let (old_id, new_id, other_id) = (
        log.create_device("ann").await.expect("old"),
        log.create_device("ann").await.expect("new"),
        log.create_device("ann").await.expect("other"),
    );
    let old = fx.device("old", old_id).await;
    fill(&old, 2_000).await;
    let other = ContinuousSync::new(
        fx.device("other", other_id).await,
        log.clone(),
        ContinuousOptions::default(),
    );
    let new = ContinuousSync::new(
        fx.device("new", new_id).await,
        log,
        ContinuousOptions::default(),
    );
    // Another device's change waits in the shared log.
    other
        .device()
        .storage()
        .create("note", object! { "title" => "elsewhere" })
        .await
        .expect("write");
    other.sync_once().await.expect("push");

    // The copy breaks off after some batches.
    let options = small_batches().with_stall_timeout(Duration::from_secs(5));
    let mut sender = cut_copy(&old, new.device(), &options).await;
    let report = new.sync_once().await.expect("sync");
    assert_eq!(
        report.pulled, 0,
        "nothing applied beside an unfinished copy"
    );
    assert_waiting_for_copy(&report);
    assert!(new.device().unfinished_copy().await.expect("read"));
    let applied = new
        .device()
        .transfer_resumes_after(sender.session())
        .await
        .expect("read");
    assert!(applied.is_some_and(|batch| batch >= 1), "{applied:?}");
    let other_session = storex_core::uuid::Uuid::now_v7();
    let none = new.device().transfer_resumes_after(other_session).await;
    assert_eq!(none.expect("read"), None);

    // Resumed and done: it pulls again.
    let (mut a, mut b) = memory_channel_pair(4);
    let (sent, received) = tokio::join!(
        sender.send(&mut a),
        receive_snapshot(new.device(), &mut b, &options)
    );
    sent.expect("send");
    received.expect("receive");
    let sender_session = sender.session();
    sender.close().await.expect("close");
    let report = new.sync_once().await.expect("sync");
    assert_eq!(report.integrated, 1, "{report:?}");
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(!report.waiting_for_copy, "{report:?}");
    assert!(!new.device().unfinished_copy().await.expect("read"));
    let done = new.device().transfer_resumes_after(sender_session).await;
    assert_eq!(
        done.expect("read"),
        None,
        "a finished transfer does not resume"
    );

    // Another copy given up: it pulls again too.
    let newer = fx.device("newer", DeviceId::random()).await;
    let sender = cut_copy(&old, &newer, &options).await;
    assert!(newer.unfinished_copy().await.expect("read"));
    assert_eq!(newer.abandon_transfers().await.expect("given up"), 1);
    assert!(!newer.unfinished_copy().await.expect("read"));
    assert_eq!(newer.abandon_transfers().await.expect("none left"), 0);
    sender.close().await.expect("close");
}

/// A memory shared log whose pulls, once `gated`, tell `pulling` and wait for a permit of
/// `gate` (which starts with none), and whose list of devices, while `devices_fail`, is
/// unavailable.
#[derive(Debug)]
struct GatedPulls {
    inner: MemorySharedLog,
    gated: std::sync::atomic::AtomicBool,
    pulling: tokio::sync::Notify,
    gate: tokio::sync::Semaphore,
    devices_fail: std::sync::atomic::AtomicBool,
}

impl GatedPulls {
    fn new() -> Self {
        GatedPulls {
            inner: MemorySharedLog::new(),
            gated: std::sync::atomic::AtomicBool::new(false),
            pulling: tokio::sync::Notify::new(),
            gate: tokio::sync::Semaphore::new(0),
            devices_fail: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl SharedSyncLog for GatedPulls {
    fn name(&self) -> &'static str {
        "gated-pulls"
    }

    fn register_device<'a>(
        &'a self,
        user: &'a str,
        device: DeviceId,
    ) -> BoxFuture<'a, storex_sync::SharedResult<()>> {
        self.inner.register_device(user, device)
    }

    fn devices(
        &self,
        device: DeviceId,
    ) -> BoxFuture<'_, storex_sync::SharedResult<Vec<storex_sync::DeviceInfo>>> {
        if self.devices_fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(async {
                Err(storex_sync::SharedLogError::Unavailable {
                    log: "gated-pulls",
                    source: "the list of devices is unavailable".into(),
                })
            });
        }
        self.inner.devices(device)
    }

    fn push(
        &self,
        device: DeviceId,
        entries: Vec<storex_sync::SharedEntry>,
    ) -> BoxFuture<'_, storex_sync::SharedResult<u64>> {
        self.inner.push(device, entries)
    }

    fn pull<'a>(
        &'a self,
        device: DeviceId,
        after: u64,
        limit: usize,
        topics: Option<&'a [String]>,
    ) -> BoxFuture<'a, storex_sync::SharedResult<storex_sync::Pull>> {
        Box::pin(async move {
            if self.gated.load(std::sync::atomic::Ordering::SeqCst) {
                self.pulling.notify_one();
                let _permit = self.gate.acquire().await.expect("gate open");
            }
            self.inner.pull(device, after, limit, topics).await
        })
    }

    fn ack(&self, device: DeviceId, cursor: u64) -> BoxFuture<'_, storex_sync::SharedResult<()>> {
        self.inner.ack(device, cursor)
    }

    fn compact<'a>(&'a self, user: &'a str) -> BoxFuture<'a, storex_sync::SharedResult<u64>> {
        self.inner.compact(user)
    }
}

/// A copy into a fresh device that begins while its sync's pull travels: the pulled page is
/// not applied beside the unfinished copy (the sync saw no copy when it began).
#[tokio::test]
async fn a_page_pulled_as_a_copy_begins_waits_for_the_copy() {
    let fx = Fixture::new();
    let gated = Arc::new(GatedPulls::new());
    let log: Arc<dyn SharedSyncLog> = gated.clone();
    let old = engine(&fx, &log, "old", ContinuousOptions::default()).await;
    let new = engine(&fx, &log, "new", ContinuousOptions::default()).await;
    fill(old.device(), 2_000).await;
    old.sync_once().await.expect("push");

    gated.gated.store(true, std::sync::atomic::Ordering::SeqCst);
    let copy_meanwhile = async {
        gated.pulling.notified().await;
        // The copy begins (and breaks off, unfinished) while the pull waits.
        let sender = cut_copy(old.device(), new.device(), &small_batches()).await;
        gated.gate.add_permits(1);
        sender
    };
    let (report, sender) = tokio::join!(new.sync_once(), copy_meanwhile);
    let report = report.expect("sync");
    assert_eq!(report.integrated, 0, "applied beside the copy: {report:?}");
    assert_waiting_for_copy(&report);
    sender.close().await.expect("close");
}

/// A copy into a fresh device holds its pulls back from the start, and one that fails before
/// its first batch (which applied nothing) lets them go again.
#[tokio::test]
async fn a_copy_failing_before_its_first_batch_leaves_the_device_pulling() {
    let fx = Fixture::new();
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let other = engine(&fx, &log, "other", ContinuousOptions::default()).await;
    let new = engine(&fx, &log, "new", ContinuousOptions::default()).await;
    push_note(&other, "elsewhere").await;

    let (mut a, mut b) = memory_channel_pair(4);
    let options = FastSyncOptions::default();
    let sender = async {
        begin_copy(&mut a, vec![info("note", 1)]).await;
        // Begun: the device waits for the copy.
        let report = new.sync_once().await.expect("sync");
        assert_eq!(report.integrated, 0, "{report:?}");
        drop(a); // the sender goes away before its first batch
    };
    let (_, received) = tokio::join!(sender, receive_snapshot(new.device(), &mut b, &options));
    assert!(received.is_err(), "the copy was cut");
    let report = new.sync_once().await.expect("sync");
    assert_eq!(report.integrated, 1, "{report:?}");
    assert!(report.problems.is_empty(), "{report:?}");
}

/// The receiver's end of a copy that, after each batch it receives, lets a round of the
/// devices' writes and syncs run (`round` asks for one, `done` says it ran), so they fall
/// between the copy's batches, as a copy running beside the apps does.
#[derive(Debug)]
struct Interleaved {
    inner: MemoryChannel,
    round: tokio::sync::mpsc::Sender<()>,
    done: tokio::sync::mpsc::Receiver<()>,
}

impl FastSyncChannel for Interleaved {
    fn send(&mut self, package: Package) -> BoxFuture<'_, Result<(), ChannelError>> {
        self.inner.send(package)
    }

    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Package>, ChannelError>> {
        Box::pin(async move {
            let package = self.inner.recv().await?;
            if matches!(package, Some(Package::Batch { .. })) && self.round.send(()).await.is_ok() {
                // The rounds stop once the copy is done; until then each one answers.
                let _ = self.done.recv().await;
            }
            Ok(package)
        })
    }
}

/// A copy from `old` into `new` in small batches, whose receiver lets a round run after each
/// batch it receives (see [`Interleaved`]): the copy, ending with its (sent, received)
/// reports, the rounds it asks for, and the answer that a round ran.
fn interleaved_copy<'a>(
    old: &'a ContinuousSync,
    new: &'a ContinuousSync,
) -> (
    impl std::future::Future<
            Output = (
                storex_sync::fast_sync::TransferReport,
                storex_sync::fast_sync::TransferReport,
            ),
        > + 'a,
    tokio::sync::mpsc::Receiver<()>,
    tokio::sync::mpsc::Sender<()>,
) {
    let (round_tx, round_rx) = tokio::sync::mpsc::channel(1);
    let (done_tx, done_rx) = tokio::sync::mpsc::channel(1);
    let copy = async move {
        let (mut sending, receiving) = memory_channel_pair(4);
        let mut receiving = Interleaved {
            inner: receiving,
            round: round_tx,
            done: done_rx,
        };
        let options = small_batches();
        let (sent, received) = tokio::join!(
            send_snapshot(old.device(), &mut sending, &options),
            receive_snapshot(new.device(), &mut receiving, &options)
        );
        drop(receiving); // no more rounds
        (sent.expect("send"), received.expect("receive"))
    };
    (copy, round_rx, done_tx)
}

/// Every device, the receiver included, writes and syncs between the batches of a copy; two
/// of them edit the same notes. A fresh receiver pushes its own writes and pulls nothing
/// while the copy is unfinished; one with data of its own merges, and pulls meanwhile. Then
/// all converge, and no write is lost.
async fn copy_beside_writes_and_syncs(receiver_has_data: bool) {
    let fx = Fixture::new();
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let old = engine(&fx, &log, "old", ContinuousOptions::default()).await;
    let other = engine(&fx, &log, "other", ContinuousOptions::default()).await;
    let new = engine(&fx, &log, "new", ContinuousOptions::default()).await;
    fill(old.device(), 1_000).await;
    old.sync_once().await.expect("push");
    other.sync_once().await.expect("pull");
    if receiver_has_data {
        push_note(&new, "new, before the copy").await;
    }
    let edited: Vec<Value> = old
        .device()
        .storage()
        .find_many("note", storex_core::Query::default().limit(20))
        .await
        .expect("notes")
        .iter()
        .map(|note| note["id"].clone())
        .collect();

    let (copy, mut round_rx, done_tx) = interleaved_copy(&old, &new);
    let rounds = async {
        let mut rounds = 0;
        while round_rx.recv().await.is_some() {
            let title = |who: &str| Value::from(format!("{who} {rounds}"));
            let id = &edited[rounds % edited.len()];
            for (device, who) in [(&old, "old"), (&other, "other")] {
                let storage = device.device().storage();
                let changes = object! { "title" => title(who) };
                storage
                    .update_by_pk("note", id.clone(), changes)
                    .await
                    .expect("edit");
            }
            push_note(&old, &format!("old, during the copy {rounds}")).await;
            push_note(&other, &format!("other, during the copy {rounds}")).await;
            new.device()
                .storage()
                .create(
                    "note",
                    object! { "title" => format!("new, during the copy {rounds}") },
                )
                .await
                .expect("write");
            let report = new.sync_once().await.expect("sync");
            if !receiver_has_data {
                let pulled = report.pulled;
                assert_eq!(pulled, 0, "pulled beside an unfinished copy: {report:?}");
            }
            rounds += 1;
            let _ = done_tx.send(()).await;
        }
        rounds
    };
    let ((sent, received), rounds) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(copy, rounds)
    })
    .await
    .expect("the copy and the rounds beside it end");
    assert!(rounds >= 3, "only {rounds} rounds ran beside the copy");
    assert!(sent.objects > 0 && received.objects > 0);

    for _ in 0..3 {
        for device in [&old, &other, &new] {
            let report = device.sync_once().await.expect("sync");
            assert!(report.problems.is_empty(), "{report:?}");
        }
    }
    for collection in ["note", "tag"] {
        assert_agree(&old, &new, collection).await;
        assert_agree(&other, &new, collection).await;
    }
    let notes = new
        .device()
        .storage()
        .count("note", Filter::all())
        .await
        .expect("count");
    let before = u64::from(receiver_has_data);
    assert_eq!(
        notes,
        1_000 + before + 3 * rounds as u64,
        "every note written, once"
    );
    // Each edited note holds one of the two edits of its last round (which of the two is
    // up to their timestamps).
    let last_round = |i: usize| (0..rounds).filter(|r| r % edited.len() == i).max();
    for (i, id) in edited.iter().enumerate() {
        let Some(round) = last_round(i) else { continue };
        let note = new
            .device()
            .storage()
            .find_by_pk("note", id.clone())
            .await
            .expect("find")
            .expect("the edited note");
        let last = [format!("old {round}"), format!("other {round}")].map(Value::from);
        assert!(
            last.contains(&note["title"]),
            "note {i}: {:?}",
            note["title"]
        );
    }
}

/// A fresh receiver edits a note it received while the copy goes on, and pushes the edit
/// (which its sync folds into its versions at once); another device's edit of the same field
/// came between the snapshot and it. The copy's versions, which arrive later, must not take
/// the receiver's edit back to the snapshot's timestamp: then the other edit, pulled next,
/// would win there and lose everywhere else.
#[tokio::test]
async fn a_receivers_own_edit_during_the_copy_keeps_its_timestamp() {
    let fx = Fixture::new();
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let old = engine(&fx, &log, "old", ContinuousOptions::default()).await;
    let other = engine(&fx, &log, "other", ContinuousOptions::default()).await;
    let new = engine(&fx, &log, "new", ContinuousOptions::default()).await;
    fill(old.device(), 200).await;
    old.sync_once().await.expect("push");
    other.sync_once().await.expect("pull");
    // The first note by key, which travels in the copy's first batch.
    let query = storex_core::Query::default().order_asc("id").limit(1);
    let first = old.device().storage().find_one("note", query).await;
    let id = first.expect("find").expect("a note")["id"].clone();

    let (copy, mut round_rx, done_tx) = interleaved_copy(&old, &new);
    let edit = |device: &ContinuousSync, title: &'static str| {
        let (storage, id) = (device.device().storage().clone(), id.clone());
        async move {
            let changes = object! { "title" => title };
            storage
                .update_by_pk("note", id, changes)
                .await
                .expect("edit");
        }
    };
    let rounds = async {
        let mut edited = false;
        while round_rx.recv().await.is_some() {
            let received = new.device().storage().find_by_pk("note", id.clone()).await;
            if !edited && received.expect("find").is_some() {
                edit(&other, "other's edit").await;
                other.sync_once().await.expect("push");
                edit(&new, "new's edit").await;
                let report = new.sync_once().await.expect("push");
                assert_eq!(report.pushed, 1, "{report:?}");
                edited = true;
            }
            let _ = done_tx.send(()).await;
        }
        edited
    };
    let (_, edited) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(copy, rounds)
    })
    .await
    .expect("the copy ends");
    assert!(edited, "the edit fell within the copy");

    for _ in 0..2 {
        for device in [&old, &other, &new] {
            device.sync_once().await.expect("sync");
        }
    }
    for device in [&old, &other] {
        assert_agree(device, &new, "note").await;
    }
    let note = new.device().storage().find_by_pk("note", id).await;
    assert_eq!(
        note.expect("find").expect("the note")["title"],
        Value::from("new's edit")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_device_writing_and_syncing_while_it_receives_a_copy_converges_with_all() {
    copy_beside_writes_and_syncs(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_merging_a_copy_while_all_write_and_sync_converges_with_all() {
    copy_beside_writes_and_syncs(true).await;
}

/// A channel that fails after passing a number of packages, both ways, and then closes, as
/// a dropped connection does.
#[derive(Debug)]
struct Dropping {
    inner: Option<MemoryChannel>,
    left: usize,
}

impl Dropping {
    fn pass(&mut self) -> Result<&mut MemoryChannel, ChannelError> {
        if self.left == 0 {
            self.inner = None;
        }
        self.left = self.left.saturating_sub(1);
        self.inner.as_mut().ok_or(ChannelError::Closed)
    }
}

impl FastSyncChannel for Dropping {
    fn send(&mut self, package: Package) -> BoxFuture<'_, Result<(), ChannelError>> {
        Box::pin(async move { self.pass()?.send(package).await })
    }

    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Package>, ChannelError>> {
        Box::pin(async move { self.pass()?.recv().await })
    }
}

#[tokio::test]
async fn a_transfer_cut_at_any_point_resumes_and_completes() {
    // Cuts counted in packages through the sender's channel: before any batch, early, late.
    for cut in [2, 5, 12, 23, 37, 58] {
        let fx = Fixture::new();
        let (old, new) = (
            fx.device("old", DeviceId::random()).await,
            fx.device("new", DeviceId::random()).await,
        );
        fill(&old, 2_000).await;
        // Payloads it could not open, which travel last.
        for n in 0..3u8 {
            let row = storex_core::object! {
                "id" => storex_core::uuid::Uuid::now_v7(), "device" => DeviceId::random().0,
                "topic" => "note", "cursor" => i64::from(n) + 1, "payload" => vec![n; 40],
                "reason" => "another key",
            };
            let quarantine = storex_sync::QUARANTINE_COLLECTION;
            old.storage()
                .create(quarantine, row)
                .await
                .expect("quarantined");
        }
        let options = small_batches().with_stall_timeout(Duration::from_secs(5));
        let mut sender = SnapshotSender::open(&old, options.clone())
            .await
            .expect("snapshot");

        let (a, mut b) = memory_channel_pair(4);
        let mut a = Dropping {
            inner: Some(a),
            left: cut,
        };
        let (first_send, first_receive) = tokio::join!(
            sender.send(&mut a),
            receive_snapshot(&new, &mut b, &options)
        );
        assert!(
            first_send.is_err() && first_receive.is_err(),
            "cut {cut}: the first run breaks off"
        );
        for error in [first_send.err(), first_receive.err()]
            .into_iter()
            .flatten()
        {
            assert!(error.is_transient(), "cut {cut}: resumable, {error:?}");
        }
        let partial = new
            .storage()
            .count("note", Filter::all())
            .await
            .expect("count");

        let (mut a, mut b) = memory_channel_pair(4);
        let (second_send, second_receive) = tokio::join!(
            sender.send(&mut a),
            receive_snapshot(&new, &mut b, &options)
        );
        let (sent, received) = (second_send.expect("send"), second_receive.expect("receive"));
        sender.close().await.expect("close");
        assert_eq!(sent.resumed_after, received.resumed_after, "cut {cut}");
        if partial > 0 {
            assert!(
                received.resumed_after.is_some_and(|r| r > 0),
                "cut {cut}: applied batches are not sent again"
            );
        }
        assert_same(&old, &new).await;
        assert_eq!(
            new.storage()
                .count("note", Filter::all())
                .await
                .expect("count"),
            2_000,
            "cut {cut}: nothing twice"
        );
        let quarantine = storex_sync::QUARANTINE_COLLECTION;
        let kept = new.storage().count(quarantine, Filter::all()).await;
        assert_eq!(kept.expect("count"), 3, "cut {cut}: the quarantine, once");
    }
}

// Two threads: the sender's filter blocks its thread, the receiver's clock runs on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_sender_reading_long_before_it_sends_again_is_not_taken_for_stalled() {
    let fx = Fixture::new();
    let (old, new) = (
        fx.device("old", DeviceId::random()).await,
        fx.device("new", DeviceId::random()).await,
    );
    fill(&old, 2_000).await;
    // A slow filter: reading the notes again, past the batches applied before the cut, takes
    // over 2 s without a batch to send, longer than the receiver waits for a package.
    let slow = |_: &str, _: &storex_core::Object| {
        std::thread::sleep(Duration::from_millis(2));
        true
    };
    let sending = small_batches().with_filter(Arc::new(slow));
    let receiving = small_batches().with_stall_timeout(Duration::from_millis(1_500));
    let mut sender = SnapshotSender::open(&old, sending).await.expect("snapshot");
    let new = Arc::new(new);
    let receive = |mut channel: MemoryChannel| {
        let (new, receiving) = (new.clone(), receiving.clone());
        tokio::spawn(async move { receive_snapshot(&new, &mut channel, &receiving).await })
    };
    let (a, b) = memory_channel_pair(4);
    let mut a = Dropping {
        inner: Some(a),
        left: 58,
    };
    let receiving_first = receive(b);
    let first_send = sender.send(&mut a).await;
    let first_receive = receiving_first.await.expect("task");
    assert!(first_send.is_err() && first_receive.is_err(), "cut");
    let (mut a, b) = memory_channel_pair(4);
    let receiving_again = receive(b);
    let second_send = sender.send(&mut a).await;
    let received = receiving_again
        .await
        .expect("task")
        .expect("the receiver waited");
    second_send.expect("send");
    sender.close().await.expect("close");
    assert!(
        received.resumed_after.is_some_and(|r| r > 20),
        "{received:?}"
    );
    assert_same(&old, &new).await;
}

/// A hand-made sender's `Hello` of a new session: offering `collections`, with the shared-log
/// `cursor` and the `latest` timestamp it tells, nothing else.
fn hello(
    collections: Vec<storex_sync::fast_sync::CollectionInfo>,
    cursor: u64,
    latest: Option<Hlc>,
) -> Package {
    Package::Hello {
        session: storex_core::uuid::Uuid::now_v7(),
        collections,
        definitions: Vec::new(),
        cursor,
        latest,
        subscription: None,
        quarantined: 0,
        properties: Default::default(),
    }
}

/// Plays the sender's opening by hand: a hello offering `collections`, and the receiver's
/// `Ready` to copy them from the start.
async fn begin_copy(
    channel: &mut MemoryChannel,
    collections: Vec<storex_sync::fast_sync::CollectionInfo>,
) {
    let opening = hello(collections, 0, None);
    channel.send(opening).await.expect("hello");
    assert!(matches!(
        channel.recv().await,
        Ok(Some(Package::Ready {
            resume_after: None,
            merge: false,
            quarantine: false,
        }))
    ));
}

#[tokio::test]
async fn a_hello_that_offers_a_collection_twice_is_refused_before_anything_moves() {
    let fx = Fixture::new();
    let new = fx.device("new", DeviceId::random()).await;
    let (mut a, mut b) = memory_channel_pair(8);
    let options = FastSyncOptions::default();
    let sender = async {
        let twice = vec![info("note", 1), info("tag", 1), info("note", 1)];
        a.send(hello(twice, 0, None)).await.expect("hello");
        a.recv().await
    };
    let (answer, received) = tokio::join!(sender, receive_snapshot(&new, &mut b, &options));
    assert!(
        !matches!(answer, Ok(Some(Package::Ready { .. }))),
        "{answer:?}"
    );
    let problem = format!("{:?}", received.expect_err("refused"));
    assert!(problem.contains("offers it twice"), "{problem}");
    assert!(!new.unfinished_copy().await.expect("asked"));
}

#[tokio::test]
async fn the_receivers_clock_moves_past_the_senders_before_anything_is_sent() {
    let fx = Fixture::new();
    let new = fx.device("new", DeviceId::random()).await;
    // A sender whose clock is an hour ahead of this device's.
    let ahead = Hlc {
        millis: new.clock().now().millis + 3_600_000,
        counter: 0,
        device: DeviceId::random(),
    };
    let (mut a, mut b) = memory_channel_pair(8);
    let options = FastSyncOptions::default();
    let sender = async {
        let opening = hello(vec![info("draft", 1)], 0, Some(ahead));
        a.send(opening).await.expect("hello");
        let ready = a.recv().await;
        assert!(
            matches!(ready, Ok(Some(Package::Ready { .. }))),
            "{ready:?}"
        );
        // A write the app makes now, before any batch, is later than all the sender has.
        let written = new.clock().now();
        assert!(written > ahead, "{written:?} after {ahead:?}");
        drop(a);
    };
    let (_, received) = tokio::join!(sender, receive_snapshot(&new, &mut b, &options));
    assert!(received.is_err(), "the hand-made sender never finishes");
}

/// Plays the sender by hand: a valid hello and first batch, then `bad`; returns the
/// receiver's answer to it, if any comes within a second.
async fn hand_made_sender(channel: &mut MemoryChannel, bad: Vec<u8>) -> Option<Package> {
    begin_copy(channel, vec![info("draft", 3)]).await;
    channel
        .send(Package::Batch {
            seq: 1,
            collection: "draft".into(),
            objects: EncodedObjects::encode(&[object! { "id" => 1, "text" => "ok" }]),
        })
        .await
        .expect("batch 1");
    assert!(matches!(
        channel.recv().await,
        Ok(Some(Package::Ack { seq: 1 }))
    ));
    channel.send_raw(bad).await.expect("bad frame");
    let answer = tokio::time::timeout(Duration::from_secs(1), channel.recv()).await;
    answer.ok().and_then(Result::ok).flatten()
}

async fn receive_bad(bad: Vec<u8>) -> (Error, u64) {
    let fx = Fixture::new();
    let new = fx.device("new", DeviceId::random()).await;
    let (mut a, mut b) = memory_channel_pair(4);
    let options = FastSyncOptions::default();
    let (answer, received) = tokio::join!(
        hand_made_sender(&mut a, bad),
        receive_snapshot(&new, &mut b, &options)
    );
    // The sender is told why (the channel still works), not left to wait for a stall.
    assert!(
        matches!(&answer, Some(Package::Cancel { reason, .. }) if !reason.is_empty()),
        "{answer:?}"
    );
    let count = new
        .storage()
        .count("draft", Filter::all())
        .await
        .expect("count");
    (
        received.expect_err("a bad frame must end the session"),
        count,
    )
}

#[tokio::test]
async fn a_batch_where_the_hello_belongs_is_named_in_a_short_message() {
    let fx = Fixture::new();
    let new = fx.device("new", DeviceId::random()).await;
    let (mut a, mut b) = memory_channel_pair(4);
    // About 4 MB of objects, where the receiver waits for the sender's hello.
    let text = "x".repeat(4096);
    let objects: Vec<_> = (0..1000)
        .map(|i| object! { "id" => i, "text" => text.as_str() })
        .collect();
    let batch = Package::Batch {
        seq: 1,
        collection: "draft".into(),
        objects: EncodedObjects::encode(&objects),
    };
    a.send(batch).await.expect("batch");
    let options = FastSyncOptions::default();
    let (answer, received) = tokio::join!(
        async { tokio::time::timeout(Duration::from_secs(5), a.recv()).await },
        receive_snapshot(&new, &mut b, &options)
    );
    let message = storex_core::error_chain(&received.expect_err("not a hello"));
    assert!(
        message.contains("Batch 1 of draft (1000 objects)"),
        "{message:.300}"
    );
    assert!(
        message.len() < 1000,
        "{} bytes: {message:.300}",
        message.len()
    );
    // The peer is told as briefly.
    match answer {
        Ok(Ok(Some(Package::Cancel { reason, .. }))) => {
            assert!(reason.len() < 1000, "{} bytes", reason.len())
        }
        other => panic!("no cancel: {other:?}"),
    }
}

#[tokio::test]
async fn a_peer_its_long_cancel_reason_is_cut() {
    let fx = Fixture::new();
    let new = fx.device("new", DeviceId::random()).await;
    let (mut a, mut b) = memory_channel_pair(4);
    let reason = "é".repeat(1 << 20);
    a.send(Package::Cancel {
        reason,
        resumable: false,
    })
    .await
    .expect("cancel");
    let options = FastSyncOptions::default();
    let received = receive_snapshot(&new, &mut b, &options).await;
    match received {
        Err(Error::FastSync(FastSyncError::Cancelled {
            by_peer: true,
            reason,
            ..
        })) => {
            assert!(
                reason.len() <= storex_sync::fast_sync::MAX_CANCEL_REASON_BYTES,
                "{} bytes",
                reason.len()
            );
            assert!(reason.starts_with("éé") && reason.ends_with("..."));
        }
        other => panic!("not cancelled by the peer: {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn garbage_truncated_and_wrong_version_frames_end_the_session_cleanly() {
    let good = Package::Batch {
        seq: 2,
        collection: "draft".into(),
        objects: EncodedObjects::encode(&[object! { "id" => 2, "text" => "two" }]),
    }
    .encode();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage",
            vec![storex_sync::fast_sync::PROTOCOL_VERSION, 0xc1, 0x00, 0xff],
        ),
        ("truncated", good[..good.len() - 4].to_vec()),
        ("wrong version", {
            let mut frame = good.clone();
            frame[0] = 99;
            frame
        }),
        ("empty", Vec::new()),
    ];
    for (what, frame) in cases {
        let (err, count) = receive_bad(frame).await;
        let Error::FastSync(FastSyncError::Channel(channel)) = &err else {
            panic!("{what}: wrong error {err}")
        };
        assert!(
            matches!(
                channel,
                ChannelError::Malformed { .. } | ChannelError::WrongVersion { found: 99, .. }
            ),
            "{what}: {channel}"
        );
        assert_eq!(
            count, 1,
            "{what}: the applied batch stays, nothing of the bad one"
        );
    }
}

#[tokio::test]
async fn a_well_formed_batch_whose_objects_do_not_decode_ends_the_session() {
    let mut objects = EncodedObjects::encode(&[object! { "id" => 2, "text" => "two" }]);
    objects.push(vec![0x92, 0xc1]); // an array holding a reserved byte: not an object
    let frame = Package::Batch {
        seq: 2,
        collection: "draft".into(),
        objects,
    }
    .encode();
    let (err, count) = receive_bad(frame).await;
    let Error::FastSync(FastSyncError::Verification {
        collection,
        problem,
    }) = &err
    else {
        panic!("wrong error {err}")
    };
    assert_eq!(collection, "draft");
    assert!(problem.contains("object 2"), "{problem}");
    assert_eq!(count, 1, "the applied batch stays, nothing of the bad one");
}

#[tokio::test]
async fn invalid_objects_are_refused_and_leave_the_receiver_as_it_was() {
    let wrong_type = Package::Batch {
        seq: 2,
        collection: "draft".into(),
        objects: EncodedObjects::encode(&[
            object! { "id" => 2, "text" => 42 },
            object! { "id" => 3, "text" => "fine" },
        ]),
    };
    let (err, count) = receive_bad(wrong_type.encode()).await;
    assert!(
        err.to_string().contains("storage") || err.to_string().contains("batch"),
        "{err}"
    );
    assert_eq!(count, 1, "nothing of the invalid batch was applied");
}

#[tokio::test]
async fn an_unknown_collection_is_refused_before_anything_moves() {
    let fx = Fixture::new();
    let old = fx.device("old", DeviceId::random()).await;
    fill(&old, 10).await;
    let other = Registry::builder()
        .collection(
            CollectionDef::new("draft")
                .field("id", FieldType::Int)
                .field("text", FieldType::Text)
                .primary_key(["id"]),
        )
        .build()
        .expect("registry");
    let backend: Arc<dyn StorageBackend> = Arc::new(
        SeaOrmBackend::connect("sqlite::memory:")
            .await
            .expect("open"),
    );
    let new = SyncDevice::open(
        other,
        backend,
        Clock::new(DeviceId::random()),
        SyncOptions::default(),
    )
    .await
    .expect("device");
    let options = FastSyncOptions::default();
    let (sent, received) = transfer(&old, &new, &options, &options).await;
    let received = received.expect_err("refused");
    assert!(
        received.to_string().contains("fast sync failed"),
        "{received}"
    );
    let Error::FastSync(FastSyncError::Verification { problem, .. }) = &received else {
        panic!("{received}")
    };
    assert_eq!(problem, "this device has no collection `note`");
    let Err(Error::FastSync(FastSyncError::Cancelled {
        by_peer: true,
        reason,
        resumable,
    })) = sent
    else {
        panic!("sender: {sent:?}")
    };
    assert_eq!(reason, "this device has no collection `note`");
    assert!(!resumable, "a refusal does not pass");
    assert_eq!(
        new.storage()
            .count("draft", Filter::all())
            .await
            .expect("count"),
        0
    );
}

#[tokio::test]
async fn a_cancel_on_the_sender_ends_both_sides() {
    let fx = Fixture::new();
    let (old, new) = fx.old_and_new().await;
    fill(&old, 1_000).await;
    let cancel = CancelHandle::new();
    let trigger = cancel.clone();
    let options =
        small_batches()
            .with_cancel(cancel)
            .with_progress(Arc::new(move |p: &Progress| {
                if p.objects_done > 100 {
                    trigger.cancel();
                }
            }));
    let receiving = small_batches();
    let (sent, received) = transfer(&old, &new, &options, &receiving).await;
    assert!(
        matches!(
            sent,
            Err(Error::FastSync(FastSyncError::Cancelled {
                by_peer: false,
                ..
            }))
        ),
        "{sent:?}"
    );
    assert!(
        matches!(
            received,
            Err(Error::FastSync(FastSyncError::Cancelled {
                by_peer: true,
                ..
            }))
        ),
        "{received:?}"
    );
}

#[tokio::test]
async fn a_silent_peer_is_reported_as_stalled() {
    let fx = Fixture::new();
    let new = fx.device("new", DeviceId::random()).await;
    let (_quiet, mut b) = memory_channel_pair(4);
    let options = FastSyncOptions::default().with_stall_timeout(Duration::from_millis(200));
    let err = receive_snapshot(&new, &mut b, &options)
        .await
        .expect_err("stalled");
    assert_eq!(err.to_string(), "fast sync failed");
    assert!(
        matches!(err, Error::FastSync(FastSyncError::Stalled(_))),
        "{err}"
    );
}

/// A peer that answers and then stops reading (alive, but stuck) leaves the channel full:
/// the sender's next send waits, and is reported as a stall rather than waiting for ever.
#[tokio::test]
async fn a_peer_that_stops_reading_is_reported_as_stalled() {
    let fx = Fixture::new();
    let old = fx.device("old", DeviceId::random()).await;
    fill(&old, 200).await;
    let (mut a, mut stuck) = memory_channel_pair(1);
    let peer = async {
        let hello = stuck.recv().await.expect("hello");
        assert!(matches!(hello, Some(Package::Hello { .. })), "{hello:?}");
        let ready = Package::Ready {
            resume_after: None,
            merge: false,
            quarantine: false,
        };
        stuck.send(ready).await.expect("ready");
        stuck // kept open, never read again
    };
    let options = small_batches().with_stall_timeout(Duration::from_millis(200));
    let both = async { tokio::join!(send_snapshot(&old, &mut a, &options), peer) };
    let (sent, _stuck) = tokio::time::timeout(Duration::from_secs(20), both)
        .await
        .expect("the sender does not wait for ever");
    let err = sent.expect_err("stalled");
    assert!(
        matches!(err, Error::FastSync(FastSyncError::Stalled(_))),
        "{err}"
    );
}

#[tokio::test]
async fn collections_and_objects_can_be_left_out() {
    let fx = Fixture::new();
    let (old, new) = fx.old_and_new().await;
    fill(&old, 100).await;
    let options = FastSyncOptions::default()
        .with_collections(["note", "draft"])
        .with_filter(Arc::new(
            |collection: &str, object: &storex_core::Object| {
                collection != "note" || object.get("body") != Some(&Value::from(""))
            },
        ));
    let (sent, received) = transfer(&old, &new, &options, &options).await;
    sent.expect("send");
    received.expect("receive");
    assert_eq!(
        new.storage()
            .count("tag", Filter::all())
            .await
            .expect("count"),
        0,
        "tags were not asked for"
    );
    assert_eq!(
        new.storage()
            .count("note", Filter::all())
            .await
            .expect("count"),
        99,
        "the note with an empty body stayed"
    );
    assert_eq!(
        new.storage()
            .count("draft", Filter::all())
            .await
            .expect("count"),
        1
    );
}

async fn paused_transfer(pause_on_sender: bool) {
    let fx = Fixture::new();
    let (old, new) = fx.old_and_new().await;
    fill(&old, 1_500).await;
    let pause = storex_sync::fast_sync::PauseHandle::new();
    let trigger = pause.clone();
    let paused_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = paused_once.clone();
    // A stall timeout far shorter than the pause: a pause must not count as a stall.
    let base = small_batches().with_stall_timeout(Duration::from_secs(1));
    let pausing = base
        .clone()
        .with_pause(pause.clone())
        .with_progress(Arc::new(move |p: &Progress| {
            if p.objects_done > 300 && !flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
                trigger.pause();
            }
        }));
    let (sending, receiving) = if pause_on_sender {
        (pausing, base)
    } else {
        (base, pausing)
    };
    let resumer = tokio::spawn(async move {
        while !pause.is_paused() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        pause.resume();
    });
    let (sent, received) = transfer(&old, &new, &sending, &receiving).await;
    resumer.await.expect("resumer");
    sent.expect("send");
    received.expect("receive");
    assert!(
        paused_once.load(std::sync::atomic::Ordering::SeqCst),
        "the transfer was paused"
    );
    assert_same(&old, &new).await;
}

#[tokio::test]
async fn a_pause_on_the_sender_holds_the_transfer_without_a_stall() {
    paused_transfer(true).await;
}

#[tokio::test]
async fn a_pause_on_the_receiver_holds_the_transfer_without_a_stall() {
    paused_transfer(false).await;
}

#[tokio::test]
async fn an_exchange_merges_two_devices_both_ways() {
    use storex_sync::fast_sync::{exchange, Turn};
    let fx = Fixture::new();
    let (a, b) = (
        fx.device("a", DeviceId::random()).await,
        fx.device("b", DeviceId::random()).await,
    );
    let shared = a
        .storage()
        .create("note", object! { "title" => "shared", "body" => "v0" })
        .await
        .expect("write");
    // b starts with a copy of a.
    let (sent, received) = transfer(&a, &b, &small_batches(), &small_batches()).await;
    sent.expect("send");
    received.expect("receive");
    // Both go their own way.
    a.storage()
        .create("note", object! { "title" => "only on a" })
        .await
        .expect("write");
    b.storage()
        .create("note", object! { "title" => "only on b" })
        .await
        .expect("write");
    b.storage()
        .create("tag", object! { "note" => "x", "name" => "from b" })
        .await
        .expect("write");
    a.storage()
        .update_by_pk(
            "note",
            shared.clone(),
            object! { "title" => "edited on a", "body" => "a's body" },
        )
        .await
        .expect("edit");
    tokio::time::sleep(Duration::from_millis(3)).await;
    b.storage()
        .update_by_pk(
            "note",
            shared.clone(),
            object! { "title" => "edited on b, later" },
        )
        .await
        .expect("edit");

    let (mut ca, mut cb) = memory_channel_pair(4);
    let options = small_batches();
    let (ra, rb) = tokio::join!(
        exchange(&a, &mut ca, &options, Turn::SendFirst),
        exchange(&b, &mut cb, &options, Turn::ReceiveFirst)
    );
    ra.expect("a's side");
    rb.expect("b's side");
    assert_same(&a, &b).await;
    let merged = a
        .storage()
        .find_by_pk("note", shared)
        .await
        .expect("find")
        .expect("exists");
    assert_eq!(
        merged["title"],
        Value::from("edited on b, later"),
        "the later edit of the field wins"
    );
    assert_eq!(
        merged["body"],
        Value::from("a's body"),
        "fields only a edited keep a's value"
    );
    assert_eq!(
        a.storage()
            .count("note", Filter::all())
            .await
            .expect("count"),
        3
    );
    assert_eq!(
        a.storage()
            .count("tag", Filter::all())
            .await
            .expect("count"),
        1
    );
}

/// A fresh receiver skips looking up each key of a batch when nothing of its own lies in the
/// batch's key range; an object the app wrote meanwhile inside that range is still found and
/// kept as it is (no duplicate-key failure, no overwrite).
#[tokio::test]
async fn an_object_written_during_the_transfer_is_kept_by_a_fresh_receiver() {
    let fx = Fixture::new();
    let new = fx.device("new", DeviceId::random()).await;
    let (mut a, mut b) = memory_channel_pair(4);
    let options = FastSyncOptions::default();
    let sender = async {
        begin_copy(&mut a, vec![info("draft", 6)]).await;
        let batch = |seq: u64, ids: [i64; 3]| Package::Batch {
            seq,
            collection: "draft".into(),
            objects: EncodedObjects::encode(
                &ids.iter()
                    .map(|id| object! { "id" => *id, "text" => "sent" })
                    .collect::<Vec<_>>(),
            ),
        };
        a.send(batch(1, [1, 2, 3])).await.expect("batch 1");
        assert!(matches!(a.recv().await, Ok(Some(Package::Ack { seq: 1 }))));
        // The app on the new device writes key 20 while the transfer runs.
        new.storage()
            .create("draft", object! { "id" => 20, "text" => "local" })
            .await
            .expect("local write");
        a.send(batch(2, [10, 20, 30])).await.expect("batch 2");
        let ack = tokio::time::timeout(Duration::from_secs(10), a.recv()).await;
        assert!(
            matches!(ack, Ok(Ok(Some(Package::Ack { seq: 2 })))),
            "batch 2 was not applied: {ack:?}"
        );
        drop(a); // the receiver sees the channel close
    };
    let (_, received) = tokio::join!(sender, receive_snapshot(&new, &mut b, &options));
    assert!(received.is_err(), "the hand-made sender never finishes");
    let texts: Vec<(i64, String)> = new
        .storage()
        .find_many("draft", storex_core::Query::default())
        .await
        .expect("drafts")
        .iter()
        .map(|o| {
            (
                o["id"].as_int().expect("id"),
                o["text"].as_text().expect("text").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(i64, String)> = [1, 2, 3, 10, 20, 30]
        .iter()
        .map(|id| (*id, if *id == 20 { "local" } else { "sent" }.to_owned()))
        .collect();
    assert_eq!(texts, expected);
}

/// Every entry of the log of `device`.
async fn log_entries(device: &SyncDevice) -> Vec<storex_sync::LogEntry> {
    device
        .log()
        .all()
        .await
        .expect("log")
        .entries
        .into_iter()
        .map(|s| s.entry)
        .collect()
}

/// The entries of `collection` in the log of `device`.
async fn log_entries_of(device: &SyncDevice, collection: &str) -> Vec<storex_sync::LogEntry> {
    let mut entries = log_entries(device).await;
    entries.retain(|e| e.collection == collection);
    entries
}

/// The objects the versions index of `device` describes, as `collection` and key text.
async fn versions_of(device: &SyncDevice) -> Vec<(String, String)> {
    versions_rows(device)
        .await
        .into_keys()
        .filter_map(|id| {
            let (collection, pk) = id.split_once('\u{1f}')?;
            Some((collection.to_owned(), pk.to_owned()))
        })
        .collect()
}

/// Every row of the versions index of `device`, as stored.
async fn versions_table(device: &SyncDevice) -> Vec<storex_core::Object> {
    device
        .storage()
        .find_many(
            storex_sync::VERSIONS_COLLECTION,
            storex_core::Query::default(),
        )
        .await
        .expect("versions")
}

/// The rows of the versions index of `device`, by object id, without the clock's.
async fn versions_rows(device: &SyncDevice) -> std::collections::BTreeMap<String, Value> {
    versions_table(device)
        .await
        .into_iter()
        .filter_map(|row| {
            let id = row.get("object").and_then(Value::as_text)?.to_owned();
            let state = row.get("state").cloned()?;
            (!id.starts_with('\u{1f}')).then_some((id, state))
        })
        .collect()
}

#[tokio::test]
async fn what_is_left_out_does_not_travel_in_the_log_either() {
    let fx = Fixture::new();
    let (old, new) = fx.old_and_new().await;
    fill(&old, 100).await;
    let empty_body = old
        .storage()
        .find_one(
            "note",
            storex_core::Query::new(Filter::all().eq("body", "")),
        )
        .await
        .expect("find")
        .expect("the note with an empty body");
    let left_out_pk = storex_core::Pk(vec![empty_body["id"].clone()]);
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let recorder = seen.clone();
    let options = FastSyncOptions::default()
        .with_collections(["note", "draft"])
        .with_progress(Arc::new(move |p: &Progress| {
            recorder.lock().expect("lock").push(p.clone())
        }))
        .with_filter(Arc::new(
            |collection: &str, object: &storex_core::Object| {
                collection != "note" || object.get("body") != Some(&Value::from(""))
            },
        ));
    // A receiver with data of its own merges the log: it must not create what was left out.
    let merging = fx.device("merging", DeviceId::random()).await;
    merging
        .storage()
        .create("note", object! { "title" => "its own" })
        .await
        .expect("own note");
    for receiver in [&new, &merging] {
        seen.lock().expect("lock").clear();
        let (sent, received) = transfer(&old, receiver, &options, &options).await;
        sent.expect("send");
        received.expect("receive");
        // Both sides' bars end full: 99 of the 100 notes travelled.
        let last_of_notes: Vec<(u64, u64)> = seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|p| p.collection == "note")
            .map(|p| (p.objects_done, p.objects_total))
            .filter(|(done, _)| *done == 99)
            .collect();
        assert_eq!(last_of_notes.last(), Some(&(99, 99)), "{last_of_notes:?}");
        assert_eq!(
            last_of_notes.iter().filter(|p| **p == (99, 99)).count(),
            2,
            "the sender's and the receiver's"
        );
        assert!(log_entries_of(receiver, "tag").await.is_empty(), "tags");
        assert!(
            log_entries_of(receiver, "note")
                .await
                .iter()
                .all(|e| e.pk != left_out_pk),
            "the left-out note's entry"
        );
        let versions = versions_of(receiver).await;
        assert!(versions.iter().all(|(c, _)| c == "note"), "tags' versions");
        let left_out_text = storex_core::serde_json::to_string(&left_out_pk).expect("key");
        assert!(
            versions.iter().all(|(_, pk)| *pk != left_out_text),
            "the left-out note's versions"
        );
        assert_eq!(
            receiver
                .storage()
                .count("tag", Filter::all())
                .await
                .expect("count"),
            0
        );
    }
    assert_eq!(
        merging
            .storage()
            .count("note", Filter::all())
            .await
            .expect("count"),
        100,
        "99 sent and its own"
    );
}

/// A hand-driven sender: sends `hello`, expects `Ready`, then sends `packages` and returns
/// what came back until the channel closed or went quiet.
async fn scripted_sender(
    channel: &mut MemoryChannel,
    collections: Vec<storex_sync::fast_sync::CollectionInfo>,
    packages: Vec<Package>,
) -> Vec<Package> {
    let opening = hello(collections, 7, None);
    channel.send(opening).await.expect("hello");
    let mut replies = Vec::new();
    for package in packages {
        if channel.send(package).await.is_err() {
            break;
        }
    }
    while let Ok(Ok(Some(reply))) =
        tokio::time::timeout(Duration::from_millis(300), channel.recv()).await
    {
        replies.push(reply);
    }
    replies
}

fn info(name: &str, objects: u64) -> storex_sync::fast_sync::CollectionInfo {
    storex_sync::fast_sync::CollectionInfo {
        name: name.into(),
        schema_version: 1,
        objects,
    }
}

#[tokio::test]
async fn a_sender_that_finishes_without_its_checksums_is_refused() {
    let fx = Fixture::new();
    let new = fx.device("new", DeviceId::random()).await;
    let (mut a, mut b) = memory_channel_pair(8);
    let options = FastSyncOptions::default();
    let script = vec![
        Package::Batch {
            seq: 1,
            collection: "draft".into(),
            objects: EncodedObjects::encode(&[object! { "id" => 1, "text" => "one" }]),
        },
        Package::Finish,
    ];
    let (replies, received) = tokio::join!(
        scripted_sender(&mut a, vec![info("draft", 5)], script),
        receive_snapshot(&new, &mut b, &options)
    );
    let err = received.expect_err("refused");
    assert!(
        matches!(&err, Error::FastSync(FastSyncError::Verification { collection, .. }) if collection == "draft"),
        "{err:?}"
    );
    assert!(
        replies.iter().any(|p| matches!(p, Package::Cancel { .. })),
        "{replies:?}"
    );
    let cursor = new
        .storage()
        .count(
            storex_sync::STATE_COLLECTION,
            Filter::all().eq("key", "shared_log_cursor"),
        )
        .await
        .expect("count");
    assert_eq!(cursor, 0, "no cursor handed over");
}

#[tokio::test]
async fn a_sender_cannot_write_the_receivers_sync_state() {
    let fx = Fixture::new();
    let new = fx.device("new", DeviceId::random()).await;
    let (mut a, mut b) = memory_channel_pair(8);
    let options = FastSyncOptions::default();
    let (_, received) = tokio::join!(
        scripted_sender(
            &mut a,
            vec![info(storex_sync::STATE_COLLECTION, 1)],
            Vec::new()
        ),
        receive_snapshot(&new, &mut b, &options)
    );
    let err = received.expect_err("refused");
    assert!(
        matches!(&err, Error::FastSync(FastSyncError::Verification { problem, .. }) if problem.contains("own sync state")),
        "{err:?}"
    );
}

/// One row of a real device's log, as a sender would send it.
async fn a_log_row(fx: &Fixture) -> storex_core::Object {
    let donor = fx.device("donor", DeviceId::random()).await;
    donor
        .storage()
        .create("note", object! { "title" => "t" })
        .await
        .expect("note");
    donor.log().index_journal().await.expect("indexed");
    donor
        .storage()
        .find_many(storex_sync::LOG_COLLECTION, storex_core::Query::default())
        .await
        .expect("log rows")
        .remove(0)
}

#[tokio::test]
async fn log_entries_that_do_not_read_back_or_are_of_sync_own_end_the_session() {
    let fx = Fixture::new();
    let row = a_log_row(&fx).await;
    let mut unreadable = row.clone();
    unreadable.insert("hlc".into(), Value::from("zzzz"));
    let mut sync_own = row.clone();
    sync_own.insert(
        "collection".into(),
        Value::from(storex_sync::STATE_COLLECTION),
    );
    let cases = [("unreadable", unreadable), ("of sync's own", sync_own)];
    for (what, bad) in cases {
        let new = fx.device(&format!("new {what}"), DeviceId::random()).await;
        let (mut a, mut b) = memory_channel_pair(8);
        let options = FastSyncOptions::default();
        let script = vec![Package::Batch {
            seq: 1,
            collection: storex_sync::LOG_COLLECTION.into(),
            objects: EncodedObjects::encode(&[row.clone(), bad]),
        }];
        let (replies, received) = tokio::join!(
            scripted_sender(&mut a, vec![info(storex_sync::LOG_COLLECTION, 2)], script),
            receive_snapshot(&new, &mut b, &options)
        );
        let err = received.expect_err(what);
        // The sender is told why, not left with a closed channel.
        assert!(
            replies
                .iter()
                .any(|p| matches!(p, Package::Cancel { reason, .. } if !reason.is_empty())),
            "{what}: {replies:?}"
        );
        assert!(
            matches!(
                &err,
                Error::FastSync(FastSyncError::Protocol(_) | FastSyncError::Verification { .. })
            ),
            "{what}: {err:?}"
        );
        assert!(
            new.log().is_empty().await.expect("log"),
            "{what}: nothing kept"
        );
        let later = new.clock().now();
        assert!(
            later.millis < 999_999_999_999_999,
            "{what}: the clock did not jump"
        );
    }
}

/// The entries a sender holds back because they came from too far ahead, or because they
/// name one of sync's own collections, do not end a copy from it: the first travel and stay
/// held on the receiver without moving its clock (as pulled ones would), the others stay
/// behind and are reported.
#[tokio::test]
async fn entries_held_for_clock_drift_or_naming_sync_own_do_not_end_a_copy() {
    let fx = Fixture::new();
    let (old, new) = fx.old_and_new().await;
    fill(&old, 5).await;
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits");
    let two_days = 48 * 3_600 * 1_000;
    let stranger = DeviceId::random();
    let entry = |millis: u64, collection: &str| storex_sync::LogEntry {
        id: storex_core::uuid::Uuid::now_v7(),
        device: stranger,
        hlc: Hlc {
            millis,
            counter: 0,
            device: stranger,
        },
        collection: collection.into(),
        pk: storex_core::Pk::from(storex_core::uuid::Uuid::now_v7().to_string()),
        op: EntryOp::Create,
        fields: object! { "title" => "from the future" },
        schema_version: 1,
    };
    let integrated = old
        .integrate(vec![
            entry(now_ms + two_days, "note"),
            entry(now_ms + 1_000, storex_sync::LOG_COLLECTION),
        ])
        .await
        .expect("integrate");
    assert_eq!(integrated.held.len(), 2, "{integrated:?}");

    let (sent, received) = transfer(&old, &new, &small_batches(), &small_batches()).await;
    let sent = sent.expect("sent");
    received.expect("received");
    assert_same(&old, &new).await;
    let held = new.log().held().await.expect("held").entries;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].collection, "note");
    let stamped = new.clock().now();
    assert!(
        stamped.millis < now_ms + two_days / 2,
        "the clock jumped to a held entry's time: {stamped}"
    );
    assert!(
        sent.damaged.iter().any(|d| d.contains("sync's own")),
        "{:?}",
        sent.damaged
    );
    // Still held, and tried again, on the receiver.
    let retried = new.retry_held().await.expect("retry");
    assert_eq!(retried.held.len(), 1, "still too far ahead: {retried:?}");
}

/// `note` as an app of schema version `version` defines it, with `fields` beside its key
/// and title: (name, required, default); and the `draft` the fixture keeps local.
fn notes_of_version(version: u32, fields: &[(&str, bool, Option<i64>)]) -> Registry {
    let mut note = CollectionDef::new("note")
        .field("id", FieldType::Uuid)
        .field("title", FieldType::Text);
    for (name, required, default) in fields {
        note = match required {
            true => note.field(*name, FieldType::Int),
            false => note.optional_field(*name, FieldType::Int),
        };
        if let Some(default) = default {
            note = note.default_value(*name, *default);
        }
    }
    Registry::builder()
        .collection(note.primary_key(["id"]).version(version))
        .collection(
            CollectionDef::new("draft")
                .field("id", FieldType::Int)
                .primary_key(["id"]),
        )
        .build()
        .expect("registry")
}

/// A copy from an app one schema version behind: the fields the newer one dropped are left
/// out, those it added take their defaults; one it added as required without a default
/// refuses the offer by name, before anything moves.
#[tokio::test]
async fn a_copy_from_an_older_schema_leaves_out_dropped_fields_and_needs_defaults_for_added_ones() {
    let fx = Fixture::new();
    let old = fx
        .device_of(
            "old",
            DeviceId::random(),
            notes_of_version(1, &[("color", true, None)]),
        )
        .await;
    for i in 0..3 {
        old.storage()
            .create("note", object! { "title" => format!("n{i}"), "color" => i })
            .await
            .expect("note");
    }
    let newer = notes_of_version(2, &[("stars", true, Some(5))]);
    let new = fx.device_of("new", DeviceId::random(), newer).await;
    let (sent, received) = transfer(&old, &new, &small_batches(), &small_batches()).await;
    sent.expect("sent");
    received.expect("received");
    let notes = new
        .storage()
        .find_many("note", storex_core::Query::default())
        .await
        .expect("notes");
    assert_eq!(notes.len(), 3);
    for note in &notes {
        assert!(!note.contains_key("color"), "{note:?}");
        assert_eq!(note["stars"], Value::from(5), "{note:?}");
    }

    let without_default = notes_of_version(2, &[("stars", true, None)]);
    let refusing = fx
        .device_of("refusing", DeviceId::random(), without_default)
        .await;
    let (_, received) = transfer(&old, &refusing, &small_batches(), &small_batches()).await;
    let err = received.expect_err("refused");
    let chain = storex_core::error_chain(&err);
    assert!(
        chain.contains("`stars`") && chain.contains("without a default"),
        "{chain}"
    );
    assert!(!err.is_transient(), "{err}");
    let none = refusing
        .storage()
        .find_many("note", storex_core::Query::default())
        .await
        .expect("notes");
    assert!(none.is_empty(), "{none:?}");
}

#[tokio::test]
async fn a_log_row_sent_as_applied_is_stored_as_held() {
    let fx = Fixture::new();
    let mut row = a_log_row(&fx).await;
    row.insert("integrated".into(), Value::Bool(true));
    let new = fx.device("new", DeviceId::random()).await;
    let (mut a, mut b) = memory_channel_pair(8);
    let script = vec![Package::Batch {
        seq: 1,
        collection: storex_sync::LOG_COLLECTION.into(),
        objects: EncodedObjects::encode(&[row]),
    }];
    let options = FastSyncOptions::default();
    let (replies, received) = tokio::join!(
        async {
            let collections = vec![info(storex_sync::LOG_COLLECTION, 1)];
            let replies = scripted_sender(&mut a, collections, script).await;
            drop(a); // the sender goes away after its batch
            replies
        },
        receive_snapshot(&new, &mut b, &options)
    );
    assert!(
        replies.iter().any(|p| matches!(p, Package::Ack { seq: 1 })),
        "{replies:?}"
    );
    assert!(received.is_err(), "unfinished");
    let stored = new
        .storage()
        .find_many(storex_sync::LOG_COLLECTION, storex_core::Query::default())
        .await
        .expect("log rows");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["integrated"], Value::Bool(false), "{stored:?}");
    assert_eq!(new.log().held().await.expect("held").entries.len(), 1);
}

#[tokio::test]
async fn a_peer_that_sends_without_end_during_a_pause_ends_the_session() {
    let fx = Fixture::new();
    let new = fx.device("new", DeviceId::random()).await;
    let pause = storex_sync::fast_sync::PauseHandle::new();
    pause.pause();
    let options = FastSyncOptions::default().with_pause(pause);
    // Room for everything the script sends, so that it never waits on the channel.
    let (mut a, mut b) = memory_channel_pair(2_048);
    // Far more batches than any window: a receiver that kept them all could be made to
    // hold any amount of memory.
    let batches = (1..=1_100)
        .map(|seq| Package::Batch {
            seq,
            collection: "draft".into(),
            objects: EncodedObjects::encode(&[object! { "id" => seq as i64, "text" => "x" }]),
        })
        .collect();
    let both = async {
        tokio::join!(
            scripted_sender(&mut a, vec![info("draft", 1_100)], batches),
            receive_snapshot(&new, &mut b, &options)
        )
    };
    let (_, received) = tokio::time::timeout(Duration::from_secs(30), both)
        .await
        .expect("the receiver does not wait for ever");
    let err = received.expect_err("ended");
    assert!(
        matches!(&err, Error::FastSync(FastSyncError::Protocol(p)) if p.contains("during a pause")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_peer_that_pauses_and_vanishes_is_reported_as_stalled_and_cancel_works_meanwhile() {
    let fx = Fixture::new();
    // Vanished: it paused, then said nothing more (the connection stays open).
    let new = fx.device("new", DeviceId::random()).await;
    let (mut a, mut b) = memory_channel_pair(8);
    let options = FastSyncOptions::default().with_stall_timeout(Duration::from_millis(300));
    let quiet = async {
        scripted_sender(&mut a, vec![info("draft", 1)], vec![Package::Pause]).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    };
    let received = tokio::select! {
        received = receive_snapshot(&new, &mut b, &options) => received,
        () = quiet => panic!("the receiver waited for ever"),
    };
    assert!(
        matches!(received, Err(Error::FastSync(FastSyncError::Stalled(_)))),
        "{received:?}"
    );

    // Cancelled here while the peer holds a pause (it keeps repeating it).
    let new = fx.device("new 2", DeviceId::random()).await;
    let (mut a, mut b) = memory_channel_pair(8);
    let cancel = CancelHandle::new();
    let options = FastSyncOptions::default()
        .with_stall_timeout(Duration::from_secs(60))
        .with_cancel(cancel.clone());
    let pausing = async {
        scripted_sender(&mut a, vec![info("draft", 1)], vec![Package::Pause]).await;
        cancel.cancel();
        let mut seen = Vec::new();
        while let Ok(Ok(Some(p))) = tokio::time::timeout(Duration::from_secs(1), a.recv()).await {
            seen.push(p);
        }
        seen
    };
    let (seen, received) = tokio::join!(pausing, receive_snapshot(&new, &mut b, &options));
    assert!(
        matches!(
            received,
            Err(Error::FastSync(FastSyncError::Cancelled {
                by_peer: false,
                ..
            }))
        ),
        "{received:?}"
    );
    assert!(
        seen.iter().any(|p| matches!(p, Package::Cancel { .. })),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_receiver_that_deleted_an_object_does_not_get_it_back() {
    let fx = Fixture::new();
    let (old, new) = fx.old_and_new().await;
    fill(&old, 20).await;
    let options = FastSyncOptions::default();
    let (sent, received) = transfer(&old, &new, &options, &options).await;
    sent.expect("send");
    received.expect("receive");
    // The new device deletes everything; its tables are empty, its log knows the deletes.
    for collection in ["note", "tag"] {
        new.storage()
            .delete_where(collection, Filter::all())
            .await
            .expect("delete");
    }
    let (sent, received) = transfer(&old, &new, &options, &options).await;
    sent.expect("send again");
    received.expect("receive again");
    for collection in ["note", "tag"] {
        assert_eq!(
            new.storage()
                .count(collection, Filter::all())
                .await
                .expect("count"),
            0,
            "{collection}: the later deletes win"
        );
    }
}

/// Changes of two devices to one note: X creates it, Y renames it, and X, having seen that,
/// renames it again (a later change).
async fn three_way_note(fx: &Fixture) -> (Vec<storex_sync::LogEntry>, storex_sync::LogEntry) {
    let x = fx.device("x", DeviceId::random()).await;
    let y = fx.device("y", DeviceId::random()).await;
    let id = x
        .storage()
        .create("note", object! { "title" => "first" })
        .await
        .expect("note");
    let x_create = x.log().unshared(10).await.expect("entries");
    y.integrate(x_create.clone()).await.expect("y has it");
    y.storage()
        .update_by_pk("note", id.clone(), object! { "title" => "by y" })
        .await
        .expect("y renames");
    let y_rename = y.log().unshared(10).await.expect("entries");
    let y_rename = y_rename
        .into_iter()
        .find(|e| e.op == storex_sync::EntryOp::Update)
        .expect("y's rename");
    // X sees Y's rename, then renames the note itself: a later change.
    x.integrate(vec![y_rename.clone()]).await.expect("x has it");
    x.storage()
        .update_by_pk("note", id, object! { "title" => "by x" })
        .await
        .expect("x renames");
    let x_all = x.log().unshared(10).await.expect("entries");
    assert_eq!(x_all.len(), 2, "x's create and rename");
    assert!(x_all.iter().all(|e| e.device == x.device()));
    assert!(x_all[1].hlc > y_rename.hlc);
    (x_all, y_rename)
}

#[tokio::test]
async fn the_versions_of_applied_changes_move_with_the_snapshot() {
    let fx = Fixture::new();
    let (x_entries, y_rename) = three_way_note(&fx).await;
    // The old device applied X's changes (not Y's yet): they live in its versions index.
    let (old, new) = fx.old_and_new().await;
    old.integrate(x_entries).await.expect("old applies x");
    assert!(old.log().all().await.expect("log").entries.is_empty());
    let (sent, received) = transfer(&old, &new, &small_batches(), &small_batches()).await;
    sent.expect("send");
    received.expect("receive");
    assert_same(&old, &new).await;
    // Y's rename arrives at both: it is older than X's, so both keep X's title. Without the
    // versions, the new device would take the note for data from before sync and apply it.
    for device in [&old, &new] {
        let report = device.integrate(vec![y_rename.clone()]).await.expect("y");
        assert_eq!((report.operations, report.conflicts), (0, 1), "{report:?}");
    }
    assert_same(&old, &new).await;
}

#[tokio::test]
async fn a_merge_reconciles_the_senders_versions_with_the_receivers_data() {
    let fx = Fixture::new();
    let (x_entries, y_rename) = three_way_note(&fx).await;
    let (old, new) = fx.old_and_new().await;
    old.integrate(x_entries.clone())
        .await
        .expect("old applies x");
    // The new device has data of its own, and the note with Y's older rename: a merge.
    new.storage()
        .create("note", object! { "title" => "mine" })
        .await
        .expect("own note");
    new.integrate(vec![x_entries[0].clone(), y_rename])
        .await
        .expect("new applies x's create and y's rename");
    let (sent, received) = transfer(&old, &new, &small_batches(), &small_batches()).await;
    sent.expect("send");
    received.expect("receive");
    // X's rename is newer than Y's: the new device takes it from the sender's versions.
    let titles: Vec<String> = new
        .storage()
        .find_many("note", storex_core::Query::default())
        .await
        .expect("notes")
        .iter()
        .filter_map(|n| n.get("title").and_then(Value::as_text).map(str::to_owned))
        .collect();
    assert!(titles.contains(&"by x".to_owned()), "{titles:?}");
    assert!(!titles.contains(&"by y".to_owned()), "{titles:?}");
    assert!(new.log().held().await.expect("held").entries.is_empty());
    // A device with data of its own that never had the note takes it, and holds back
    // nothing of what the sender's versions say.
    let third = fx.device("third", DeviceId::random()).await;
    third
        .storage()
        .create("note", object! { "title" => "its own" })
        .await
        .expect("own note");
    let (sent, received) = transfer(&old, &third, &small_batches(), &small_batches()).await;
    sent.expect("send");
    received.expect("receive");
    assert!(third.log().held().await.expect("held").entries.is_empty());
    assert_eq!(
        third
            .storage()
            .count("note", Filter::all())
            .await
            .expect("count"),
        2
    );
}

#[tokio::test]
async fn a_log_with_many_changes_per_object_arrives_folded_into_versions() {
    let fx = Fixture::new();
    let (old, new) = fx.old_and_new().await;
    fill(&old, 150).await;
    let notes = old
        .storage()
        .find_many("note", storex_core::Query::default().skip(40).limit(4))
        .await
        .expect("notes");
    let ids: Vec<Value> = notes.iter().map(|n| n["id"].clone()).collect();
    // In key order after 40 notes (the sender's first page of the log holds 64 entries), one
    // note changed more often than any page holds (2,000 entries at most), two a few times,
    // one deleted and created again.
    let renames = (0..2_100)
        .map(|i| {
            BatchStep::new(Operation::update_by_pk(
                "note",
                ids[0].clone(),
                object! { "title" => format!("v{i}") },
            ))
        })
        .collect();
    old.storage().batch(renames).await.expect("renames");
    for i in 0..5 {
        old.storage()
            .update_by_pk(
                "note",
                ids[1].clone(),
                object! { "body" => format!("b{i}") },
            )
            .await
            .expect("update");
    }
    old.storage()
        .update_by_pk("note", ids[2].clone(), object! { "title" => "once" })
        .await
        .expect("update");
    old.storage()
        .delete_by_pk("note", ids[3].clone())
        .await
        .expect("delete");
    old.storage()
        .create(
            "note",
            object! { "id" => ids[3].clone(), "title" => "again" },
        )
        .await
        .expect("create again");
    // A note made elsewhere (the sender knows it by its versions) and then edited here (an
    // entry in the sender's log): both go into its one row of versions.
    let elsewhere = fx.device("elsewhere", DeviceId::random()).await;
    let made = elsewhere
        .storage()
        .create("note", object! { "title" => "from elsewhere" })
        .await
        .expect("create elsewhere");
    let from_elsewhere = log_entries_of(&elsewhere, "note").await;
    old.integrate(from_elsewhere.clone())
        .await
        .expect("taken in");
    old.storage()
        .update_by_pk("note", made.clone(), object! { "body" => "edited here" })
        .await
        .expect("edited");
    let (sent, received) = transfer(&old, &new, &small_batches(), &small_batches()).await;
    assert_eq!(
        sent.expect("send").objects,
        151 + 300 + 1 + (151 + 300),
        "the rows (and the draft, not synced), then the versions of each once"
    );
    received.expect("receive");
    assert_same(&old, &new).await;
    assert!(new.log().all().await.expect("log").entries.is_empty());
    assert_eq!(
        versions_of(&new).await.len(),
        151 + 300,
        "one row per object"
    );
    // Every entry of the sender's, and the one it took in, is known to the receiver:
    let entries = log_entries(&old).await;
    let everything: Vec<_> = entries.iter().cloned().chain(from_elsewhere).collect();
    // The receiver's versions are those of a device that received every one of them.
    let third = fx.device("third", DeviceId::random()).await;
    third
        .integrate(everything.clone())
        .await
        .expect("every change");
    assert_eq!(versions_rows(&new).await, versions_rows(&third).await);
    let report = new.integrate(everything).await.expect("again");
    assert_eq!(report.operations, 0, "{report:?}");
    assert_same(&old, &new).await;
    // A change made elsewhere before the last rename loses to it on both devices.
    let last_rename = entries
        .iter()
        .filter(|e| e.pk.single() == Some(&ids[0]) && e.fields.contains_key("title"))
        .map(|e| e.hlc)
        .max()
        .expect("the renames");
    let older = |pk: &Value, hlc: storex_sync::Hlc| storex_sync::LogEntry {
        id: storex_core::uuid::Uuid::now_v7(),
        device: elsewhere.device(),
        hlc: storex_sync::Hlc {
            millis: hlc.millis - 1,
            counter: 0,
            device: elsewhere.device(),
        },
        collection: "note".into(),
        pk: storex_core::Pk(vec![pk.clone()]),
        op: EntryOp::Update,
        fields: object! { "title" => "older", "body" => "older body" },
        schema_version: 1,
    };
    let made_at = log_entries_of(&elsewhere, "note").await[0].hlc;
    let made_id = made.single().cloned().expect("a one-field key");
    let late = vec![older(&ids[0], last_rename), older(&made_id, made_at)];
    let mut reports = Vec::new();
    for device in [&old, &new] {
        let report = device.integrate(late.clone()).await.expect("older");
        reports.push((report.operations, report.conflicts));
        for (id, title) in [(&ids[0], "v2099"), (&made_id, "from elsewhere")] {
            let note = device
                .storage()
                .find_by_pk("note", id.clone())
                .await
                .expect("find")
                .expect("the note");
            assert_eq!(note["title"], Value::from(title), "the later title stays");
        }
    }
    assert_eq!(reports[0], reports[1]);
    assert!(
        reports[0].1 > 0,
        "the older titles are conflicts: {reports:?}"
    );
    assert_same(&old, &new).await;
    // A device with a note of its own, that took in the note made elsewhere before it was
    // edited on the sender, merges: it gets the versions with the values of the sender's
    // rows, and ends with every note the sender has, as the sender has it.
    let merging = fx.device("merging", DeviceId::random()).await;
    merging
        .storage()
        .create("note", object! { "title" => "its own" })
        .await
        .expect("own note");
    let made_elsewhere = log_entries_of(&elsewhere, "note").await;
    merging.integrate(made_elsewhere).await.expect("taken in");
    let (sent, received) = transfer(&old, &merging, &small_batches(), &small_batches()).await;
    sent.expect("send");
    received.expect("receive");
    let notes = old
        .storage()
        .find_many("note", storex_core::Query::default())
        .await
        .expect("notes");
    for note in &notes {
        let there = merging
            .storage()
            .find_by_pk("note", note["id"].clone())
            .await
            .expect("find");
        assert_eq!(there.as_ref(), Some(note));
    }
    let count = merging.storage().count("note", Filter::all()).await;
    assert_eq!(count.expect("count"), notes.len() as u64 + 1, "and its own");
}

#[tokio::test]
async fn a_row_from_before_sync_arrives_with_versions_that_keep_no_values() {
    let fx = Fixture::new();
    let backend: Arc<dyn StorageBackend> = Arc::new(
        SeaOrmBackend::open_sqlite_file(fx.dir.path().join("adopted.db"))
            .await
            .expect("open"),
    );
    let old = SyncDevice::open(
        registry(),
        backend.clone(),
        Clock::new(DeviceId::random()),
        SyncOptions::default().exclude("draft"),
    )
    .await
    .expect("device");
    // A note written before sync was added (straight to the database, no log), then edited.
    let id = storex_core::uuid::Uuid::now_v7();
    backend
        .execute(Operation::create(
            "note",
            object! { "id" => id, "title" => "from before", "body" => "old body" },
        ))
        .await
        .expect("unlogged row");
    old.storage()
        .update_by_pk("note", id, object! { "body" => "a distinctive body" })
        .await
        .expect("edit");
    let new = fx.device("new", DeviceId::random()).await;
    let (sent, received) = transfer(&old, &new, &small_batches(), &small_batches()).await;
    sent.expect("send");
    received.expect("receive");
    assert_same(&old, &new).await;
    // The versions know no create of it, but it has a row: they keep no value of it.
    let rows = versions_rows(&new).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let Some(Value::Blob(state)) = rows.values().next() else {
        panic!("a state: {rows:?}");
    };
    assert!(
        !state
            .windows(b"distinctive".len())
            .any(|w| w == b"distinctive"),
        "the row's value is kept beside it"
    );
}

#[tokio::test]
async fn the_same_object_twice_in_a_batch_of_versions_ends_the_session() {
    let fx = Fixture::new();
    let (x_entries, _) = three_way_note(&fx).await;
    let donor = fx.device("donor", DeviceId::random()).await;
    donor.integrate(x_entries).await.expect("applied");
    let row = versions_table(&donor)
        .await
        .into_iter()
        .find(|row| {
            row.get("object")
                .and_then(Value::as_text)
                .is_some_and(|id| id.starts_with("note"))
        })
        .expect("the note's versions");
    // The same row under an object of sync's own state: no device has versions of those.
    let mut sync_own = row.clone();
    let id = row
        .get("object")
        .and_then(Value::as_text)
        .unwrap_or_default();
    let renamed = id.replacen("note", storex_sync::STATE_COLLECTION, 1);
    sync_own.insert("object".into(), Value::from(renamed));
    // And under a key that does not read.
    let mut bad_key = row.clone();
    let unreadable = format!("note{}not a key", '\u{1f}');
    bad_key.insert("object".into(), Value::from(unreadable));
    let cases = [
        ("twice", vec![row.clone(), row]),
        ("sync's own", vec![sync_own]),
        ("does not read back", vec![bad_key]),
    ];
    for (problem, rows) in cases {
        let new = fx.device(problem, DeviceId::random()).await;
        let (mut a, mut b) = memory_channel_pair(8);
        let script = vec![Package::Batch {
            seq: 1,
            collection: storex_sync::VERSIONS_COLLECTION.into(),
            objects: EncodedObjects::encode(&rows),
        }];
        let options = FastSyncOptions::default();
        let collections = vec![info(storex_sync::VERSIONS_COLLECTION, rows.len() as u64)];
        let (_, received) = tokio::join!(
            scripted_sender(&mut a, collections, script),
            receive_snapshot(&new, &mut b, &options)
        );
        let err = received.expect_err("refused");
        assert!(
            matches!(&err, Error::FastSync(FastSyncError::Protocol(p)) if p.contains(problem)),
            "{err:?}"
        );
        assert!(versions_rows(&new).await.is_empty(), "nothing kept");
    }
}

/// A fresh receiver stores a batch of versions with puts: versions integration stored
/// meanwhile (here: a peer's update received while the transfer runs) are replaced by the
/// sender's, with no duplicate-key failure.
#[tokio::test]
async fn a_batch_of_versions_replaces_what_integration_stored_during_the_transfer() {
    let fx = Fixture::new();
    let (x_entries, y_rename) = three_way_note(&fx).await;
    let donor = fx.device("donor", DeviceId::random()).await;
    donor.integrate(x_entries).await.expect("applied");
    let sent = versions_rows(&donor).await;
    let (id, _) = sent.iter().next().expect("the note's versions");
    let row = versions_table(&donor)
        .await
        .into_iter()
        .find(|row| row.get("object").and_then(Value::as_text) == Some(id.as_str()))
        .expect("the note's row of versions");
    let new = fx.device("new", DeviceId::random()).await;
    let (mut a, mut b) = memory_channel_pair(8);
    let options = FastSyncOptions::default();
    let sender = async {
        begin_copy(&mut a, vec![info(storex_sync::VERSIONS_COLLECTION, 1)]).await;
        // While the transfer runs, the new device integrates a peer's rename of the note:
        // it stores versions of its own for it.
        new.integrate(vec![y_rename.clone()])
            .await
            .expect("integrated");
        assert_eq!(versions_of(&new).await.len(), 1, "the rename's versions");
        assert_ne!(versions_rows(&new).await, sent);
        a.send(Package::Batch {
            seq: 1,
            collection: storex_sync::VERSIONS_COLLECTION.into(),
            objects: EncodedObjects::encode(&[row]),
        })
        .await
        .expect("batch");
        let ack = tokio::time::timeout(Duration::from_secs(10), a.recv()).await;
        assert!(
            matches!(ack, Ok(Ok(Some(Package::Ack { seq: 1 })))),
            "the versions were not stored: {ack:?}"
        );
        drop(a); // the receiver sees the channel close
    };
    let (_, received) = tokio::join!(sender, receive_snapshot(&new, &mut b, &options));
    assert!(received.is_err(), "the hand-made sender never finishes");
    assert_eq!(versions_rows(&new).await, sent, "the sender's versions");
}

/// The key text of the note `entry` writes, as its rows are ordered in the log.
fn note_key(entry: &storex_sync::LogEntry) -> String {
    storex_sync::object_key(entry).1
}

#[tokio::test]
async fn rows_of_the_senders_sync_tables_that_do_not_read_are_passed_over_and_reported() {
    use storex_test::damage::{overwrite_log_row, overwrite_versions_row};
    let fx = Fixture::new();
    let (old, new) = fx.old_and_new().await;
    let peer = fx.device("peer", DeviceId::random()).await;
    fill(&old, 100).await;
    for i in 0..10 {
        let note = object! { "title" => format!("peer {i}"), "body" => "" };
        peer.storage().create("note", note).await.expect("note");
    }
    // The peer's notes go into the old device's versions index; one entry from a newer
    // schema is held in its log.
    let mut received = log_entries(&peer).await;
    let mut newer = received[0].clone();
    newer.id = storex_core::uuid::Uuid::now_v7();
    newer.schema_version += 1;
    received.push(newer.clone());
    let report = old.integrate(received.clone()).await.expect("integrate");
    assert_eq!(report.held.len(), 1);

    // Damaged: two of the old device's own entries (the first page of the log reads 64 rows:
    // one in its middle, its last), the held entry, and one peer note's versions. (The
    // values of an applied create are not read: the receiver has the row.)
    let mut own = log_entries_of(&old, "note").await;
    own.retain(|e| e.device == old.device());
    own.sort_by_key(note_key);
    assert_eq!(own.len(), 100);
    // One more own note gets a row in the versions index besides its create in the log (a
    // change from elsewhere), and the create's values are damaged: they are not read (the
    // receiver has the row), and its versions travel once.
    let elsewhere = DeviceId::random();
    let edited = &own[20];
    let edit = storex_sync::LogEntry {
        id: storex_core::uuid::Uuid::now_v7(),
        device: elsewhere,
        hlc: storex_sync::Hlc {
            millis: edited.hlc.millis + 1,
            counter: 0,
            device: elsewhere,
        },
        collection: "note".into(),
        pk: edited.pk.clone(),
        op: EntryOp::Update,
        fields: object! { "title" => "edited elsewhere" },
        schema_version: 1,
    };
    old.integrate(vec![edit]).await.expect("edit");
    let storage = old.storage();
    overwrite_log_row(storage, edited.id, "fields", "{not json".into()).await;
    overwrite_log_row(storage, own[10].id, "op", "not an operation".into()).await;
    overwrite_log_row(storage, own[63].id, "hlc", "not a timestamp".into()).await;
    overwrite_log_row(storage, newer.id, "fields", "{not json".into()).await;
    let peer_note = &received[3];
    let damaged_versions = versions_rows(&old)
        .await
        .into_keys()
        .find(|id| id.ends_with(&note_key(peer_note)))
        .expect("the peer note's versions");
    overwrite_versions_row(storage, &damaged_versions, Value::Blob(vec![0xff])).await;

    let options = FastSyncOptions::default();
    let (sent, got) = transfer(&old, &new, &options, &options).await;
    let sent = sent.expect("the sender passes over what does not read");
    got.expect("receive");
    assert_eq!(sent.damaged.len(), 4, "{:#?}", sent.damaged);
    for id in [own[10].id, own[63].id, newer.id] {
        let named = sent.damaged.iter().any(|m| m.contains(&id.to_string()));
        assert!(named, "{id} is named in {:#?}", sent.damaged);
    }
    let named = sent
        .damaged
        .iter()
        .any(|m| m.contains(&note_key(peer_note)));
    assert!(named, "the peer note is named in {:#?}", sent.damaged);
    // Every row arrived; the history that reads too, and nothing of what does not.
    assert_same(&old, &new).await;
    let arrived = versions_of(&new).await;
    let has = |entry: &storex_sync::LogEntry| {
        arrived
            .iter()
            .any(|(collection, key)| collection == "note" && *key == note_key(entry))
    };
    assert!(!has(&own[10]) && !has(&own[63]) && !has(peer_note));
    let edited_versions = versions_table(&new).await.into_iter().filter(|row| {
        row.get("object")
            .and_then(Value::as_text)
            .is_some_and(|id| id.ends_with(&note_key(edited)))
    });
    assert_eq!(
        edited_versions.count(),
        1,
        "the edited note's versions, once"
    );
    let others = own
        .iter()
        .chain(&received[..10])
        .filter(|e| ![own[10].id, own[63].id, peer_note.id].contains(&e.id));
    assert!(others.clone().all(has), "the others' versions arrived");
    assert_eq!(others.count(), 107);
    assert!(!log_entries(&new).await.iter().any(|e| e.id == newer.id));
}

#[tokio::test]
async fn a_merging_receiver_with_a_log_row_that_does_not_read_passes_over_it() {
    use storex_sync::fast_sync::{exchange, Turn};
    let fx = Fixture::new();
    let (a, b) = (
        fx.device("a", DeviceId::random()).await,
        fx.device("b", DeviceId::random()).await,
    );
    let gone = a
        .storage()
        .create("note", object! { "title" => "deleted on b" })
        .await
        .expect("write");
    let (sent, received) = transfer(&a, &b, &small_batches(), &small_batches()).await;
    sent.expect("send");
    received.expect("receive");
    // b deletes the note, and the row logging that is damaged since.
    b.storage()
        .delete_by_pk("note", gone.clone())
        .await
        .expect("delete");
    let delete = log_entries_of(&b, "note")
        .await
        .into_iter()
        .find(|e| e.op == EntryOp::Delete)
        .expect("the delete");
    let storage = b.storage();
    storex_test::damage::overwrite_log_row(storage, delete.id, "hlc", "not a timestamp".into())
        .await;

    let (mut ca, mut cb) = memory_channel_pair(4);
    let options = small_batches();
    let (ra, rb) = tokio::join!(
        exchange(&a, &mut ca, &options, Turn::SendFirst),
        exchange(&b, &mut cb, &options, Turn::ReceiveFirst)
    );
    ra.expect("a's side");
    let rb = rb.expect("b's side: the row is passed over");
    let named = rb
        .sent
        .damaged
        .iter()
        .any(|m| m.contains(&delete.id.to_string()));
    assert!(named, "b's sender names the row: {:#?}", rb.sent.damaged);
    // b knows it changed the note: a's row does not bring it back.
    let found = b
        .storage()
        .find_by_pk("note", gone.clone())
        .await
        .expect("find");
    assert_eq!(found, None);
    let kept = a.storage().find_by_pk("note", gone).await.expect("find");
    assert!(kept.is_some(), "a never received the delete");
}

/// Which operations a [`FailsOnce`] fails.
type Picks = fn(&Operation) -> bool;

/// Fails, once, the first sync operation on `collection` that `fails` picks: a device's own
/// database failing in the middle of a transfer.
#[derive(Debug)]
struct FailsOnce {
    collection: &'static str,
    fails: Picks,
    armed: std::sync::atomic::AtomicBool,
}

impl FailsOnce {
    fn new(collection: &'static str, fails: Picks) -> Arc<Self> {
        Arc::new(FailsOnce {
            collection,
            fails,
            armed: std::sync::atomic::AtomicBool::new(true),
        })
    }
}

impl storex_core::Middleware for FailsOnce {
    fn process<'a>(
        &'a self,
        op: Operation,
        next: storex_core::Next<'a>,
    ) -> BoxFuture<'a, storex_core::Result<storex_core::Outcome>> {
        let touches = |op: &Operation| op.collection() == Some(self.collection) && (self.fails)(op);
        let hit = match &op {
            Operation::Batch { steps } => steps.iter().any(|s| touches(&s.operation)),
            other => touches(other),
        };
        if next.origin() == storex_core::Origin::Sync
            && hit
            && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Box::pin(async {
                Err(storex_core::Error::Transaction {
                    problem: "injected failure of the disk".into(),
                })
            });
        }
        next.run(op)
    }
}

impl Fixture {
    /// A device whose database runs `middleware` on every operation.
    async fn device_with(&self, name: &str, middleware: Arc<FailsOnce>) -> SyncDevice {
        let backend: Arc<dyn StorageBackend> = Arc::new(
            SeaOrmBackend::open_sqlite_file(self.dir.path().join(format!("{name}.db")))
                .await
                .expect("open"),
        );
        let options = SyncOptions::default()
            .exclude("draft")
            .with_middleware(middleware);
        SyncDevice::open(registry(), backend, Clock::new(DeviceId::random()), options)
            .await
            .expect("device")
    }
}

/// The peer's error, told over the channel: a cancel by the peer whose reason names what
/// failed there.
fn told_by_peer(result: &storex_sync::Result<storex_sync::fast_sync::TransferReport>, side: &str) {
    match result {
        Err(Error::FastSync(FastSyncError::Cancelled {
            by_peer: true,
            reason,
            resumable,
        })) => {
            assert!(
                reason.contains(&format!("the {side} device failed"))
                    && reason.contains("injected failure of the disk"),
                "{reason}"
            );
            // The peer's disk failed for a moment: the session may be resumed.
            assert!(*resumable, "{reason}");
            let error = result.as_ref().err();
            assert!(error.is_some_and(storex_sync::Error::is_transient));
        }
        other => panic!("expected the peer's cancel, got {other:?}"),
    }
}

#[tokio::test]
async fn a_receiver_whose_database_fails_tells_the_sender_why() {
    let fx = Fixture::new();
    let old = fx.device("old", DeviceId::random()).await;
    let new = fx
        .device_with("new", FailsOnce::new("note", Operation::is_write))
        .await;
    fill(&old, 1_000).await;
    // A stall timeout far beyond the test's own bound: without the receiver's word, the
    // sender would wait for acknowledgements that never come.
    let options = small_batches().with_stall_timeout(Duration::from_secs(600));
    let both = async { transfer(&old, &new, &options, &options).await };
    let (sent, received) = tokio::time::timeout(Duration::from_secs(30), both)
        .await
        .expect("the sender learns of the failure at once");
    let err = received.expect_err("the receiver's database failed");
    assert!(matches!(err, Error::Storage(_)), "{err:?}");
    told_by_peer(&sent, "receiving");
}

/// Fails the sender's first page of tags (pages have a limit; indexing the journal before the
/// snapshot reads rows by key, without one).
fn page_of_tags(op: &Operation) -> bool {
    matches!(op, Operation::FindMany { query, .. } if query.limit.is_some())
}

/// Fails the sender's first read of tags: indexing its journal, which reads the rows the
/// journal's creates made, before the snapshot is taken.
fn first_read_of_tags(op: &Operation) -> bool {
    matches!(op, Operation::FindMany { .. })
}

#[tokio::test]
async fn a_sender_whose_database_fails_tells_the_receiver_why() {
    let cases: [(Picks, &str); 2] = [
        (page_of_tags, "sending a page"),
        (first_read_of_tags, "taking the snapshot"),
    ];
    for (fails, when) in cases {
        let fx = Fixture::new();
        let old = fx.device_with("old", FailsOnce::new("tag", fails)).await;
        let new = fx.device("new", DeviceId::random()).await;
        fill(&old, 1_000).await;
        let options = small_batches().with_stall_timeout(Duration::from_secs(600));
        let both = async { transfer(&old, &new, &options, &options).await };
        let (sent, received) = tokio::time::timeout(Duration::from_secs(30), both)
            .await
            .unwrap_or_else(|_| panic!("{when}: the receiver learns of the failure at once"));
        let err = sent.expect_err("the sender's database failed");
        assert!(matches!(err, Error::Storage(_)), "{when}: {err:?}");
        told_by_peer(&received, "sending");
    }
}

/// A device on `dir/name.db` with one collection, `counter`, whose `n` the app keeps within
/// 0..=10 when `ranged`.
async fn counter_device(dir: &std::path::Path, name: &str, ranged: bool) -> SyncDevice {
    let mut counter = CollectionDef::new("counter")
        .field("id", FieldType::Uuid)
        .field("n", FieldType::Int)
        .primary_key(["id"]);
    if ranged {
        counter = counter.int_range("n", 0, 10);
    }
    let registry = Registry::builder()
        .collection(counter)
        .build()
        .expect("registry");
    let path = dir.join(format!("{name}.db"));
    let backend = SeaOrmBackend::open_sqlite_file(path).await.expect("open");
    SyncDevice::open(
        registry,
        Arc::new(backend),
        Clock::new(DeviceId::random()),
        SyncOptions::default(),
    )
    .await
    .expect("device")
}

#[tokio::test]
async fn an_int_outside_the_receivers_range_ends_the_copy_naming_it() {
    let dir = tempfile::tempdir().expect("temporary directory");
    // The old device's app had no range yet when it wrote the value.
    let old = counter_device(dir.path(), "old", false).await;
    let new = counter_device(dir.path(), "new", true).await;
    for n in [3, 1_i64 << 40] {
        let row = storex_core::object! { "n" => n };
        old.storage().create("counter", row).await.expect("write");
    }
    // A stall timeout far beyond the test's own bound: the sender must learn why at once.
    let options = FastSyncOptions::default().with_stall_timeout(Duration::from_secs(600));
    let both = async { transfer(&old, &new, &options, &options).await };
    let (sent, received) = tokio::time::timeout(Duration::from_secs(30), both)
        .await
        .expect("the sender learns of the refusal at once");
    let error = received.expect_err("the out-of-range value is refused");
    let message = storex_core::error_chain(&error);
    assert!(
        message.contains("field `n` holds 1099511627776, outside 0..=10"),
        "{message}"
    );
    let sent = sent.expect_err("the sender is told");
    let told = storex_core::error_chain(&sent);
    assert!(
        told.contains("outside 0..=10"),
        "the sender is told why: {told}"
    );
    let rows = new.storage().count("counter", Filter::all()).await;
    assert_eq!(rows.expect("count"), 0, "nothing of the refused batch");
}

#[tokio::test]
async fn a_merge_tells_the_changes_the_receiver_holds_instead_of_applying() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let old = counter_device(dir.path(), "old", false).await;
    let new = counter_device(dir.path(), "new", true).await;
    let id = old
        .storage()
        .create("counter", storex_core::object! { "n" => 3 })
        .await
        .expect("write");
    let options = FastSyncOptions::default();
    let (sent, received) = transfer(&old, &new, &options, &options).await;
    sent.expect("the first copy is sent");
    assert!(received.expect("and received").held.is_empty());
    // Then a value the new device's app does not take; the new device has data now: merged.
    let changes = storex_core::object! { "n" => 1_i64 << 40 };
    old.storage()
        .update_by_pk("counter", id.clone(), changes)
        .await
        .expect("update");
    let (sent, received) = transfer(&old, &new, &options, &options).await;
    sent.expect("the second copy is sent");
    let received = received.expect("and merged");
    assert!(
        received
            .held
            .iter()
            .any(|(_, reason)| reason.to_string().contains("outside 0..=10")),
        "the held change is told: {:?}",
        received.held
    );
    let row = new.storage().find_by_pk("counter", id).await.expect("find");
    assert_eq!(
        row.expect("the row")["n"],
        3_i64.into(),
        "kept, not applied"
    );
}

/// A receiver's channel whose `Done` never leaves: the connection drops as the copy ends.
#[derive(Debug)]
struct LosesDone {
    inner: MemoryChannel,
}

impl FastSyncChannel for LosesDone {
    fn send(&mut self, package: Package) -> BoxFuture<'_, Result<(), ChannelError>> {
        Box::pin(async move {
            match package {
                Package::Done => Err(ChannelError::Closed),
                other => self.inner.send(other).await,
            }
        })
    }

    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Package>, ChannelError>> {
        Box::pin(async move { self.inner.recv().await })
    }
}

#[tokio::test]
async fn a_copy_whose_last_acknowledgement_is_lost_is_complete_on_the_receiver() {
    let fx = Fixture::new();
    let (old, new) = fx.old_and_new().await;
    fill(&old, 500).await;
    let options = small_batches().with_stall_timeout(Duration::from_secs(2));
    let (mut a, b) = memory_channel_pair(4);
    let mut b = LosesDone { inner: b };
    let (sent, received) = tokio::join!(
        send_snapshot(&old, &mut a, &options),
        receive_snapshot(&new, &mut b, &options)
    );
    let received = received.expect("the copy is complete and committed");
    assert!(received.objects > 0, "{received:?}");
    assert!(sent.is_err(), "the sender never heard that it was done");
    assert_same(&old, &new).await;
    assert!(!new.unfinished_copy().await.expect("read"));
}

/// Copies the SQLite database `name` of `fx` to `backup` (a consistent copy while it is
/// open, as a backup tool takes it).
async fn back_up(fx: &Fixture, name: &str, backup: &str) {
    use storex_seaorm::sea_orm::ConnectionTrait;
    let reader = SeaOrmBackend::open_sqlite_file(fx.dir.path().join(format!("{name}.db")))
        .await
        .expect("open");
    let into = fx.dir.path().join(format!("{backup}.db"));
    let sql = format!("VACUUM INTO '{}'", into.display());
    reader
        .connection()
        .execute_unprepared(&sql)
        .await
        .expect("backup");
}

/// The number of notes titled `title` on `device`.
async fn notes_titled(device: &ContinuousSync, title: &str) -> u64 {
    let filter = Filter::all().eq("title", title);
    let storage = device.device().storage();
    storage.count("note", filter).await.expect("count")
}

/// The engine of device `id` on the database `name` of `fx`, as an app starts it.
async fn start(
    fx: &Fixture,
    log: &Arc<dyn SharedSyncLog>,
    name: &str,
    id: DeviceId,
) -> ContinuousSync {
    ContinuousSync::new(
        fx.device(name, id).await,
        log.clone(),
        ContinuousOptions::default(),
    )
}

/// Says of `report` whether it is of a sync that found its database restored from a backup,
/// checking that its problems agree.
fn found_restored(report: &storex_sync::SyncReport) -> bool {
    let said = report
        .problems
        .iter()
        .any(|p| p.contains("this device's database was restored from a backup"));
    assert_eq!(said, report.restored_from_backup, "{report:?}");
    report.restored_from_backup
}

/// A laptop, and a phone whose database is restored from a backup taken before its note
/// "after the backup" (which the laptop has) and before it pulled the laptop's later note:
/// the laptop, and the engine of the restored phone, not synced yet.
async fn phone_restored_from_a_backup(
    fx: &Fixture,
    log: &Arc<dyn SharedSyncLog>,
) -> (ContinuousSync, ContinuousSync) {
    let phone = engine(fx, log, "phone", ContinuousOptions::default()).await;
    let laptop = engine(fx, log, "laptop", ContinuousOptions::default()).await;
    push_note(&laptop, "from the laptop").await;
    push_note(&phone, "before the backup").await;
    // A healthy restart is not taken for a restore.
    let id = phone.device().device();
    drop(phone);
    let phone = start(fx, log, "phone", id).await;
    assert!(!found_restored(&phone.sync_once().await.expect("sync")));
    back_up(fx, "phone", "phone-backup").await;
    push_note(&phone, "after the backup").await;
    // The phone pulls past its own change (so its acknowledgement moves on).
    push_note(&laptop, "later from the laptop").await;
    phone.sync_once().await.expect("sync");
    laptop.sync_once().await.expect("sync");
    drop(phone);
    // The same device, an older database.
    (laptop, start(fx, log, "phone-backup", id).await)
}

#[tokio::test]
async fn a_device_restored_from_a_backup_says_so_until_a_copy_brings_its_later_changes() {
    let fx = Fixture::new();
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let (laptop, restored) = phone_restored_from_a_backup(&fx, &log).await;
    let id = restored.device().device();
    assert!(found_restored(&restored.sync_once().await.expect("sync")));
    // It has the laptop's later note, not its own change made after the backup.
    assert_eq!(notes_titled(&restored, "later from the laptop").await, 1);
    assert_eq!(notes_titled(&restored, "after the backup").await, 0);
    // Said by every sync, after a restart too, although pulling has moved it on since.
    assert!(found_restored(&restored.sync_once().await.expect("sync")));
    drop(restored);
    let restarted = start(&fx, &log, "phone-backup", id).await;
    assert!(found_restored(&restarted.sync_once().await.expect("sync")));
    // A copy of only some notes does not end it, nor one from a device that pulls only tags
    // (however far).
    let some = small_batches().with_filter(Arc::new(|_: &str, _: &storex_core::Object| false));
    copy_with(&laptop, &restarted, &some).await;
    assert!(found_restored(&restarted.sync_once().await.expect("sync")));
    let tags_only = ContinuousOptions::default().with_collections(["tag"]);
    let tablet = engine(&fx, &log, "tablet", tags_only).await;
    tablet.sync_once().await.expect("sync");
    copy_with(&tablet, &restarted, &small_batches()).await;
    assert!(found_restored(&restarted.sync_once().await.expect("sync")));
    // A whole copy from the laptop brings the change, and ends it.
    copy_with(&laptop, &restarted, &small_batches()).await;
    assert_eq!(notes_titled(&restarted, "after the backup").await, 1);
    assert!(!found_restored(&restarted.sync_once().await.expect("sync")));
    laptop.sync_once().await.expect("sync");
    assert_agree(&restarted, &laptop, "note").await;
    drop(restarted);
    let again = start(&fx, &log, "phone-backup", id).await;
    assert!(!found_restored(&again.sync_once().await.expect("sync")));
}

#[tokio::test]
async fn a_restored_device_whose_log_cannot_list_devices_fails_its_sync_until_it_can() {
    use std::sync::atomic::Ordering;
    let fx = Fixture::new();
    let gated = Arc::new(GatedPulls::new());
    let log: Arc<dyn SharedSyncLog> = gated.clone();
    let (_laptop, restored) = phone_restored_from_a_backup(&fx, &log).await;
    gated.devices_fail.store(true, Ordering::SeqCst);
    let failed = restored.sync_once().await;
    assert!(failed.is_err(), "{failed:?}");
    // It pulled nothing meanwhile (which would have hidden the restore): found once the log
    // answers.
    gated.devices_fail.store(false, Ordering::SeqCst);
    assert!(found_restored(&restored.sync_once().await.expect("sync")));
}

#[tokio::test]
async fn a_device_restored_from_a_backup_that_forgets_it_is_not_told_again() {
    let fx = Fixture::new();
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let (_laptop, restored) = phone_restored_from_a_backup(&fx, &log).await;
    let id = restored.device().device();
    assert!(found_restored(&restored.sync_once().await.expect("sync")));
    restored.forget_restore().await.expect("forget");
    assert!(!found_restored(&restored.sync_once().await.expect("sync")));
    // Nor after a restart.
    drop(restored);
    let restarted = start(&fx, &log, "phone-backup", id).await;
    assert!(!found_restored(&restarted.sync_once().await.expect("sync")));
    assert_eq!(notes_titled(&restarted, "after the backup").await, 0);
}

#[tokio::test]
async fn a_device_whose_subscription_widened_is_not_taken_for_one_restored_from_a_backup() {
    let fx = Fixture::new();
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let laptop = engine(&fx, &log, "laptop", ContinuousOptions::default()).await;
    let tags_only = ContinuousOptions::default().with_collections(["tag"]);
    let phone = engine(&fx, &log, "phone", tags_only).await;
    push_note(&laptop, "one").await;
    push_note(&laptop, "two").await;
    phone.sync_once().await.expect("sync");
    phone.sync_once().await.expect("sync");
    // Subscribed to everything now: it pulls again from the start, so its cursor is behind
    // what it acknowledged when the sync asks the shared log.
    let id = phone.device().device();
    drop(phone);
    let widened = ContinuousSync::new(
        fx.device("phone", id).await,
        log.clone(),
        ContinuousOptions::default(),
    );
    let report = widened.sync_once().await.expect("sync");
    assert!(!found_restored(&report));
    assert_eq!(notes_titled(&widened, "two").await, 1);
}
