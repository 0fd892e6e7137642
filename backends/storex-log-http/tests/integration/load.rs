//! The sync server under load: many devices pushing and pulling at once, a server restart in
//! the middle of it, and live updates reaching a waiting device without its timer. Each test
//! prints what it measured (requests/s, p99 latency, wake-up delay); none asserts a speed,
//! apart from the bound of one second for a live update.

#![allow(clippy::unwrap_used)] // helpers of tests: a failed unwrap is a failed test

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{config, Store, ADMIN};
use storex_core::{object, BoxFuture, Filter, MemoryBackend, StorageBackend};
use storex_log_http::{HttpSharedLog, SyncServer};
use storex_sync::{
    Clock, ContinuousOptions, ContinuousSync, DeviceId, DeviceInfo, Pull, SharedEntry,
    SharedResult, SharedSyncLog, SyncDevice, SyncOptions,
};

/// Records the latency of every call to the log it wraps.
#[derive(Debug)]
struct Timed {
    inner: HttpSharedLog,
    latencies: Arc<Mutex<Vec<Duration>>>,
}

impl Timed {
    fn time<'a, T: Send + 'a>(
        &'a self,
        call: BoxFuture<'a, SharedResult<T>>,
    ) -> BoxFuture<'a, SharedResult<T>> {
        Box::pin(async move {
            let start = Instant::now();
            let result = call.await;
            self.latencies.lock().unwrap().push(start.elapsed());
            result
        })
    }
}

impl SharedSyncLog for Timed {
    fn name(&self) -> &'static str {
        "http (timed)"
    }
    fn register_device<'a>(
        &'a self,
        user: &'a str,
        device: DeviceId,
    ) -> BoxFuture<'a, SharedResult<()>> {
        self.time(self.inner.register_device(user, device))
    }
    fn devices(&self, device: DeviceId) -> BoxFuture<'_, SharedResult<Vec<DeviceInfo>>> {
        self.time(self.inner.devices(device))
    }
    fn push(
        &self,
        device: DeviceId,
        entries: Vec<SharedEntry>,
    ) -> BoxFuture<'_, SharedResult<u64>> {
        self.time(self.inner.push(device, entries))
    }
    fn pull<'a>(
        &'a self,
        device: DeviceId,
        after: u64,
        limit: usize,
        topics: Option<&'a [String]>,
    ) -> BoxFuture<'a, SharedResult<Pull>> {
        self.time(self.inner.pull(device, after, limit, topics))
    }
    fn ack(&self, device: DeviceId, cursor: u64) -> BoxFuture<'_, SharedResult<()>> {
        self.time(self.inner.ack(device, cursor))
    }
    fn compact<'a>(&'a self, user: &'a str) -> BoxFuture<'a, SharedResult<u64>> {
        self.time(self.inner.compact(user))
    }
}

/// A device on MemoryBackend with its own client of the server.
async fn device(
    url: &str,
    user_token: &str,
    latencies: &Arc<Mutex<Vec<Duration>>>,
) -> ContinuousSync {
    device_and_token(url, user_token, latencies).await.0
}

/// A device, and the device token its client received.
async fn device_and_token(
    url: &str,
    user_token: &str,
    latencies: &Arc<Mutex<Vec<Duration>>>,
) -> (ContinuousSync, String) {
    let log = Arc::new(Timed {
        inner: HttpSharedLog::new(url).unwrap(),
        latencies: latencies.clone(),
    });
    let id = log.create_device(user_token).await.unwrap();
    let token = log.inner.device_token(id).unwrap();
    let backend: Arc<dyn StorageBackend> = Arc::new(MemoryBackend::new());
    let device = SyncDevice::open(
        storex_test::devices::registry(),
        backend,
        Clock::new(id),
        SyncOptions::default(),
    )
    .await
    .unwrap();
    (
        ContinuousSync::new(device, log, ContinuousOptions::default()),
        token,
    )
}

async fn note(sync: &ContinuousSync, id: String) {
    sync.device()
        .storage()
        .create("note", object! { "id" => id, "title" => "load" })
        .await
        .unwrap();
}

/// Syncs every device until all hold `expected` notes and agree, or panics.
async fn converge(syncs: &[Arc<ContinuousSync>], expected: u64) {
    for _ in 0..5 {
        for sync in syncs {
            sync.sync_once().await.expect("final sync");
        }
        let mut counts = Vec::new();
        for sync in syncs {
            counts.push(
                sync.device()
                    .storage()
                    .count("note", Filter::all())
                    .await
                    .unwrap(),
            );
        }
        if counts.iter().all(|c| *c == expected) {
            let first = syncs[0].device().digest("note").await.unwrap();
            for (i, sync) in syncs.iter().enumerate() {
                assert_eq!(
                    sync.device().digest("note").await.unwrap(),
                    first,
                    "device {i} differs"
                );
            }
            return;
        }
    }
    panic!("devices did not converge on {expected} notes");
}

fn p99(latencies: &Mutex<Vec<Duration>>) -> (usize, Duration) {
    let mut all = latencies.lock().unwrap().clone();
    all.sort();
    let n = all.len();
    (
        n,
        all.get((n * 99 / 100).min(n.saturating_sub(1)))
            .copied()
            .unwrap_or_default(),
    )
}

/// Devices writing and syncing concurrently until `until`; returns how many notes were
/// written and how many syncs failed (each is retried by the next round).
async fn run_load(syncs: &[Arc<ContinuousSync>], until: Instant) -> (u64, u64) {
    let written = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, sync) in syncs.iter().enumerate() {
        let (sync, written, failed) = (sync.clone(), written.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut k = 0;
            while Instant::now() < until {
                note(&sync, format!("d{i}-n{k}")).await;
                written.fetch_add(1, Ordering::Relaxed);
                k += 1;
                if sync.sync_once().await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    (
        written.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_devices_push_and_pull_concurrently_and_converge() {
    let store = match Store::postgres().await {
        Some(store) => store,
        None => Store::sqlite(),
    };
    let server = SyncServer::start(config(&store)).await.unwrap();
    let admin = HttpSharedLog::new(&server.url()).unwrap();
    let user = admin.create_user(ADMIN, "load").await.unwrap();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut syncs = Vec::new();
    for _ in 0..50 {
        syncs.push(Arc::new(
            device(&server.url(), &user.token, &latencies).await,
        ));
    }
    latencies.lock().unwrap().clear();
    let start = Instant::now();
    let (written, failed) = run_load(&syncs, start + Duration::from_secs(3)).await;
    let elapsed = start.elapsed();
    let (requests, p99) = p99(&latencies);
    println!(
        "load: 50 devices, {} store, {written} notes, {requests} requests in {:.2} s: {:.0} requests/s, p99 {:.1} ms, {failed} failed syncs",
        if store.url.starts_with("postgres") { "PostgreSQL" } else { "SQLite" },
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64(),
        p99.as_secs_f64() * 1e3
    );
    assert_eq!(failed, 0, "syncs failed under load with a healthy server");
    assert!(written >= 50);
    converge(&syncs, written).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_mid_load_loses_nothing() {
    let store = match Store::postgres().await {
        Some(store) => store,
        None => Store::sqlite(),
    };
    let server = SyncServer::start(config(&store)).await.unwrap();
    let addr = server.local_addr();
    let url = server.url();
    let admin = HttpSharedLog::new(&url).unwrap();
    let user = admin.create_user(ADMIN, "restart").await.unwrap();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut syncs = Vec::new();
    for _ in 0..10 {
        syncs.push(Arc::new(device(&url, &user.token, &latencies).await));
    }
    let until = Instant::now() + Duration::from_secs(4);
    let load = {
        let syncs = syncs.clone();
        tokio::spawn(async move { run_load(&syncs, until).await })
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    server.shutdown().await.expect("stops cleanly mid-load");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = SyncServer::start(config(&store).listen(addr))
        .await
        .expect("restarts on the same address");
    let (written, failed) = load.await.unwrap();
    println!("restart: {written} notes written, {failed} syncs failed while the server was down (retried later)");
    converge(&syncs, written).await;
    restarted.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_wakes_a_waiting_device_at_once() {
    let store = Store::sqlite();
    let server = SyncServer::start(config(&store)).await.unwrap();
    let admin = HttpSharedLog::new(&server.url()).unwrap();
    let user = admin.create_user(ADMIN, "live").await.unwrap();
    let other = admin.create_user(ADMIN, "other").await.unwrap();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let a = device(&server.url(), &user.token, &latencies).await;
    let (b, b_token) = device_and_token(&server.url(), &user.token, &latencies).await;
    let stranger = device(&server.url(), &other.token, &latencies).await;
    let b_client = HttpSharedLog::new(&server.url()).unwrap();
    let b_id = b.device().device();
    b_client.add_device(b_id, b_token.clone());

    let waiter = tokio::spawn({
        let b_client = b_client;
        async move {
            let found = b_client
                .wait_for_entries(b_id, 0, Duration::from_secs(20), None)
                .await
                .unwrap();
            (found, Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another user's push does not end B's wait (it would, were B shown that user's entries).
    note(&stranger, "s1".into()).await;
    stranger.sync_once().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "another user's push ended the device's wait"
    );
    note(&a, "n1".into()).await;
    let pushed = Instant::now();
    a.sync_once().await.unwrap();
    let (found, woke) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken")
        .unwrap();
    let delay = woke.saturating_duration_since(pushed);
    println!(
        "live update: device B woke {:.1} ms after A started its sync",
        delay.as_secs_f64() * 1e3
    );
    assert!(found);
    assert!(delay < Duration::from_secs(1), "woke only after {delay:?}");
    b.sync_once().await.unwrap();
    assert_eq!(
        b.device()
            .storage()
            .count("note", Filter::all())
            .await
            .unwrap(),
        1
    );

    // A waiting pull ends promptly when the server shuts down.
    let c_client = HttpSharedLog::new(&server.url()).unwrap();
    c_client.add_device(b_id, b_token);
    let cursor = b.cursor().await.unwrap();
    let waiting = tokio::spawn(async move {
        c_client
            .wait_for_entries(b_id, cursor, Duration::from_secs(25), None)
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stop = Instant::now();
    server.shutdown().await.unwrap();
    assert!(!waiting.await.unwrap().unwrap());
    assert!(
        stop.elapsed() < Duration::from_secs(5),
        "shutdown waited for the long poll"
    );
}
