//! An app syncing through the sync server: the device token is kept in the app's settings and
//! survives a restart, and a write on one device reaches the other through the server's live
//! updates although both background timers are an hour long.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::DatabaseConnection;
use storex_app::{BackgroundOptions, SyncedStorage};
use storex_core::{object, Filter};
use storex_log_http::{HttpSharedLog, RunningServer, ServerConfig, SyncServer};
use storex_sync::SharedSyncLog;

const ADMIN: &str = "app-test-admin-token-0123";

use crate::common;

use common::{app_db, note};

async fn server(dir: &std::path::Path) -> (RunningServer, String) {
    let config = ServerConfig::new(format!(
        "sqlite://{}?mode=rwc",
        dir.join("server.db").display()
    ))
    .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
    .admin_token(ADMIN);
    let server = SyncServer::start(config).await.expect("server");
    let user = HttpSharedLog::new(&server.url())
        .expect("client")
        .create_user(ADMIN, "ann")
        .await
        .expect("user");
    (server, user.token)
}

async fn open(db: DatabaseConnection, url: &str, user_token: &str) -> SyncedStorage {
    // A fresh client each time, as after an app restart: it knows no device token.
    let log: Arc<dyn SharedSyncLog> = Arc::new(HttpSharedLog::new(url).expect("client"));
    SyncedStorage::builder(db)
        .entity(note::Entity)
        .shared_log(log, user_token)
        .open()
        .await
        .expect("open synced storage")
}

async fn notes(app: &SyncedStorage) -> u64 {
    app.storage()
        .count("note", Filter::all())
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_token_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (server, token) = server(dir.path()).await;
    let path = dir.path().join("a.db");
    let first = open(app_db(&path).await, &server.url(), &token).await;
    let id = first.device_id();
    first
        .storage()
        .create("note", object! { "title" => "before restart" })
        .await
        .expect("write");
    first.sync_once().await.expect("sync");
    drop(first);

    let again = open(app_db(&path).await, &server.url(), &token).await;
    assert_eq!(again.device_id(), id, "a restart registered a new device");
    again
        .storage()
        .create("note", object! { "title" => "after restart" })
        .await
        .expect("write");
    let report = again.sync_once().await.expect("sync with the kept token");
    assert_eq!(report.pushed, 1);
    server.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_first_opened_while_the_server_was_down_keeps_the_token_its_first_sync_got() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (server, token) = server(dir.path()).await;
    let (addr, url) = (server.local_addr(), server.url());
    server.shutdown().await.expect("stop");
    // The app's first start, with the server down: it opens, and works.
    let path = dir.path().join("a.db");
    let first = open(app_db(&path).await, &url, &token).await;
    assert!(!first.is_registered());
    let id = first.device_id();
    first
        .storage()
        .create("note", object! { "title" => "while down" })
        .await
        .expect("write");
    assert!(first.sync_once().await.is_err(), "the server is down");
    // The server is back, on the same address.
    let config = ServerConfig::new(format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("server.db").display()
    ))
    .listen(addr)
    .admin_token(ADMIN);
    let server = SyncServer::start(config).await.expect("server again");
    assert_eq!(
        first
            .sync_once()
            .await
            .expect("registers, then syncs")
            .pushed,
        1
    );
    assert!(first.is_registered());
    drop(first);
    // Restarted: a fresh client that knows the device token only from the settings.
    let again = open(app_db(&path).await, &url, &token).await;
    assert_eq!(again.device_id(), id);
    assert!(again.is_registered());
    again
        .storage()
        .create("note", object! { "title" => "after restart" })
        .await
        .expect("write");
    assert_eq!(
        again
            .sync_once()
            .await
            .expect("sync with the kept token")
            .pushed,
        1
    );
    let other = open(
        app_db(&dir.path().join("b.db")).await,
        &server.url(),
        &token,
    )
    .await;
    other.sync_once().await.expect("sync");
    assert_eq!(notes(&other).await, 2);
    server.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_reaches_the_other_device_through_live_updates() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (server, token) = server(dir.path()).await;
    let a = open(
        app_db(&dir.path().join("a.db")).await,
        &server.url(),
        &token,
    )
    .await;
    let b = open(
        app_db(&dir.path().join("b.db")).await,
        &server.url(),
        &token,
    )
    .await;
    let hourly = BackgroundOptions::default()
        .with_interval(Duration::from_secs(3600))
        .with_debounce(Duration::from_millis(20));
    let a_bg = a.start_background(hourly.clone());
    let b_bg = b.start_background(hourly);
    // Both sync once at start; let that pass.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let start = Instant::now();
    a.storage()
        .create("note", object! { "title" => "live" })
        .await
        .expect("write");
    while notes(&b).await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the write did not reach B without its timer"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "live update: a write on A was on B after {:.0} ms (timers: 1 hour)",
        start.elapsed().as_secs_f64() * 1e3
    );
    a_bg.stop().await;
    b_bg.stop().await;
    server.shutdown().await.expect("stop");
}

/// Fails every write that applies other devices' changes (a full disk, say).
#[derive(Debug)]
struct FailingApply;

impl storex_core::Middleware for FailingApply {
    fn process<'a>(
        &'a self,
        op: storex_core::Operation,
        next: storex_core::Next<'a>,
    ) -> storex_core::BoxFuture<'a, storex_core::Result<storex_core::Outcome>> {
        if next.origin() == storex_core::Origin::Sync
            && matches!(op, storex_core::Operation::Batch { .. })
        {
            return Box::pin(async {
                Err(storex_core::Error::Transaction {
                    problem: "injected: the disk is full".into(),
                })
            });
        }
        next.run(op)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_updates_do_not_cut_the_backoff_after_a_failed_sync_short() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (server, token) = server(dir.path()).await;
    let a = open(
        app_db(&dir.path().join("a.db")).await,
        &server.url(),
        &token,
    )
    .await;
    let log: Arc<dyn SharedSyncLog> = Arc::new(HttpSharedLog::new(&server.url()).expect("client"));
    let b = SyncedStorage::builder(app_db(&dir.path().join("b.db")).await)
        .entity(note::Entity)
        .shared_log(log, token.as_str())
        .with_middleware(Arc::new(FailingApply))
        .open()
        .await
        .expect("open b");
    a.storage()
        .create("note", object! { "title" => "cannot be applied on b" })
        .await
        .expect("write");
    a.sync_once().await.expect("push");

    let background = b.start_background(
        BackgroundOptions::default()
            .with_interval(Duration::from_secs(3600))
            .with_backoff(Duration::from_millis(250), Duration::from_millis(250)),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failures = background.status().consecutive_failures;
    println!("in 1.5 s with a 250 ms backoff: {failures} failed syncs");
    assert!(failures >= 2, "b never retried: {failures}");
    assert!(
        failures <= 12,
        "live signals cut the backoff short: {failures} syncs in 1.5 s"
    );
    background.stop().await;
    server.shutdown().await.expect("stop");
}
