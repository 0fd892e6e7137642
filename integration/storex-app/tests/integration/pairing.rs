//! Device pairing: a new device accepts the old one's offer code, receives its whole database
//! over WebRTC on loopback, keeps its own identity, and continues with continuous sync from the
//! handoff, converging with the old device.

use std::sync::Arc;
use std::time::Duration;

use storex_app::{Error, SyncedStorage, WebRtcOptions};
use storex_core::{error_chain, object, Filter};
use storex_sync::fast_sync::{FastSyncOptions, TransferReport};
use storex_sync::{MemorySharedLog, SharedSyncLog};
use storex_test::flaky::FlakySharedLog;

use crate::common;

use common::{app_db, note};

async fn open(path: &std::path::Path, log: &Arc<dyn SharedSyncLog>) -> SyncedStorage {
    open_as(path, log, "ann").await
}

async fn open_as(
    path: &std::path::Path,
    log: &Arc<dyn SharedSyncLog>,
    user: &str,
) -> SyncedStorage {
    SyncedStorage::builder(app_db(path).await)
        .entity(note::Entity)
        .shared_log(log.clone(), user)
        .open()
        .await
        .expect("open synced storage")
}

/// A new device on `log` whose first start was offline: not registered yet.
async fn open_first_offline(path: &std::path::Path, log: &Arc<dyn SharedSyncLog>) -> SyncedStorage {
    let flaky = Arc::new(FlakySharedLog::new(log.clone()));
    flaky.set_offline(true);
    let new = open(path, &(flaky.clone() as Arc<dyn SharedSyncLog>)).await;
    assert!(!new.is_registered(), "its first start was offline");
    flaky.set_offline(false);
    new
}

/// Writes `n` notes on `app`.
async fn write_notes(app: &SyncedStorage, n: usize) {
    for i in 0..n {
        app.storage()
            .create("note", object! { "title" => format!("note {i}") })
            .await
            .expect("write");
    }
}

async fn count(app: &SyncedStorage) -> u64 {
    app.storage()
        .count("note", Filter::all())
        .await
        .expect("count")
}

/// Pairs `old` with `new` over WebRTC on loopback and moves `old`'s data: (sent, received).
async fn pair(
    old: &SyncedStorage,
    new: &SyncedStorage,
) -> (Result<TransferReport, Error>, Result<TransferReport, Error>) {
    let offer = old.offer_pairing().await.expect("offer");
    let answer = SyncedStorage::accept_pairing(offer.code())
        .await
        .expect("accept");
    let answer_code = answer.code().to_owned();
    let options = FastSyncOptions::default();
    tokio::join!(
        old.send_to_paired(offer, &answer_code, &options),
        new.receive_from_paired(answer, &options),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paired_device_receives_everything_and_continues_with_continuous_sync() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let old = open(&dir.path().join("old.db"), &log).await;
    for n in 0..500 {
        old.storage()
            .create("note", object! { "title" => format!("note {n}") })
            .await
            .expect("write");
    }
    old.sync_once().await.expect("push");
    let new_path = dir.path().join("new.db");
    let new = open(&new_path, &log).await;
    let new_id = new.device_id();

    let (sent, received) = pair(&old, &new).await;
    let (sent, received) = (sent.expect("send"), received.expect("receive"));
    assert_eq!(count(&new).await, 500);
    assert!(
        sent.objects >= 500 && received.objects >= 500,
        "{sent:?} {received:?}"
    );

    // Continuous sync takes over from the handoff: a later write arrives, nothing twice.
    old.storage()
        .create("note", object! { "title" => "after pairing" })
        .await
        .expect("write");
    old.sync_once().await.expect("push");
    let report = new.sync_once().await.expect("sync the new device");
    assert_eq!((report.pulled, report.applied), (1, 1), "{report:?}");
    assert_eq!(count(&new).await, 501);
    assert_eq!(
        old.device().digest("note").await.expect("digest"),
        new.device().digest("note").await.expect("digest")
    );

    // The new device kept its own identity: settings are local and were not sent.
    drop(new);
    let reopened = open(&new_path, &log).await;
    assert_eq!(reopened.device_id(), new_id);
    assert_ne!(reopened.device_id(), old.device_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_not_pushed_yet_reach_the_other_devices_although_the_old_device_is_wiped() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let old = open(&dir.path().join("old.db"), &log).await;
    let laptop = open(&dir.path().join("laptop.db"), &log).await;
    for n in 0..3 {
        old.storage()
            .create("note", object! { "title" => format!("offline {n}") })
            .await
            .expect("write, never synced");
    }
    let new = open(&dir.path().join("new.db"), &log).await;
    let (sent, received) = pair(&old, &new).await;
    assert_eq!(
        sent.expect("send").unpushed,
        0,
        "pushed before the transfer"
    );
    received.expect("receive");
    assert_eq!(count(&new).await, 3);
    drop(old); // wiped
    laptop.sync_once().await.expect("the laptop syncs");
    assert_eq!(count(&laptop).await, 3, "the old device's last changes");
    assert_eq!(
        laptop.device().digest("note").await.expect("digest"),
        new.device().digest("note").await.expect("digest")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sync_before_the_transfer_does_not_outlast_the_new_devices_wait_to_connect() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let memory: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let slow = Arc::new(FlakySharedLog::new(memory.clone()));
    let old = open(
        &dir.path().join("old.db"),
        &(slow.clone() as Arc<dyn SharedSyncLog>),
    )
    .await;
    for n in 0..3 {
        old.storage()
            .create("note", object! { "title" => format!("note {n}") })
            .await
            .expect("write");
    }
    let new = open(&dir.path().join("new.db"), &memory).await;
    // The old device's sync before the transfer takes 3 s (a slow network); the new device
    // waits 1 s for the channel to open.
    slow.set_pull_delay(Duration::from_secs(3));
    let offer = old.offer_pairing().await.expect("offer");
    let wait = WebRtcOptions::default().with_connect_timeout(Duration::from_secs(1));
    let answer = SyncedStorage::accept_pairing_with(offer.code(), &wait)
        .await
        .expect("accept");
    let answer_code = answer.code().to_owned();
    let options = FastSyncOptions::default();
    let (sent, received) = tokio::join!(
        old.send_to_paired(offer, &answer_code, &options),
        new.receive_from_paired(answer, &options),
    );
    received.expect("the channel opened before the sync");
    assert_eq!(sent.expect("send").unpushed, 0, "the sync still pushed");
    assert_eq!(count(&new).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_of_another_account_is_declined_before_anything_is_copied() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let bobs_laptop = open_as(&dir.path().join("laptop.db"), &log, "bob").await;
    write_notes(&bobs_laptop, 2).await;
    bobs_laptop.sync_once().await.expect("bob's laptop pushes");
    let anns = open_as(&dir.path().join("old.db"), &log, "ann").await;
    write_notes(&anns, 3).await;
    anns.sync_once().await.expect("ann's device pushes");
    let bobs_new = open_as(&dir.path().join("new.db"), &log, "bob").await;

    let (sent, received) = pair(&anns, &bobs_new).await;
    let received = error_chain(&received.expect_err("declined"));
    let sent = error_chain(&sent.expect_err("declined by the peer"));
    for message in [&received, &sent] {
        assert!(
            message.contains("not a device of the receiving device's account"),
            "{message}"
        );
    }
    assert_eq!(count(&bobs_new).await, 0, "nothing of ann's was copied");
    // Bob's new device still gets his changes, from the start of his own.
    let report = bobs_new.sync_once().await.expect("sync");
    assert_eq!(report.applied, 2, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_that_cannot_reach_its_log_pulls_from_the_start_instead_of_taking_the_cursor()
{
    let dir = tempfile::tempdir().expect("temporary directory");
    let memory: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let old = open(&dir.path().join("old.db"), &memory).await;
    write_notes(&old, 4).await;
    old.sync_once().await.expect("push");
    let flaky = Arc::new(FlakySharedLog::new(memory.clone()));
    let new = open(
        &dir.path().join("new.db"),
        &(flaky.clone() as Arc<dyn SharedSyncLog>),
    )
    .await;
    assert!(new.is_registered());

    flaky.set_offline(true);
    let (sent, received) = pair(&old, &new).await;
    sent.expect("send");
    assert_eq!(
        received.expect("receive").cursor,
        0,
        "no cursor handed over"
    );
    assert_eq!(count(&new).await, 4);

    flaky.set_offline(false);
    let report = new.sync_once().await.expect("sync");
    assert_eq!((report.pulled, report.applied), (4, 0), "{report:?}");
    assert_eq!(
        old.device().digest("note").await.expect("digest"),
        new.device().digest("note").await.expect("digest")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_first_started_offline_registers_and_takes_the_cursor() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let memory: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let old = open(&dir.path().join("old.db"), &memory).await;
    write_notes(&old, 4).await;
    old.sync_once().await.expect("push");
    // The log is compacted: a device pulling from the start would be told to copy again.
    old.sync_once().await.expect("ack");
    assert_eq!(memory.compact("ann").await.expect("compact"), 4);
    let new = open_first_offline(&dir.path().join("new.db"), &memory).await;

    let (sent, received) = pair(&old, &new).await;
    sent.expect("send");
    let received = received.expect("receive");
    assert!(new.is_registered());
    assert!(received.cursor > 0, "the sender's cursor: {received:?}");
    let report = new.sync_once().await.expect("sync after the copy");
    assert_eq!(report.pulled, 0, "{report:?}");
    assert_eq!(count(&new).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_its_log_refuses_declines_the_copy_instead_of_taking_it_without_the_cursor() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let memory: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let old = open(&dir.path().join("old.db"), &memory).await;
    write_notes(&old, 2).await;
    old.sync_once().await.expect("push");
    let new = open_first_offline(&dir.path().join("new.db"), &memory).await;
    // Meanwhile its id was taken by another account: the log refuses this device.
    memory
        .register_device("bob", new.device_id())
        .await
        .expect("bob takes the id");

    let (sent, received) = pair(&old, &new).await;
    let received = error_chain(&received.expect_err("refused"));
    assert!(
        received.contains("another user registered it"),
        "{received}"
    );
    let sent = error_chain(&sent.expect_err("declined by the peer"));
    assert!(sent.contains("shared log refused it"), "{sent}");
    assert_eq!(count(&new).await, 0, "nothing was copied");
}

#[tokio::test]
async fn a_bad_offer_code_is_reported() {
    let err = SyncedStorage::accept_pairing("not an offer")
        .await
        .expect_err("refused");
    assert!(matches!(err, Error::Pairing(_)), "{err:?}");
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(chain.contains("offer"), "{chain}");
}

/// The session description a pairing code carries.
fn sdp_of(code: &str) -> String {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(code)
        .expect("a code is base64");
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_device_offers_the_address_it_is_given() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let log: Arc<dyn SharedSyncLog> = Arc::new(MemorySharedLog::new());
    let old = open(&dir.path().join("old.db"), &log).await;
    old.storage()
        .create("note", object! { "title" => "moved" })
        .await
        .expect("write");
    let new = open(&dir.path().join("new.db"), &log).await;
    // Other loopback addresses here, where two devices give their addresses on the network
    // they share.
    let at = |ip: [u8; 4]| WebRtcOptions::default().with_bind((ip, 0).into());
    let offer = old
        .offer_pairing_with(&at([127, 0, 0, 2]))
        .await
        .expect("offer");
    assert!(sdp_of(offer.code()).contains(" 127.0.0.2 "));
    let answer = SyncedStorage::accept_pairing_with(offer.code(), &at([127, 0, 0, 3]))
        .await
        .expect("accept");
    assert!(sdp_of(answer.code()).contains(" 127.0.0.3 "));
    let answer_code = answer.code().to_owned();
    let options = FastSyncOptions::default();
    let (sent, received) = tokio::join!(
        old.send_to_paired(offer, &answer_code, &options),
        new.receive_from_paired(answer, &options),
    );
    sent.expect("send");
    received.expect("receive");
    assert_eq!(count(&new).await, 1);
}
