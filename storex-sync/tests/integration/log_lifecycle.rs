//! The client log over time: compaction keeps what decides the data, held entries are
//! applied after an upgrade.

use std::sync::Arc;

use storex_core::{
    object, CollectionDef, FieldType, MemoryBackend, Registry, StorageBackend, Value,
};
use storex_sync::{Clock, DeviceId, EntryOp, HoldReason, LogEntry, SyncDevice, SyncOptions};

fn registry(version: u32) -> Registry {
    let mut note = CollectionDef::new("note")
        .field("id", FieldType::Int)
        .field("title", FieldType::Text)
        .optional_field("body", FieldType::Text)
        .primary_key(["id"])
        .version(version);
    if version >= 2 {
        note = note.optional_field("colour", FieldType::Text);
    }
    Registry::builder()
        .collection(note)
        .build()
        .expect("registry")
}

async fn open(version: u32, backend: Arc<dyn StorageBackend>) -> SyncDevice {
    open_with(registry(version), backend).await
}

/// A new device with `registry` on `backend`.
async fn open_with(registry: Registry, backend: Arc<dyn StorageBackend>) -> SyncDevice {
    SyncDevice::open(
        registry,
        backend,
        Clock::new(DeviceId::random()),
        SyncOptions::default(),
    )
    .await
    .expect("device")
}

/// Labels keyed by their note and text (a compound key).
fn label() -> CollectionDef {
    CollectionDef::new("label")
        .field("note", FieldType::Int)
        .field("text", FieldType::Text)
        .primary_key(["note", "text"])
}

/// A device of schema `version` on `backend` with `clock`, syncing through `shared`.
async fn engine_on(
    shared: &Arc<dyn storex_sync::SharedSyncLog>,
    version: u32,
    backend: Arc<dyn StorageBackend>,
    clock: Clock,
) -> storex_sync::ContinuousSync {
    let device = SyncDevice::open(registry(version), backend, clock, SyncOptions::default())
        .await
        .expect("device");
    let options = storex_sync::ContinuousOptions::default();
    storex_sync::ContinuousSync::new(device, shared.clone(), options)
}

/// How many entries `device` holds.
async fn held_count(device: &SyncDevice) -> usize {
    device.log().held().await.expect("held").entries.len()
}

async fn share_everything(device: &SyncDevice) -> Vec<LogEntry> {
    let entries = device.log().unshared(1_000).await.expect("unshared");
    let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
    device.log().mark_shared(&ids).await.expect("mark shared");
    entries
}

#[tokio::test]
async fn compaction_drops_superseded_entries_and_keeps_the_outcome() {
    let a = open(1, Arc::new(MemoryBackend::new())).await;
    let s = a.storage();
    s.create(
        "note",
        object! { "id" => 1, "title" => "t1", "body" => "b1" },
    )
    .await
    .expect("create");
    s.update_by_pk("note", 1, object! { "title" => "t2" })
        .await
        .expect("update");
    s.update_by_pk("note", 1, object! { "title" => "t3" })
        .await
        .expect("update");
    s.create("note", object! { "id" => 2, "title" => "gone" })
        .await
        .expect("create");
    s.update_by_pk("note", 2, object! { "title" => "edited" })
        .await
        .expect("update");
    s.delete_by_pk("note", 2).await.expect("delete");
    let old_update = {
        let all = a.log().all().await.expect("log").entries;
        all.iter()
            .find(|e| e.entry.fields.get("title") == Some(&Value::from("t2")))
            .map(|e| e.entry.clone())
            .expect("t2 entry")
    };
    let before = share_everything(&a).await;
    // Note 2's create is not there: its row was gone when the journal was indexed, and the
    // later delete decides without it.
    assert_eq!(before.len(), 5);
    let dropped = a.log().compact().await.expect("compact");
    // Every shared entry goes: the versions index keeps what decides the notes.
    assert_eq!(dropped, 5);
    assert!(a.log().all().await.expect("log").entries.is_empty());

    // A device that receives everything agrees, and the compacted device, receiving it all
    // again, changes nothing.
    let b = open(1, Arc::new(MemoryBackend::new())).await;
    b.integrate(before.clone()).await.expect("integrate");
    let digest = a.digest("note").await.expect("digest");
    assert_eq!(b.digest("note").await.expect("digest"), digest);
    let again = a.integrate(before).await.expect("integrate again");
    assert_eq!(again.operations, 0, "{again:?}");
    assert_eq!(a.digest("note").await.expect("digest"), digest);

    // An old update arriving again after compaction still loses.
    let report = a
        .integrate(vec![LogEntry {
            id: storex_core::uuid::Uuid::now_v7(),
            ..old_update
        }])
        .await;
    let report = report.expect("integrate");
    assert_eq!((report.operations, report.conflicts), (0, 1));
    assert_eq!(a.digest("note").await.expect("digest"), digest);
}

#[tokio::test]
async fn unshared_entries_are_never_compacted() {
    let a = open(1, Arc::new(MemoryBackend::new())).await;
    a.storage()
        .create("note", object! { "id" => 1, "title" => "t1" })
        .await
        .expect("create");
    a.storage()
        .update_by_pk("note", 1, object! { "title" => "t2" })
        .await
        .expect("update");
    assert_eq!(
        a.log().compact().await.expect("compact"),
        0,
        "nothing was pushed yet"
    );
    assert_eq!(a.log().unshared(10).await.expect("unshared").len(), 2);
}

#[tokio::test]
async fn entries_from_a_newer_schema_wait_for_the_upgrade() {
    let newer = open(2, Arc::new(MemoryBackend::new())).await;
    newer
        .storage()
        .create(
            "note",
            object! { "id" => 1, "title" => "t", "colour" => "red" },
        )
        .await
        .expect("create");
    let entries = share_everything(&newer).await;

    let backend: Arc<dyn StorageBackend> = Arc::new(MemoryBackend::new());
    let older = open(1, backend.clone()).await;
    let report = older.integrate(entries).await.expect("integrate");
    assert_eq!(report.held.len(), 1);
    assert_eq!(
        report.held[0].1,
        HoldReason::NewerSchema { entry: 2, local: 1 }
    );
    assert_eq!(held_count(&older).await, 1, "kept, not dropped");
    assert_eq!(
        older
            .storage()
            .count("note", storex_core::Filter::all())
            .await
            .expect("count"),
        0
    );

    // The app upgrades: the same database, the new schema.
    let upgraded = open(2, backend).await;
    let report = upgraded.retry_held().await.expect("retry");
    assert_eq!((report.integrated, report.operations), (1, 1));
    assert_eq!(held_count(&upgraded).await, 0);
    assert_eq!(
        upgraded.digest("note").await.expect("digest"),
        newer.digest("note").await.expect("digest")
    );
}

#[tokio::test]
async fn an_entry_held_for_clock_drift_does_not_move_the_clock_after_a_restart() {
    let backend: Arc<dyn StorageBackend> = Arc::new(MemoryBackend::new());
    let now_ms = || {
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_millis(),
        )
        .expect("fits")
    };
    let sender = DeviceId::random();
    let future = |millis: u64, id: i64| LogEntry {
        id: storex_core::uuid::Uuid::now_v7(),
        device: sender,
        hlc: storex_sync::Hlc {
            millis,
            counter: 0,
            device: sender,
        },
        collection: "note".into(),
        pk: storex_core::Pk::from(id),
        op: EntryOp::Create,
        fields: object! { "id" => id, "title" => "from the future" },
        schema_version: 1,
    };
    let two_days = 48 * 3_600 * 1_000;
    {
        let b = open(1, backend.clone()).await;
        let report = b
            .integrate(vec![future(now_ms() + two_days, 1), future(u64::MAX, 2)])
            .await
            .expect("integrate");
        assert_eq!(report.held.len(), 2, "{report:?}");
        assert!(report
            .held
            .iter()
            .all(|(_, reason)| matches!(reason, HoldReason::ClockDrift { .. })));
    }
    let b = open(1, backend).await;
    let stamped = b.clock().now();
    assert!(
        stamped.millis < now_ms() + two_days / 2,
        "the clock jumped to a held entry's time: {stamped}"
    );
    assert_eq!(held_count(&b).await, 2);
    let retried = b.retry_held().await.expect("retry");
    assert_eq!(retried.held.len(), 2, "still too far ahead");
}

#[tokio::test]
async fn continuous_sync_applies_an_entry_held_for_clock_drift_once_the_clock_caught_up() {
    use std::time::Duration;
    use storex_sync::{ContinuousSync, ManualClock, MemorySharedLog, SharedSyncLog};
    let shared: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let hour = Duration::from_secs(3_600);
    let base = 1_700_000_000_000u64;
    let open_at = |wall: ManualClock, id: DeviceId| {
        let clock = Clock::with_wall_clock(id, wall).with_max_drift(hour);
        engine_on(&shared, 1, Arc::new(MemoryBackend::new()), clock)
    };
    let a_id = shared.create_device("ann").await.expect("device a");
    let b_id = shared.create_device("ann").await.expect("device b");
    // a's clock is two hours ahead; b allows one.
    let a = open_at(ManualClock::new(base + 2 * 3_600_000), a_id).await;
    let b_wall = ManualClock::new(base);
    let b = open_at(b_wall.clone(), b_id).await;
    a.device()
        .storage()
        .create("note", object! { "id" => 1, "title" => "from ahead" })
        .await
        .expect("create");
    a.sync_once().await.expect("a syncs");
    let notes = |device: &ContinuousSync| {
        let storage = device.device().storage().clone();
        async move {
            storage
                .count("note", storex_core::Filter::all())
                .await
                .expect("count")
        }
    };
    let report = b.sync_once().await.expect("b syncs");
    assert_eq!(report.held, 1, "{report:?}");
    // Half an hour later it is still too far ahead; an hour and a minute later it is not,
    // and the same engine, never restarted, applies it.
    b_wall.advance(hour / 2);
    b.sync_once().await.expect("b syncs");
    assert_eq!(notes(&b).await, 0);
    b_wall.advance(hour / 2 + Duration::from_secs(60));
    let report = b.sync_once().await.expect("b syncs");
    assert_eq!(report.integrated, 1, "{report:?}");
    assert_eq!(notes(&b).await, 1);
    assert_eq!(held_count(b.device()).await, 0);
    assert_eq!(
        a.device().digest("note").await.expect("digest"),
        b.device().digest("note").await.expect("digest")
    );
}

#[tokio::test]
async fn an_entry_held_for_clock_drift_is_applied_by_the_sync_after_one_stopped_while_retrying_it()
{
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use storex_sync::{ContinuousOptions, ContinuousSync, ManualClock, MemorySharedLog};
    let shared: Arc<dyn storex_sync::SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let hour = Duration::from_secs(3_600);
    let base = 1_700_000_000_000u64;
    let a_id = shared.create_device("ann").await.expect("device a");
    let b_id = shared.create_device("ann").await.expect("device b");
    let a_clock = Clock::with_wall_clock(a_id, ManualClock::new(base + 2 * 3_600_000));
    let a = engine_on(&shared, 1, Arc::new(MemoryBackend::new()), a_clock).await;
    let b_wall = ManualClock::new(base);
    let stall = Arc::new(crate::durability::Stall::notes());
    let b_device = SyncDevice::open(
        registry(1),
        Arc::new(MemoryBackend::new()),
        Clock::with_wall_clock(b_id, b_wall.clone()).with_max_drift(hour),
        SyncOptions::default().with_middleware(stall.clone()),
    )
    .await
    .expect("device b");
    let b = ContinuousSync::new(b_device, shared.clone(), ContinuousOptions::default());
    a.device()
        .storage()
        .create("note", object! { "id" => 1, "title" => "from ahead" })
        .await
        .expect("create");
    a.sync_once().await.expect("a syncs");
    let report = b.sync_once().await.expect("b syncs");
    assert_eq!(report.held, 1, "{report:?}");
    // The clock catches up; the sync that retries the entry is stopped midway (a background
    // sync's timeout, say).
    b_wall.advance(hour + Duration::from_secs(60));
    stall.armed.store(true, Ordering::SeqCst);
    tokio::select! {
        () = stall.stalled.notified() => {}
        finished = b.sync_once() => panic!("the retry did not stall: {finished:?}"),
    }
    assert_eq!(held_count(b.device()).await, 1);
    // The next sync of the same engine, never restarted, applies it.
    stall.armed.store(false, Ordering::SeqCst);
    let report = b.sync_once().await.expect("b syncs");
    assert_eq!(report.integrated, 1, "{report:?}");
    assert_eq!(held_count(b.device()).await, 0);
    assert_eq!(
        a.device().digest("note").await.expect("digest"),
        b.device().digest("note").await.expect("digest")
    );
}

/// Device A on schema 2 writes a note with a colour and syncs; device B on schema 1 pulls it
/// and holds it (a newer schema). Returns the shared log, B's database and B's id.
async fn held_by_an_older_app() -> (
    Arc<dyn storex_sync::SharedSyncLog>,
    Arc<dyn StorageBackend>,
    DeviceId,
) {
    use storex_sync::{MemorySharedLog, SharedSyncLog};
    let shared: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let a_id = shared.create_device("ann").await.expect("device a");
    let b_id = shared.create_device("ann").await.expect("device b");
    let a = engine_on(&shared, 2, Arc::new(MemoryBackend::new()), Clock::new(a_id)).await;
    a.device()
        .storage()
        .create(
            "note",
            object! { "id" => 1, "title" => "t", "colour" => "red" },
        )
        .await
        .expect("create");
    a.sync_once().await.expect("a syncs");
    let b_backend: Arc<dyn StorageBackend> = Arc::new(MemoryBackend::new());
    let b = engine_on(&shared, 1, b_backend.clone(), Clock::new(b_id)).await;
    let report = b.sync_once().await.expect("b syncs");
    assert_eq!(report.held, 1, "{report:?}");
    (shared, b_backend, b_id)
}

#[tokio::test]
async fn continuous_sync_applies_entries_held_for_a_newer_schema_after_the_upgrade() {
    let (shared, b_backend, b_id) = held_by_an_older_app().await;
    // The app is upgraded: the same database, schema version 2, a new sync engine.
    let b = engine_on(&shared, 2, b_backend, Clock::new(b_id)).await;
    let report = b.sync_once().await.expect("b syncs after the upgrade");
    assert_eq!(report.integrated, 1, "{report:?}");
    let note = b
        .device()
        .storage()
        .find_by_pk("note", 1)
        .await
        .expect("find")
        .expect("the note");
    assert_eq!(note["colour"], Value::from("red"));
    assert_eq!(held_count(b.device()).await, 0);
}

/// Once armed, fails the next read of the held entries (a busy database, say).
#[derive(Debug, Default)]
struct HeldReadFailsOnce {
    armed: std::sync::atomic::AtomicBool,
}

impl storex_core::Middleware for HeldReadFailsOnce {
    fn process<'a>(
        &'a self,
        op: storex_core::Operation,
        next: storex_core::Next<'a>,
    ) -> storex_core::BoxFuture<'a, storex_core::Result<storex_core::Outcome>> {
        // The read of a page of held entries: the log's rows not integrated, by timestamp.
        let held_read = matches!(
            &op,
            storex_core::Operation::FindValues { collection, query, .. }
                if collection == storex_sync::LOG_COLLECTION
                    && format!("{query:?}").contains(
                        "field: \"integrated\", predicate: Eq(Bool(false))"
                    )
        );
        Box::pin(async move {
            if held_read && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                return Err(storex_core::Error::backend("test", "the database is busy"));
            }
            next.run(op).await
        })
    }
}

#[tokio::test]
async fn held_entries_are_tried_again_by_the_next_sync_when_the_first_try_failed() {
    let (shared, b_backend, b_id) = held_by_an_older_app().await;
    // Upgraded, and the first try of the held entries meets a busy database.
    let fails = Arc::new(HeldReadFailsOnce::default());
    let device = SyncDevice::open(
        registry(2),
        b_backend,
        Clock::new(b_id),
        SyncOptions::default().with_middleware(fails.clone()),
    )
    .await
    .expect("device");
    fails.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let b = storex_sync::ContinuousSync::new(device, shared, Default::default());
    let first = b.sync_once().await.expect("the sync goes on");
    assert!(
        first
            .problems
            .iter()
            .any(|p| p.contains("retrying held entries")),
        "{first:?}"
    );
    let second = b.sync_once().await.expect("b syncs again");
    assert_eq!(second.integrated, 1, "{second:?}");
    assert_eq!(held_count(b.device()).await, 0);
}

#[tokio::test]
async fn rows_known_from_received_or_compacted_changes_are_not_logged_again() {
    let a = open(1, Arc::new(MemoryBackend::new())).await;
    let b = open(1, Arc::new(MemoryBackend::new())).await;
    a.storage()
        .create("note", object! { "id" => 1, "title" => "from a" })
        .await
        .expect("create");
    b.integrate(share_everything(&a).await)
        .await
        .expect("integrate");
    b.storage()
        .create("note", object! { "id" => 2, "title" => "from b" })
        .await
        .expect("create");
    share_everything(&b).await;
    assert_eq!(b.log().compact().await.expect("compact"), 1);
    // Note 1 is in b's versions index (received), note 2 too (compacted): neither is data
    // from before sync, and logging it again would stamp a create later than any delete.
    assert_eq!(b.log_existing_rows().await.expect("existing"), 0);
    assert!(b.log().all().await.expect("log").entries.is_empty());
}

#[tokio::test]
async fn compaction_works_in_rounds_and_stops_at_its_limit() {
    use storex_core::{BatchStep, Operation};
    let a = open(1, Arc::new(MemoryBackend::new())).await;
    let steps = (0..2_500)
        .map(|id| {
            let note = object! { "id" => id, "title" => format!("note {id}") };
            BatchStep::new(Operation::create("note", note))
        })
        .collect();
    a.storage()
        .batch(steps)
        .await
        .expect("a write of 2,500 notes");
    let mut shared = Vec::new();
    loop {
        let part = share_everything(&a).await;
        if part.is_empty() {
            break;
        }
        shared.extend(part);
    }
    assert_eq!(shared.len(), 2_500);
    // More than one round (2,000 entries each), cut at the limit.
    assert_eq!(a.log().compact_up_to(2_100).await.expect("compact"), 2_100);
    assert_eq!(a.log().len().await.expect("len"), 400);
    assert_eq!(a.log().compact().await.expect("compact"), 400);
    assert!(a.log().is_empty().await.expect("empty"));

    let b = open(1, Arc::new(MemoryBackend::new())).await;
    b.integrate(shared.clone()).await.expect("integrate");
    assert_eq!(
        b.digest("note").await.expect("digest"),
        a.digest("note").await.expect("digest")
    );
    let again = a.integrate(shared).await.expect("integrate again");
    assert_eq!(again.operations, 0, "{again:?}");
}

/// Overwrites `field` of the client log's row `id` with `text`.
async fn damage_log_row(device: &SyncDevice, id: storex_core::uuid::Uuid, field: &str, text: &str) {
    storex_test::damage::overwrite_log_row(device.storage(), id, field, text.into()).await;
}

#[tokio::test]
async fn a_device_whose_newest_log_rows_do_not_read_opens_with_its_clock_ahead_of_the_rest() {
    use storex_sync::ManualClock;
    let backend: Arc<dyn StorageBackend> = Arc::new(MemoryBackend::new());
    let id = DeviceId::random();
    let wall = ManualClock::new(10_000_000);
    let open_at = |wall: ManualClock| {
        SyncDevice::open(
            registry(1),
            backend.clone(),
            Clock::with_wall_clock(id, wall),
            SyncOptions::default(),
        )
    };
    let device = open_at(wall.clone()).await.expect("device");
    for n in 1..=2 {
        let note = object! { "id" => n, "title" => "t" };
        device.storage().create("note", note).await.expect("create");
        wall.advance(std::time::Duration::from_secs(60));
    }
    let rows = device.log().all().await.expect("log").entries;
    assert_eq!(rows.len(), 2);
    let (older, newest) = (rows[0].entry.hlc, rows[1].entry.hlc);
    // The newest row's values do not read; its timestamp does.
    damage_log_row(&device, rows[1].entry.id, "fields", "{not json").await;
    drop(device);

    // The wall clock went back: the clock restores from the log, as far as it reads.
    wall.set(1_000);
    let device = open_at(wall.clone()).await.expect("opens");
    assert!(device.clock().now() > newest, "ahead of the damaged row");
    let read = device.log().all().await.expect("log");
    assert_eq!(read.entries.len(), 1, "{read:?}");
    assert_eq!(read.damaged.len(), 1, "{read:?}");
    assert!(
        read.damaged[0].contains(&rows[1].entry.id.to_string()),
        "{read:?}"
    );

    // Its timestamp does not read either (and sorts first): the next row's counts.
    damage_log_row(&device, rows[1].entry.id, "hlc", "zz-not-a-time").await;
    drop(device);
    let device = open_at(wall).await.expect("opens");
    assert!(device.clock().now() > older, "ahead of the row that reads");
}

#[tokio::test]
async fn held_rows_that_do_not_read_are_reported_and_the_others_apply_after_the_upgrade() {
    let newer = open(2, Arc::new(MemoryBackend::new())).await;
    for n in 1..=3 {
        let note = object! { "id" => n, "title" => "t", "colour" => "red" };
        newer.storage().create("note", note).await.expect("create");
    }
    let entries = share_everything(&newer).await;

    let backend: Arc<dyn StorageBackend> = Arc::new(MemoryBackend::new());
    let older = open(1, backend.clone()).await;
    let report = older.integrate(entries.clone()).await.expect("integrate");
    assert_eq!(report.held.len(), 3, "{report:?}");
    damage_log_row(&older, entries[1].id, "op", "rewrite").await;
    let held = older.log().held().await.expect("held");
    assert_eq!((held.entries.len(), held.damaged.len()), (2, 1), "{held:?}");

    // The app upgrades: the two that read apply, the third is named and stays held.
    let upgraded = open(2, backend).await;
    let report = upgraded.retry_held().await.expect("retry");
    assert_eq!((report.integrated, report.operations), (2, 2), "{report:?}");
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    assert!(
        report.damaged[0].contains(&entries[1].id.to_string()),
        "{report:?}"
    );
    let held = upgraded.log().held().await.expect("held");
    assert_eq!((held.entries.len(), held.damaged.len()), (0, 1), "{held:?}");
    let stored = upgraded
        .storage()
        .count("note", storex_core::Filter::all())
        .await
        .expect("count");
    assert_eq!(stored, 2);
}

#[tokio::test]
async fn a_device_whose_clock_row_does_not_read_opens_with_its_clock_ahead_of_what_it_applied() {
    use storex_core::{Filter, Value};
    use storex_sync::{ManualClock, VERSIONS_COLLECTION};
    let sender = open(1, Arc::new(MemoryBackend::new())).await;
    let note = object! { "id" => 1, "title" => "t" };
    sender.storage().create("note", note).await.expect("create");
    let entries = share_everything(&sender).await;
    let sent = entries[0].hlc;

    // This device's wall clock is an hour behind the sender's.
    let behind = u64::try_from(storex_core::chrono::Utc::now().timestamp_millis()).expect("time")
        - 3_600_000;
    let backend: Arc<dyn StorageBackend> = Arc::new(MemoryBackend::new());
    let id = DeviceId::random();
    let open_at = || {
        SyncDevice::open(
            registry(1),
            backend.clone(),
            Clock::with_wall_clock(id, ManualClock::new(behind)),
            SyncOptions::default(),
        )
    };
    let device = open_at().await.expect("device");
    let report = device.integrate(entries).await.expect("integrated");
    assert_eq!(report.integrated, 1, "{report:?}");
    let mut changes = storex_core::Object::new();
    changes.insert("state".into(), Value::Blob(vec![0xff]));
    let clock_row = Filter::all().eq("object", "\u{1f}clock");
    let damaged = device
        .storage()
        .update_where(VERSIONS_COLLECTION, clock_row, changes)
        .await
        .expect("damaged");
    assert_eq!(damaged, 1);
    drop(device);

    // The clock restores from the objects' versions instead.
    let device = open_at().await.expect("opens");
    assert!(device.clock().now() > sent, "ahead of the change applied");

    // A change older than that one, applied next, replaces the row with the later of the
    // two: the clock still restores ahead of the newest.
    let late = SyncDevice::open(
        registry(1),
        Arc::new(MemoryBackend::new()),
        Clock::with_wall_clock(DeviceId::random(), ManualClock::new(behind - 60_000)),
        SyncOptions::default(),
    )
    .await
    .expect("device");
    let note = object! { "id" => 2, "title" => "t" };
    late.storage().create("note", note).await.expect("create");
    let older = share_everything(&late).await;
    assert!(older[0].hlc < sent);
    let report = device.integrate(older).await.expect("integrated");
    assert_eq!(report.integrated, 1, "{report:?}");
    drop(device);
    let device = open_at().await.expect("opens");
    assert!(
        device.clock().now() > sent,
        "ahead of the newest change applied"
    );
}

#[tokio::test]
async fn many_held_entries_are_retried_in_pages_none_skipped_or_twice() {
    let newer = open(2, Arc::new(MemoryBackend::new())).await;
    let create = |id: i64| {
        let note = object! { "id" => id, "title" => format!("t{id}"), "colour" => "red" };
        storex_core::BatchStep::new(storex_core::Operation::create("note", note))
    };
    // Single writes, then one write of 1,200 (its entries share one timestamp, across a
    // page's end), then single writes again.
    for id in 0..700 {
        newer.storage().batch(vec![create(id)]).await.expect("one");
    }
    let group = (700..1_900).map(create).collect();
    newer.storage().batch(group).await.expect("a group");
    for id in 1_900..2_500 {
        newer.storage().batch(vec![create(id)]).await.expect("one");
    }
    let entries = newer.log().unshared(10_000).await.expect("unshared");
    assert_eq!(entries.len(), 2_500);

    let backend: Arc<dyn StorageBackend> = Arc::new(MemoryBackend::new());
    let older = open(1, backend.clone()).await;
    let report = older.integrate(entries).await.expect("integrate");
    assert_eq!(report.held.len(), 2_500, "all from the newer schema");

    let upgraded = open(2, backend).await;
    let report = upgraded.retry_held().await.expect("retry");
    assert_eq!(
        (report.received, report.integrated, report.duplicates),
        (2_500, 2_500, 0),
        "{:?}",
        (report.received, report.integrated, report.held.len())
    );
    assert_eq!(held_count(&upgraded).await, 0);
    assert_eq!(
        upgraded.digest("note").await.expect("digest"),
        newer.digest("note").await.expect("digest")
    );
}

#[tokio::test]
async fn existing_rows_are_logged_page_by_page_once_each_whatever_their_key() {
    let registry = Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Int)
                .field("title", FieldType::Text)
                .primary_key(["id"]),
        )
        .collection(label())
        .build()
        .expect("registry");
    let backend: Arc<dyn StorageBackend> = Arc::new(MemoryBackend::new());
    // Rows from before sync, more than one page of each (5,000 rows): written unlogged.
    let plain = storex_core::Storage::builder_shared(registry.clone(), backend.clone())
        .build()
        .await
        .expect("plain storage");
    for start in (0..6_000i64).step_by(3_000) {
        let steps = (start..start + 3_000)
            .flat_map(|i| {
                [
                    storex_core::BatchStep::new(storex_core::Operation::create(
                        "note",
                        object! { "id" => i, "title" => format!("n{i}") },
                    )),
                    storex_core::BatchStep::new(storex_core::Operation::create(
                        "label",
                        object! { "note" => i % 7, "text" => format!("l{i}") },
                    )),
                ]
            })
            .collect();
        plain.batch(steps).await.expect("rows");
    }
    let device = open_with(registry, backend).await;
    assert_eq!(
        device.log_existing_rows().await.expect("existing"),
        12_000,
        "every row once"
    );
    assert_eq!(device.log_existing_rows().await.expect("again"), 0);
    let logged = device.log().all().await.expect("log").entries;
    let keys: std::collections::HashSet<(String, String)> = logged
        .iter()
        .map(|stored| {
            (
                stored.entry.collection.clone(),
                format!("{:?}", stored.entry.pk),
            )
        })
        .collect();
    assert_eq!(keys.len(), 12_000, "no row twice");
}

#[tokio::test]
async fn existing_rows_after_a_full_page_of_null_keys_are_logged_too() {
    use storex_seaorm::sea_orm::ConnectionTrait;
    let dir = tempfile::tempdir().expect("temporary directory");
    let backend = storex_seaorm::SeaOrmBackend::open_sqlite_file(dir.path().join("app.db"))
        .await
        .expect("open");
    // The app's own table, in which SQLite lets a key hold nulls: more than a page (5,000
    // rows) of them come first in key order, then rows with whole keys.
    for statement in [
        "CREATE TABLE label (note BIGINT NOT NULL, text TEXT, PRIMARY KEY (note, text))",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5001) \
         INSERT INTO label (note, text) SELECT 1, NULL FROM n",
        "INSERT INTO label (note, text) VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    ] {
        backend
            .connection()
            .execute_unprepared(statement)
            .await
            .expect("the app's rows");
    }
    let registry = Registry::builder()
        .collection(label())
        .build()
        .expect("registry");
    let device = open_with(registry, Arc::new(backend)).await;
    assert_eq!(
        device.log_existing_rows().await.expect("existing"),
        3,
        "the rows with whole keys"
    );
}

/// `note` before and after release 2, whose migration adds `pinned` with a default.
fn registry_pinned(version: u32) -> Registry {
    let mut note = CollectionDef::new("note")
        .field("id", FieldType::Int)
        .field("title", FieldType::Text)
        .primary_key(["id"])
        .version(version);
    if version >= 2 {
        note = note
            .optional_field("pinned", FieldType::Bool)
            .default_value("pinned", false);
    }
    Registry::builder()
        .collection(note)
        .build()
        .expect("registry")
}

/// Device `id` on the SQLite file `path`, with `registry`; it keeps its pushed entries in
/// its log unless `compacts`.
async fn sqlite_engine(
    shared: &Arc<dyn storex_sync::SharedSyncLog>,
    registry: Registry,
    path: &std::path::Path,
    (id, compacts): (DeviceId, bool),
) -> storex_sync::ContinuousSync {
    let backend = storex_seaorm::SeaOrmBackend::open_sqlite_file(path)
        .await
        .expect("open the file");
    let device = SyncDevice::open(
        registry,
        Arc::new(backend),
        Clock::new(id),
        SyncOptions::default(),
    )
    .await
    .expect("device");
    let mut options = storex_sync::ContinuousOptions::default();
    if !compacts {
        options.compact_per_sync = 0;
    }
    storex_sync::ContinuousSync::new(device, shared.clone(), options)
}

#[tokio::test]
async fn a_field_added_with_a_default_holds_it_on_every_device_whatever_its_history() {
    use storex_seaorm::sea_orm::ConnectionTrait;
    use storex_sync::{MemorySharedLog, SharedSyncLog};
    let dir = tempfile::tempdir().expect("temporary directory");
    let shared: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let (a_id, b_id, c_id) = (
        shared.create_device("ann").await.expect("device a"),
        shared.create_device("ann").await.expect("device b"),
        shared.create_device("ann").await.expect("device c"),
    );
    let (a_path, b_path) = (dir.path().join("a.db"), dir.path().join("b.db"));
    // A keeps every change in its log, so it works a note's state out from all its changes,
    // the first of which predates `pinned`; B and C compact (B reconciles its updates from
    // the versions it keeps).
    let (a_id, b_id, c_id) = ((a_id, false), (b_id, true), (c_id, true));
    // Release 1: a note made on A reaches B.
    let a = sqlite_engine(&shared, registry_pinned(1), &a_path, a_id).await;
    a.device()
        .storage()
        .create("note", object! { "id" => 1, "title" => "t" })
        .await
        .expect("create");
    a.sync_once().await.expect("a syncs");
    drop(a);
    let b = sqlite_engine(&shared, registry_pinned(1), &b_path, b_id).await;
    b.sync_once().await.expect("b syncs");
    drop(b);
    // Release 2's migration adds the column, giving the rows it finds its default.
    for path in [&a_path, &b_path] {
        let backend = storex_seaorm::SeaOrmBackend::open_sqlite_file(path)
            .await
            .expect("open");
        backend
            .connection()
            .execute_unprepared("ALTER TABLE note ADD COLUMN pinned BOOLEAN DEFAULT 0")
            .await
            .expect("migrate");
    }
    let a = sqlite_engine(&shared, registry_pinned(2), &a_path, a_id).await;
    let b = sqlite_engine(&shared, registry_pinned(2), &b_path, b_id).await;
    // Both edit the title.
    for (engine, title) in [(&a, "from a"), (&b, "from b")] {
        engine
            .device()
            .storage()
            .update_by_pk("note", 1, object! { "title" => title })
            .await
            .expect("update");
    }
    b.sync_once().await.expect("b pushes");
    a.sync_once().await.expect("a syncs");
    b.sync_once().await.expect("b pulls");
    // A device of release 2 that starts now builds the note from the log alone.
    let c = sqlite_engine(&shared, registry_pinned(2), &dir.path().join("c.db"), c_id).await;
    c.sync_once().await.expect("c syncs");
    let mut rows = Vec::new();
    for engine in [&a, &b, &c] {
        let row = engine
            .device()
            .storage()
            .find_by_pk("note", 1)
            .await
            .expect("find")
            .expect("the note");
        rows.push(row);
    }
    assert_eq!(rows[0]["pinned"], Value::Bool(false), "{rows:?}");
    assert_eq!(rows[0], rows[1], "A and B differ");
    assert_eq!(rows[0], rows[2], "a new device differs");
}
