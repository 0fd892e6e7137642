//! Received changes to runs of consecutive UUID keys (the creates of one write) are looked
//! up as key ranges: what a range finds must be exactly what an `IN` list would, on SQLite
//! and on the memory backend, with objects of the runs new, known, updated, deleted and
//! received twice.

use std::sync::Arc;

use storex_core::{
    object, BatchStep, CollectionDef, FieldType, Filter, MemoryBackend, Operation, Query, Registry,
    StorageBackend,
};
use storex_seaorm::SeaOrmBackend;
use storex_sync::{Clock, DeviceId, LogEntry, SyncDevice, SyncOptions};

fn registry() -> Registry {
    Registry::builder()
        .collection(
            CollectionDef::new("item")
                .field("id", FieldType::Uuid)
                .field("n", FieldType::Int)
                .primary_key(["id"]),
        )
        .build()
        .expect("registry")
}

async fn device(backend: Arc<dyn StorageBackend>) -> SyncDevice {
    SyncDevice::open(
        registry(),
        backend,
        Clock::new(DeviceId::random()),
        SyncOptions::default(),
    )
    .await
    .expect("device")
}

/// Writes `count` items in one batch (consecutive keys), numbered from `from`.
async fn write_items(device: &SyncDevice, from: i64, count: i64) {
    let steps = (from..from + count)
        .map(|n| BatchStep::new(Operation::create("item", object! { "n" => n })))
        .collect();
    device.storage().batch(steps).await.expect("a write");
}

/// The device's unshared entries, marked shared (as a push would).
async fn take_entries(device: &SyncDevice) -> Vec<LogEntry> {
    let entries = device.log().unshared(10_000).await.expect("unshared");
    let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
    device.log().mark_shared(&ids).await.expect("shared");
    entries
}

/// Sets `n` of every item on `device`.
async fn set_all(device: &SyncDevice, n: i64) {
    device
        .storage()
        .update_where("item", Filter::all(), object! { "n" => n })
        .await
        .expect("update all");
}

/// Panics unless the items' keys come in runs of consecutive UUIDs, one per write (what
/// makes the lookups use key ranges): numbers 0.. and 1,000.. are runs of 100.
async fn assert_runs_of_keys(device: &SyncDevice) {
    let items = device
        .storage()
        .find_many("item", Query::new(Filter::all()).order_asc("n"))
        .await
        .expect("items");
    let key = |i: usize| items[i]["id"].as_uuid().expect("a uuid").as_u128();
    for run in [0..100, 100..200] {
        for i in run.start + 1..run.end {
            assert_eq!(key(i), key(i - 1) + 1, "keys of one write are consecutive");
        }
    }
}

async fn same(a: &SyncDevice, b: &SyncDevice) {
    assert_eq!(
        a.digest("item").await.expect("digest"),
        b.digest("item").await.expect("digest")
    );
}

async fn runs_of_keys_are_found_like_single_keys(
    a_backend: Arc<dyn StorageBackend>,
    b_backend: Arc<dyn StorageBackend>,
) {
    let (a, b) = (device(a_backend).await, device(b_backend).await);
    // Two runs of 100 and one short one.
    write_items(&a, 0, 100).await;
    write_items(&a, 1_000, 100).await;
    write_items(&a, 2_000, 5).await;
    assert_runs_of_keys(&a).await;
    let first = take_entries(&a).await;
    assert_eq!(first.len(), 205);
    let report = b.integrate(first.clone()).await.expect("integrate");
    assert_eq!(report.operations, 205, "{report:?}");
    same(&a, &b).await;

    // Received again: every entry is known (the log and the versions found by range).
    let again = b.integrate(first.clone()).await.expect("integrate again");
    assert_eq!((again.operations, again.duplicates), (0, 205), "{again:?}");
    // B compacts nothing of A's (received entries are not in its log), A compacts its own,
    // and receiving them again still changes nothing on either.
    assert_eq!(a.log().compact().await.expect("compact"), 205);
    let again = a.integrate(first.clone()).await.expect("integrate on a");
    assert_eq!(again.operations, 0, "{again:?}");

    // Updates to every item, deletes of some, then a later update of one of those: each
    // object of a run is found by B (rows, versions) and A (versions, after compaction).
    let all = Filter::all();
    a.storage()
        .update_where("item", all.clone(), object! { "n" => -1i64 })
        .await
        .expect("update all");
    let victims = a
        .storage()
        .find_many("item", Query::new(all.clone()).order_asc("id").limit(10))
        .await
        .expect("find");
    for victim in &victims {
        let pk = victim["id"].clone();
        a.storage().delete_by_pk("item", pk).await.expect("delete");
    }
    let second = take_entries(&a).await;
    assert_eq!(second.len(), 205 + 10);
    let report = b.integrate(second).await.expect("integrate");
    assert_eq!(report.integrated, 215, "{report:?}");
    same(&a, &b).await;
    assert_eq!(b.storage().count("item", all).await.expect("count"), 195);

    // The first entries once more, after the updates and deletes: they lose everywhere.
    let stale = b.integrate(first).await.expect("stale");
    assert_eq!(stale.operations, 0, "{stale:?}");
    same(&a, &b).await;

    // Two updates of every item, received latest first: the earlier one loses to what B's
    // versions say of the later one.
    set_all(&a, -2).await;
    let earlier = take_entries(&a).await;
    set_all(&a, -3).await;
    let later = take_entries(&a).await;
    b.integrate(later).await.expect("later");
    let report = b.integrate(earlier).await.expect("earlier");
    assert_eq!(report.operations, 0, "{report:?}");
    same(&a, &b).await;

    // A changes every item, then B does, and only then does A's change reach B: it loses to
    // B's own entries in B's log, and both end with B's values.
    set_all(&a, -4).await;
    let from_a = take_entries(&a).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    set_all(&b, -5).await;
    let report = b.integrate(from_a).await.expect("a's older change");
    assert_eq!(report.operations, 0, "{report:?}");
    a.integrate(take_entries(&b).await)
        .await
        .expect("b's change");
    same(&a, &b).await;
    let fives = Filter::all().eq("n", -5i64);
    assert_eq!(b.storage().count("item", fives).await.expect("count"), 195);
}

#[tokio::test]
async fn sqlite_finds_runs_of_keys_like_single_keys() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let a = SeaOrmBackend::open_sqlite_file(dir.path().join("a.db"))
        .await
        .expect("open a");
    let b = SeaOrmBackend::open_sqlite_file(dir.path().join("b.db"))
        .await
        .expect("open b");
    runs_of_keys_are_found_like_single_keys(Arc::new(a), Arc::new(b)).await;
}

#[tokio::test]
async fn memory_finds_runs_of_keys_like_single_keys() {
    runs_of_keys_are_found_like_single_keys(
        Arc::new(MemoryBackend::new()),
        Arc::new(MemoryBackend::new()),
    )
    .await;
}
