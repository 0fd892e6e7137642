//! Devices whose own database is PostgreSQL sync like those on SQLite: keys made by the UUID
//! middleware, looked up by key ranges (runs of consecutive keys) on PostgreSQL's `uuid`
//! columns and the versions index's `COLLATE "C"` text, pushes folded into the versions
//! (existence counted over those ranges, and read back where a run has rows missing).

use std::sync::Arc;

use storex_core::{
    object, BatchStep, CollectionDef, FieldType, Filter, Operation, Pk, Registry, StorageBackend,
};
use storex_seaorm::SeaOrmBackend;
use storex_sync::{
    Clock, ContinuousOptions, ContinuousSync, MemorySharedLog, SharedSyncLog, SyncDevice,
    SyncOptions,
};

fn registry() -> Registry {
    Registry::builder()
        .collection(
            CollectionDef::new("item")
                .field("id", FieldType::Uuid)
                .field("title", FieldType::Text)
                .field("stars", FieldType::Int)
                .primary_key(["id"]),
        )
        .build()
        .expect("registry")
}

/// A device on a fresh database of the PostgreSQL server at `server`.
async fn device(server: &str, log: &Arc<dyn SharedSyncLog>) -> ContinuousSync {
    let url = storex_test::fresh_postgres_database(server).await;
    let backend: Arc<dyn StorageBackend> =
        Arc::new(SeaOrmBackend::connect(&url).await.expect("connect"));
    let id = log.create_device("ann").await.expect("device id");
    let device = SyncDevice::open(registry(), backend, Clock::new(id), SyncOptions::default())
        .await
        .expect("device");
    ContinuousSync::new(device, log.clone(), ContinuousOptions::default())
}

/// Creates `count` items in one write (consecutive keys), returning their keys.
async fn create_items(device: &ContinuousSync, prefix: &str, count: usize) -> Vec<Pk> {
    let steps = (0..count)
        .map(|n| {
            let item = object! { "title" => format!("{prefix} {n}"), "stars" => 0 };
            BatchStep::new(Operation::create("item", item))
        })
        .collect();
    let outcomes = device
        .device()
        .storage()
        .batch(steps)
        .await
        .expect("created");
    outcomes
        .iter()
        .map(|o| o.created_pk().expect("a created key").clone())
        .collect()
}

async fn count(device: &ContinuousSync) -> u64 {
    let storage = device.device().storage();
    storage.count("item", Filter::all()).await.expect("count")
}

async fn same(a: &ContinuousSync, b: &ContinuousSync) {
    let (left, right) = (a.device().digest("item"), b.device().digest("item"));
    assert_eq!(left.await.expect("digest"), right.await.expect("digest"));
}

#[tokio::test]
async fn devices_on_postgresql_sync_runs_of_keys_and_fold_what_they_push() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let a = device(&server, &log).await;
    let b = device(&server, &log).await;

    // A run of 300 keys; then a run of 100 of which 3 are deleted before the push, so the
    // push's count of that run comes up short and the rows are read.
    let first = create_items(&a, "first", 300).await;
    let second = create_items(&a, "second", 100).await;
    for pk in [&second[5], &second[50], &second[99]] {
        let storage = a.device().storage();
        storage
            .delete_by_pk("item", pk.clone())
            .await
            .expect("deleted");
    }
    let report = a.sync_once().await.expect("a syncs");
    // The deleted rows' creates make no entry (their deletes decide them): 397 + 3.
    assert_eq!(report.pushed, 400, "{report:?}");
    assert!(a.device().log().is_empty().await.expect("log"), "folded");
    let report = b.sync_once().await.expect("b syncs");
    assert_eq!(report.integrated, 400, "{report:?}");
    assert_eq!(count(&b).await, 397);
    same(&a, &b).await;

    // Both edit, B the whole first run (a run of updates over versions), A some of it later.
    let stars = object! { "stars" => 3 };
    let storage = b.device().storage();
    storage
        .update_where("item", Filter::all().eq("stars", 0), stars)
        .await
        .expect("b updates");
    for pk in &first[..10] {
        let storage = a.device().storage();
        let title = object! { "title" => "a's" };
        storage
            .update_by_pk("item", pk.clone(), title)
            .await
            .expect("a updates");
    }
    let storage = a.device().storage();
    storage
        .delete_by_pk("item", first[299].clone())
        .await
        .expect("a deletes");
    for _ in 0..2 {
        b.sync_once().await.expect("b syncs");
        a.sync_once().await.expect("a syncs");
    }
    same(&a, &b).await;
    assert_eq!(count(&a).await, 396);
    let storage = a.device().storage();
    let edited = storage
        .find_by_pk("item", first[0].clone())
        .await
        .expect("find");
    let edited = edited.expect("still there");
    assert_eq!(edited.get("title"), Some(&"a's".into()));
    assert_eq!(edited.get("stars"), Some(&3i64.into()));
    for device in [&a, &b] {
        let log = device.device().log();
        assert!(log.is_empty().await.expect("log"), "folded as pushed");
    }
}

/// The title of item `pk` on `device`.
async fn title(device: &ContinuousSync, pk: &Pk) -> Option<storex_core::Value> {
    let storage = device.device().storage();
    let item = storage.find_by_pk("item", pk.clone()).await.expect("find");
    item.and_then(|item| item.get("title").cloned())
}

/// A sync of `a` that starts while the app's transaction `tx` is open and meets it, `tx`
/// committed half a second later, then two more rounds of both devices. The first sync may
/// fail, transiently only (it is tried again); returns what it did.
async fn sync_meeting(
    a: &Arc<ContinuousSync>,
    b: &ContinuousSync,
    tx: storex_core::StorageTransaction,
) -> storex_sync::Result<storex_sync::SyncReport> {
    let syncing = tokio::spawn({
        let a = a.clone();
        async move { a.sync_once().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    tx.commit().await.expect("a commits");
    let first = syncing.await.expect("task");
    if let Err(e) = &first {
        assert!(e.is_transient(), "{e}");
    }
    for _ in 0..2 {
        a.sync_once().await.expect("a syncs");
        b.sync_once().await.expect("b syncs");
    }
    first
}

#[tokio::test]
async fn a_received_change_does_not_overwrite_a_later_write_of_a_transaction_still_open() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let a = Arc::new(device(&server, &log).await);
    let b = device(&server, &log).await;
    let pk = create_items(&a, "shared", 1).await.remove(0);
    a.sync_once().await.expect("a syncs");
    b.sync_once().await.expect("b syncs");

    // B renames the item first and publishes it.
    let storage = b.device().storage();
    let earlier = object! { "title" => "b's earlier" };
    storage
        .update_by_pk("item", pk.clone(), earlier)
        .await
        .expect("b renames");
    b.sync_once().await.expect("b pushes");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    // Later, the app on A renames it too, in a transaction of its own it has not committed
    // yet; meanwhile A's sync receives B's older change, and must wait for the row.
    let tx = a.device().storage().begin().await.expect("begin");
    let later = Operation::update_by_pk("item", pk.clone(), object! { "title" => "a's later" });
    tx.execute(later).await.expect("a renames");
    // The sync that met the open transaction may fail (it is tried again); none may apply
    // B's change over A's later one.
    let first = sync_meeting(&a, &b, tx).await;
    let expected = Some("a's later".into());
    assert_eq!(
        title(&a, &pk).await,
        expected,
        "on a (the first sync: {first:?})"
    );
    assert_eq!(title(&b, &pk).await, expected, "on b");
    same(&a, &b).await;
}

#[tokio::test]
async fn a_sync_waiting_for_an_open_transaction_gives_up_rather_than_hold_back_other_writes() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let a = Arc::new(device(&server, &log).await);
    let b = device(&server, &log).await;
    let pks = create_items(&a, "shared", 2).await;
    a.sync_once().await.expect("a syncs");
    b.sync_once().await.expect("b syncs");
    let storage = b.device().storage();
    let earlier = object! { "title" => "b's earlier" };
    storage
        .update_by_pk("item", pks[0].clone(), earlier)
        .await
        .expect("b renames");
    b.sync_once().await.expect("b pushes");
    // The app's transaction changes the item and sync waits for its row, holding the
    // device's other writes back; the app commits only once a write of its own outside the
    // transaction is done. Sync must give up waiting (as a SQLite writer waits at most its
    // busy timeout), or neither would ever finish.
    let tx = a.device().storage().begin().await.expect("begin");
    let later = object! { "title" => "a's later" };
    let rename = Operation::update_by_pk("item", pks[0].clone(), later.clone());
    tx.execute(rename).await.expect("a renames");
    let syncing = tokio::spawn({
        let a = a.clone();
        async move { a.sync_once().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let storage = a.device().storage();
    let other = storage.update_by_pk("item", pks[1].clone(), later);
    let other = tokio::time::timeout(std::time::Duration::from_secs(60), other).await;
    other
        .expect("the other write is not stuck")
        .expect("a renames another");
    tx.commit().await.expect("a commits");
    let first = syncing.await.expect("task");
    let problem = first.expect_err("the sync that waited gave up");
    assert!(problem.is_transient(), "{problem}");
    for _ in 0..2 {
        a.sync_once().await.expect("a syncs");
        b.sync_once().await.expect("b syncs");
    }
    for pk in &pks {
        assert_eq!(title(&a, pk).await, Some("a's later".into()));
    }
    same(&a, &b).await;
}

#[tokio::test]
async fn a_received_create_that_meets_the_apps_insert_of_the_same_key_is_reconciled_not_held() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let a = Arc::new(device(&server, &log).await);
    let b = device(&server, &log).await;
    let id = storex_core::uuid::Uuid::now_v7();
    let pk = Pk::from(id);
    let item = |title: &str| object! { "id" => id, "title" => title, "stars" => 0 };
    // A's engine has synced once: the first sync of an engine retries what it holds.
    a.sync_once().await.expect("a syncs");
    // The app on A creates the item in a transaction it has not committed yet; then B creates
    // the same key, later, and publishes it.
    let tx = a.device().storage().begin().await.expect("begin");
    tx.execute(Operation::create("item", item("a's earlier")))
        .await
        .expect("a creates");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let storage = b.device().storage();
    storage
        .create("item", item("b's later"))
        .await
        .expect("b creates");
    b.sync_once().await.expect("b pushes");
    // A's sync inserts B's create and waits for the app's row; the app commits; the insert
    // is refused as a duplicate. The sync's snapshot did not show the app's row, so B's create
    // was not reconciled with it: it must be, not held until A restarts.
    let first = sync_meeting(&a, &b, tx).await;
    let held = a.device().log().held().await.expect("held").entries;
    assert!(
        held.is_empty(),
        "held on a: {held:?} (the first sync: {first:?})"
    );
    let expected = Some("b's later".into());
    assert_eq!(title(&a, &pk).await, expected, "on a");
    assert_eq!(title(&b, &pk).await, expected, "on b");
    same(&a, &b).await;
}

#[tokio::test]
async fn a_write_that_waits_for_a_row_an_app_transaction_holds_is_stamped_after_it() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let a = device(&server, &log).await;
    let b = device(&server, &log).await;
    let pk = create_items(&a, "shared", 1).await.remove(0);
    // The app's transaction holds the item's row from its first write on.
    let tx = a.device().storage().begin().await.expect("begin");
    let stars = Operation::update_by_pk("item", pk.clone(), object! { "stars" => 1 });
    tx.execute(stars).await.expect("first write");
    // A plain write of the title is on its way, waiting for the row, when the transaction
    // writes the title too, and commits first.
    let storage = a.device().storage().clone();
    let key = pk.clone();
    let plain = tokio::spawn(async move {
        let changes = object! { "title" => "plain write" };
        storage.update_by_pk("item", key, changes).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!plain.is_finished(), "the plain write waits for the row");
    let title_in_tx = object! { "title" => "app transaction" };
    let rename = Operation::update_by_pk("item", pk.clone(), title_in_tx);
    tx.execute(rename).await.expect("second write");
    tx.commit().await.expect("commit");
    plain.await.expect("task").expect("plain write");
    // A keeps the value written last; B, which gets both changes, must keep it too.
    a.sync_once().await.expect("a syncs");
    b.sync_once().await.expect("b syncs");
    let expected = Some("plain write".into());
    assert_eq!(title(&a, &pk).await, expected, "on a");
    assert_eq!(title(&b, &pk).await, expected, "on b");
    same(&a, &b).await;
}
