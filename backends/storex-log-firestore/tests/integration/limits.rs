//! FirestoreSharedLog within Firestore's limits, on the emulator: oversized entries, pushes
//! larger than one commit, compaction over many pages, many topics, odd user names, separate
//! namespaces, several clients pushing and pulling at once, and documents that do not read.

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use storex_core::uuid::Uuid;
use storex_log_firestore::FirestoreSharedLog;
use storex_sync::{DeviceId, SharedEntry, SharedLogError, SharedSyncLog};
use storex_test::devices::Devices;

fn entry(device: DeviceId, topic: &str, payload: Vec<u8>) -> SharedEntry {
    SharedEntry {
        id: Uuid::now_v7(),
        device,
        topic: topic.to_owned(),
        payload,
    }
}

/// Pulls everything after `after`; returns `(cursor, entry)` pairs and the final cursor.
async fn pull_all(
    log: &dyn SharedSyncLog,
    device: DeviceId,
    after: u64,
    page: usize,
    topics: Option<&[String]>,
) -> (Vec<(u64, SharedEntry)>, u64) {
    let mut cursor = after;
    let mut all = Vec::new();
    loop {
        let pull = log.pull(device, cursor, page, topics).await.expect("pull");
        assert!(pull.next_cursor >= cursor, "the cursor went backwards");
        all.extend(pull.entries.into_iter().map(|p| (p.cursor, p.entry)));
        cursor = pull.next_cursor;
        if !pull.more {
            return (all, cursor);
        }
    }
}

/// A fresh log with two devices of one user.
async fn log_with_two_devices(project: &str) -> (FirestoreSharedLog, DeviceId, DeviceId) {
    let log = common::fresh_log(project).await;
    let a = log.create_device("ann").await.expect("device");
    let b = log.create_device("ann").await.expect("device");
    (log, a, b)
}

#[tokio::test]
async fn an_oversized_entry_is_refused_by_name_and_stores_nothing() {
    let Some(project) = common::emulator_project() else {
        return;
    };
    let (log, a, b) = log_with_two_devices(&project).await;
    let small = entry(a, "note", b"small".to_vec());
    let fits = entry(a, "note", vec![7; FirestoreSharedLog::MAX_PAYLOAD_BYTES]);
    let huge = entry(
        a,
        "note",
        vec![1; FirestoreSharedLog::MAX_PAYLOAD_BYTES + 1],
    );
    let err = log
        .push(a, vec![small.clone(), huge.clone()])
        .await
        .expect_err("an entry over Firestore's document limit was accepted");
    match &err {
        SharedLogError::Invalid { problem } => {
            assert!(problem.contains(&huge.id.to_string()), "{problem}")
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(!err.is_transient(), "retrying cannot help");
    let (got, _) = pull_all(&log, b, 0, 100, None).await;
    assert!(got.is_empty(), "nothing of the refused push was stored");
    // The others go through once the oversized entry is left out; the largest allowed fits.
    log.push(a, vec![small.clone(), fits.clone()])
        .await
        .expect("push without the oversized entry");
    let (got, _) = pull_all(&log, b, 0, 100, None).await;
    let got: Vec<SharedEntry> = got.into_iter().map(|(_, e)| e).collect();
    assert_eq!(got, vec![small, fits]);

    let mut long_topic = entry(a, "", b"x".to_vec());
    long_topic.topic = "t".repeat(FirestoreSharedLog::MAX_TOPIC_BYTES + 1);
    assert!(matches!(
        log.push(a, vec![long_topic]).await,
        Err(SharedLogError::Invalid { .. })
    ));
}

#[tokio::test]
async fn the_engine_knows_the_firestore_limit_reports_a_huge_entry_and_syncs_the_others() {
    let Some(project) = common::emulator_project() else {
        return;
    };
    let mut devices = Devices::new(Arc::new(common::fresh_log(&project).await)).await;
    let limit = FirestoreSharedLog::MAX_PAYLOAD_BYTES;
    // Default options: the engine takes the limit from the log itself.
    let a = devices.add().await;
    let b = devices.add().await;
    devices.note(a, "small-1", "fine").await;
    devices.note(a, "huge", &"x".repeat(limit + 10)).await;
    devices.note(a, "small-2", "fine too").await;
    let report = devices.sync(a).await;
    assert_eq!(report.pushed, 2, "{report:?}");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains(&format!("more than the {limit} bytes")),
        "{:?}",
        report.problems
    );
    devices.sync(b).await;
    assert_eq!(devices.count(b).await, 2);
    assert_eq!(
        devices.title(b, "small-2").await.as_deref(),
        Some("fine too")
    );
}

#[tokio::test]
async fn a_push_larger_than_one_commit_is_stored_whole_and_in_order() {
    let Some(project) = common::emulator_project() else {
        return;
    };
    let (log, a, b) = log_with_two_devices(&project).await;
    // More entries than one commit may write (500 writes).
    let many: Vec<SharedEntry> = (0..1_234u32)
        .map(|i| entry(a, "note", i.to_be_bytes().to_vec()))
        .collect();
    let started = Instant::now();
    let last = log.push(a, many.clone()).await.expect("push");
    eprintln!("pushed 1,234 small entries in {:?}", started.elapsed());
    assert_eq!(last, 1_234);
    // A retry of the whole push stores nothing twice.
    assert_eq!(log.push(a, many.clone()).await.expect("retry"), 0);
    let started = Instant::now();
    let (got, cursor) = pull_all(&log, b, 0, 500, None).await;
    eprintln!("pulled them in {:?}", started.elapsed());
    assert_eq!(cursor, 1_234);
    let cursors: Vec<u64> = got.iter().map(|(c, _)| *c).collect();
    assert_eq!(cursors, (1..=1_234).collect::<Vec<u64>>());
    let got: Vec<SharedEntry> = got.into_iter().map(|(_, e)| e).collect();
    assert_eq!(got, many);

    // More bytes than one commit may carry: ~11 MB in entries of ~1 MB.
    let big: Vec<SharedEntry> = (0..11u8)
        .map(|i| entry(a, "blob", vec![i; FirestoreSharedLog::MAX_PAYLOAD_BYTES]))
        .collect();
    let started = Instant::now();
    log.push(a, big.clone()).await.expect("push big entries");
    eprintln!("pushed 11 entries of ~1 MB in {:?}", started.elapsed());
    let (got, _) = pull_all(&log, b, cursor, 4, None).await;
    let got: Vec<SharedEntry> = got.into_iter().map(|(_, e)| e).collect();
    assert_eq!(got, big);
}

#[tokio::test]
async fn compaction_deletes_more_entries_than_one_commit_and_keeps_the_rest() {
    let Some(project) = common::emulator_project() else {
        return;
    };
    let (log, a, b) = log_with_two_devices(&project).await;
    let sent: Vec<SharedEntry> = (0..1_100u32)
        .map(|i| entry(a, "note", i.to_be_bytes().to_vec()))
        .collect();
    log.push(a, sent.clone()).await.expect("push");
    log.ack(a, 1_100).await.expect("ack");
    log.ack(b, 1_050).await.expect("ack");
    assert_eq!(log.compact("ann").await.expect("compact"), 1_050);
    assert_eq!(log.compact("ann").await.expect("compact again"), 0);
    match log.pull(b, 1_049, 100, None).await {
        Err(SharedLogError::CursorCompacted {
            cursor: 1_049,
            compacted_through: 1_050,
        }) => {}
        other => panic!("expected CursorCompacted, got {other:?}"),
    }
    let (rest, _) = pull_all(&log, b, 1_050, 100, None).await;
    let rest: Vec<SharedEntry> = rest.into_iter().map(|(_, e)| e).collect();
    assert_eq!(rest, sent[1_050..].to_vec());
    // An acknowledgement beyond the log never lets compaction pass the counter.
    log.ack(a, 5_000).await.expect("ack");
    log.ack(b, 5_000).await.expect("ack");
    assert_eq!(log.compact("ann").await.expect("compact"), 50);
    log.push(a, vec![entry(a, "note", b"later".to_vec())])
        .await
        .expect("push");
    let (later, _) = pull_all(&log, b, 1_100, 100, None).await;
    assert_eq!(later.len(), 1, "an entry after the compaction is delivered");
    assert_eq!(log.compact("nobody").await.expect("unknown user"), 0);
}

#[tokio::test]
async fn pulls_filter_by_topic_in_the_query_and_beyond_thirty_topics() {
    let Some(project) = common::emulator_project() else {
        return;
    };
    let (log, a, b) = log_with_two_devices(&project).await;
    let sent: Vec<SharedEntry> = (0..80u8)
        .map(|i| entry(a, &format!("topic-{}", i % 40), vec![i]))
        .collect();
    log.push(a, sent.clone()).await.expect("push");
    for wanted in [3usize, 30, 35] {
        let topics: Vec<String> = (0..wanted).map(|t| format!("topic-{t}")).collect();
        let (got, cursor) = pull_all(&log, b, 0, 7, Some(&topics)).await;
        let expected: Vec<SharedEntry> = sent
            .iter()
            .filter(|e| topics.contains(&e.topic))
            .cloned()
            .collect();
        let got: Vec<SharedEntry> = got.into_iter().map(|(_, e)| e).collect();
        assert_eq!(got, expected, "{wanted} topics");
        assert_eq!(cursor, 80, "the cursor passes the entries of other topics");
    }
    let none: Vec<String> = Vec::new();
    let pull = log.pull(b, 0, 10, Some(&none)).await.expect("pull");
    assert!(pull.entries.is_empty() && !pull.more);
}

#[tokio::test]
async fn user_names_with_path_characters_and_namespaces_stay_apart() {
    let Some(project) = common::emulator_project() else {
        return;
    };
    let log = common::fresh_log(&project).await;
    let other = common::fresh_log(&project).await;
    let names = ["ann/../bob", "..", "__ann__", "ann%2F", "ann/", "Ünï cødé"];
    let mut devices = HashMap::new();
    for name in names {
        let d = log.create_device(name).await.expect("device");
        let e = log.create_device(name).await.expect("device");
        log.push(d, vec![entry(d, "note", name.as_bytes().to_vec())])
            .await
            .expect("push");
        devices.insert(name, e);
    }
    for name in names {
        let (got, _) = pull_all(&log, devices[name], 0, 10, None).await;
        let payloads: Vec<Vec<u8>> = got.into_iter().map(|(_, e)| e.payload).collect();
        assert_eq!(payloads, vec![name.as_bytes().to_vec()], "user {name:?}");
    }
    assert!(matches!(
        log.create_device("").await,
        Err(SharedLogError::Invalid { .. })
    ));
    // Another namespace in the same database knows none of these devices.
    let err = other
        .pull(devices["__ann__"], 0, 10, None)
        .await
        .expect_err("a device of another namespace");
    assert!(matches!(err, SharedLogError::UnknownDevice { .. }), "{err}");
    assert!(matches!(
        FirestoreSharedLog::connect(&project, "bad/prefix").await,
        Err(SharedLogError::Invalid { .. })
    ));
}

/// Devices on separate clients (as on separate machines) push and pull at the same time,
/// each a writer and a reader: every device sees every other device's entries exactly once,
/// in strictly increasing cursor order, and never its own.
#[tokio::test]
async fn interleaved_pushes_and_pulls_on_separate_clients_skip_and_repeat_nothing() {
    let Some(project) = common::emulator_project() else {
        return;
    };
    let prefix = common::fresh_prefix();
    let mut logs = Vec::new();
    for _ in 0..4 {
        let log = FirestoreSharedLog::connect(&project, &prefix)
            .await
            .expect("connect");
        logs.push(Arc::new(log));
    }
    let mut ids = Vec::new();
    for log in &logs {
        ids.push(log.create_device("ann").await.expect("device"));
    }
    let started = Instant::now();
    let work = logs.iter().zip(&ids).map(|(log, &me)| {
        let log = log.clone();
        async move {
            let (mut sent, mut seen, mut cursor) = (Vec::new(), Vec::new(), 0);
            for round in 0..12u8 {
                let batch: Vec<SharedEntry> = (0..1 + round % 3)
                    .map(|i| entry(me, "note", vec![round, i]))
                    .collect();
                log.push(me, batch.clone()).await.expect("push");
                sent.extend(batch.iter().map(|e| e.id));
                let pull = log.pull(me, cursor, 3, None).await.expect("pull");
                seen.extend(pull.entries.iter().map(|p| (p.cursor, p.entry.clone())));
                cursor = pull.next_cursor;
            }
            (me, sent, seen, cursor)
        }
    });
    let results = join_all(work).await;
    eprintln!(
        "4 clients, 12 interleaved pushes and pulls each: {:?}",
        started.elapsed()
    );
    let all_sent: BTreeSet<(DeviceId, Uuid)> = results
        .iter()
        .flat_map(|(me, sent, _, _)| sent.iter().map(move |id| (*me, *id)))
        .collect();
    for ((me, _, seen, cursor), log) in results.into_iter().zip(&logs) {
        let (rest, _) = pull_all(log.as_ref(), me, cursor, 5, None).await;
        let seen: Vec<(u64, SharedEntry)> = seen.into_iter().chain(rest).collect();
        assert!(
            seen.windows(2).all(|w| w[0].0 < w[1].0),
            "cursors do not increase strictly"
        );
        assert!(seen.iter().all(|(_, e)| e.device != me), "own entry pulled");
        let got: BTreeSet<(DeviceId, Uuid)> = seen.iter().map(|(_, e)| (e.device, e.id)).collect();
        assert_eq!(got.len(), seen.len(), "an entry was delivered twice");
        let expected: BTreeSet<(DeviceId, Uuid)> =
            all_sent.iter().filter(|(d, _)| *d != me).copied().collect();
        assert_eq!(got, expected, "an entry was skipped");
    }
}

#[tokio::test]
async fn a_page_of_big_entries_is_cut_by_bytes() {
    let Some(project) = common::emulator_project() else {
        return;
    };
    let (log, a, b) = log_with_two_devices(&project).await;
    let big = FirestoreSharedLog::MAX_PAYLOAD_BYTES;
    let sent: Vec<SharedEntry> = (0..12u8).map(|i| entry(a, "photo", vec![i; big])).collect();
    log.push(a, sent.clone()).await.expect("push");
    let page = log.pull(b, 0, 100, None).await.expect("pull");
    let bytes: usize = page.entries.iter().map(|p| p.entry.payload.len()).sum();
    // 8 MiB a page (the entry that crosses it still comes).
    assert!(bytes < 8 * 1024 * 1024 + big, "{bytes} bytes in one page");
    assert!(page.more && page.entries.len() < sent.len());
    let (rest, _) = pull_all(&log, b, page.next_cursor, 100, None).await;
    let got: Vec<SharedEntry> = page
        .entries
        .into_iter()
        .map(|p| p.entry)
        .chain(rest.into_iter().map(|(_, e)| e))
        .collect();
    assert_eq!(got, sent, "every entry once, in order");
}

/// Overwrites one field of the stored entry `id` of user `ann` with the string `value`.
async fn damage_entry(log: &FirestoreSharedLog, id: Uuid, field: &str, value: &str) {
    /// The updated document, not looked at.
    #[derive(serde::Deserialize)]
    struct Updated {}

    let parent = log
        .db()
        .parent_path(format!("{}users", log.collection_prefix()), "ann")
        .expect("parent path");
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(field.to_owned(), value.to_owned());
    log.db()
        .fluent()
        .update()
        .fields([field])
        .in_col("entries")
        .document_id(id.to_string())
        .parent(&parent)
        .object(&fields)
        .execute::<Updated>()
        .await
        .expect("damage");
}

#[tokio::test]
async fn a_document_that_does_not_read_is_passed_over_and_named() {
    let Some(project) = common::emulator_project() else {
        return;
    };
    let (log, a, b) = log_with_two_devices(&project).await;
    let entries: Vec<SharedEntry> = (0..4).map(|_| entry(a, "note", b"x".to_vec())).collect();
    log.push(a, entries.clone()).await.expect("push");
    damage_entry(&log, entries[1].id, "device", "not a device").await;
    damage_entry(&log, entries[2].id, "payload", "text, not bytes").await;
    let cursors = |pull: &storex_sync::Pull| {
        (
            pull.entries.iter().map(|p| p.cursor).collect::<Vec<_>>(),
            pull.unreadable.iter().map(|u| u.cursor).collect::<Vec<_>>(),
        )
    };
    let page = log.pull(b, 0, 10, None).await.expect("pull");
    assert_eq!(cursors(&page), (vec![1, 4], vec![2, 3]));
    assert!(page.unreadable[0].problem.contains("device"), "{page:?}");
    assert_eq!((page.next_cursor, page.more), (4, false));
    // A page cut right after them goes on after them.
    let page = log.pull(b, 0, 3, None).await.expect("pull");
    assert_eq!(cursors(&page), (vec![1], vec![2, 3]));
    assert_eq!((page.next_cursor, page.more), (3, true));
    // The pushing device's own pull leaves out the one whose routing fields read as its own,
    // as it leaves out its readable entries; the one whose device does not read is named.
    let own = log.pull(a, 0, 10, None).await.expect("pull");
    assert_eq!(cursors(&own), (vec![], vec![2]));
}

#[tokio::test]
async fn a_lost_user_document_is_named_not_made_again_at_cursor_zero() {
    let Some(project) = common::emulator_project() else {
        return;
    };
    let (log, a, _b) = log_with_two_devices(&project).await;
    log.push(a, vec![entry(a, "note", vec![1])])
        .await
        .expect("push");
    log.db()
        .fluent()
        .delete()
        .from(format!("{}users", log.collection_prefix()).as_str())
        .document_id("ann")
        .execute()
        .await
        .expect("delete the user document");

    // Registering again (as after a lost reply) or a new device does not hand out cursor 1
    // again: the damage is named.
    for device in [a, DeviceId::random()] {
        match log.register_device("ann", device).await {
            Err(SharedLogError::Unavailable { source, .. }) => {
                assert!(source.to_string().contains("missing"), "{source}")
            }
            other => panic!("a user document lost under its entries was not named: {other:?}"),
        }
    }
}
