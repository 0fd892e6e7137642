//! The end-to-end sync scenarios (see `storex_test::sync_scenarios`) through a
//! MemorySharedLog, with devices on SQLite files.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use storex_core::Value;
use storex_sync::{MemorySharedLog, SharedSyncLog};

fn memory() -> BoxFuture<'static, Arc<dyn SharedSyncLog>> {
    async { Arc::new(MemorySharedLog::new()) as Arc<dyn SharedSyncLog> }.boxed()
}

#[tokio::test]
async fn memory_shared_log_passes_every_sync_scenario() {
    for (name, scenario) in storex_test::sync_scenarios::all() {
        eprintln!("scenario: {name}");
        scenario(&memory).await;
    }
}

#[tokio::test]
async fn a_push_sends_what_a_reader_indexed_and_then_the_journal_page_by_page() {
    use storex_sync::ContinuousOptions;
    let mut devices = storex_test::devices::Devices::new(memory().await).await;
    let a = devices
        .add_with(ContinuousOptions::default().with_batch_size(10))
        .await;
    let b = devices.add().await;
    for n in 0..4 {
        devices.note(a, &format!("early-{n}"), "v").await;
    }
    // A reader of the log indexes the first writes: they wait as unshared log rows.
    let log = devices.device(a).log();
    assert_eq!(log.unshared_count().await.expect("count"), 4);
    // More writes than one indexing round takes, left in the journal.
    for n in 0..70 {
        devices.note(a, &format!("late-{n}"), "v").await;
    }
    assert_eq!(log.journal_records().await.expect("records"), 70);
    let report = devices.sync(a).await;
    assert_eq!(report.pushed, 74, "{report:?}");
    assert_eq!(log.journal_records().await.expect("records"), 0);
    assert_eq!(log.unshared_count().await.expect("count"), 0);
    devices.sync(b).await;
    assert_eq!(devices.count(b).await, 74);
    devices.assert_converged(&[a, b]).await;
}

#[tokio::test]
async fn a_log_restored_from_a_backup_is_pulled_again_not_skipped() {
    use storex_sync::{ContinuousOptions, ContinuousSync};
    let mut devices = storex_test::devices::Devices::new(memory().await).await;
    let (a, b) = (devices.add().await, devices.add().await);
    for n in 0..5 {
        devices.note(a, &format!("before-{n}"), "v").await;
    }
    devices.sync_all(&[a, b]).await;
    assert_eq!(devices.count(b).await, 5);
    // The log's database comes back from a backup taken before any of that: empty. The
    // devices' cursors are past its end.
    let restored: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let engine = |index: usize| {
        let device = devices.device(index).clone();
        let log = restored.clone();
        async move {
            log.register_device("ann", device.device())
                .await
                .expect("register");
            ContinuousSync::new(device, log, ContinuousOptions::default())
        }
    };
    let (on_a, on_b) = (engine(a).await, engine(b).await);
    // Written after the restore: in the log they get cursors b has passed.
    devices.note(a, "after-0", "v").await;
    devices.note(a, "after-1", "v").await;
    assert_eq!(on_a.sync_once().await.expect("a pushes").pushed, 2);
    // b's own writes, pushed first, take the log's end past b's cursor: it must rewind
    // before that push, when the log can still tell.
    for n in 0..4 {
        devices.note(b, &format!("b-after-{n}"), "v").await;
    }
    let report = on_b.sync_once().await.expect("b syncs");
    assert_eq!(report.pushed, 4, "{report:?}");
    assert_eq!(report.integrated, 2, "{report:?}");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("restored from a backup")),
        "{report:?}"
    );
    assert_eq!(devices.count(b).await, 11);
    // Back in step: the next sync pulls nothing and says nothing.
    let report = on_b.sync_once().await.expect("b syncs again");
    assert_eq!(report.pulled, 0, "{report:?}");
    assert!(report.problems.is_empty(), "{report:?}");
}

/// A memory shared log that, when a push arrives, first has the pushing device's log indexed
/// (another reader of the log getting there while the push travels), or, once told to, fails
/// every push after the first, or refuses entries larger than a limit one by one (storing
/// those before, giving back those after), as a proxy with a body limit does to an HTTP
/// client.
#[derive(Debug, Default)]
struct IndexingOnPush {
    inner: MemorySharedLog,
    pusher: std::sync::OnceLock<storex_sync::ClientSyncLog>,
    fail_after_one: std::sync::atomic::AtomicBool,
    /// Payloads larger than this are refused (0: none is).
    refuse_larger_than: std::sync::atomic::AtomicUsize,
    /// Set: every push is answered with the refusal of an entry it does not hold.
    refuse_a_stranger: std::sync::atomic::AtomicBool,
    /// Set: every push after a refusal fails.
    fail_after_refusal: std::sync::atomic::AtomicBool,
    refusals: std::sync::atomic::AtomicUsize,
    pushes: std::sync::atomic::AtomicUsize,
    /// The most entries one push carried.
    largest_push: std::sync::atomic::AtomicUsize,
    /// Once set, every pull after the next one never answers.
    hang_later_pulls: std::sync::atomic::AtomicBool,
    pulls: std::sync::atomic::AtomicUsize,
}

impl SharedSyncLog for IndexingOnPush {
    fn name(&self) -> &'static str {
        "indexing-on-push"
    }

    fn register_device<'a>(
        &'a self,
        user: &'a str,
        device: storex_sync::DeviceId,
    ) -> BoxFuture<'a, storex_sync::SharedResult<()>> {
        self.inner.register_device(user, device)
    }

    fn devices(
        &self,
        device: storex_sync::DeviceId,
    ) -> BoxFuture<'_, storex_sync::SharedResult<Vec<storex_sync::DeviceInfo>>> {
        self.inner.devices(device)
    }

    fn push(
        &self,
        device: storex_sync::DeviceId,
        entries: Vec<storex_sync::SharedEntry>,
    ) -> BoxFuture<'_, storex_sync::SharedResult<u64>> {
        async move {
            use std::sync::atomic::Ordering;
            let earlier = self.pushes.fetch_add(1, Ordering::SeqCst);
            self.largest_push.fetch_max(entries.len(), Ordering::SeqCst);
            if self.fail_after_one.load(Ordering::SeqCst) && earlier > 0 {
                return Err(storex_sync::SharedLogError::Unavailable {
                    log: "indexing-on-push",
                    source: "the second push fails".into(),
                });
            }
            if let Some(log) = self.pusher.get() {
                log.index_journal().await.expect("indexed meanwhile");
            }
            if self.fail_after_refusal.load(Ordering::SeqCst)
                && self.refusals.load(Ordering::SeqCst) > 0
            {
                return Err(storex_sync::SharedLogError::Unavailable {
                    log: "indexing-on-push",
                    source: "a push after a refusal fails".into(),
                });
            }
            if self.refuse_a_stranger.load(Ordering::SeqCst) {
                return Err(storex_sync::SharedLogError::EntryRefused {
                    id: storex_core::uuid::Uuid::now_v7(),
                    problem: "a confused log".into(),
                    unsent: entries,
                });
            }
            let limit = self.refuse_larger_than.load(Ordering::SeqCst);
            let mut entries = entries;
            if let Some(at) = (limit > 0)
                .then(|| entries.iter().position(|e| e.payload.len() > limit))
                .flatten()
            {
                let unsent = entries.split_off(at + 1);
                let refused = entries.pop().expect("the entry at `at`");
                self.inner.push(device, entries).await?;
                self.refusals.fetch_add(1, Ordering::SeqCst);
                return Err(storex_sync::SharedLogError::EntryRefused {
                    id: refused.id,
                    problem: format!("HTTP 413: larger than {limit} bytes"),
                    unsent,
                });
            }
            self.inner.push(device, entries).await
        }
        .boxed()
    }

    fn pull<'a>(
        &'a self,
        device: storex_sync::DeviceId,
        after: u64,
        limit: usize,
        topics: Option<&'a [String]>,
    ) -> BoxFuture<'a, storex_sync::SharedResult<storex_sync::Pull>> {
        async move {
            use std::sync::atomic::Ordering;
            if self.hang_later_pulls.load(Ordering::SeqCst)
                && self.pulls.fetch_add(1, Ordering::SeqCst) > 0
            {
                std::future::pending::<()>().await;
            }
            self.inner.pull(device, after, limit, topics).await
        }
        .boxed()
    }

    fn ack(
        &self,
        device: storex_sync::DeviceId,
        cursor: u64,
    ) -> BoxFuture<'_, storex_sync::SharedResult<()>> {
        self.inner.ack(device, cursor)
    }

    fn compact<'a>(&'a self, user: &'a str) -> BoxFuture<'a, storex_sync::SharedResult<u64>> {
        self.inner.compact(user)
    }
}

#[tokio::test]
async fn a_push_reads_the_journal_in_parts_of_the_batch_size_never_splitting_a_write() {
    use std::sync::atomic::Ordering;
    use storex_core::{object, BatchStep, Operation};
    use storex_sync::ContinuousOptions;
    let shared = Arc::new(IndexingOnPush::default());
    let mut devices = storex_test::devices::Devices::new(shared.clone()).await;
    let a = devices
        .add_with(ContinuousOptions::default().with_batch_size(10))
        .await;
    let b = devices.add().await;
    // Writes of 25 notes each (one journal record each), then single notes.
    for write in 0..4 {
        let steps = (0..25)
            .map(|n| {
                let note = object! { "id" => format!("w{write}-{n}"), "title" => "v" };
                BatchStep::new(Operation::create("note", note))
            })
            .collect();
        let storage = devices.device(a).storage();
        storage.batch(steps).await.expect("a write of 25 notes");
    }
    for n in 0..30 {
        devices.note(a, &format!("single-{n}"), "v").await;
    }
    let report = devices.sync(a).await;
    assert_eq!(report.pushed, 130, "{report:?}");
    // A part holds whole writes up to the batch size: a write of 25 travels alone, the
    // single notes ten at a time (all 34 writes fit one indexing round).
    assert_eq!(shared.largest_push.load(Ordering::SeqCst), 25);
    assert_eq!(shared.pushes.load(Ordering::SeqCst), 4 + 3);
    devices.sync(b).await;
    assert_eq!(devices.count(b).await, 130);
    devices.assert_converged(&[a, b]).await;
}

#[tokio::test]
async fn writes_a_reader_indexes_while_their_push_travels_end_up_shared() {
    let shared = Arc::new(IndexingOnPush::default());
    let mut devices = storex_test::devices::Devices::new(shared.clone()).await;
    let a = devices.add().await;
    let b = devices.add().await;
    for n in 0..5 {
        devices.note(a, &format!("note-{n}"), "v").await;
    }
    let log = devices.device(a).log().clone();
    shared.pusher.set(log.clone()).expect("set once");
    let report = devices.sync(a).await;
    assert_eq!(report.pushed, 5, "{report:?}");
    // The reader made the log rows; the push's own indexing found the records gone and
    // marked those rows shared.
    assert_eq!(log.journal_records().await.expect("records"), 0);
    assert_eq!(log.unshared_count().await.expect("count"), 0);
    devices.sync(b).await;
    assert_eq!(devices.count(b).await, 5);
    devices.assert_converged(&[a, b]).await;
}

#[tokio::test]
async fn what_a_push_stored_before_a_later_one_failed_is_settled_and_the_rest_waits_unshared() {
    use std::sync::atomic::Ordering;
    use storex_sync::ContinuousOptions;
    let shared = Arc::new(IndexingOnPush::default());
    let mut devices = storex_test::devices::Devices::new(shared.clone()).await;
    // Pushes small enough that the writes take several.
    let a = devices
        .add_with(ContinuousOptions::default().with_max_push_bytes(1_000))
        .await;
    let b = devices.add().await;
    for n in 0..20 {
        devices.note(a, &format!("note-{n}"), "v").await;
    }
    shared.fail_after_one.store(true, Ordering::SeqCst);
    let failed = devices.try_sync(a).await;
    assert!(failed.is_err(), "{failed:?}");
    let log = devices.device(a).log();
    // Settled all the same: the first push's entries folded, the others waiting unshared.
    assert_eq!(log.journal_records().await.expect("records"), 0);
    let unshared = log.unshared_count().await.expect("count");
    assert!(unshared > 0 && unshared < 20, "{unshared} unshared");
    shared.fail_after_one.store(false, Ordering::SeqCst);
    let report = devices.sync(a).await;
    assert_eq!(report.pushed, unshared, "{report:?}");
    devices.sync(b).await;
    assert_eq!(devices.count(b).await, 20);
    devices.assert_converged(&[a, b]).await;
}

#[tokio::test]
async fn an_entry_the_log_refuses_alone_waits_unshared_while_the_others_push_and_pull() {
    use std::sync::atomic::Ordering;
    let shared = Arc::new(IndexingOnPush::default());
    let mut devices = storex_test::devices::Devices::new(shared.clone()).await;
    let a = devices.add().await;
    let b = devices.add().await;
    devices.note(b, "from-b", "v").await;
    devices.sync(b).await;
    // One refused entry among log rows a reader indexed, one among the journal's records.
    let big = "x".repeat(5_000);
    devices.note(a, "small-1", "v").await;
    devices.note(a, "big-1", &big).await;
    let log = devices.device(a).log().clone();
    assert_eq!(log.unshared_count().await.expect("count"), 2);
    devices.note(a, "big-2", &big).await;
    devices.note(a, "small-2", "v").await;
    shared.refuse_larger_than.store(1_000, Ordering::SeqCst);
    let report = devices.sync(a).await;
    assert_eq!(report.pushed, 2, "{report:?}");
    let refused: Vec<_> = report
        .problems
        .iter()
        .filter(|p| p.contains("was refused") && p.contains("HTTP 413"))
        .collect();
    assert_eq!(refused.len(), 2, "{report:?}");
    // The sync went on to pull.
    assert_eq!(devices.count(a).await, 5);
    assert_eq!(log.unshared_count().await.expect("count"), 2);
    devices.sync(b).await;
    assert_eq!(devices.count(b).await, 3);
    // Once the log takes them, the next sync pushes them.
    shared.refuse_larger_than.store(0, Ordering::SeqCst);
    let report = devices.sync(a).await;
    assert_eq!(report.pushed, 2, "{report:?}");
    assert!(report.problems.is_empty(), "{report:?}");
    devices.sync(b).await;
    assert_eq!(devices.count(b).await, 5);
    devices.assert_converged(&[a, b]).await;
}

#[tokio::test]
async fn what_a_push_stored_before_a_refusal_is_settled_when_the_rest_then_fails() {
    use std::sync::atomic::Ordering;
    let shared = Arc::new(IndexingOnPush::default());
    let mut devices = storex_test::devices::Devices::new(shared.clone()).await;
    let a = devices.add().await;
    let b = devices.add().await;
    devices.note(a, "small-1", "v").await;
    devices.note(a, "big", &"x".repeat(5_000)).await;
    devices.note(a, "small-2", "v").await;
    shared.refuse_larger_than.store(1_000, Ordering::SeqCst);
    shared.fail_after_refusal.store(true, Ordering::SeqCst);
    devices
        .try_sync(a)
        .await
        .expect_err("the push after the refusal fails");
    // The first note was stored: settled as shared, not sent again.
    let log = devices.device(a).log().clone();
    assert_eq!(log.journal_records().await.expect("records"), 0);
    assert_eq!(log.unshared_count().await.expect("count"), 2);
    shared.refuse_larger_than.store(0, Ordering::SeqCst);
    shared.fail_after_refusal.store(false, Ordering::SeqCst);
    assert_eq!(devices.sync(a).await.pushed, 2);
    devices.sync(b).await;
    assert_eq!(devices.count(b).await, 3);
    devices.assert_converged(&[a, b]).await;
}

#[tokio::test]
async fn a_refusal_of_an_entry_the_push_did_not_hold_fails_the_push_instead_of_looping() {
    use std::sync::atomic::Ordering;
    let shared = Arc::new(IndexingOnPush::default());
    let mut devices = storex_test::devices::Devices::new(shared.clone()).await;
    let a = devices.add().await;
    devices.note(a, "note", "v").await;
    shared.refuse_a_stranger.store(true, Ordering::SeqCst);
    let failed = devices.try_sync(a).await.expect_err("a confused log");
    assert!(
        format!("{failed:?}").contains("not one of the push's 1"),
        "{failed:?}"
    );
    assert_eq!(shared.pushes.load(Ordering::SeqCst), 1);
    shared.refuse_a_stranger.store(false, Ordering::SeqCst);
    assert_eq!(devices.sync(a).await.pushed, 1);
}

#[tokio::test]
async fn a_page_that_fails_to_apply_ends_the_sync_without_waiting_for_the_next_page() {
    use std::sync::atomic::Ordering;
    use storex_sync::ContinuousOptions;
    let shared = Arc::new(IndexingOnPush::default());
    let mut devices = storex_test::devices::Devices::new(shared.clone()).await;
    let a = devices.add().await;
    let b = devices
        .add_with(ContinuousOptions::default().with_batch_size(5))
        .await;
    for n in 0..12 {
        devices.note(a, &format!("note-{n}"), "v").await;
    }
    devices.sync(a).await;
    // B's first page fails to apply (its cursor cannot be stored) while the next page,
    // pulled meanwhile, never comes: the sync reports the failure instead of waiting.
    devices.fail_next_cursor_store(b);
    shared.hang_later_pulls.store(true, Ordering::SeqCst);
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(30), devices.try_sync(b))
        .await
        .expect("the sync ended");
    assert!(outcome.is_err(), "{outcome:?}");
    shared.hang_later_pulls.store(false, Ordering::SeqCst);
    devices.sync(b).await;
    assert_eq!(devices.count(b).await, 12);
    devices.assert_converged(&[a, b]).await;
}

#[tokio::test]
async fn quarantined_payloads_are_opened_page_by_page_once_the_key_is_right() {
    use storex_sync::ContinuousOptions;
    let key = [42u8; 32];
    let mut devices = storex_test::devices::Devices::new(memory().await).await;
    let a = devices
        .add_with(ContinuousOptions::default().with_encryption_key(key))
        .await;
    let wrong = ContinuousOptions::default()
        .with_encryption_key([1u8; 32])
        .with_batch_size(2);
    let b = devices.add_with(wrong).await;
    for n in 0..5 {
        devices.note(a, &format!("note-{n}"), "v").await;
    }
    devices.sync(a).await;
    assert_eq!(devices.sync(b).await.quarantined, 5);
    assert_eq!(devices.count(b).await, 0);
    let right = ContinuousOptions::default()
        .with_encryption_key(key)
        .with_batch_size(2);
    devices.resubscribe(b, right);
    let report = devices.sync(b).await;
    assert_eq!((report.released, report.integrated), (5, 5), "{report:?}");
    assert_eq!(devices.count(b).await, 5);
    assert_eq!(devices.quarantined(b).await, 0);
    // Released once: the next engine finds nothing left.
    devices.resubscribe(b, ContinuousOptions::default().with_encryption_key(key));
    assert_eq!(devices.sync(b).await.released, 0);
    devices.assert_converged(&[a, b]).await;
}

#[tokio::test]
async fn a_payload_pulled_again_is_kept_once_and_released_only_inside_the_subscription() {
    use storex_core::uuid::Uuid;
    use storex_core::{object, Pk};
    use storex_sync::{ContinuousOptions, EntryCodec, EntryOp, LogEntry, SharedEntry};
    let log = memory().await;
    let mut devices = storex_test::devices::Devices::new(log.clone()).await;
    let a = devices.add().await;
    let b = devices.add().await;
    devices.resubscribe(b, ContinuousOptions::default().with_collections(["note"]));
    let from_a = devices.device(a).device();
    let garbage = SharedEntry {
        id: Uuid::now_v7(),
        device: from_a,
        topic: "note".into(),
        payload: b"\xff not an entry".to_vec(),
    };
    log.push(from_a, vec![garbage]).await.expect("push garbage");
    assert_eq!(devices.sync(b).await.quarantined, 1);
    // A photo that reads well, kept in the quarantine (as a device of an earlier version
    // would keep a payload it could not read).
    let hlc = devices.device(a).clock().now();
    let photo = LogEntry {
        id: Uuid::now_v7(),
        device: from_a,
        hlc,
        collection: "photo".into(),
        pk: Pk::from("p1"),
        op: EntryOp::Create,
        fields: object! { "id" => "p1", "caption" => "kept" },
        schema_version: 1,
    };
    let sealed = EntryCodec::plain().encode(&photo);
    let row = object! {
        "id" => sealed.id, "device" => from_a.0, "topic" => sealed.topic.clone(),
        "cursor" => 0i64, "payload" => sealed.payload.clone(), "reason" => "an earlier version",
    };
    let storage = devices.device(b).storage().clone();
    storage
        .create(storex_sync::QUARANTINE_COLLECTION, row)
        .await
        .expect("keep the photo");
    // A new engine, notes only still: the photo stays where it is.
    devices.resubscribe(b, ContinuousOptions::default().with_collections(["note"]));
    let report = devices.sync(b).await;
    assert_eq!((report.quarantined, report.released), (0, 0), "{report:?}");
    assert_eq!(devices.quarantined(b).await, 2);
    // Everything: pulling starts over, the garbage comes again and is kept once, and the
    // photo is released.
    devices.resubscribe(b, ContinuousOptions::default());
    let report = devices.sync(b).await;
    assert_eq!((report.quarantined, report.released), (1, 1), "{report:?}");
    assert_eq!(devices.quarantined(b).await, 1);
    let photo = storage.find_by_pk("photo", "p1").await.expect("find");
    assert!(photo.is_some(), "the released photo was applied");
}

#[tokio::test]
async fn a_sync_compacts_what_was_pushed_oldest_first_up_to_its_limit() {
    use storex_sync::ContinuousOptions;
    let mut devices = storex_test::devices::Devices::new(memory().await).await;
    let a = devices
        .add_with(ContinuousOptions::default().with_compact_per_sync(3))
        .await;
    let b = devices.add().await;
    devices.sync_all(&[a, b]).await;
    // B changes note-0 before A does: A's later title must win, also once compacted.
    devices.note(a, "note-0", "first").await;
    devices.sync_all(&[a, b]).await;
    devices.set_title(b, "note-0", "b-earlier").await;
    // A later millisecond: within one, the two clocks' counters would decide.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    devices.set_title(a, "note-0", "a-later").await;
    for n in 1..5 {
        devices.note(a, &format!("note-{n}"), "v").await;
    }
    let log = devices.device(a).log();
    // Entries indexed as log rows before their push (a pull or a reader of the log can do
    // that) wait for compaction; those pushed from the journal are folded as they go.
    log.index_journal().await.expect("index");
    // A sync that carried changes leaves a few pushed entries for an idle one.
    let report = devices.sync(a).await;
    assert_eq!((report.pushed, report.compacted), (5, 0), "{report:?}");
    // (note-0's create went in the idle sync that `sync_all` ended with.)
    assert_eq!(log.len().await.expect("len"), 5);
    let report = devices.sync(a).await;
    assert_eq!((report.pushed, report.compacted), (0, 3), "{report:?}");
    // The oldest went first (note-0's update, note-1, note-2); the rest waits.
    let left: Vec<storex_core::Pk> = log
        .all()
        .await
        .expect("log")
        .entries
        .into_iter()
        .map(|stored| stored.entry.pk)
        .collect();
    assert_eq!(left, vec!["note-3".into(), "note-4".into()]);
    let report = devices.sync(a).await;
    assert_eq!((report.pushed, report.compacted), (0, 2), "{report:?}");
    assert!(log.all().await.expect("log").entries.is_empty());

    // B pushes its earlier change and takes A's; A takes B's against its compacted log.
    devices.sync(b).await;
    let report = devices.sync(a).await;
    assert_eq!(report.conflicts, 1, "{report:?}");
    devices.assert_converged(&[a, b]).await;
    assert_eq!(devices.title(b, "note-0").await.as_deref(), Some("a-later"));
}

#[tokio::test]
async fn a_sync_set_not_to_compact_keeps_the_pushed_entries() {
    use storex_sync::ContinuousOptions;
    let mut devices = storex_test::devices::Devices::new(memory().await).await;
    let a = devices
        .add_with(ContinuousOptions::default().with_compact_per_sync(0))
        .await;
    for n in 0..3 {
        devices.note(a, &format!("note-{n}"), "v").await;
    }
    for _ in 0..2 {
        let report = devices.sync(a).await;
        assert_eq!(report.compacted, 0, "{report:?}");
    }
    let log = devices.device(a).log();
    assert_eq!(log.len().await.expect("len"), 3);
    assert_eq!(log.compact().await.expect("compact"), 3);
}

#[tokio::test]
async fn a_sync_that_leaves_a_full_round_waiting_compacts_it_at_once() {
    use storex_core::{object, BatchStep, Operation};
    let mut devices = storex_test::devices::Devices::new(memory().await).await;
    let a = devices.add().await;
    let write = |prefix: &'static str, count: usize| {
        let steps: Vec<BatchStep> = (0..count)
            .map(|n| {
                let note = object! { "id" => format!("{prefix}-{n}"), "title" => "v" };
                BatchStep::new(Operation::create("note", note))
            })
            .collect();
        steps
    };
    let storage = devices.device(a).storage().clone();
    let log = devices.device(a).log();
    // Entries indexed before their push (else the push folds them, see below).
    // One short of a round (2,000): left for an idle sync.
    storage.batch(write("short", 1_999)).await.expect("a write");
    log.index_journal().await.expect("index");
    let report = devices.sync(a).await;
    assert_eq!((report.pushed, report.compacted), (1_999, 0), "{report:?}");
    // One more write fills the round: compacted in the same sync as its push.
    storage.batch(write("more", 1)).await.expect("a write");
    log.index_journal().await.expect("index");
    let report = devices.sync(a).await;
    assert_eq!((report.pushed, report.compacted), (1, 2_000), "{report:?}");
    assert!(log.is_empty().await.expect("empty"));
}

#[tokio::test]
async fn a_compacting_device_folds_what_it_pushes_from_the_journal_into_its_versions() {
    let mut devices = storex_test::devices::Devices::new(memory().await).await;
    let (a, b) = (devices.add().await, devices.add().await);
    devices.note(a, "note-0", "first").await;
    devices.note(a, "note-1", "v").await;
    let log = devices.device(a).log().clone();
    // The latest timestamp, read from the journal (which this does not index).
    let latest = log.max_hlc().await.expect("latest");
    assert!(latest.is_some());
    let report = devices.sync(a).await;
    // Pushed, and no log row written for them: their versions hold them, and the clock
    // still restarts from their latest timestamp.
    assert_eq!((report.pushed, report.compacted), (2, 0), "{report:?}");
    assert!(log.is_empty().await.expect("empty"));
    assert_eq!(log.versioned_objects().await.expect("versions"), 2);
    assert_eq!(log.max_hlc().await.expect("latest"), latest);
    // B changes note-0 before A does; A's later change must win on both, and A reconciles
    // B's against the versions alone.
    devices.sync(b).await;
    devices.set_title(b, "note-0", "b-earlier").await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    devices.set_title(a, "note-0", "a-later").await;
    devices.delete(a, "note-1").await;
    let report = devices.sync(a).await;
    assert_eq!(report.pushed, 2, "{report:?}");
    assert!(log.is_empty().await.expect("empty"));
    devices.sync(b).await;
    let report = devices.sync(a).await;
    assert_eq!(report.conflicts, 1, "{report:?}");
    devices.assert_converged(&[a, b]).await;
    assert_eq!(devices.title(a, "note-0").await.as_deref(), Some("a-later"));
    assert_eq!(devices.title(b, "note-0").await.as_deref(), Some("a-later"));
    assert_eq!(
        devices.count(b).await,
        1,
        "the delete folded at A reached B"
    );
}

#[tokio::test]
async fn a_push_keeps_the_changes_of_an_object_whose_versions_do_not_read_as_shared_log_rows() {
    use storex_core::{object, Filter, Value};
    use storex_sync::VERSIONS_COLLECTION;
    let mut devices = storex_test::devices::Devices::new(memory().await).await;
    let (a, b) = (devices.add().await, devices.add().await);
    devices.note(a, "note-0", "first").await;
    devices.sync(a).await;
    // note-0's stored versions no longer read.
    let storage = devices.device(a).storage().clone();
    let rows = storage
        .find_many(VERSIONS_COLLECTION, storex_core::Query::default())
        .await
        .expect("versions");
    let object = rows
        .iter()
        .filter_map(|row| row.get("object").and_then(Value::as_text))
        .find(|id| id.starts_with("note"))
        .expect("note-0's versions")
        .to_owned();
    let garbage = object! { "state" => Value::Blob(vec![0xff, 0x00, 0x13]) };
    storage
        .update_where(
            VERSIONS_COLLECTION,
            Filter::all().eq("object", object),
            garbage,
        )
        .await
        .expect("corrupted");
    devices.set_title(a, "note-0", "second").await;
    devices.note(b, "note-1", "from b").await;
    devices.sync(b).await;
    // The push does not fold note-0's change: it keeps it as a shared log row, and pulls.
    let report = devices.sync(a).await;
    assert_eq!(report.pushed, 1, "{report:?}");
    let log = devices.device(a).log();
    let kept = log.all().await.expect("log").entries;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].shared, "{kept:?}");
    assert_eq!(devices.title(a, "note-1").await.as_deref(), Some("from b"));
    devices.sync(b).await;
    assert_eq!(devices.title(b, "note-0").await.as_deref(), Some("second"));
}

#[tokio::test]
async fn a_journal_record_that_does_not_read_is_passed_over_kept_and_reported_each_sync() {
    use storex_core::{object, uuid::Uuid, Operation, Origin, Value};
    use storex_sync::fast_sync::{
        memory_channel_pair, receive_snapshot, send_snapshot, FastSyncOptions,
    };
    use storex_sync::{ContinuousOptions, JOURNAL_COLLECTION};
    let mut devices = storex_test::devices::Devices::new(memory().await).await;
    let a = devices
        .add_with(ContinuousOptions::default().with_batch_size(10))
        .await;
    let b = devices.add().await;
    let storage = devices.device(a).storage().clone();
    let mut damaged = Vec::new();
    let mut damage = |entries: Vec<u8>| {
        let id = Uuid::now_v7();
        damaged.push(id);
        Operation::create(
            JOURNAL_COLLECTION,
            object! { "id" => id, "entries" => Value::Blob(entries) },
        )
    };
    devices.note(a, "before", "v").await;
    // A record in a format this version does not know (a newer one's, say), between writes.
    storage
        .execute_as(damage(vec![9, 1, 2]), Origin::Sync)
        .await
        .expect("stored");
    // Three push parts of 10 entries; then a record cut short, the journal's last, alone in
    // a fourth part.
    for n in 0..29 {
        devices.note(a, &format!("after-{n}"), "v").await;
    }
    storage
        .execute_as(damage(vec![2, 0x92]), Origin::Sync)
        .await
        .expect("stored");
    let log = devices.device(a).log();
    assert_eq!(log.journal_records().await.expect("records"), 32);

    let report = devices.sync(a).await;
    assert_eq!(report.pushed, 30, "{report:?}");
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("has format 9")
            && report.problems[1].contains("does not decode"),
        "{:?}",
        report.problems
    );
    assert!(report.problems[0].contains("stays in the journal"));
    // Kept where they were, for a version that reads them.
    let kept = |rows: Vec<storex_core::Object>| -> Vec<Uuid> {
        rows.iter()
            .filter_map(|row| row.get("id").and_then(Value::as_uuid))
            .collect()
    };
    let journal = || async {
        let rows = storage
            .find_many(
                JOURNAL_COLLECTION,
                storex_core::Query::default().order_asc("id"),
            )
            .await
            .expect("journal");
        kept(rows)
    };
    assert_eq!(journal().await, damaged);
    devices.sync(b).await;
    assert_eq!(devices.count(b).await, 30);
    devices.assert_converged(&[a, b]).await;

    // Applying received changes and reading the log pass over them too; every sync still
    // reports them.
    devices.note(b, "from-b", "v").await;
    devices.sync(b).await;
    let report = devices.sync(a).await;
    assert_eq!(report.integrated, 1, "{report:?}");
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    // Indexing reads past them to the writes after them.
    for n in 0..3 {
        devices.note(a, &format!("later-{n}"), "v").await;
    }
    assert_eq!(log.index_journal().await.expect("indexed"), 3);
    assert_eq!(journal().await, damaged);
    let report = devices.sync(a).await;
    assert_eq!(report.pushed, 3, "{report:?}");
    devices.sync(b).await;

    // A fast sync from the device takes its snapshot with them in the journal.
    let c = devices.add().await;
    let (mut to, mut from) = memory_channel_pair(4);
    let options = FastSyncOptions::default();
    let (sent, received) = tokio::join!(
        send_snapshot(devices.device(a), &mut to, &options),
        receive_snapshot(devices.device(c), &mut from, &options)
    );
    sent.expect("sent");
    received.expect("received");
    assert_eq!(devices.count(c).await, 34);
    devices.assert_converged(&[a, b, c]).await;
}

#[tokio::test]
async fn an_unshared_log_row_that_does_not_read_is_passed_over_kept_and_reported_each_sync() {
    use storex_sync::ContinuousOptions;
    let mut devices = storex_test::devices::Devices::new(memory().await).await;
    // Pages of 10: the damaged row is the last of the first page, where the second starts.
    let a = devices
        .add_with(ContinuousOptions::default().with_batch_size(10))
        .await;
    let b = devices.add().await;
    for n in 0..25 {
        devices.note(a, &format!("note-{n}"), "v").await;
    }
    // Indexed before the sync (a reader of the log, say): the writes wait as log rows.
    let log = devices.device(a).log();
    assert_eq!(log.index_journal().await.expect("indexed"), 25);
    let rows = log.all().await.expect("log").entries;
    let damaged = rows[9].entry.id;
    damage_log_row(&devices, a, damaged, "op", "rewrite").await;

    let report = devices.sync(a).await;
    assert_eq!(report.pushed, 24, "{report:?}");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains(&damaged.to_string())
            && report.problems[0].contains("stays unshared"),
        "{:?}",
        report.problems
    );
    assert_eq!(log.unshared_count().await.expect("count"), 1);
    devices.sync(b).await;
    assert_eq!(devices.count(b).await, 24);

    // Kept for a version that reads it, and reported again by every sync.
    let report = devices.sync(a).await;
    assert_eq!(report.pushed, 0, "{report:?}");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(log.unshared_count().await.expect("count"), 1);
}

#[tokio::test]
async fn changes_to_an_object_whose_log_row_does_not_read_are_held_and_the_others_apply() {
    use storex_sync::HoldReason;
    let mut devices = storex_test::devices::Devices::new(memory().await).await;
    let a = devices.add().await;
    let b = devices.add().await;
    devices.note(b, "x", "from b").await;
    devices.note(b, "y", "from b").await;
    devices.sync(b).await;
    devices.sync(a).await;
    // An edit of x on a, indexed as a log row before its push, then damaged.
    devices.set_title(a, "x", "edited on a").await;
    let log = devices.device(a).log();
    assert_eq!(log.index_journal().await.expect("indexed"), 1);
    let damaged = log.all().await.expect("log").entries[0].entry.id;
    damage_log_row(&devices, a, damaged, "fields", "{not json").await;
    devices.set_title(b, "x", "edited on b").await;
    devices.set_title(b, "y", "edited on b").await;
    devices.sync(b).await;

    let report = devices.sync(a).await;
    assert_eq!((report.integrated, report.held), (1, 1), "{report:?}");
    assert_eq!(devices.title(a, "y").await.as_deref(), Some("edited on b"));
    // What a did to x is not known: b's change to it waits, x stays as a has it.
    assert_eq!(devices.title(a, "x").await.as_deref(), Some("edited on a"));
    let held = log.held().await.expect("held").entries;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].pk, storex_core::Pk::from("x"));
    // Later syncs go on past it.
    devices.note(b, "z", "from b").await;
    devices.sync(b).await;
    let report = devices.sync(a).await;
    assert_eq!(report.integrated, 1, "{report:?}");
    assert_eq!(log.held().await.expect("held").entries.len(), 1);
    // Retried (as the first sync after a start does), it is held again while the row does
    // not read, and stays in the log once.
    let retried = devices.device(a).retry_held().await.expect("retried");
    assert_eq!(retried.integrated, 0, "{retried:?}");
    assert_eq!(retried.held.len(), 1, "{retried:?}");
    let HoldReason::DamagedLog { problem } = &retried.held[0].1 else {
        panic!("held for another reason: {retried:?}");
    };
    assert!(problem.contains(&damaged.to_string()), "{problem}");
    assert_eq!(log.held().await.expect("held").entries.len(), 1);
    assert_eq!(devices.title(a, "x").await.as_deref(), Some("edited on a"));

    // The held row itself damaged: the first sync after a start names it, and goes on.
    let held = held[0].id;
    damage_log_row(&devices, a, held, "op", "rewrite").await;
    devices.resubscribe(a, storex_sync::ContinuousOptions::default());
    let report = devices.sync(a).await;
    let named = report.problems.iter().filter(|problem| {
        problem.contains("a held row of the client log does not read")
            && problem.contains(&held.to_string())
    });
    assert_eq!(named.count(), 1, "{report:?}");
}

#[tokio::test]
async fn compaction_passes_over_a_shared_log_row_that_does_not_read_and_keeps_it() {
    use storex_sync::LOG_COLLECTION;
    let mut devices = storex_test::devices::Devices::new(memory().await).await;
    let a = devices.add().await;
    let b = devices.add().await;
    for n in 0..5 {
        devices.note(a, &format!("note-{n}"), "v").await;
    }
    // Indexed before the push: the entries stay as shared log rows for compaction.
    let log = devices.device(a).log();
    assert_eq!(log.index_journal().await.expect("indexed"), 5);
    assert_eq!(devices.sync(a).await.pushed, 5);
    let oldest = log.all().await.expect("log").entries[0].entry.id;
    let storage = devices.device(a).storage().clone();
    damage_log_row(&devices, a, oldest, "pk", "[not a key").await;
    // Rounds of two: the first holds the damaged row and one that folds, the next goes on
    // after them.
    assert_eq!(log.compact_up_to(2).await.expect("compacted"), 2);
    assert_eq!(log.compact().await.expect("compacted"), 2);
    let left = storage
        .find_many(LOG_COLLECTION, storex_core::Query::default())
        .await
        .expect("log rows");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["id"], oldest.into());
    let report = devices.sync(a).await;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    devices.sync(b).await;
    devices.assert_converged(&[a, b]).await;
}

/// Damages the log row `id` of device `index`: sets its `field` (a text column) to `text`,
/// which does not read as that field.
async fn damage_log_row(
    devices: &storex_test::devices::Devices,
    index: usize,
    id: storex_core::uuid::Uuid,
    field: &str,
    text: &str,
) {
    let storage = devices.device(index).storage();
    storex_test::damage::overwrite_log_row(storage, id, field, text.into()).await;
}

/// Overwrites the state of the row of the versions index of note `id` on device `index`
/// with a byte no version writes; returns the row's id and its state before.
async fn damage_versions_row(
    devices: &storex_test::devices::Devices,
    index: usize,
    id: &str,
) -> (String, Value) {
    use storex_core::Query;
    use storex_sync::VERSIONS_COLLECTION;
    let storage = devices.device(index).storage();
    let rows = storage
        .find_many(VERSIONS_COLLECTION, Query::default())
        .await
        .expect("versions");
    let row = rows
        .iter()
        .find(|row| {
            row.get("object")
                .and_then(Value::as_text)
                .is_some_and(|object| {
                    object.starts_with("note\u{1f}") && object.contains(&format!("\"{id}\""))
                })
        })
        .expect("the note's versions");
    let object = row.get("object").and_then(Value::as_text).expect("id");
    let before = row.get("state").cloned().expect("state");
    set_versions_state(devices, index, object, Value::Blob(vec![0xff])).await;
    (object.to_owned(), before)
}

/// Sets the state of the row `object` of the versions index on device `index`.
async fn set_versions_state(
    devices: &storex_test::devices::Devices,
    index: usize,
    object: &str,
    state: Value,
) {
    let storage = devices.device(index).storage();
    storex_test::damage::overwrite_versions_row(storage, object, state).await;
}

#[tokio::test]
async fn an_object_whose_versions_do_not_read_holds_its_changes_and_keeps_its_own_as_log_rows() {
    use storex_sync::HoldReason;
    let mut devices = storex_test::devices::Devices::new(memory().await).await;
    let a = devices.add().await;
    let b = devices.add().await;
    devices.note(a, "x", "from a").await;
    devices.note(a, "y", "from a").await;
    devices.sync(a).await;
    devices.sync(b).await;
    let (object, state) = damage_versions_row(&devices, b, "x").await;

    // Received changes of x wait (what b knows of it is not known); y's apply.
    devices.set_title(a, "x", "edited on a").await;
    devices.set_title(a, "y", "edited on a").await;
    devices.sync(a).await;
    let report = devices.sync(b).await;
    assert_eq!((report.integrated, report.held), (1, 1), "{report:?}");
    assert_eq!(devices.title(b, "y").await.as_deref(), Some("edited on a"));
    assert_eq!(devices.title(b, "x").await.as_deref(), Some("from a"));
    let retried = devices.device(b).retry_held().await.expect("retried");
    let HoldReason::DamagedLog { problem } = &retried.held[0].1 else {
        panic!("held for another reason: {retried:?}");
    };
    assert!(problem.contains("versions"), "{problem}");

    // b's own change to x is pushed, and stays a log row instead of being folded into
    // versions that do not read; compaction leaves it too.
    devices.set_title(b, "x", "edited on b").await;
    let report = devices.sync(b).await;
    assert_eq!(report.pushed, 1, "{report:?}");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let log = devices.device(b).log();
    let kept = log.all().await.expect("log").entries;
    assert_eq!(kept.len(), 2, "the held change and b's own: {kept:?}");
    assert!(kept.iter().any(|s| s.shared && s.integrated), "{kept:?}");
    assert_eq!(log.compact().await.expect("compacted"), 0);
    assert_eq!(log.all().await.expect("log").entries.len(), 2);
    devices.sync(a).await;
    assert_eq!(devices.title(a, "x").await.as_deref(), Some("edited on b"));

    // The row reads again (a version that reads it, say): the held change is applied (and
    // loses to b's later one), compaction folds b's own, and the devices agree.
    set_versions_state(&devices, b, &object, state).await;
    let retried = devices.device(b).retry_held().await.expect("retried");
    assert_eq!(
        (retried.integrated, retried.held.len()),
        (1, 0),
        "{retried:?}"
    );
    assert_eq!(log.compact().await.expect("compacted"), 1);
    assert!(log.all().await.expect("log").entries.is_empty());
    devices.assert_converged(&[a, b]).await;
    assert_eq!(devices.title(b, "x").await.as_deref(), Some("edited on b"));
}

#[tokio::test]
async fn a_push_whose_fold_fails_settles_its_part_as_shared_log_rows_and_the_sync_goes_on() {
    let mut devices = storex_test::devices::Devices::new(memory().await).await;
    let (a, b) = (devices.add().await, devices.add().await);
    devices.note(a, "note-0", "first").await;
    devices.note(a, "note-1", "first").await;
    // Storing the folded versions fails once (the database refuses it, say).
    devices.fail_next_versions_store(a);
    let report = devices.sync(a).await;
    assert_eq!(report.pushed, 2, "{report:?}");
    let log = devices.device(a).log();
    let kept = log.all().await.expect("log").entries;
    assert_eq!(kept.len(), 2, "settled as log rows: {kept:?}");
    assert!(kept.iter().all(|s| s.shared && s.integrated), "{kept:?}");
    // Compaction folds them later.
    assert_eq!(log.compact().await.expect("compacted"), 2);
    devices.sync(b).await;
    devices.assert_converged(&[a, b]).await;
}

#[tokio::test]
async fn puts_sync_as_creates_and_converge_with_concurrent_updates() {
    use storex_core::object;
    let mut devices = storex_test::devices::Devices::new(memory().await).await;
    let (a, b) = (devices.add().await, devices.add().await);
    let put = |index: usize, photo: storex_core::Object| {
        let storage = devices.device(index).storage().clone();
        async move { storage.put("photo", photo).await.expect("put") }
    };
    let caption = |index: usize| {
        let storage = devices.device(index).storage().clone();
        async move {
            let photo = storage.find_by_pk("photo", "p").await.expect("find");
            photo.expect("the photo")["caption"].clone()
        }
    };
    // A put that creates, then one that replaces (its caption left out: null).
    put(a, object! { "id" => "p", "caption" => "one" }).await;
    devices.sync(a).await;
    devices.sync(b).await;
    assert_eq!(caption(b).await, Value::from("one"));
    put(b, object! { "id" => "p" }).await;
    devices.sync(b).await;
    devices.sync(a).await;
    assert_eq!(caption(a).await, Value::Null);

    // A put on a, then a later update on b before either synced: the update wins its field.
    put(a, object! { "id" => "p", "caption" => "put on a" }).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let update = object! { "caption" => "updated on b" };
    let storage = devices.device(b).storage().clone();
    storage
        .update_by_pk("photo", "p", update)
        .await
        .expect("update");
    devices.sync_all(&[a, b, a]).await;
    assert_eq!(caption(a).await, Value::from("updated on b"));
    assert_eq!(caption(b).await, Value::from("updated on b"));
}

#[tokio::test]
async fn a_log_that_says_more_follow_without_moving_on_is_an_error_not_a_loop() {
    use storex_test::flaky::FlakySharedLog;
    let flaky = Arc::new(FlakySharedLog::new(Arc::new(MemorySharedLog::new())));
    let mut devices = storex_test::devices::Devices::new(flaky.clone()).await;
    let a = devices.add().await;
    flaky.set_stuck(true);
    let synced = tokio::time::timeout(std::time::Duration::from_secs(20), devices.try_sync(a))
        .await
        .expect("the sync ends");
    let err = synced.expect_err("a broken log");
    assert!(
        storex_core::error_chain(&err).contains("next cursor 0 and more true"),
        "{err:?}"
    );
    flaky.set_stuck(false);
    devices.sync(a).await;
}

#[tokio::test]
async fn a_push_batch_of_zero_pushes_one_at_a_time() {
    use storex_sync::ContinuousOptions;
    let mut devices = storex_test::devices::Devices::new(memory().await).await;
    let mut options = ContinuousOptions::default();
    options.push_batch = 0;
    let a = devices.add_with(options).await;
    devices.note(a, "one", "v").await;
    devices.note(a, "two", "v").await;
    let report = devices.sync(a).await;
    assert_eq!(report.pushed, 2, "{report:?}");
}

/// A collection named twice counts once: the subscription is the same set of topics.
#[tokio::test]
async fn a_collection_named_twice_does_not_keep_a_narrower_subscription_from_its_cursor() {
    use storex_sync::ContinuousOptions;
    let log = memory().await;
    let mut devices = storex_test::devices::Devices::new(log.clone()).await;
    let a = devices.add().await;
    let twice = ContinuousOptions::default().with_collections(["photo", "note", "photo"]);
    let b = devices.add_with(twice).await;
    devices.note(a, "n1", "a note").await;
    devices.photo(a, "p1").await;
    devices.sync(a).await;
    devices.sync(b).await;
    devices.sync(a).await;
    assert_eq!(log.compact("ann").await.expect("compact"), 2);

    devices.resubscribe(b, ContinuousOptions::default().with_collections(["note"]));
    let report = devices
        .try_sync(b)
        .await
        .expect("no pulling from the start");
    assert_eq!(report.pulled, 0, "{report:?}");
}

#[tokio::test]
async fn a_narrower_subscription_keeps_the_cursor_and_a_wider_one_pulls_again() {
    use storex_sync::{ContinuousOptions, Error, SharedLogError};
    let log = memory().await;
    let mut devices = storex_test::devices::Devices::new(log.clone()).await;
    let a = devices.add().await;
    let both = ContinuousOptions::default().with_collections(["note", "photo"]);
    let b = devices.add_with(both.clone()).await;
    devices.note(a, "n1", "a note").await;
    devices.photo(a, "p1").await;
    devices.sync(a).await;
    devices.sync(b).await;
    devices.sync(a).await;
    assert_eq!(
        log.compact("ann").await.expect("compact"),
        2,
        "all acknowledged"
    );

    // Photos no longer wanted: the cursor holds for notes still, nothing is pulled again.
    devices.resubscribe(b, ContinuousOptions::default().with_collections(["note"]));
    let report = devices.sync(b).await;
    assert_eq!(report.pulled, 0, "{report:?}");
    devices.note(a, "n2", "another").await;
    devices.photo(a, "p2").await;
    devices.sync(a).await;
    let report = devices.sync(b).await;
    assert_eq!(report.pulled, 1, "the new note only: {report:?}");

    // Photos wanted again: their history since is needed, so pulling starts over, and the
    // compacted log tells the device to copy everything again.
    devices.resubscribe(b, both.clone());
    match devices.try_sync(b).await {
        Err(Error::SharedLog(SharedLogError::CursorCompacted { cursor: 0, .. })) => {}
        other => panic!("expected CursorCompacted from cursor 0, got {other:?}"),
    }

    // Notes alone again (no copy to be had): the device goes on from the cursor it had for
    // them, instead of failing every sync from the start that is gone.
    devices.note(a, "n3", "one more").await;
    devices.sync(a).await;
    devices.resubscribe(b, ContinuousOptions::default().with_collections(["note"]));
    let report = devices
        .try_sync(b)
        .await
        .expect("syncs from the cursor it had");
    assert_eq!(report.pulled, 1, "the new note only: {report:?}");

    // And a wider subscription after that pulls from the start again, which is still gone.
    devices.resubscribe(b, both);
    match devices.try_sync(b).await {
        Err(Error::SharedLog(SharedLogError::CursorCompacted { cursor: 0, .. })) => {}
        other => panic!("expected CursorCompacted from cursor 0, got {other:?}"),
    }
}
