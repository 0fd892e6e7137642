//! Replies that are not a sync server's (a captive portal, a broken proxy, a hostile host, a
//! frozen server): the client reads no more of a reply than the call can get, waits no longer
//! than the reply it gets takes, does not follow redirects, and fails the call.

#![allow(clippy::unwrap_used)] // helpers of tests: a failed unwrap is a failed test

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use storex_log_http::{ClientOptions, HttpSharedLog};
use storex_sync::{DeviceId, SharedLogError, SharedSyncLog};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A server on 127.0.0.1 that answers every request with `head`, then (when `stream`) zeros
/// until the client goes away; returns its URL and the count of body bytes it sent.
async fn endless_server(head: &'static str, stream: bool) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                if socket.write_all(head.as_bytes()).await.is_err() || !stream {
                    return;
                }
                let zeros = vec![b'0'; 64 * 1024];
                while socket.write_all(&zeros).await.is_ok() {
                    counter.fetch_add(zeros.len() as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (url, sent)
}

/// A server on 127.0.0.1 that reads each request, answers it with `head` (nothing when empty)
/// and then keeps the connection open without sending more; returns its URL.
async fn silent_server(head: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                // Held open, silent, until the client goes away.
                while socket.read(&mut request).await.is_ok_and(|n| n > 0) {}
            });
        }
    });
    url
}

/// A pull that fails because the server's answer, or its reply, never came.
fn assert_timed_out(result: Result<storex_sync::Pull, SharedLogError>, waiting_for: &str) {
    match result {
        Err(SharedLogError::Unavailable { source, .. }) => {
            let message = source.to_string();
            assert!(
                message.contains(waiting_for) && message.contains("did not come"),
                "{message}"
            );
        }
        other => panic!("a silent server does not fail the pull: {other:?}"),
    }
}

fn client(url: &str) -> (HttpSharedLog, DeviceId) {
    client_with(
        url,
        ClientOptions {
            retries: 0,
            ..ClientOptions::default()
        },
    )
}

fn client_with(url: &str, options: ClientOptions) -> (HttpSharedLog, DeviceId) {
    let log = HttpSharedLog::with_options(url, options).unwrap();
    let device = DeviceId::random();
    log.add_device(device, "stx_a-token-of-this-device");
    (log, device)
}

fn assert_too_large(result: Result<storex_sync::Pull, SharedLogError>) {
    match result {
        Err(SharedLogError::Unavailable { source, .. }) => {
            assert!(source.to_string().contains("larger than"), "{source}");
        }
        other => panic!("a reply too large is not refused: {other:?}"),
    }
}

#[tokio::test]
async fn an_endless_reply_is_cut_off_and_the_pull_fails() {
    let (url, sent) = endless_server("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n", true).await;
    let (log, device) = client(&url);
    let pull = tokio::time::timeout(Duration::from_secs(60), log.pull(device, 0, 100, None))
        .await
        .expect("the pull ends");
    assert_too_large(pull);
    // The client stopped reading: the server could send at most what the socket buffers take.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = sent.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sent.load(Ordering::Relaxed), before, "still reading");
    assert!(before < 256 * 1024 * 1024, "{before} bytes read");
}

#[tokio::test]
async fn a_reply_announced_too_large_is_not_read() {
    let head = "HTTP/1.1 200 OK\r\ncontent-length: 4294967296\r\n\r\n";
    let (url, sent) = endless_server(head, true).await;
    let (log, device) = client(&url);
    assert_too_large(log.pull(device, 0, 100, None).await);
    assert!(
        sent.load(Ordering::Relaxed) < 16 * 1024 * 1024,
        "the body was read"
    );
}

/// A pull, with a timeout of a second and no retry, from a server that answers `head` and
/// then falls silent: it must fail, waiting for `waiting_for`, well within 30 s.
async fn assert_pull_from_silent_server_times_out(head: &'static str, waiting_for: &str) {
    let url = silent_server(head).await;
    let options = ClientOptions {
        retries: 0,
        timeout: Duration::from_secs(1),
        ..ClientOptions::default()
    };
    let (log, device) = client_with(&url, options);
    let pull = tokio::time::timeout(Duration::from_secs(30), log.pull(device, 0, 100, None))
        .await
        .expect("the pull gives up well within the time the largest reply would take");
    assert_timed_out(pull, waiting_for);
}

#[tokio::test]
async fn a_server_that_never_answers_fails_a_pull_after_the_timeout_not_after_the_largest_reply() {
    // Before, the pull waited as long as the largest reply it might get takes at the slowest
    // rate (over two minutes with these options) before giving up on the answer.
    assert_pull_from_silent_server_times_out("", "an answer").await;
}

#[tokio::test]
async fn a_reply_that_stops_coming_fails_the_pull_within_the_time_its_size_takes() {
    let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n{\"entries\"";
    assert_pull_from_silent_server_times_out(head, "the rest of the reply").await;
}

#[tokio::test]
async fn a_redirect_is_reported_as_a_wrong_url_and_not_followed() {
    // Where the redirect points: it counts the connections it gets.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}", listener.local_addr().unwrap());
    let reached = Arc::new(AtomicU64::new(0));
    let counter = reached.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let head: &'static str = Box::leak(
        format!(
            "HTTP/1.1 308 Permanent Redirect\r\nlocation: {target}/v1/pull\r\n\
             content-length: 0\r\n\r\n"
        )
        .into_boxed_str(),
    );
    let (url, _) = endless_server(head, false).await;
    let (log, device) = client(&url);
    match log.pull(device, 0, 100, None).await {
        Err(SharedLogError::Invalid { problem }) => {
            assert!(problem.contains("redirects"), "{problem}");
            assert!(problem.contains(&target), "{problem}");
        }
        other => panic!("a redirect is not reported as such: {other:?}"),
    }
    assert_eq!(
        reached.load(Ordering::Relaxed),
        0,
        "the redirect was followed"
    );
}
