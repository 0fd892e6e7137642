//! End-to-end sync scenarios every shared log runs: devices on SQLite files syncing through
//! it, offline edits in every order, conflicts, partial replication, encryption, oversized
//! entries, and the log failing at every step. Each takes a factory of fresh shared logs.

use std::sync::Arc;

use futures::future::BoxFuture;
use storex_core::{Filter, Query, Value};
use storex_sync::{ContinuousOptions, SharedSyncLog};

use crate::devices::Devices;
use crate::flaky::{Fault, FlakySharedLog};

/// Makes a fresh, empty shared log.
pub type LogFactory<'a> = &'a (dyn Fn() -> BoxFuture<'static, Arc<dyn SharedSyncLog>> + Sync);

/// One scenario, run against the logs a factory makes.
pub type Scenario = for<'a> fn(LogFactory<'a>) -> BoxFuture<'a, ()>;

/// Every scenario, by name, for a crate to run them all.
pub fn all() -> Vec<(&'static str, Scenario)> {
    use futures::FutureExt;
    vec![
        ("a_write_on_one_device_reaches_the_other", |make| {
            a_write_on_one_device_reaches_the_other(make).boxed()
        }),
        (
            "offline_edits_on_three_devices_converge_in_every_sync_order",
            |make| offline_edits_on_three_devices_converge_in_every_sync_order(make).boxed(),
        ),
        (
            "partial_replication_pulls_only_the_subscribed_collections",
            |make| partial_replication_pulls_only_the_subscribed_collections(make).boxed(),
        ),
        (
            "a_wider_subscription_brings_the_history_of_the_added_collections",
            |make| a_wider_subscription_brings_the_history_of_the_added_collections(make).boxed(),
        ),
        (
            "encrypted_entries_reach_devices_with_the_key_and_are_quarantined_without_it",
            |make| {
                encrypted_entries_reach_devices_with_the_key_and_are_quarantined_without_it(make)
                    .boxed()
            },
        ),
        (
            "an_entry_too_large_to_push_is_reported_and_does_not_block_the_others",
            |make| {
                an_entry_too_large_to_push_is_reported_and_does_not_block_the_others(make).boxed()
            },
        ),
        (
            "a_shared_log_failing_at_every_step_loses_and_duplicates_nothing",
            |make| a_shared_log_failing_at_every_step_loses_and_duplicates_nothing(make).boxed(),
        ),
        (
            "a_failure_between_apply_and_cursor_store_applies_nothing_and_the_retry_applies_once",
            |make| {
                a_failure_between_apply_and_cursor_store_applies_nothing_and_the_retry_applies_once(
                    make,
                )
                .boxed()
            },
        ),
    ]
}

/// A write on one device reaches the other.
pub async fn a_write_on_one_device_reaches_the_other(make: LogFactory<'_>) {
    let mut devices = Devices::new(make().await).await;
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

/// Offline edits on three devices converge in every sync order.
pub async fn offline_edits_on_three_devices_converge_in_every_sync_order(make: LogFactory<'_>) {
    let orders: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let mut devices = Devices::new(make().await).await;
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

/// Two devices: `a` wrote a note and a photo and pushed them; `b`, which pulls only photos,
/// has not synced yet. Returns them with `a` and `b`.
async fn a_note_and_a_photo_for_a_photo_subscriber(
    make: LogFactory<'_>,
) -> (Devices, usize, usize) {
    let mut devices = Devices::new(make().await).await;
    let a = devices.add().await;
    let b = devices
        .add_with(ContinuousOptions::default().with_collections(["photo"]))
        .await;
    devices.note(a, "n1", "a note").await;
    devices.photo(a, "p1").await;
    devices.sync(a).await;
    (devices, a, b)
}

/// Partial replication pulls only the subscribed collections.
pub async fn partial_replication_pulls_only_the_subscribed_collections(make: LogFactory<'_>) {
    let (devices, _, b) = a_note_and_a_photo_for_a_photo_subscriber(make).await;
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

/// A device that adds a collection to its subscription gets what was written there before.
pub async fn a_wider_subscription_brings_the_history_of_the_added_collections(
    make: LogFactory<'_>,
) {
    let (mut devices, a, b) = a_note_and_a_photo_for_a_photo_subscriber(make).await;
    devices.sync(b).await;
    assert_eq!(devices.count(b).await, 0);
    devices.resubscribe(b, ContinuousOptions::default());
    let report = devices.sync(b).await;
    // Its cursor went back: that is not a database restored from a backup.
    assert!(!report.restored_from_backup, "{report:?}");
    assert_eq!(devices.count(b).await, 1, "the note written before arrived");
    assert_eq!(
        report.integrated, 1,
        "the photo was not applied twice: {report:?}"
    );
    devices.note(a, "n2", "another").await;
    devices.sync(a).await;
    let report = devices.sync(b).await;
    assert_eq!((report.pulled, report.integrated), (1, 1), "{report:?}");
}

/// Encrypted entries reach devices with the key and are quarantined without it, until the
/// device has the key.
pub async fn encrypted_entries_reach_devices_with_the_key_and_are_quarantined_without_it(
    make: LogFactory<'_>,
) {
    let key = [42u8; 32];
    let log = make().await;
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
    assert_eq!(
        devices.quarantined(stranger).await,
        1,
        "the undecodable entry is kept, not dropped"
    );
    // Later entries still flow to the stranger's cursor: it is not blocked.
    assert!(devices.sync(stranger).await.problems.is_empty());
    // Given the right key, its next engine's first sync opens what it kept.
    devices.resubscribe(
        stranger,
        ContinuousOptions::default().with_encryption_key(key),
    );
    let report = devices.sync(stranger).await;
    assert_eq!((report.released, report.integrated), (1, 1), "{report:?}");
    assert_eq!(
        devices.title(stranger, "secret").await.as_deref(),
        Some("the plans")
    );
    assert_eq!(
        devices.quarantined(stranger).await,
        0,
        "what opened left the quarantine"
    );
    devices.assert_converged(&[a, b, stranger]).await;
}

/// An entry too large to push is reported and does not block the others.
pub async fn an_entry_too_large_to_push_is_reported_and_does_not_block_the_others(
    make: LogFactory<'_>,
) {
    let mut devices = Devices::new(make().await).await;
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

/// A shared log failing at every step loses and duplicates nothing, whether the devices keep
/// their pushed entries in the log or fold them into their versions as they push.
pub async fn a_shared_log_failing_at_every_step_loses_and_duplicates_nothing(make: LogFactory<'_>) {
    for (fault, whole) in Fault::ALL.into_iter().flat_map(|f| [(f, true), (f, false)]) {
        let flaky = Arc::new(FlakySharedLog::new(make().await));
        let mut devices = Devices::new(flaky.clone()).await;
        // Without compaction the log is kept whole, and checked for duplicates at the end
        // (with it, what was pushed is folded: the check covers what is left).
        let options = || match whole {
            true => ContinuousOptions::default().with_compact_per_sync(0),
            false => ContinuousOptions::default(),
        };
        let ids = [
            devices.add_with(options()).await,
            devices.add_with(options()).await,
            devices.add_with(options()).await,
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
            let log = devices.device(d).log().all().await.expect("log").entries;
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

/// A failure between apply and cursor store applies nothing and the retry applies once.
pub async fn a_failure_between_apply_and_cursor_store_applies_nothing_and_the_retry_applies_once(
    make: LogFactory<'_>,
) {
    let mut devices = Devices::new(make().await).await;
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
