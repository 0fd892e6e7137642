//! A slow link: pushes and pulls larger than the client's timeout allows at full speed go
//! through, as each request's timeout allows for its size at the slowest rate configured,
//! and pulls ask the server for no more than the client can fetch in that time (a server
//! from before they could is asked without).

#![allow(clippy::unwrap_used)] // helpers of tests: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use storex_core::uuid::Uuid;
use storex_log_http::{ClientOptions, HttpSharedLog, RunningServer, SyncServer};
use storex_sync::{DeviceId, SharedEntry, SharedLogError, SharedSyncLog};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::{config, proxy, start, Store, ADMIN};

/// A TCP proxy on 127.0.0.1 to `target` that forwards at most `rate` bytes a second each way,
/// counting in `sent` the bytes it forwards from the client.
async fn throttled_proxy(target: SocketAddr, rate: usize, sent: Arc<AtomicUsize>) -> SocketAddr {
    proxy(target, move |inbound, outbound| {
        let sent = sent.clone();
        async move {
            let (from_client, to_client) = inbound.into_split();
            let (from_server, to_server) = outbound.into_split();
            tokio::spawn(pump(from_client, to_server, rate, sent));
            pump(from_server, to_client, rate, Arc::default()).await;
        }
    })
    .await
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rate: usize,
    forwarded: Arc<AtomicUsize>,
) {
    let mut buffer = vec![0; rate / 20];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
        forwarded.fetch_add(read, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(read as f64 / rate as f64)).await;
    }
    let _ = to.shutdown().await;
}

fn entry(device: DeviceId, size: usize) -> SharedEntry {
    SharedEntry {
        id: Uuid::now_v7(),
        device,
        topic: "note".into(),
        payload: vec![7; size],
    }
}

/// A server, a client of it through a link of 200 kB/s each way with `options`, and two
/// devices of one user made through that client.
struct SlowLink {
    server: RunningServer,
    client: HttpSharedLog,
    a: DeviceId,
    b: DeviceId,
    /// The bytes the client sent through the link so far.
    sent: Arc<AtomicUsize>,
    _store: Store,
}

impl SlowLink {
    async fn new(options: ClientOptions) -> Self {
        let store = Store::sqlite();
        let server = start(&store).await;
        Self::on(server, store, options).await
    }

    /// The same, on a server of `store` already started.
    async fn on(server: RunningServer, store: Store, options: ClientOptions) -> Self {
        let sent = Arc::new(AtomicUsize::new(0));
        let proxy = throttled_proxy(server.local_addr(), 200_000, sent.clone()).await;
        let client = HttpSharedLog::with_options(&format!("http://{proxy}"), options).unwrap();
        let user = client.create_user(ADMIN, "ann").await.unwrap();
        let a = client.create_device(&user.token).await.unwrap();
        let b = client.create_device(&user.token).await.unwrap();
        SlowLink {
            server,
            client,
            a,
            b,
            sent,
            _store: store,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pushes_and_pulls_on_a_slow_link_go_through() {
    // The client works down to 100 kB/s, with a 1 s timeout that a request of a megabyte
    // exceeds many times over at the link's speed.
    let SlowLink {
        server,
        client: slow,
        a,
        b,
        _store,
        ..
    } = SlowLink::new(ClientOptions {
        timeout: Duration::from_secs(1),
        retries: 1,
        min_bytes_per_second: 100_000,
        ..ClientOptions::default()
    })
    .await;

    // About 1.2 MB of request: 6 s at the link's speed.
    let entries: Vec<SharedEntry> = (0..3).map(|_| entry(a, 300_000)).collect();
    slow.push(a, entries).await.expect("the push goes through");
    // The same back: a reply of about 1.2 MB.
    let pulled = slow
        .pull(b, 0, 100, None)
        .await
        .expect("the pull goes through");
    assert_eq!(pulled.entries.len(), 3, "{:?}", pulled.next_cursor);
    assert!(!pulled.more);

    // A client that asks for less gets pages of that many payload bytes (at least an entry).
    let options = ClientOptions {
        max_pull_bytes: 400_000,
        ..ClientOptions::default()
    };
    let small_pages = HttpSharedLog::with_options(&server.url(), options).unwrap();
    small_pages.add_device(b, slow.device_token(b).unwrap());
    let mut after = 0;
    let mut pages = Vec::new();
    loop {
        let pull = small_pages.pull(b, after, 100, None).await.unwrap();
        pages.push(pull.entries.len());
        after = pull.next_cursor;
        if !pull.more {
            break;
        }
    }
    assert_eq!(pages, vec![1, 1, 1], "one entry of 300 kB a page");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_times_out_on_a_link_slower_than_told_goes_in_halves() {
    // The client is told of a fast link: its requests get no time for their size. It retries
    // a failed request 6 times (the default), but not one it can split.
    let SlowLink {
        server,
        client: slow,
        a,
        b,
        sent,
        _store,
    } = SlowLink::new(ClientOptions {
        timeout: Duration::from_millis(300),
        min_bytes_per_second: 100_000_000,
        ..ClientOptions::default()
    })
    .await;
    // About 160 kB of request, 0.8 s at the link's speed.
    let entries: Vec<SharedEntry> = (0..12).map(|_| entry(a, 10_000)).collect();
    let before = sent.load(Ordering::Relaxed);
    slow.push(a, entries)
        .await
        .expect("the push goes through in parts");
    // Each timeout costs about 0.3 s of the link (60 kB and what the buffers took): the 12
    // entries time out, then their halves, then maybe some quarters, and the parts that go
    // through take 160 kB: about 0.5 MB in all. Sending each request that timed out 7 times
    // took 2.4 MB.
    let pushed = sent.load(Ordering::Relaxed) - before;
    assert!(pushed < 1_200_000, "{pushed} bytes sent for 160 kB");
    let direct = HttpSharedLog::new(&server.url()).unwrap();
    direct.add_device(b, slow.device_token(b).unwrap());
    let pulled = direct.pull(b, 0, 100, None).await.unwrap();
    assert_eq!(pulled.entries.len(), 12, "each once");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_entry_beyond_what_the_slowest_link_carries_in_time_is_refused_alone_after_a_timeout() {
    // The server answers 408 after 0.4 s; the entry takes 1 s at the link's speed, and more
    // than the client's budget (30 s at 1 kB/s: 30 kB) at the slowest it was told of.
    let store = Store::sqlite();
    let mut settings = config(&store);
    settings.max_wait = Duration::from_millis(100);
    settings.request_timeout = Duration::from_millis(400);
    let server = SyncServer::start(settings).await.unwrap();
    let SlowLink {
        server,
        client: slow,
        a,
        b,
        sent,
        _store,
    } = SlowLink::on(
        server,
        store,
        ClientOptions {
            min_bytes_per_second: 1_000,
            ..ClientOptions::default()
        },
    )
    .await;
    let before = sent.load(Ordering::Relaxed);
    let (first, large, last) = (entry(a, 100), entry(a, 150_000), entry(a, 100));
    let (large_id, last_id) = (large.id, last.id);
    let refused = slow
        .push(a, vec![first, large, last])
        .await
        .expect_err("the server times the request out");
    // One try is about 0.4 s of the link (80 kB and what the buffers took); sent again 6 times
    // (the default retries) it took 620 kB when measured.
    let pushed = sent.load(Ordering::Relaxed) - before;
    assert!(pushed < 250_000, "{pushed} bytes sent for one try");
    // Refused alone: the entry before it was stored, the one after it given back unsent.
    match refused {
        SharedLogError::EntryRefused {
            id,
            problem,
            unsent,
        } => {
            assert_eq!(id, large_id, "{problem}");
            assert!(problem.contains("1000 bytes a second"), "{problem}");
            assert_eq!(unsent.iter().map(|e| e.id).collect::<Vec<_>>(), [last_id]);
        }
        other => panic!("not refused alone: {other}"),
    }
    let pulled = slow.pull(b, 0, 100, None).await.unwrap();
    assert_eq!(pulled.entries.len(), 1, "the entry before");
    // Another such entry, for a while, is refused without being sent; a small one goes. (What
    // the link still held of the first try is let through first.)
    let before = settled(&sent).await;
    let (another, small) = (entry(a, 150_000), entry(a, 100));
    let another_id = another.id;
    match slow.push(a, vec![another, small]).await {
        Err(SharedLogError::EntryRefused {
            id,
            problem,
            unsent,
        }) => {
            assert_eq!(id, another_id, "{problem}");
            assert!(problem.contains("timed out on this link"), "{problem}");
            slow.push(a, unsent).await.expect("the small one goes");
        }
        other => panic!("not refused alone: {other:?}"),
    }
    // A try of the large entry would cost at least the 80 kB the link carries in 0.4 s.
    let pushed = sent.load(Ordering::Relaxed) - before;
    assert!(pushed < 40_000, "{pushed} bytes sent for the small entry");
    let pulled = slow.pull(b, 0, 100, None).await.unwrap();
    assert_eq!(pulled.entries.len(), 2);
    server.shutdown().await.unwrap();
}

/// The count of `sent` once it has not moved for 200 ms (within 10 s).
async fn settled(sent: &AtomicUsize) -> usize {
    let mut last = sent.load(Ordering::Relaxed);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = sent.load(Ordering::Relaxed);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the link still carries bytes after 10 s");
}

/// A server from before pulls could name `max_bytes`: it refuses unknown fields, as the
/// server does, and otherwise answers every pull with an empty page. Counts the pulls.
async fn server_without_max_bytes() -> (SocketAddr, std::sync::Arc<AtomicUsize>) {
    let page = serde_json::json!({ "entries": [], "next_cursor": 0, "more": false });
    let refusal = "unknown field `max_bytes`, expected one of `after`, `limit`, `topics`, \
                   `wait_ms`";
    server_without("max_bytes", refusal, ("200 OK", page)).await
}

/// A server from before requests could carry `field`: it refuses a request naming it with
/// `refusal` (422 `invalid_request`, as the server refuses unknown fields), and answers any
/// other with `answer` (status line and body). Counts the requests.
async fn server_without(
    field: &'static str,
    refusal: &'static str,
    answer: (&'static str, serde_json::Value),
) -> (SocketAddr, std::sync::Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let pulls = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = pulls.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (counted, answer) = (counted.clone(), answer.clone());
            tokio::spawn(async move {
                let mut read = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    // One request: its head, then as many body bytes as it announces.
                    let Some(head_end) = read.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read.extend_from_slice(&buffer[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&read[..head_end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|n| n.trim().parse().ok())
                        .unwrap_or(0);
                    let end = head_end + 4 + length;
                    if read.len() < end {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read.extend_from_slice(&buffer[..n]),
                        }
                        continue;
                    }
                    let body = String::from_utf8_lossy(&read[head_end + 4..end]).into_owned();
                    read.drain(..end);
                    counted.fetch_add(1, Ordering::SeqCst);
                    let (status, reply) = if body.contains(&format!("\"{field}\"")) {
                        let error = serde_json::json!({
                            "error": { "code": "invalid_request", "message": refusal }
                        });
                        ("422 Unprocessable Entity", error.to_string())
                    } else {
                        (answer.0, answer.1.to_string())
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\n\r\n{reply}",
                        reply.len()
                    );
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, pulls)
}

#[tokio::test]
async fn a_server_from_before_max_bytes_is_asked_without_it() {
    let (address, pulls) = server_without_max_bytes().await;
    let log = HttpSharedLog::new(&format!("http://{address}")).unwrap();
    let device = DeviceId::random();
    log.add_device(device, "a-device-token");
    let pull = log
        .pull(device, 0, 100, None)
        .await
        .expect("pulled without it");
    assert!(pull.entries.is_empty() && !pull.more);
    assert_eq!(
        pulls.load(Ordering::SeqCst),
        2,
        "refused once, then without"
    );
    log.pull(device, 0, 100, None).await.expect("again");
    assert_eq!(pulls.load(Ordering::SeqCst), 3, "not asked with it again");
}

#[tokio::test]
async fn a_server_from_before_clients_chose_user_tokens_is_asked_without_one() {
    let credentials = serde_json::json!({ "user": "ann", "token": "made-by-the-server" });
    let refusal = "unknown field `token`, expected `name`";
    let (address, requests) = server_without("token", refusal, ("201 Created", credentials)).await;
    let log = HttpSharedLog::new(&format!("http://{address}")).unwrap();
    let user = log
        .create_user(ADMIN, "ann")
        .await
        .expect("created without");
    assert_eq!(user.token, "made-by-the-server");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "refused once, then without"
    );
}
