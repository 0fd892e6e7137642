//! Continuous sync end to end: devices on SQLite files syncing through a shared log, offline
//! edits in every order, conflicts, partial replication, encryption, oversized entries, and
//! a shared log that fails at every step.

mod common;

use std::sync::Arc;

use common::{flaky::Fault, flaky::FlakySharedLog, Devices};
use storex_core::{Filter, Query, Value};
use storex_sync::{ContinuousOptions, MemorySharedLog, SharedSyncLog};

fn memory_log() -> Arc<dyn SharedSyncLog> {
    Arc::new(MemorySharedLog::new())
}

#[tokio::test]
async fn a_write_on_one_device_reaches_the_other() {
    let mut devices = Devices::new(memory_log()).await;
    let (a, b) = (devices.add().await, devices.add().await);
    devices.note(a, "n1", "hello").await;
    let pushed = devices.sync(a).await;
    assert_eq!(pushed.pushed, 1);
    let pulled = devices.sync(b).await;
    assert_eq!(
        (pulled.pulled, pulled.integrated, pulled.applied),
        (1, 1, 1)
    );
    assert_eq!(devices.title(b, "n1").await.as_deref(), Some("hello"));
    let again = devices.sync(b).await;
    assert_eq!((again.pulled, again.pushed), (0, 0), "nothing more to do");
}

#[tokio::test]
async fn offline_edits_on_three_devices_converge_in_every_sync_order() {
    let orders: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let mut devices = Devices::new(memory_log()).await;
        let ids = [
            devices.add().await,
            devices.add().await,
            devices.add().await,
        ];
        // Shared starting point.
        devices.note(ids[0], "shared", "v0").await;
        devices.sync_all(&ids).await;
        // Offline edits: new notes, a conflicting edit of one field, a delete vs an edit.
        for (i, &d) in ids.iter().enumerate() {
            devices
                .note(d, &format!("own-{i}"), &format!("from {i}"))
                .await;
        }
        devices.set_title(ids[0], "shared", "edit 0").await;
        tokio::time::sleep(std::time::Duration::from_millis(3)).await; // edit 1 is the later one
        devices.set_title(ids[1], "shared", "edit 1").await;
        devices.note(ids[0], "doomed", "x").await;
        devices.sync_all(&ids).await;
        devices
            .set_title(ids[2], "doomed", "edited while deleted elsewhere")
            .await;
        devices.delete(ids[1], "doomed").await;
        for &i in &order {
            devices.sync(ids[i]).await;
        }
        devices.sync_all(&ids).await;
        devices.assert_converged(&ids).await;
        assert_eq!(
            devices.count(ids[0]).await,
            4,
            "shared + three own notes (order {order:?})"
        );
        assert_eq!(
            devices.title(ids[0], "shared").await.as_deref(),
            Some("edit 1"),
            "the later edit wins"
        );
    }
}

#[tokio::test]
async fn partial_replication_pulls_only_the_subscribed_collections() {
    let mut devices = Devices::new(memory_log()).await;
    let a = devices.add().await;
    let b = devices
        .add_with(ContinuousOptions::default().with_collections(["photo"]))
        .await;
    devices.note(a, "n1", "a note").await;
    devices.photo(a, "p1").await;
    devices.sync(a).await;
    let report = devices.sync(b).await;
    assert_eq!(report.pulled, 1, "only the photo was downloaded");
    assert_eq!(devices.count(b).await, 0);
    let photos = devices
        .device(b)
        .storage()
        .count("photo", Filter::all())
        .await
        .expect("count");
    assert_eq!(photos, 1);
}

#[tokio::test]
async fn encrypted_entries_reach_devices_with_the_key_and_are_quarantined_without_it() {
    let key = [42u8; 32];
    let log = memory_log();
    let mut devices = Devices::new(log.clone()).await;
    let a = devices
        .add_with(ContinuousOptions::default().with_encryption_key(key))
        .await;
    let b = devices
        .add_with(ContinuousOptions::default().with_encryption_key(key))
        .await;
    let stranger = devices
        .add_with(ContinuousOptions::default().with_encryption_key([1u8; 32]))
        .await;
    devices.note(a, "secret", "the plans").await;
    devices.sync(a).await;
    // The shared log holds no plaintext.
    let raw = log
        .pull(devices.device(b).device(), 0, 100, None)
        .await
        .expect("pull");
    for pulled in &raw.entries {
        let text = String::from_utf8_lossy(&pulled.entry.payload);
        assert!(
            !text.contains("the plans") && !text.contains("note"),
            "plaintext on the server"
        );
        assert_ne!(pulled.entry.topic, "note");
    }
    devices.sync(b).await;
    assert_eq!(
        devices.title(b, "secret").await.as_deref(),
        Some("the plans")
    );
    let report = devices.sync(stranger).await;
    assert_eq!(report.quarantined, 1);
    assert!(
        report.problems[0].contains("does not decrypt"),
        "{:?}",
        report.problems
    );
    assert_eq!(devices.count(stranger).await, 0);
    let kept = devices
        .device(stranger)
        .storage()
        .count(storex_sync::QUARANTINE_COLLECTION, Filter::all())
        .await
        .expect("count");
    assert_eq!(kept, 1, "the undecodable entry is kept, not dropped");
    // Later entries still flow to the stranger's cursor: it is not blocked.
    assert!(devices.sync(stranger).await.problems.is_empty());
}

#[tokio::test]
async fn an_entry_too_large_to_push_is_reported_and_does_not_block_the_others() {
    let mut devices = Devices::new(memory_log()).await;
    let a = devices
        .add_with(ContinuousOptions::default().with_max_push_bytes(2_000))
        .await;
    let b = devices.add().await;
    devices.note(a, "small-1", "fine").await;
    devices.note(a, "huge", &"x".repeat(5_000)).await;
    devices.note(a, "small-2", "fine too").await;
    let report = devices.sync(a).await;
    assert_eq!(report.pushed, 2);
    assert!(
        report.problems[0].contains("more than the 2000 bytes"),
        "{:?}",
        report.problems
    );
    devices.sync(b).await;
    assert_eq!(devices.count(b).await, 2);
    assert_eq!(
        devices
            .device(a)
            .log()
            .unshared(10)
            .await
            .expect("unshared")
            .len(),
        1,
        "kept for later"
    );
}

#[tokio::test]
async fn a_shared_log_failing_at_every_step_loses_and_duplicates_nothing() {
    for fault in Fault::ALL {
        let flaky = Arc::new(FlakySharedLog::new(memory_log()));
        let mut devices = Devices::new(flaky.clone()).await;
        let ids = [
            devices.add().await,
            devices.add().await,
            devices.add().await,
        ];
        for (i, &d) in ids.iter().enumerate() {
            for n in 0..5 {
                devices.note(d, &format!("{i}-{n}"), "v").await;
            }
        }
        devices.set_title(ids[0], "1-1", "changed by 0").await;
        // Every sync meets the fault (where it has that step to fail), then runs clean.
        let mut fired = 0;
        for _round in 0..3 {
            for &d in &ids {
                flaky.arm(fault);
                let first = devices.try_sync(d).await;
                if flaky.fired() {
                    fired += 1;
                    assert!(first.is_err(), "{fault:?} must surface as an error");
                } else {
                    assert!(first.is_ok(), "{fault:?} did not fire, yet the sync failed");
                }
                flaky.disarm();
                devices.sync(d).await;
            }
        }
        assert!(fired >= 3, "{fault:?} fired only {fired} times");
        devices.assert_converged(&ids).await;
        assert_eq!(
            devices.count(ids[0]).await,
            15,
            "{fault:?}: every note arrived once"
        );
        assert_eq!(
            devices.title(ids[2], "1-1").await.as_deref(),
            Some("changed by 0")
        );
        for &d in &ids {
            let log = devices.device(d).log().all().await.expect("log");
            let unique: std::collections::HashSet<_> = log.iter().map(|e| e.entry.id).collect();
            assert_eq!(
                unique.len(),
                log.len(),
                "{fault:?}: an entry was stored twice"
            );
            assert!(
                log.iter().all(|e| e.shared),
                "{fault:?}: something was never pushed"
            );
        }
    }
}

#[tokio::test]
async fn a_failure_between_apply_and_cursor_store_applies_nothing_and_the_retry_applies_once() {
    let mut devices = Devices::new(memory_log()).await;
    let (a, b) = (devices.add().await, devices.add().await);
    for n in 0..4 {
        devices.note(a, &format!("n{n}"), "v").await;
    }
    devices.sync(a).await;
    devices.fail_next_cursor_store(b);
    let err = devices.try_sync(b).await.expect_err("the injected failure");
    assert!(err.to_string().contains("storage"), "{err}");
    assert_eq!(
        devices.count(b).await,
        0,
        "nothing applied without the cursor"
    );
    let report = devices.sync(b).await;
    assert_eq!((report.integrated, report.duplicates), (4, 0));
    assert_eq!(devices.count(b).await, 4);
    let rows = devices
        .device(b)
        .storage()
        .find_many("note", Query::default())
        .await
        .expect("rows");
    assert!(rows.iter().all(|r| r["title"] == Value::from("v")));
}
