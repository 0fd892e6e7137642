//! Several stateless server instances on one PostgreSQL database: started together (their
//! migrations must not collide), serving 30 devices spread over them, one instance killed
//! (SIGKILL) in the middle of the load. Every device must end up having pulled every entry of
//! every other device exactly once, and a push on one instance must wake a device waiting on
//! another within a second.
//!
//! Each instance runs in a child process (this test binary, re-run with
//! `scale_out_child_instance`), so killing one really drops its connections mid-request.

#![allow(clippy::unwrap_used)] // helpers of tests: a failed unwrap is a failed test

use crate::common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ADMIN;
use storex_core::uuid::Uuid;
use storex_log_http::{ClientOptions, HttpSharedLog, ServerConfig, SyncServer};
use storex_sync::{DeviceId, SharedEntry, SharedSyncLog};

const CHILD_DB: &str = "STOREX_SCALE_OUT_CHILD_DB";
const INSTANCES: usize = 3;
const DEVICES: usize = 30;

/// Run as a child process by the test below: one server instance, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_child_instance() {
    let Ok(database_url) = std::env::var(CHILD_DB) else {
        return; // only meaningful as a child of the test below
    };
    let mut config = ServerConfig::new(database_url)
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .admin_token(ADMIN)
        .rate_limit(None)
        .ip_rate_limit(None);
    config.compact_every = None;
    let server = SyncServer::start(config).await.expect("instance starts");
    println!("listening {}", server.url());
    server.wait().await.expect("instance runs");
}

/// A child instance, killed when dropped.
struct Instance {
    child: Child,
    url: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `n` instances at the same moment, then waits for each to listen.
fn start_instances(database_url: &str, n: usize) -> Vec<Instance> {
    let children: Vec<Child> = (0..n)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "scale_out::scale_out_child_instance",
                    "--exact",
                    "--nocapture",
                ])
                .env(CHILD_DB, database_url)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|mut child| {
            let stdout = child.stdout.take().unwrap();
            let mut lines = BufReader::new(stdout).lines();
            let url = loop {
                match lines.next() {
                    Some(Ok(line)) => {
                        if let Some(url) = line.strip_prefix("listening ") {
                            break url.to_owned();
                        }
                    }
                    other => panic!("instance ended before listening: {other:?}"),
                }
            };
            Instance { child, url }
        })
        .collect()
}

fn client(urls: &[&str]) -> HttpSharedLog {
    let options = ClientOptions {
        retries: 8,
        ..ClientOptions::default()
    };
    HttpSharedLog::with_servers(urls, options).unwrap()
}

/// One device's view: what it pushed (confirmed), what it has not confirmed yet, what it
/// pulled, and its cursor.
struct Fleet {
    logs: Vec<Arc<HttpSharedLog>>,
    ids: Vec<DeviceId>,
}

#[derive(Default)]
struct DeviceRecord {
    confirmed: Vec<Uuid>,
    unconfirmed: Vec<SharedEntry>,
    seen: Vec<Uuid>,
    cursor: u64,
}

/// Pushes what is unconfirmed plus `new` entries; false when the push failed (kept for later).
async fn push(
    log: &HttpSharedLog,
    device: DeviceId,
    record: &mut DeviceRecord,
    new: usize,
) -> bool {
    for _ in 0..new {
        let id = Uuid::now_v7();
        record.unconfirmed.push(SharedEntry {
            id,
            device,
            topic: "note".into(),
            payload: id.as_bytes().to_vec(),
        });
    }
    match log.push(device, record.unconfirmed.clone()).await {
        Ok(_) => {
            record
                .confirmed
                .extend(record.unconfirmed.drain(..).map(|e| e.id));
            true
        }
        Err(_) => false,
    }
}

/// Pulls until caught up; false when a pull failed.
async fn pull(log: &HttpSharedLog, device: DeviceId, record: &mut DeviceRecord) -> bool {
    loop {
        match log.pull(device, record.cursor, 200, None).await {
            Ok(page) => {
                record.seen.extend(page.entries.iter().map(|p| p.entry.id));
                record.cursor = page.next_cursor;
                if !page.more {
                    return log.ack(device, record.cursor).await.is_ok();
                }
            }
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_serve_thirty_devices_and_survive_losing_one() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let database_url = storex_test::fresh_postgres_database(&server).await;
    let mut instances = start_instances(&database_url, INSTANCES);
    let urls: Vec<String> = instances.iter().map(|i| i.url.clone()).collect();

    // Devices spread over the instances; each knows the others to fail over to.
    let admin = client(&[urls[0].as_str()]);
    let user = admin.create_user(ADMIN, "fleet").await.unwrap();
    let mut fleet = Fleet {
        logs: Vec::new(),
        ids: Vec::new(),
    };
    for i in 0..DEVICES {
        let order: Vec<&str> = (0..INSTANCES)
            .map(|k| urls[(i + k) % INSTANCES].as_str())
            .collect();
        let log = Arc::new(client(&order));
        fleet
            .ids
            .push(log.create_device(&user.token).await.unwrap());
        fleet.logs.push(log);
    }

    // Live update across instances: device 0 waits on instance 0, device 1 pushes on
    // instance 1.
    let (waiter_log, waiter) = (fleet.logs[0].clone(), fleet.ids[0]);
    let waiting = tokio::spawn(async move {
        let found = waiter_log
            .wait_for_entries(waiter, 0, Duration::from_secs(20), None)
            .await
            .unwrap();
        (found, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut first = DeviceRecord::default();
    let pushed_at = Instant::now();
    assert!(push(&fleet.logs[1], fleet.ids[1], &mut first, 1).await);
    let (found, woke) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken")
        .unwrap();
    let delay = woke.saturating_duration_since(pushed_at);
    println!(
        "scale-out: a push on instance 1 woke a device waiting on instance 0 after {:.1} ms",
        delay.as_secs_f64() * 1e3
    );
    assert!(
        found && delay < Duration::from_secs(1),
        "woke after {delay:?}"
    );

    // The load, with instance 2 killed half-way.
    let failures = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for (i, (log, device)) in fleet.logs.iter().zip(&fleet.ids).enumerate() {
        let (log, device, failures) = (log.clone(), *device, failures.clone());
        let mut record = if i == 1 {
            std::mem::take(&mut first)
        } else {
            DeviceRecord::default()
        };
        tasks.push(tokio::spawn(async move {
            let mut round = 0;
            while Instant::now() < until {
                round += 1;
                if !push(&log, device, &mut record, 1 + round % 4).await {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                if !pull(&log, device, &mut record).await {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            record
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = instances.remove(2);
    let killed_url = killed.url.clone();
    drop(killed); // SIGKILL, mid-request
    let mut records = Vec::new();
    for task in tasks {
        records.push(task.await.unwrap());
    }

    let moved = fleet
        .logs
        .iter()
        .skip(2)
        .step_by(INSTANCES)
        .filter(|log| log.current_server() != killed_url)
        .count();
    assert_eq!(
        moved,
        DEVICES / INSTANCES,
        "devices of the killed instance did not fail over"
    );

    // Everything still unconfirmed is pushed, then everyone catches up.
    for (i, record) in records.iter_mut().enumerate() {
        assert!(
            push(&fleet.logs[i], fleet.ids[i], record, 0).await,
            "final push of device {i}"
        );
    }
    for (i, record) in records.iter_mut().enumerate() {
        assert!(
            pull(&fleet.logs[i], fleet.ids[i], record).await,
            "final pull of device {i}"
        );
    }

    let mut by_device: HashMap<DeviceId, HashSet<Uuid>> = HashMap::new();
    let mut total = 0;
    for (i, record) in records.iter().enumerate() {
        total += record.confirmed.len();
        by_device
            .entry(fleet.ids[i])
            .or_default()
            .extend(record.confirmed.iter().copied());
    }
    for (i, record) in records.iter().enumerate() {
        let expected: HashSet<Uuid> = by_device
            .iter()
            .filter(|(d, _)| **d != fleet.ids[i])
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        let seen: HashSet<Uuid> = record.seen.iter().copied().collect();
        assert_eq!(
            seen.len(),
            record.seen.len(),
            "device {i} saw an entry twice"
        );
        assert_eq!(seen, expected, "device {i} missed or invented entries");
    }
    println!(
        "scale-out: {INSTANCES} instances (one killed mid-load), {DEVICES} devices, {total} entries, every one seen exactly once by every other device; {} calls failed after retries and were redone",
        failures.load(Ordering::Relaxed)
    );
}
