//! Replies lost on the way back: the server did what was asked, the client never heard.
//! Creating a user and registering a device are retried with the token the client made,
//! so the retry gets the same user or device back instead of a conflict or a second one; a
//! registration request the server finishes after the client gave up does not replace the
//! token of a later one.

#![allow(clippy::unwrap_used)] // helpers of tests: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use storex_log_http::{ClientOptions, HttpSharedLog};
use storex_sync::{SharedLogError, SharedSyncLog};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{proxy, start, Store, ADMIN};

/// A TCP proxy on 127.0.0.1 to `target`. While `to_lose` is above zero, a connection's
/// request reaches the server, and the first bytes of the server's reply are read and
/// dropped with the connection (taking one off `to_lose`); other connections pass through.
async fn reply_losing_proxy(target: SocketAddr, to_lose: Arc<AtomicUsize>) -> SocketAddr {
    proxy(target, move |inbound, outbound| {
        let to_lose = to_lose.clone();
        async move {
            let (mut from_client, mut to_client) = inbound.into_split();
            let (mut from_server, mut to_server) = outbound.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
            });
            let mut reply = vec![0; 64 * 1024];
            loop {
                let read = match from_server.read(&mut reply).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => read,
                };
                let lose = to_lose
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                // Dropping both halves closes the client's connection with no answer.
                if lose || to_client.write_all(&reply[..read]).await.is_err() {
                    break;
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_creation_reply_was_lost_is_given_back_on_retry() {
    let store = Store::sqlite();
    let server = start(&store).await;
    let to_lose = Arc::new(AtomicUsize::new(1));
    let proxy = reply_losing_proxy(server.local_addr(), to_lose.clone()).await;
    let options = ClientOptions {
        retries: 3,
        ..ClientOptions::default()
    };
    let client = HttpSharedLog::with_options(&format!("http://{proxy}"), options).unwrap();

    let user = client
        .create_user(ADMIN, "ann")
        .await
        .expect("the retry after the lost reply gets the user");
    assert_eq!(to_lose.load(Ordering::SeqCst), 0, "a reply was lost");
    assert_eq!(user.user, "ann");
    // The token given back is the one the server keeps: it registers devices. (A lost reply
    // there too: the retry registers the same device, with the token the client holds.)
    to_lose.store(1, Ordering::SeqCst);
    let device = client.create_device(&user.token).await.unwrap();
    assert_eq!(to_lose.load(Ordering::SeqCst), 0, "a reply was lost");
    let listed = client.devices(device).await.unwrap();
    assert_eq!(
        listed.iter().map(|d| d.device).collect::<Vec<_>>(),
        [device]
    );

    // A user of that name made by another request (another token) is refused as before.
    let direct = HttpSharedLog::new(&server.url()).unwrap();
    match direct.create_user(ADMIN, "ann").await {
        Err(SharedLogError::Invalid { problem }) => {
            assert!(problem.contains("user_exists"), "{problem}")
        }
        other => panic!("a second user `ann` was not refused: {other:?}"),
    }
    server.shutdown().await.unwrap();
}

/// A TCP proxy on 127.0.0.1 to `target` that takes the request of its first connection and
/// closes that connection unanswered (the client gives up on it at once), then, once
/// `release` is notified, passes the request on and notifies `answered` when the server's
/// reply comes. Other connections pass through.
async fn late_request_proxy(
    target: SocketAddr,
    release: Arc<tokio::sync::Notify>,
    answered: Arc<tokio::sync::Notify>,
) -> SocketAddr {
    let connections = Arc::new(AtomicUsize::new(0));
    proxy(target, move |inbound, outbound| {
        let first = connections.fetch_add(1, Ordering::SeqCst) == 0;
        let (release, answered) = (release.clone(), answered.clone());
        async move {
            let (mut from_client, mut to_client) = inbound.into_split();
            let (mut from_server, mut to_server) = outbound.into_split();
            if !first {
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                });
                let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                return;
            }
            // The request: what comes until the client pauses (it sends a small one at once).
            let mut request = Vec::new();
            let mut buffer = vec![0; 64 * 1024];
            let quiet = std::time::Duration::from_millis(300);
            while let Ok(Ok(read)) =
                tokio::time::timeout(quiet, from_client.read(&mut buffer)).await
            {
                if read == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..read]);
            }
            assert!(!request.is_empty(), "the client sent its request");
            drop((from_client, to_client));
            release.notified().await;
            to_server.write_all(&request).await.unwrap();
            let _ = from_server.read(&mut buffer).await;
            answered.notify_one();
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_the_server_finishes_late_does_not_lock_the_device_out() {
    let store = Store::sqlite();
    let server = start(&store).await;
    let admin = HttpSharedLog::new(&server.url()).unwrap();
    let user = admin.create_user(ADMIN, "ann").await.unwrap();
    let (release, answered) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let proxy = late_request_proxy(server.local_addr(), release.clone(), answered.clone()).await;
    // No retry: the app's second registration, not the client's retry, must reuse the token.
    let options = ClientOptions {
        retries: 0,
        ..ClientOptions::default()
    };
    let client = HttpSharedLog::with_options(&format!("http://{proxy}"), options).unwrap();
    let device = storex_sync::DeviceId::random();

    // The first request is held on the way and its connection closed: the client gives up on
    // it, and the app registers the device again, which is answered.
    let first = client.register_device(&user.token, device).await;
    assert!(
        first.is_err(),
        "the held registration was answered: {first:?}"
    );
    client
        .register_device(&user.token, device)
        .await
        .expect("the second registration");
    // Now the first request reaches the server.
    release.notify_one();
    answered.notified().await;

    let listed = client
        .devices(device)
        .await
        .expect("the device's token still works");
    assert_eq!(
        listed.iter().map(|d| d.device).collect::<Vec<_>>(),
        [device]
    );
    server.shutdown().await.unwrap();
}
