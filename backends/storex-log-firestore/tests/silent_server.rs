//! A Firestore that answers nothing (a stuck proxy, a half-open connection): a call fails as
//! unavailable instead of hanging. Its own test binary, with one test: it points
//! `FIRESTORE_EMULATOR_HOST` of its process at a server that never answers, which would reach
//! the other tests if they shared the process.

use std::time::Instant;

use storex_log_firestore::FirestoreSharedLog;
use storex_sync::{SharedLogError, SharedSyncLog};

/// A server that takes connections and answers nothing (a stuck proxy): a call fails as
/// unavailable once its requests time out and its retry window (twice the request timeout)
/// is over, instead of hanging.
#[tokio::test]
async fn a_server_that_answers_nothing_fails_the_call_instead_of_hanging() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    // This test binary's only test: the variable reaches no other test, whichever runner.
    std::env::set_var("FIRESTORE_EMULATOR_HOST", address.to_string());
    let log = FirestoreSharedLog::connect("silent-project", "silent_")
        .await
        .expect("a client; it connects on its first request")
        .with_request_timeout(std::time::Duration::from_millis(300));
    let started = Instant::now();
    let err = tokio::time::timeout(std::time::Duration::from_secs(30), log.create_device("ann"))
        .await
        .expect("the call ends by itself")
        .expect_err("nothing answers");
    let chain = storex_core::error_chain(&err);
    assert!(matches!(err, SharedLogError::Unavailable { .. }), "{chain}");
    assert!(chain.contains("request timeout"), "{chain}");
    eprintln!("failed after {:?}", started.elapsed());
}
