//! Stopping a server: new connections are refused at once while requests in flight finish;
//! a push outlives its request when the request is cancelled, and the server is down only
//! once that push has committed or failed.

#![allow(clippy::unwrap_used)] // helpers of tests: a failed unwrap is a failed test

use std::time::Duration;

use sea_orm::DatabaseTransaction;
use storex_core::uuid::Uuid;
use storex_log_http::{ClientOptions, HttpSharedLog};
use storex_log_sql::SqlSharedLog;
use storex_sync::{DeviceId, SharedEntry, SharedSyncLog};

use crate::common::{config, Store, ADMIN};

/// The server's database opened beside it, with its write lock held (a push waits for it
/// until the transaction ends, well within the server's 10 s busy timeout), and an entry of
/// `device` to push.
async fn locked(
    store: &Store,
    device: DeviceId,
) -> (SqlSharedLog, DatabaseTransaction, SharedEntry) {
    let direct = SqlSharedLog::connect(&store.url).await.unwrap();
    let lock = direct.begin().await.unwrap();
    let entry = SharedEntry {
        id: Uuid::now_v7(),
        device,
        topic: "notes".into(),
        payload: b"pushed while the lock is held".to_vec(),
    };
    (direct, lock, entry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_request_timed_out_commits_before_the_server_is_down() {
    let store = Store::sqlite();
    let mut settings = config(&store);
    settings.max_wait = Duration::from_millis(100);
    // Time enough for the request to reach its handler on a loaded machine.
    settings.request_timeout = Duration::from_secs(1);
    settings.shutdown_grace = Duration::from_secs(5);
    let server = storex_log_http::SyncServer::start(settings).await.unwrap();
    let options = ClientOptions {
        retries: 0,
        ..ClientOptions::default()
    };
    // Set up through a client that retries (a slow commit on a loaded machine may meet the
    // short request timeout); the push goes through one that does not.
    let setup = HttpSharedLog::new(&server.url()).unwrap();
    let user = setup.create_user(ADMIN, "ann").await.unwrap();
    let writer = setup.create_device(&user.token).await.unwrap();
    let reader = setup.create_device(&user.token).await.unwrap();
    let client = HttpSharedLog::with_options(&server.url(), options).unwrap();
    client.add_device(writer, setup.device_token(writer).unwrap());

    // The push waits for the write lock until its request times out.
    let (direct, lock, entry) = locked(&store, writer).await;
    client
        .push(writer, vec![entry.clone()])
        .await
        .expect_err("the request timed out while its push waited for the lock");

    // The server stops while that push still waits: it is not down yet.
    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !stopping.is_finished(),
        "the server was down while a push still ran"
    );
    lock.rollback().await.unwrap();
    stopping.await.unwrap().unwrap();

    // Down: the push committed before.
    let pulled = direct.pull(reader, 0, 10, None).await.unwrap();
    let ids: Vec<Uuid> = pulled.entries.iter().map(|p| p.entry.id).collect();
    assert_eq!(
        ids,
        [entry.id],
        "the push committed before the server was down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_refuses_new_connections_while_a_request_finishes() {
    let store = Store::sqlite();
    let server = crate::common::start(&store).await;
    let address = server.local_addr();
    let client = HttpSharedLog::new(&server.url()).unwrap();
    let user = client.create_user(ADMIN, "ann").await.unwrap();
    let writer = client.create_device(&user.token).await.unwrap();

    // A push in flight, waiting for the write lock.
    let (_direct, lock, entry) = locked(&store, writer).await;
    let pushing = tokio::spawn(async move { client.push(writer, vec![entry]).await });
    // Time enough for the push to reach the server on a loaded machine (the lock is held
    // well within the server's 10 s busy timeout).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!stopping.is_finished(), "the push in flight is waited for");
    tokio::net::TcpStream::connect(address)
        .await
        .expect_err("a new connection to a stopping server is refused");

    lock.rollback().await.unwrap();
    pushing
        .await
        .unwrap()
        .expect("the push in flight is answered");
    stopping.await.unwrap().unwrap();
}
