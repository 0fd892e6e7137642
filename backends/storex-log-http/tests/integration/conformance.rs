//! HttpSharedLog against a real server on 127.0.0.1 passes the shared-log conformance suite
//! and every end-to-end sync scenario, with the server's log on SQLite and on PostgreSQL.

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
