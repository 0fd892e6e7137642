//! FirestoreSharedLog passes the shared-log conformance suite and every end-to-end sync
//! scenario against the Firestore emulator started by scripts/services.sh.

use crate::common;

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use storex_sync::SharedSyncLog;
use storex_test::{shared_log_suite, sync_scenarios};

#[tokio::test]
async fn firestore_passes_the_shared_log_suite() {
    let Some(project) = common::emulator_project() else {
        return;
    };
    shared_log_suite(|| common::fresh_log(&project)).await;
}

#[tokio::test]
async fn firestore_passes_every_sync_scenario() {
    let Some(project) = common::emulator_project() else {
        return;
    };
    let make = move || -> BoxFuture<'static, Arc<dyn SharedSyncLog>> {
        let project = project.clone();
        async move { Arc::new(common::fresh_log(&project).await) as Arc<dyn SharedSyncLog> }.boxed()
    };
    for (name, scenario) in sync_scenarios::all() {
        eprintln!("scenario: {name}");
        scenario(&make).await;
    }
}
