//! A device killed in the middle of a sync loses nothing and applies nothing twice: every
//! page it pulled is either fully applied with its cursor, or not at all; reopened, it
//! finishes the sync and matches the sender.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use storex_core::{
    object, BatchStep, CollectionDef, FieldType, Filter, Operation, Registry, StorageBackend,
};
use storex_log_sql::SqlSharedLog;
use storex_seaorm::SeaOrmBackend;
use storex_sync::{
    Clock, ContinuousOptions, ContinuousSync, DeviceId, SharedSyncLog, SyncDevice, SyncOptions,
};

const CHILD_DIR: &str = "STOREX_CRASH_SYNC_DIR";
const CHILD_DEVICE: &str = "STOREX_CRASH_SYNC_DEVICE";
const NOTES: usize = 6_000;
const PAGE: usize = 250;

fn registry() -> Registry {
    Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Uuid)
                .field("title", FieldType::Text)
                .primary_key(["id"]),
        )
        .build()
        .expect("registry")
}

fn shared_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("shared.db").display())
}

async fn open_device(dir: &Path, name: &str, id: DeviceId) -> SyncDevice {
    let backend: Arc<dyn StorageBackend> = Arc::new(
        SeaOrmBackend::open_sqlite_file(dir.join(name))
            .await
            .expect("open device file"),
    );
    SyncDevice::open(registry(), backend, Clock::new(id), SyncOptions::default())
        .await
        .expect("device")
}

async fn syncer(dir: &Path, name: &str, id: DeviceId) -> ContinuousSync {
    let device = open_device(dir, name, id).await;
    let log: Arc<dyn SharedSyncLog> = Arc::new(
        SqlSharedLog::connect(&shared_url(dir))
            .await
            .expect("shared log"),
    );
    ContinuousSync::new(
        device,
        log,
        ContinuousOptions::default().with_batch_size(PAGE),
    )
}

/// Run as a child process by the test below: syncs device B until killed.
#[tokio::test]
async fn crash_child_syncing_device() {
    let (Ok(dir), Ok(device)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_DEVICE)) else {
        return; // only meaningful as the child of the test below
    };
    let id = DeviceId(device.parse().expect("device id"));
    let sync = syncer(Path::new(&dir), "b.db", id).await;
    loop {
        sync.sync_once().await.expect("sync");
    }
}

#[tokio::test]
async fn a_device_killed_mid_sync_resumes_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path: PathBuf = dir.path().to_owned();
    let shared = SqlSharedLog::connect(&shared_url(&path))
        .await
        .expect("shared log");
    let (a_id, b_id) = (
        shared.create_device("ann").await.expect("register a"),
        shared.create_device("ann").await.expect("register b"),
    );
    let a = syncer(&path, "a.db", a_id).await;
    for batch in 0..NOTES / 1_000 {
        let steps = (0..1_000)
            .map(|i| {
                BatchStep::new(Operation::create(
                    "note",
                    object! { "title" => format!("note {batch}-{i}") },
                ))
            })
            .collect();
        a.device().storage().batch(steps).await.expect("write");
    }
    assert_eq!(a.sync_once().await.expect("push").pushed, NOTES as u64);
    drop(open_device(&path, "b.db", b_id).await); // create b's tables before the child starts

    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "crash::crash_child_syncing_device",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD_DIR, &path)
        .env(CHILD_DEVICE, b_id.0.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the syncing device");
    let watcher = open_device(&path, "b.db", b_id).await;
    let mut waited = Duration::ZERO;
    loop {
        let count = watcher
            .storage()
            .count("note", Filter::all())
            .await
            .expect("count");
        if count >= (2 * PAGE) as u64 {
            break;
        }
        assert!(
            waited < Duration::from_secs(60),
            "the child made no progress"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        waited += Duration::from_millis(5);
    }
    child.kill().expect("kill");
    child.wait().expect("reap");
    drop(watcher);

    let b = syncer(&path, "b.db", b_id).await;
    let applied = b
        .device()
        .storage()
        .count("note", Filter::all())
        .await
        .expect("count");
    let cursor = b.cursor().await.expect("cursor");
    println!("killed after {applied} notes, cursor {cursor}");
    assert!(
        applied < NOTES as u64,
        "the child finished before it was killed: no crash was tested"
    );
    assert_eq!(
        applied % PAGE as u64,
        0,
        "a page was half applied: {applied} notes"
    );
    assert_eq!(cursor, applied, "the cursor and the applied pages disagree");
    let report = b.sync_once().await.expect("resume");
    assert_eq!(report.duplicates, 0, "entries applied twice");
    assert_eq!(report.integrated + applied, NOTES as u64);
    assert_eq!(
        b.device().digest("note").await.expect("digest"),
        a.device().digest("note").await.expect("digest")
    );
    // Received entries are folded into the versions index: one row per note.
    assert_eq!(b.device().log().len().await.expect("log"), 0);
    let versioned = b
        .device()
        .log()
        .versioned_objects()
        .await
        .expect("versions");
    assert_eq!(versioned, NOTES as u64, "every note's versions stored once");
}
