//! The shared-log conformance suite: the contract of `storex_sync::SharedSyncLog`, checked
//! against a real implementation.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{join_all, BoxFuture};
use futures::FutureExt;
use storex_core::uuid::Uuid;
use storex_sync::{DeviceId, SharedEntry, SharedLogError, SharedSyncLog};

use crate::suite::SuiteReport;

type Check = fn(Arc<dyn SharedSyncLog>) -> BoxFuture<'static, ()>;

macro_rules! checks {
    ($($name:ident),+ $(,)?) => {
        vec![$((stringify!($name), (|log| $name(log).boxed()) as Check)),+]
    };
}

/// Runs every check, each on a fresh log made by `make`, and panics listing every failure.
pub async fn shared_log_suite<F, Fut, L>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = L>,
    L: SharedSyncLog,
{
    run_shared_log_suite(make)
        .await
        .assert_all_passed("shared-log");
}

/// Runs every check and reports without panicking.
pub async fn run_shared_log_suite<F, Fut, L>(make: F) -> SuiteReport
where
    F: Fn() -> Fut,
    Fut: Future<Output = L>,
    L: SharedSyncLog,
{
    let mut report = SuiteReport::default();
    for (name, check) in all_checks() {
        let log: Arc<dyn SharedSyncLog> = Arc::new(make().await);
        report.run(name, check(log)).await;
    }
    report
}

fn all_checks() -> Vec<(&'static str, Check)> {
    checks![
        devices_get_distinct_ids,
        registering_a_device_again_keeps_it_and_its_position,
        pushed_entries_reach_the_other_devices_in_order,
        a_device_never_pulls_its_own_entries,
        cursors_increase_strictly,
        push_is_idempotent_by_entry_id,
        a_retried_push_after_a_lost_reply_stores_nothing_twice,
        pages_cover_every_entry_exactly_once,
        an_empty_pull_keeps_the_cursor,
        a_limit_of_zero_takes_nothing_and_the_largest_takes_everything,
        payload_bytes_round_trip_exactly,
        topics_filter_a_pull,
        users_never_see_each_others_entries,
        devices_of_a_user_are_listed_with_their_positions,
        ack_never_moves_backwards,
        an_ack_beyond_the_end_cannot_compact_entries_pushed_later,
        big_entries_arrive_in_pages_each_exactly_once,
        compaction_drops_only_what_every_device_acked,
        a_cursor_behind_compaction_is_told_to_run_an_initial_sync,
        a_cursor_past_the_end_is_told_where_the_log_ends,
        an_unknown_device_is_refused,
        a_device_cannot_push_as_another,
        a_nul_in_a_user_name_or_topic_is_refused_as_invalid,
        concurrent_pushers_are_seen_exactly_once_by_every_reader,
        compaction_while_pushes_land_drops_each_entry_once_after_every_ack,
    ]
}

fn entry(device: DeviceId, topic: &str, payload: &[u8]) -> SharedEntry {
    SharedEntry {
        id: Uuid::now_v7(),
        device,
        topic: topic.to_owned(),
        payload: payload.to_vec(),
    }
}

async fn device(log: &Arc<dyn SharedSyncLog>, user: &str) -> DeviceId {
    log.create_device(user).await.expect("create device")
}

/// Pulls everything after `after`, page by page; returns the entries and the final cursor.
/// A page that says there is more must move the cursor (a log that does not would keep a
/// device pulling the same page for ever), and the suite's logs hold few pages.
async fn pull_all(
    log: &Arc<dyn SharedSyncLog>,
    device: DeviceId,
    after: u64,
    page: usize,
) -> (Vec<SharedEntry>, u64) {
    const MAX_PAGES: usize = 1_000;
    let mut cursor = after;
    let mut all = Vec::new();
    for _ in 0..MAX_PAGES {
        let pull = log.pull(device, cursor, page, None).await.expect("pull");
        assert!(pull.next_cursor >= cursor, "the cursor went backwards");
        assert!(
            !pull.more || pull.next_cursor > cursor,
            "a page said there was more but left the cursor at {cursor}"
        );
        all.extend(pull.entries.into_iter().map(|p| p.entry));
        cursor = pull.next_cursor;
        if !pull.more {
            return (all, cursor);
        }
    }
    panic!("still more after {MAX_PAGES} pages of {page}")
}

async fn devices_get_distinct_ids(log: Arc<dyn SharedSyncLog>) {
    let a = device(&log, "ann").await;
    let b = device(&log, "ann").await;
    assert_ne!(a, b);
}

/// An app that lost the answer to a registration registers the same id again: one device,
/// which keeps its position and works; another user cannot take it.
async fn registering_a_device_again_keeps_it_and_its_position(log: Arc<dyn SharedSyncLog>) {
    let a = DeviceId::random();
    log.register_device("ann", a).await.expect("register");
    log.register_device("ann", a).await.expect("register again");
    let b = device(&log, "ann").await;
    log.push(b, vec![entry(b, "note", b"1")])
        .await
        .expect("push");
    let (got, cursor) = pull_all(&log, a, 0, 100).await;
    assert_eq!(got.len(), 1);
    log.ack(a, cursor).await.expect("ack");
    log.register_device("ann", a)
        .await
        .expect("register after acking");
    let listed: Vec<(DeviceId, u64)> = log
        .devices(a)
        .await
        .expect("devices")
        .iter()
        .map(|d| (d.device, d.acked))
        .filter(|(d, _)| *d == a)
        .collect();
    assert_eq!(listed, vec![(a, cursor)], "one device, its position kept");
    log.push(a, vec![entry(a, "note", b"2")])
        .await
        .expect("the device still works");
    assert!(
        matches!(
            log.register_device("bob", a).await,
            Err(SharedLogError::DeviceRefused { device, .. }) if device == a
        ),
        "another user's device is refused"
    );
}

async fn pushed_entries_reach_the_other_devices_in_order(log: Arc<dyn SharedSyncLog>) {
    let (a, b) = (device(&log, "ann").await, device(&log, "ann").await);
    let sent: Vec<SharedEntry> = (0..5).map(|i| entry(a, "note", &[i])).collect();
    log.push(a, sent.clone()).await.expect("push");
    let (got, _) = pull_all(&log, b, 0, 100).await;
    assert_eq!(got, sent);
}

async fn a_device_never_pulls_its_own_entries(log: Arc<dyn SharedSyncLog>) {
    let (a, b) = (device(&log, "ann").await, device(&log, "ann").await);
    log.push(a, vec![entry(a, "note", b"a")])
        .await
        .expect("push");
    log.push(b, vec![entry(b, "note", b"b")])
        .await
        .expect("push");
    let (got, cursor) = pull_all(&log, a, 0, 100).await;
    assert_eq!(got.iter().map(|e| e.device).collect::<Vec<_>>(), vec![b]);
    assert!(
        cursor >= 2,
        "the cursor moves past the device's own entries too"
    );
}

async fn cursors_increase_strictly(log: Arc<dyn SharedSyncLog>) {
    let (a, b, c) = (
        device(&log, "ann").await,
        device(&log, "ann").await,
        device(&log, "ann").await,
    );
    log.push(a, vec![entry(a, "x", b"1"), entry(a, "x", b"2")])
        .await
        .expect("push");
    log.push(b, vec![entry(b, "x", b"3")]).await.expect("push");
    let pull = log.pull(c, 0, 100, None).await.expect("pull");
    let cursors: Vec<u64> = pull.entries.iter().map(|p| p.cursor).collect();
    assert_eq!(cursors.len(), 3);
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    assert!(cursors[0] > 0);
}

async fn push_is_idempotent_by_entry_id(log: Arc<dyn SharedSyncLog>) {
    let (a, b) = (device(&log, "ann").await, device(&log, "ann").await);
    let e = entry(a, "note", b"once");
    let first = log.push(a, vec![e.clone()]).await.expect("push");
    assert!(first > 0, "a push of a new entry returns its cursor");
    let again = log
        .push(a, vec![e.clone(), e.clone()])
        .await
        .expect("push again");
    assert_eq!(again, 0, "a push of nothing new returns 0");
    let (got, cursor) = pull_all(&log, b, 0, 100).await;
    assert_eq!(got, vec![e]);
    assert_eq!(cursor, first, "the returned cursor is the entry's");
}

async fn a_retried_push_after_a_lost_reply_stores_nothing_twice(log: Arc<dyn SharedSyncLog>) {
    let (a, b) = (device(&log, "ann").await, device(&log, "ann").await);
    let first: Vec<SharedEntry> = (0..3).map(|i| entry(a, "note", &[i])).collect();
    let lost = log.push(a, first.clone()).await.expect("push"); // the reply is "lost"
    let mut retry = first.clone();
    retry.push(entry(a, "note", b"new"));
    let retried = log.push(a, retry.clone()).await.expect("retry");
    assert!(
        retried > lost,
        "the retry's one new entry comes after the first push ({retried} after {lost})"
    );
    let (got, cursor) = pull_all(&log, b, 0, 100).await;
    assert_eq!(got, retry);
    assert_eq!(cursor, retried, "the greatest cursor assigned is returned");
}

async fn pages_cover_every_entry_exactly_once(log: Arc<dyn SharedSyncLog>) {
    let (a, b) = (device(&log, "ann").await, device(&log, "ann").await);
    let sent: Vec<SharedEntry> = (0..23u8).map(|i| entry(a, "note", &[i])).collect();
    log.push(a, sent[..10].to_vec()).await.expect("push");
    log.push(b, vec![entry(b, "note", b"own")])
        .await
        .expect("push own");
    log.push(a, sent[10..].to_vec()).await.expect("push");
    let (got, _) = pull_all(&log, b, 0, 4).await;
    assert_eq!(got, sent);
}

async fn an_empty_pull_keeps_the_cursor(log: Arc<dyn SharedSyncLog>) {
    let (a, b) = (device(&log, "ann").await, device(&log, "ann").await);
    log.push(a, vec![entry(a, "note", b"x")])
        .await
        .expect("push");
    let (_, cursor) = pull_all(&log, b, 0, 10).await;
    let again = log.pull(b, cursor, 10, None).await.expect("pull");
    assert!(again.entries.is_empty() && !again.more);
    assert_eq!(again.next_cursor, cursor);
}

async fn a_limit_of_zero_takes_nothing_and_the_largest_takes_everything(
    log: Arc<dyn SharedSyncLog>,
) {
    let (a, b) = (device(&log, "ann").await, device(&log, "ann").await);
    let sent: Vec<SharedEntry> = (0..3u8).map(|i| entry(a, "note", &[i])).collect();
    log.push(a, sent.clone()).await.expect("push");
    let none = log.pull(b, 0, 0, None).await.expect("pull of none");
    assert!(none.entries.is_empty(), "{:?}", none.entries);
    assert_eq!(none.next_cursor, 0, "nothing taken, nothing skipped");
    // Whatever the topics, even none at all.
    let none = log.pull(b, 0, 0, Some(&[])).await.expect("pull of none");
    assert_eq!(
        none.next_cursor, 0,
        "a limit of 0 keeps the cursor, with no topics too"
    );
    // One page, all of it.
    let all = log.pull(b, 0, usize::MAX, None).await.expect("pull of all");
    let got: Vec<SharedEntry> = all.entries.into_iter().map(|p| p.entry).collect();
    assert_eq!(got, sent);
    assert!(!all.more, "the largest limit left more");
}

async fn payload_bytes_round_trip_exactly(log: Arc<dyn SharedSyncLog>) {
    let (a, b) = (device(&log, "ann").await, device(&log, "ann").await);
    let mut payload: Vec<u8> = (0..=255u8).collect();
    payload.extend(std::iter::repeat_n(0u8, 200_000));
    let e = entry(a, "blob-topic/ü", &payload);
    log.push(a, vec![e.clone()]).await.expect("push");
    let (got, _) = pull_all(&log, b, 0, 10).await;
    assert_eq!(got, vec![e]);
}

async fn topics_filter_a_pull(log: Arc<dyn SharedSyncLog>) {
    let (a, b) = (device(&log, "ann").await, device(&log, "ann").await);
    log.push(
        a,
        vec![
            entry(a, "note", b"1"),
            entry(a, "photo", b"2"),
            entry(a, "tag", b"3"),
        ],
    )
    .await
    .expect("push");
    let (_, end) = pull_all(&log, b, 0, 100).await;
    let topics = vec!["note".to_owned(), "tag".to_owned()];
    let pull = log.pull(b, 0, 100, Some(&topics)).await.expect("pull");
    let got: Vec<&str> = pull
        .entries
        .iter()
        .map(|p| p.entry.topic.as_str())
        .collect();
    assert_eq!(got, vec!["note", "tag"]);
    assert_eq!(pull.next_cursor, end, "the cursor goes to the log's end");
    // Entries of other topics after the last one taken are passed over too.
    let photos = vec!["photo".to_owned()];
    let pull = log.pull(b, 0, 100, Some(&photos)).await.expect("pull");
    assert_eq!(
        pull.entries
            .iter()
            .map(|p| p.entry.topic.as_str())
            .collect::<Vec<_>>(),
        vec!["photo"]
    );
    assert!(!pull.more, "{pull:?}");
    assert_eq!(pull.next_cursor, end, "past the entries of other topics");
    let rest = log
        .pull(b, pull.next_cursor, 100, Some(&photos))
        .await
        .expect("pull the rest");
    assert!(rest.entries.is_empty() && !rest.more, "{rest:?}");
}

async fn users_never_see_each_others_entries(log: Arc<dyn SharedSyncLog>) {
    let (ann_1, ann_2) = (device(&log, "ann").await, device(&log, "ann").await);
    let (bob_1, bob_2) = (device(&log, "bob").await, device(&log, "bob").await);
    log.push(ann_1, vec![entry(ann_1, "note", b"ann")])
        .await
        .expect("push");
    log.push(bob_1, vec![entry(bob_1, "note", b"bob")])
        .await
        .expect("push");
    let (ann_sees, _) = pull_all(&log, ann_2, 0, 100).await;
    let (bob_sees, _) = pull_all(&log, bob_2, 0, 100).await;
    assert_eq!(
        ann_sees
            .iter()
            .map(|e| e.payload.clone())
            .collect::<Vec<_>>(),
        vec![b"ann".to_vec()]
    );
    assert_eq!(
        bob_sees
            .iter()
            .map(|e| e.payload.clone())
            .collect::<Vec<_>>(),
        vec![b"bob".to_vec()]
    );
    let ann_devices: BTreeSet<DeviceId> = log
        .devices(ann_1)
        .await
        .expect("devices")
        .iter()
        .map(|d| d.device)
        .collect();
    assert_eq!(ann_devices, BTreeSet::from([ann_1, ann_2]));
}

async fn devices_of_a_user_are_listed_with_their_positions(log: Arc<dyn SharedSyncLog>) {
    let (a, b) = (device(&log, "ann").await, device(&log, "ann").await);
    log.push(a, vec![entry(a, "note", b"1"), entry(a, "note", b"2")])
        .await
        .expect("push");
    let (_, cursor) = pull_all(&log, b, 0, 100).await;
    log.ack(b, cursor).await.expect("ack");
    let positions: HashMap<DeviceId, u64> = log
        .devices(a)
        .await
        .expect("devices")
        .iter()
        .map(|d| (d.device, d.acked))
        .collect();
    assert_eq!(positions.get(&a), Some(&0));
    assert_eq!(positions.get(&b), Some(&cursor));
}

async fn ack_never_moves_backwards(log: Arc<dyn SharedSyncLog>) {
    let (a, b) = (device(&log, "ann").await, device(&log, "ann").await);
    log.push(b, (0..10u8).map(|i| entry(b, "note", &[i])).collect())
        .await
        .expect("push");
    log.ack(a, 7).await.expect("ack");
    log.ack(a, 3).await.expect("ack");
    let acked = log
        .devices(a)
        .await
        .expect("devices")
        .iter()
        .find(|d| d.device == a)
        .map(|d| d.acked);
    assert_eq!(acked, Some(7));
}

async fn big_entries_arrive_in_pages_each_exactly_once(log: Arc<dyn SharedSyncLog>) {
    let (a, b) = (device(&log, "ann").await, device(&log, "ann").await);
    // 12 entries of 900,000 bytes: more than a page of a log that bounds pages by bytes, and
    // each within a document-size limit such as Firestore's.
    let big: Vec<SharedEntry> = (0..12u8)
        .map(|i| entry(a, "photo", &vec![i; 900_000]))
        .collect();
    let ids: Vec<Uuid> = big.iter().map(|e| e.id).collect();
    for chunk in big.chunks(3) {
        log.push(a, chunk.to_vec()).await.expect("push");
    }
    let (seen, _) = pull_all(&log, b, 0, 100).await;
    assert_eq!(seen.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert!(seen
        .iter()
        .enumerate()
        .all(|(i, e)| e.payload.len() == 900_000 && e.payload[0] == i as u8));
}

async fn an_ack_beyond_the_end_cannot_compact_entries_pushed_later(log: Arc<dyn SharedSyncLog>) {
    let (a, b) = (device(&log, "ann").await, device(&log, "ann").await);
    log.ack(a, 1_000).await.expect("ack");
    log.ack(b, 1_000).await.expect("ack");
    log.compact("ann").await.expect("compact");
    log.push(a, (0..3u8).map(|i| entry(a, "note", &[i])).collect())
        .await
        .expect("push");
    log.compact("ann").await.expect("compact");
    let (seen, _) = pull_all(&log, b, 0, 100).await;
    assert_eq!(
        seen.len(),
        3,
        "entries pushed after an over-reaching ack were lost"
    );
}

async fn compaction_drops_only_what_every_device_acked(log: Arc<dyn SharedSyncLog>) {
    let (a, b, c) = (
        device(&log, "ann").await,
        device(&log, "ann").await,
        device(&log, "ann").await,
    );
    log.push(a, (0..6u8).map(|i| entry(a, "note", &[i])).collect())
        .await
        .expect("push");
    let (_, all) = pull_all(&log, b, 0, 100).await;
    log.ack(a, all).await.expect("ack a");
    log.ack(b, all).await.expect("ack b");
    log.ack(c, 3).await.expect("ack c"); // c is behind
    let dropped = log.compact("ann").await.expect("compact");
    assert_eq!(dropped, 3, "entries up to c's position only");
    let (rest, _) = pull_all(&log, c, 3, 100).await;
    assert_eq!(rest.len(), 3, "c still gets what it has not seen");
}

async fn a_cursor_behind_compaction_is_told_to_run_an_initial_sync(log: Arc<dyn SharedSyncLog>) {
    let (a, b) = (device(&log, "ann").await, device(&log, "ann").await);
    log.push(a, (0..4u8).map(|i| entry(a, "note", &[i])).collect())
        .await
        .expect("push");
    let (_, all) = pull_all(&log, b, 0, 100).await;
    log.ack(a, all).await.expect("ack");
    log.ack(b, all).await.expect("ack");
    assert!(log.compact("ann").await.expect("compact") > 0);
    let late = device(&log, "ann").await; // a new device starting from scratch
    match log.pull(late, 0, 100, None).await {
        Err(SharedLogError::CursorCompacted {
            cursor: 0,
            compacted_through,
        }) => assert_eq!(compacted_through, all),
        other => panic!("expected CursorCompacted, got {other:?}"),
    }
    // From the compaction point on, it works.
    assert!(log.pull(late, all, 100, None).await.is_ok());
}

async fn a_cursor_past_the_end_is_told_where_the_log_ends(log: Arc<dyn SharedSyncLog>) {
    let (a, b) = (device(&log, "ann").await, device(&log, "ann").await);
    log.push(a, (0..3u8).map(|i| entry(a, "note", &[i])).collect())
        .await
        .expect("push");
    let (_, end) = pull_all(&log, b, 0, 100).await;
    match log.pull(b, end + 5, 100, None).await {
        Err(SharedLogError::CursorAhead {
            cursor,
            log_end,
            compacted_through: 0,
        }) => assert_eq!((cursor, log_end), (end + 5, end)),
        other => panic!("expected CursorAhead, got {other:?}"),
    }
    // At the end itself: nothing, and no error.
    let page = log.pull(b, end, 100, None).await.expect("at the end");
    assert!(page.entries.is_empty() && !page.more, "{page:?}");
}

async fn an_unknown_device_is_refused(log: Arc<dyn SharedSyncLog>) {
    let stranger = DeviceId::random();
    let err = log
        .pull(stranger, 0, 10, None)
        .await
        .expect_err("unknown device pulled");
    assert!(matches!(err, SharedLogError::UnknownDevice { .. }), "{err}");
    let err = log
        .push(stranger, vec![entry(stranger, "x", b"x")])
        .await
        .expect_err("unknown device pushed");
    assert!(matches!(err, SharedLogError::UnknownDevice { .. }), "{err}");
    let err = log
        .ack(stranger, 1)
        .await
        .expect_err("unknown device acked");
    assert!(matches!(err, SharedLogError::UnknownDevice { .. }), "{err}");
    let err = log
        .devices(stranger)
        .await
        .expect_err("unknown device listed");
    assert!(matches!(err, SharedLogError::UnknownDevice { .. }), "{err}");
}

/// PostgreSQL cannot store a NUL character as text: every log refuses one as bad input
/// (not as an outage, which a caller would retry for ever).
async fn a_nul_in_a_user_name_or_topic_is_refused_as_invalid(log: Arc<dyn SharedSyncLog>) {
    let err = log
        .create_device("ann\0")
        .await
        .expect_err("a user name with a NUL");
    assert!(matches!(err, SharedLogError::Invalid { .. }), "{err}");
    let (a, b) = (device(&log, "ann").await, device(&log, "ann").await);
    let err = log
        .push(a, vec![entry(a, "note", b"1"), entry(a, "no\0te", b"2")])
        .await
        .expect_err("a topic with a NUL");
    assert!(matches!(err, SharedLogError::Invalid { .. }), "{err}");
    let topics = vec!["no\0te".to_owned()];
    let err = log
        .pull(b, 0, 10, Some(&topics))
        .await
        .expect_err("a pull of a topic with a NUL");
    assert!(matches!(err, SharedLogError::Invalid { .. }), "{err}");
    let (got, _) = pull_all(&log, b, 0, 10).await;
    assert!(got.is_empty(), "nothing of the refused push was stored");
}

async fn a_device_cannot_push_as_another(log: Arc<dyn SharedSyncLog>) {
    let (a, b) = (device(&log, "ann").await, device(&log, "ann").await);
    let err = log
        .push(a, vec![entry(b, "note", b"forged")])
        .await
        .expect_err("forged push accepted");
    assert!(matches!(err, SharedLogError::WrongDevice { .. }), "{err}");
    let (got, _) = pull_all(&log, a, 0, 100).await;
    assert!(got.is_empty(), "nothing of the forged push was stored");
}

async fn concurrent_pushers_are_seen_exactly_once_by_every_reader(log: Arc<dyn SharedSyncLog>) {
    let mut writers = Vec::new();
    for _ in 0..4 {
        writers.push(device(&log, "ann").await);
    }
    let reader = device(&log, "ann").await;
    let pushes = writers.iter().map(|&w| {
        let log = log.clone();
        async move {
            let mut sent = Vec::new();
            for round in 0..10u8 {
                let batch: Vec<SharedEntry> =
                    (0..3u8).map(|i| entry(w, "note", &[round, i])).collect();
                log.push(w, batch.clone()).await.expect("concurrent push");
                sent.extend(batch.into_iter().map(|e| e.id));
            }
            sent
        }
    });
    let reading = {
        let log = log.clone();
        async move {
            let mut seen = Vec::new();
            let mut cursor = 0;
            for _ in 0..200 {
                let pull = log
                    .pull(reader, cursor, 7, None)
                    .await
                    .expect("concurrent pull");
                seen.extend(pull.entries.iter().map(|p| p.entry.id));
                cursor = pull.next_cursor;
                tokio::task::yield_now().await;
            }
            (seen, cursor)
        }
    };
    let (sent, (mut seen, cursor)) = futures::join!(join_all(pushes), reading);
    let (rest, _) = pull_all(&log, reader, cursor, 7).await;
    seen.extend(rest.iter().map(|e| e.id));
    let sent: BTreeSet<Uuid> = sent.into_iter().flatten().collect();
    let unique: BTreeSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "an entry was delivered twice");
    assert_eq!(unique, sent, "an entry was skipped");
}

/// Compaction runs again and again while devices push and a reader pulls: each call
/// succeeds, and the writers go on pushing until one has dropped entries (a compaction that
/// pushes keep failing would hold a user's log back for good); the reader, which
/// acknowledges as it goes, is never told it fell behind and sees every entry once; no
/// entry is counted as dropped twice, and once everyone has acknowledged the end, the
/// compaction mark reaches it. (A log whose compaction goes through only between pushes, or
/// answers 0 during one, is not told apart: pushes leave gaps.)
async fn compaction_while_pushes_land_drops_each_entry_once_after_every_ack(
    log: Arc<dyn SharedSyncLog>,
) {
    /// Rounds every writer pushes, and the most it pushes waiting for a compaction to drop.
    const ROUNDS: u32 = 8;
    const MAX_ROUNDS: u32 = 200;
    let mut writers = Vec::new();
    for _ in 0..3 {
        writers.push(device(&log, "ann").await);
    }
    let reader = device(&log, "ann").await;
    let writing = AtomicUsize::new(writers.len());
    let dropped = AtomicU64::new(0);
    let pushes = writers.iter().map(|&w| {
        let (log, writing, dropped) = (&log, &writing, &dropped);
        async move {
            let mut sent = Vec::new();
            for round in 0u32.. {
                if round >= ROUNDS && dropped.load(Ordering::SeqCst) > 0 {
                    break;
                }
                assert!(
                    round < MAX_ROUNDS,
                    "no compaction dropped anything while {MAX_ROUNDS} rounds of pushes landed"
                );
                let batch: Vec<SharedEntry> = (0..3u32)
                    .map(|i| entry(w, "note", &(round * 3 + i).to_be_bytes()))
                    .collect();
                let last = log.push(w, batch.clone()).await.expect("push");
                // The writer has seen what it pushed: only the reader holds compaction back.
                log.ack(w, last).await.expect("writer's ack");
                sent.extend(batch.into_iter().map(|e| e.id));
                tokio::task::yield_now().await;
            }
            writing.fetch_sub(1, Ordering::SeqCst);
            sent
        }
    });
    let reading = async {
        let (mut seen, mut cursor) = (Vec::new(), 0);
        loop {
            let finished = writing.load(Ordering::SeqCst) == 0;
            let pull = log
                .pull(reader, cursor, 5, None)
                .await
                .expect("a pull after the reader's own ack");
            seen.extend(pull.entries.iter().map(|p| p.entry.id));
            cursor = pull.next_cursor;
            log.ack(reader, cursor).await.expect("reader's ack");
            if finished && !pull.more {
                return (seen, cursor);
            }
            if !pull.more {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let compacting = async {
        while writing.load(Ordering::SeqCst) > 0 {
            let now = log
                .compact("ann")
                .await
                .expect("a compaction while pushes land");
            dropped.fetch_add(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (sent, (seen, end), ()) = futures::join!(join_all(pushes), reading, compacting);
    let sent: BTreeSet<Uuid> = sent.into_iter().flatten().collect();
    let unique: BTreeSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "an entry was delivered twice");
    assert_eq!(unique, sent, "an entry was lost or never delivered");
    // Everyone has seen everything now: the last compaction drops the rest.
    for &w in &writers {
        log.ack(w, end).await.expect("writer's last ack");
    }
    // (A retried call that lost its first reply may count less than it dropped.)
    let dropped = dropped.into_inner() + log.compact("ann").await.expect("the last compaction");
    assert!(
        dropped <= sent.len() as u64,
        "the compactions together dropped {dropped} of {} entries",
        sent.len()
    );
    let late = device(&log, "ann").await;
    assert!(
        matches!(
            log.pull(late, 0, 10, None).await,
            Err(SharedLogError::CursorCompacted { compacted_through, .. }) if compacted_through == end
        ),
        "the compaction mark did not reach the end of the log ({end})"
    );
}
