//! Replies that are not a sync server's (a captive portal, a broken proxy, a hostile host):
//! the client reads no more of a reply than the call can get, and fails the call.

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

fn client(url: &str) -> (HttpSharedLog, DeviceId) {
    let options = ClientOptions {
        retries: 0,
        ..ClientOptions::default()
    };
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
