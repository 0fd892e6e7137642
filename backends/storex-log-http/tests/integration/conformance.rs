//! HttpSharedLog against a real server on 127.0.0.1 passes the shared-log conformance suite
//! and every end-to-end sync scenario, with the server's log on SQLite and on PostgreSQL; an
//! entry the server's log cannot read reaches the client as passed over.

#![allow(clippy::unwrap_used)] // helpers of tests: a failed unwrap is a failed test

use crate::common;

use common::{factory, start, Provisioned, Store};
use storex_test::{shared_log_suite, sync_scenarios};

async fn suite_on(store: Store) {
    let server = start(&store).await;
    let url = server.url();
    shared_log_suite(|| {
        let url = url.clone();
        async move { Provisioned::new(&url) }
    })
    .await;
    server.shutdown().await.expect("clean shutdown");
}

async fn scenarios_on(store: Store) {
    let server = start(&store).await;
    let make = factory(server.url());
    for (name, scenario) in sync_scenarios::all() {
        eprintln!("scenario: {name}");
        scenario(&make).await;
    }
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_server_passes_the_shared_log_suite() {
    suite_on(Store::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_server_passes_every_sync_scenario() {
    scenarios_on(Store::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_server_passes_the_shared_log_suite() {
    if let Some(store) = Store::postgres().await {
        suite_on(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_server_passes_every_sync_scenario() {
    if let Some(store) = Store::postgres().await {
        scenarios_on(store).await;
    }
}

/// A server run under a role that may read and write rows but not create tables (least
/// privilege) starts on a database set up already, and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_role_cannot_create_tables_starts_on_a_database_set_up_already() {
    use storex_sync::{SharedEntry, SharedSyncLog};
    let Some(store) = Store::postgres().await else {
        return;
    };
    start(&store)
        .await
        .shutdown()
        .await
        .expect("clean shutdown");
    let role = store
        .as_role_without_ddl_rights()
        .await
        .expect("a PostgreSQL store");
    let server = start(&role).await;
    let client = Provisioned::new(&server.url());
    let (a, b) = (
        client.create_device("ann").await.expect("device"),
        client.create_device("ann").await.expect("device"),
    );
    let entry = SharedEntry {
        id: storex_core::uuid::Uuid::now_v7(),
        device: a,
        topic: "note".into(),
        payload: b"1".to_vec(),
    };
    client.push(a, vec![entry]).await.expect("push");
    let pulled = client.pull(b, 0, 10, None).await.expect("pull");
    assert_eq!(pulled.entries.len(), 1);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_the_servers_log_cannot_read_is_passed_over_and_named_to_the_client() {
    use sea_orm::ConnectionTrait;
    use storex_sync::{SharedEntry, SharedSyncLog};
    let store = Store::sqlite();
    let server = start(&store).await;
    let client = Provisioned::new(&server.url());
    let (a, b) = (
        client.create_device("ann").await.unwrap(),
        client.create_device("ann").await.unwrap(),
    );
    let entry = || SharedEntry {
        id: storex_core::uuid::Uuid::now_v7(),
        device: a,
        topic: "note".into(),
        payload: b"x".to_vec(),
    };
    client
        .push(a, vec![entry(), entry(), entry()])
        .await
        .unwrap();
    let db = sea_orm::Database::connect(store.url.as_str())
        .await
        .unwrap();
    db.execute_unprepared(
        r#"UPDATE "storex_shared_entries" SET "device" = 'not a device' WHERE "cursor" = 2"#,
    )
    .await
    .unwrap();
    let cursors = |pull: &storex_sync::Pull| {
        (
            pull.entries.iter().map(|p| p.cursor).collect::<Vec<_>>(),
            pull.unreadable.iter().map(|u| u.cursor).collect::<Vec<_>>(),
        )
    };
    let page = client.pull(b, 0, 10, None).await.unwrap();
    assert_eq!(cursors(&page), (vec![1, 3], vec![2]));
    assert!(page.unreadable[0].problem.contains("device"), "{page:?}");
    assert_eq!((page.next_cursor, page.more), (3, false));
    let page = client.pull(b, 0, 2, None).await.unwrap();
    assert_eq!(cursors(&page), (vec![1], vec![2]));
    assert_eq!((page.next_cursor, page.more), (2, true));
    server.shutdown().await.expect("clean shutdown");
}
