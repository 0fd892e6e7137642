//! The request-body budget of the sync server: requests whose bodies the server or their
//! user cannot hold at once are answered `busy` (503 for the server, 429 for a user) with
//! `Retry-After`, clients try again and get through once the bodies in flight are done, and a
//! request gives its share back however it ends. Bodies are held open with raw connections
//! that announce a length and send only its start.

#![allow(clippy::unwrap_used)] // helpers of tests: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use storex_core::uuid::Uuid;
use storex_log_http::{HttpSharedLog, RunningServer, SyncServer};
use storex_sync::{DeviceId, SharedEntry, SharedSyncLog};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{config, metric, Store, ADMIN};

const KIB: usize = 1024;

/// A server whose bodies are at most 64 KiB, holding at most `total` bytes of them at once
/// and `per_user` for each user.
async fn server(store: &Store, total: usize, per_user: usize) -> RunningServer {
    let mut config = config(store);
    config.max_body_bytes = 64 * KIB;
    config.max_buffered_bytes = total;
    config.max_buffered_bytes_per_user = per_user;
    SyncServer::start(config).await.unwrap()
}

/// A new user with one device: its user token, device and device token.
async fn account(log: &HttpSharedLog, name: &str) -> (String, DeviceId, String) {
    let user = log.create_user(ADMIN, name).await.unwrap();
    let device = log.create_device(&user.token).await.unwrap();
    (user.token, device, log.device_token(device).unwrap())
}

/// A push whose body announces `announced` bytes and sends only its first few, so that the
/// server holds its share until the connection closes.
async fn hold_a_push(addr: SocketAddr, token: &str, announced: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/push HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {announced}\r\n\r\n{{\"entries\":["
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// An entry of `device` whose payload has `bytes` bytes.
fn entry(device: DeviceId, bytes: usize) -> SharedEntry {
    SharedEntry {
        id: Uuid::now_v7(),
        device,
        topic: "note".into(),
        payload: vec![7; bytes],
    }
}

/// The JSON body of a push of one entry of `device` with a payload of `bytes` bytes.
fn push_body(device: DeviceId, bytes: usize) -> String {
    let payload = "QUFB".repeat(bytes / 3);
    json!({"entries": [{"id": Uuid::now_v7(), "device": device.0, "topic": "note", "payload": payload}]})
        .to_string()
}

/// Posts a push of `body` with `token`: the status, the JSON error code if any, and the
/// `Retry-After` header.
async fn post_push(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: String,
) -> (StatusCode, String, Option<String>) {
    let response = http
        .post(format!("{url}/v1/push"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let reply: Value = response.json().await.unwrap_or(Value::Null);
    let code = reply["error"]["code"].as_str().unwrap_or("").to_owned();
    (status, code, retry_after)
}

/// Pulls after `after` with `token`, asking for at most `max_bytes` of payload: the status
/// and the reply.
async fn pull_reply(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    after: u64,
    max_bytes: u64,
) -> (StatusCode, Value) {
    let response = http
        .post(format!("{url}/v1/pull"))
        .bearer_auth(token)
        .json(&json!({"after": after, "limit": 100, "max_bytes": max_bytes}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// [`pull_reply`] from the start: the status and the JSON error code, if any.
async fn post_pull(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    max_bytes: u64,
) -> (StatusCode, String) {
    let (status, reply) = pull_reply(http, url, token, 0, max_bytes).await;
    let code = reply["error"]["code"].as_str().unwrap_or("").to_owned();
    (status, code)
}

/// Waits until `/metrics` shows `name` at `value`.
async fn until_metric(http: &reqwest::Client, url: &str, name: &str, value: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = metric(http, url, name).await;
        if now == value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {now}, not {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_server_holding_all_the_bodies_it_takes_answers_busy_until_they_are_done() {
    let store = Store::sqlite();
    let server = server(&store, 100 * KIB, 32 * 1024 * KIB).await;
    let url = server.url();
    let http = reqwest::Client::new();
    let log = HttpSharedLog::new(&url).unwrap();
    let (_, _, ann) = account(&log, "ann").await;
    let (bob_user, bob_device, bob) = account(&log, "bob").await;

    let held = hold_a_push(server.local_addr(), &ann, 60_000).await;
    until_metric(&http, &url, "storex_http_buffered_bytes", 60_000).await;
    // 50 kB more would pass the 100 KiB: refused after the wait, to be tried again.
    let (status, code, retry_after) =
        post_push(&http, &url, &bob, push_body(bob_device, 36_000)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code, "busy");
    assert_eq!(retry_after.as_deref(), Some("2"));
    assert_eq!(metric(&http, &url, "storex_http_busy_total").await, 1);
    // What fits beside the held body goes through.
    let (status, _, _) = post_push(&http, &url, &bob, push_body(bob_device, 300)).await;
    assert_eq!(status, StatusCode::OK);
    // A made-up token takes no share: it is refused as unauthorized, not as busy.
    let (status, _, _) = post_push(&http, &url, "made-up", push_body(bob_device, 36_000)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(metric(&http, &url, "storex_http_busy_total").await, 1);
    assert_eq!(
        metric(&http, &url, "storex_http_buffered_bytes").await,
        60_000
    );
    // A pull's page counts too: one that may bring 48 kB waits, then is told to come back;
    // a small one goes.
    let (status, code) = post_pull(&http, &url, &bob, 48_000).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "busy")
    );
    let (status, _) = post_pull(&http, &url, &bob, 1_000).await;
    assert_eq!(status, StatusCode::OK);

    // The client tries again after the `Retry-After`, and gets through once the held body's
    // connection is gone and its share given back.
    let pushing = {
        let log = HttpSharedLog::new(&url).unwrap();
        log.add_device(bob_device, &bob);
        tokio::spawn(async move { log.push(bob_device, vec![entry(bob_device, 36_000)]).await })
    };
    // The raw push and the pull above were refused: the client's first try is the third.
    until_metric(&http, &url, "storex_http_busy_total", 3).await;
    drop(held);
    until_metric(&http, &url, "storex_http_buffered_bytes", 0).await;
    let cursor = pushing
        .await
        .unwrap()
        .expect("pushed once the server had room");
    assert!(cursor > 0);
    assert_eq!(metric(&http, &url, "storex_entries").await, 2);
    // An entry larger than the page asked for comes alone, with the share it needs: the
    // 300-byte note first, then the 36 kB one, whose reply passes the page's estimate.
    let bob_laptop = log.create_device(&bob_user).await.unwrap();
    let laptop_token = log.device_token(bob_laptop).unwrap();
    let (status, first) = pull_reply(&http, &url, &laptop_token, 0, 1).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let after = first["next_cursor"].as_u64().unwrap();
    let (status, reply) = pull_reply(&http, &url, &laptop_token, after, 1).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let payload = reply["entries"][0]["entry"]["payload"]
        .as_str()
        .unwrap_or("");
    assert_eq!(payload.len(), 48_000, "{reply}");
    until_metric(&http, &url, "storex_http_buffered_bytes", 0).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_user_holding_its_share_is_answered_busy_at_once_and_other_users_go_on() {
    let store = Store::sqlite();
    let server = server(&store, 1024 * KIB, 100 * KIB).await;
    let url = server.url();
    let http = reqwest::Client::new();
    let log = HttpSharedLog::new(&url).unwrap();
    let (ann_user, _, ann) = account(&log, "ann").await;
    let ann_laptop = log.create_device(&ann_user).await.unwrap();
    let ann_laptop_token = log.device_token(ann_laptop).unwrap();
    let (_, bob_device, bob) = account(&log, "bob").await;

    let held = hold_a_push(server.local_addr(), &ann, 60_000).await;
    until_metric(&http, &url, "storex_http_buffered_bytes", 60_000).await;
    // Ann's other device shares her budget: another device does not widen it.
    let body = push_body(ann_laptop, 36_000);
    let (status, code, retry_after) = post_push(&http, &url, &ann_laptop_token, body).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(code, "busy");
    assert_eq!(retry_after.as_deref(), Some("2"));
    // Bob has a share of his own.
    let (status, _, _) = post_push(&http, &url, &bob, push_body(bob_device, 36_000)).await;
    assert_eq!(status, StatusCode::OK);

    drop(held);
    until_metric(&http, &url, "storex_http_buffered_bytes", 0).await;
    let body = push_body(ann_laptop, 36_000);
    let (status, _, _) = post_push(&http, &url, &ann_laptop_token, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(metric(&http, &url, "storex_http_busy_total").await, 1);
    server.shutdown().await.unwrap();
}

/// Starts a long poll of `token` after `after`, asking for pages of up to 192 KiB.
fn long_poll(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    after: u64,
) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let request = http
        .post(format!("{url}/v1/pull"))
        .bearer_auth(token)
        .json(&json!({"after": after, "limit": 100, "max_bytes": 192 * KIB, "wait_ms": 20_000}));
    tokio::spawn(async move {
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

/// The JSON body of a push of entries of `device` with payloads of `sizes` bytes.
fn push_of(device: DeviceId, sizes: &[usize]) -> String {
    let entries: Vec<Value> = sizes
        .iter()
        .map(|size| {
            json!({"id": Uuid::now_v7(), "device": device.0, "topic": "note",
                   "payload": "QUFB".repeat(size / 3)})
        })
        .collect();
    json!({ "entries": entries }).to_string()
}

/// A push wakes all of its user's waiting devices at once: each reads a small page, with a
/// share to match, so that many of them fit in the user's budget together; a device woken to
/// more than that page is told there is more. A first read the user has no room for reads
/// such a page too.
#[tokio::test]
async fn waiting_devices_woken_together_fit_in_their_users_budget() {
    let store = Store::sqlite();
    let mut config = config(&store);
    // A page asked of up to 192 KiB reserves 256 KiB; a wake-up, about 57 KiB.
    config.max_body_bytes = 256 * KIB;
    config.max_buffered_bytes = 4096 * KIB;
    config.max_buffered_bytes_per_user = 450_000;
    let server = SyncServer::start(config).await.unwrap();
    let url = server.url();
    let http = reqwest::Client::new();
    let log = HttpSharedLog::new(&url).unwrap();
    let (ann_user, ann_phone, ann) = account(&log, "ann").await;
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let device = log.create_device(&ann_user).await.unwrap();
        waiting.push(log.device_token(device).unwrap());
    }
    // Started together: a first read that finds too little of ann's budget left for a
    // page's share (two take 512 KiB) reads a wake-up's page instead.
    let polls: Vec<_> = waiting
        .iter()
        .map(|token| long_poll(&http, &url, token, 0))
        .collect();
    until_metric(&http, &url, "storex_http_waiting_pulls", 3).await;
    // Ann holds 250,000 bytes of her budget: 200,000 are left, too few for one page's share,
    // enough for three wake-ups'.
    let held = hold_a_push(server.local_addr(), &ann, 250_000).await;
    until_metric(&http, &url, "storex_http_buffered_bytes", 250_000).await;
    let (status, _, _) = post_push(&http, &url, &ann, push_of(ann_phone, &[300])).await;
    assert_eq!(status, StatusCode::OK);
    let mut after = 0;
    for poll in polls {
        let (status, reply) = poll.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(reply["entries"].as_array().unwrap().len(), 1, "{reply}");
        assert_eq!(reply["more"], false, "{reply}");
        after = reply["next_cursor"].as_u64().unwrap();
    }
    // So does a plain pull while she holds them.
    let (status, reply) = pull_reply(&http, &url, &waiting[0], 0, 192 * 1024).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["entries"].as_array().unwrap().len(), 1, "{reply}");
    assert_eq!(metric(&http, &url, "storex_http_busy_total").await, 0);
    drop(held);
    until_metric(&http, &url, "storex_http_buffered_bytes", 0).await;

    // Woken to more than a wake-up's page: the first entries, and `more`.
    let poll = long_poll(&http, &url, &waiting[0], after);
    until_metric(&http, &url, "storex_http_waiting_pulls", 1).await;
    let body = push_of(ann_phone, &[20_000, 20_000, 20_000]);
    let (status, _, _) = post_push(&http, &url, &ann, body).await;
    assert_eq!(status, StatusCode::OK);
    let (status, reply) = poll.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["entries"].as_array().unwrap().len(), 1, "{reply}");
    assert_eq!(reply["more"], true, "{reply}");
    let next = reply["next_cursor"].as_u64().unwrap();
    let (status, reply) = pull_reply(&http, &url, &waiting[0], next, 192 * 1024).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["entries"].as_array().unwrap().len(), 2, "{reply}");
    assert_eq!(metric(&http, &url, "storex_http_waiting_pulls").await, 0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_large_body_refused_as_busy_is_read_so_that_its_client_gets_the_answer() {
    let store = Store::sqlite();
    let mut config = config(&store);
    config.max_buffered_bytes = config.max_body_bytes;
    let server = SyncServer::start(config).await.unwrap();
    let url = server.url();
    let http = reqwest::Client::new();
    let log = HttpSharedLog::new(&url).unwrap();
    let (_, _, ann) = account(&log, "ann").await;
    let (_, bob_device, bob) = account(&log, "bob").await;
    let held = hold_a_push(server.local_addr(), &ann, 2 * 1024 * KIB).await;
    until_metric(&http, &url, "storex_http_buffered_bytes", 2 * 1024 * 1024).await;
    // 7 MB, more than the loopback's socket buffers take, sent by hand: the server reads it
    // all (and drops it) after refusing it, so the client can send the whole of it and read
    // the answer; unread, the server's close would cut the client's sending short with a
    // reset, which on a real network can also discard the answer.
    let body = push_body(bob_device, 5 * 1024 * KIB);
    assert!(body.len() > 6 * 1024 * KIB);
    let addr = server.local_addr();
    let head = format!(
        "POST /v1/push HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {bob}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let (mut reader, mut writer) = TcpStream::connect(addr).await.unwrap().into_split();
    let sending = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(body.as_bytes()).await?;
        writer.flush().await?;
        Ok::<_, std::io::Error>(writer)
    });
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = reader.read(&mut buffer).await.unwrap();
        assert!(read > 0, "the server closed before answering");
        answer.extend_from_slice(&buffer[..read]);
    }
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 2"), "{answer}");
    let sent = tokio::time::timeout(Duration::from_secs(20), sending)
        .await
        .expect("the body was taken in time")
        .unwrap();
    assert!(sent.is_ok(), "the whole body was taken: {sent:?}");
    drop(held);
    server.shutdown().await.unwrap();
}

/// A server with a write timeout of 1 s, where a device of ann's pushed entries of `sizes`
/// bytes: the server and the token of another device of ann's.
async fn write_timeout_server(store: &Store, sizes: &[usize]) -> (RunningServer, String) {
    let mut config = config(store);
    config.write_timeout = Duration::from_secs(1);
    let server = SyncServer::start(config).await.unwrap();
    let log = HttpSharedLog::new(&server.url()).unwrap();
    let (user, phone, _) = account(&log, "ann").await;
    let laptop = log.create_device(&user).await.unwrap();
    let laptop_token = log.device_token(laptop).unwrap();
    let entries = sizes.iter().map(|size| entry(phone, *size)).collect();
    log.push(phone, entries).await.unwrap();
    (server, laptop_token)
}

/// Sends by hand on `stream` a pull from the start of up to 6 MiB of payload.
async fn send_pull(stream: &mut TcpStream, addr: SocketAddr, token: &str) {
    let body = json!({"after": 0, "limit": 100, "max_bytes": 6 * 1024 * KIB}).to_string();
    let head = format!(
        "POST /v1/pull HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
}

#[tokio::test]
async fn a_reply_its_client_does_not_read_gives_its_share_back_after_the_write_timeout() {
    let store = Store::sqlite();
    let (server, laptop_token) = write_timeout_server(&store, &[1024 * KIB; 6]).await;
    let url = server.url();
    let http = reqwest::Client::new();

    // A pull of about 8 MB of reply, more than the loopback's socket buffers hold with a
    // receive buffer this small, by a client that then reads nothing.
    let addr = server.local_addr();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4 * KIB as u32).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    send_pull(&mut stream, addr, &laptop_token).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while metric(&http, &url, "storex_http_buffered_bytes").await < 1024 * 1024 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reply was never held"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The reply stalls with most of it unsent; a second after its client last took any of
    // it, the connection is closed and the reply's share given back.
    until_metric(&http, &url, "storex_http_buffered_bytes", 0).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut received))
        .await
        .expect("the connection was closed");
    assert!(
        read.is_err() || received.len() < 8 * 1024 * KIB,
        "the reply was cut short: {} bytes",
        received.len()
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_slow_client_that_goes_on_reading_gets_its_whole_reply_past_the_write_timeout() {
    let store = Store::sqlite();
    let (server, laptop_token) = write_timeout_server(&store, &[3 * 1024 * KIB]).await;

    // About 4 MB of reply, read 16 KiB every 50 ms: some 13 s in all, far past the write
    // timeout, but never a second without taking some of it.
    let addr = server.local_addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    send_pull(&mut stream, addr, &laptop_token).await;
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 16 * KIB];
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match stream.read(&mut buffer).await {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) => panic!("cut off after {} bytes: {e}", received.len()),
        }
    }
    let text = String::from_utf8_lossy(&received).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a reply head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_lowercase()
                .strip_prefix("content-length: ")?
                .parse()
                .ok()
        })
        .expect("a content length");
    assert!(
        length > 4 * 1024 * KIB,
        "the 3 MiB entry in base64: {length}"
    );
    assert_eq!(body.len(), length, "the whole reply came");
    assert!(
        body.ends_with("\"more\":false}"),
        "{}",
        &body[body.len() - 40..]
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_budget_smaller_than_one_body_is_refused_at_start() {
    let store = Store::sqlite();
    let mut config = config(&store);
    config.max_body_bytes = 64 * KIB;
    config.max_buffered_bytes_per_user = 32 * KIB;
    let refused = SyncServer::start(config)
        .await
        .expect_err("cannot hold one body");
    assert!(
        refused.to_string().contains("max_buffered_bytes_per_user")
            || format!("{refused:?}").contains("max_buffered_bytes_per_user"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_waiting_pulls_topics_hold_what_they_take_not_the_body_they_came_in() {
    let store = Store::sqlite();
    let server = SyncServer::start(config(&store)).await.unwrap();
    let url = server.url();
    let http = reqwest::Client::new();
    let log = HttpSharedLog::new(&url).unwrap();
    let (_, _, ann) = account(&log, "ann").await;
    // Short topics: each takes a `String` on the server, more than its few bytes of JSON.
    let topics: Vec<String> = (0..storex_log_http::api::MAX_PULL_TOPICS)
        .map(|n| n.to_string())
        .collect();
    let takes: usize = topics
        .iter()
        .map(|t| t.len() + std::mem::size_of::<String>())
        .sum();
    let body = json!({"after": 0, "limit": 10, "topics": topics, "wait_ms": 20_000});
    assert!(body.to_string().len() < takes / 2);
    let request = http
        .post(format!("{url}/v1/pull"))
        .bearer_auth(&ann)
        .json(&body);
    let poll = tokio::spawn(async move { request.send().await.map(|r| r.status()) });
    until_metric(&http, &url, "storex_http_waiting_pulls", 1).await;
    let held = metric(&http, &url, "storex_http_buffered_bytes").await;
    assert_eq!(held, takes as u64);
    poll.abort();
}
