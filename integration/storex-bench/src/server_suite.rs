//! Suite `server`: pushes and pulls per second through the HTTP sync server, with one
//! instance and with three stateless instances on the same database, in the same run.
//!
//! The log lives in PostgreSQL when `STOREX_PG_URL` names a server (a fresh database is
//! created; `scripts/services.sh` starts one), else in a SQLite file (printed as such: SQLite
//! has one writer, so more instances cannot add write throughput there). Instances run in this
//! process on 127.0.0.1; `DEVICES` clients of `USERS` users, spread over the instances, each
//! push `ops` batches
//! of `BATCH` entries concurrently (pushes/s), then each pulls everything the others pushed in
//! pages of `PAGE` (pulls/s).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database};
use storex_core::uuid::Uuid;
use storex_log_http::{HttpSharedLog, RunningServer, ServerConfig, SyncServer};
use storex_sync::{DeviceId, SharedEntry, SharedResult, SharedSyncLog};

use crate::report::{figure, ratio, BoxError};

const ADMIN: &str = "bench-admin-token-0123456789";
const DEVICES: usize = 30;
/// Devices are spread over this many users (a user's pushes are serialized by its cursor).
const USERS: usize = 10;
const BATCH: usize = 10;
const PAGE: usize = 200;

/// Where the instances keep the log.
struct Store {
    url: String,
    label: &'static str,
    _dir: Option<tempfile::TempDir>,
}

async fn store(run: usize) -> Result<Store, BoxError> {
    if let Ok(server) = std::env::var("STOREX_PG_URL") {
        let name = format!("storex_bench_{}_{run}", Uuid::now_v7().simple());
        let admin = Database::connect(&server).await?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        let (base, _) = server
            .rsplit_once('/')
            .ok_or("STOREX_PG_URL has no database part")?;
        return Ok(Store {
            url: format!("{base}/{name}"),
            label: "postgres",
            _dir: None,
        });
    }
    let dir = tempfile::tempdir()?;
    Ok(Store {
        url: format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("server.db").display()
        ),
        label: "sqlite",
        _dir: Some(dir),
    })
}

async fn instances(store: &Store, n: usize) -> Result<Vec<RunningServer>, BoxError> {
    let mut servers = Vec::with_capacity(n);
    for _ in 0..n {
        let mut config = ServerConfig::new(&store.url)
            .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .admin_token(ADMIN)
            .rate_limit(None)
            .ip_rate_limit(None);
        config.compact_every = None;
        servers.push(SyncServer::start(config).await?);
    }
    Ok(servers)
}

/// Pushes/s and pulls/s with `n` instances.
async fn measure(n: usize, ops: u64, run: usize) -> Result<(f64, f64), BoxError> {
    let store = store(run).await?;
    let servers = instances(&store, n).await?;
    let urls: Vec<String> = servers.iter().map(RunningServer::url).collect();
    let admin = HttpSharedLog::new(&urls[0])?;
    let mut users = Vec::with_capacity(USERS);
    for u in 0..USERS {
        users.push(admin.create_user(ADMIN, &format!("bench-{u}")).await?.token);
    }
    let mut clients = Vec::with_capacity(DEVICES);
    for i in 0..DEVICES {
        let log = Arc::new(HttpSharedLog::new(&urls[i % n])?);
        let device = log.create_device(&users[i % USERS]).await?;
        clients.push((log, device));
    }

    let start = Instant::now();
    let pushes = clients.iter().map(|(log, device)| {
        let (log, device) = (log.clone(), *device);
        tokio::spawn(async move { push_all(&log, device, ops).await })
    });
    for task in pushes.collect::<Vec<_>>() {
        task.await??;
    }
    let push_time = start.elapsed();
    let push_requests = DEVICES as u64 * ops;

    let start = Instant::now();
    let pulls = clients.iter().map(|(log, device)| {
        let (log, device) = (log.clone(), *device);
        tokio::spawn(async move { pull_all(&log, device).await })
    });
    let mut pull_requests = 0;
    for task in pulls.collect::<Vec<_>>() {
        let (requests, entries) = task.await??;
        if entries != others() * ops * BATCH as u64 {
            return Err(format!("a device pulled {entries} entries").into());
        }
        pull_requests += requests;
    }
    let pull_time = start.elapsed();
    for server in servers {
        server.shutdown().await?;
    }

    let name = format!("server.{}.instances_{n}", store.label);
    let pushes_per_s = per_second(push_requests, push_time);
    let pulls_per_s = per_second(pull_requests, pull_time);
    figure(&format!("{name}.pushes"), pushes_per_s, "pushes/s");
    figure(
        &format!("{name}.pushed_entries"),
        per_second(push_requests * BATCH as u64, push_time),
        "entries/s",
    );
    figure(&format!("{name}.pulls"), pulls_per_s, "pulls/s");
    figure(
        &format!("{name}.pulled_entries"),
        per_second(others() * DEVICES as u64 * ops * BATCH as u64, pull_time),
        "entries/s",
    );
    Ok((pushes_per_s, pulls_per_s))
}

/// How many other devices each device's user has.
fn others() -> u64 {
    (DEVICES / USERS) as u64 - 1
}

fn per_second(ops: u64, elapsed: Duration) -> f64 {
    ops as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

async fn push_all(log: &HttpSharedLog, device: DeviceId, ops: u64) -> SharedResult<()> {
    for _ in 0..ops {
        let entries = (0..BATCH)
            .map(|_| {
                let id = Uuid::now_v7();
                SharedEntry {
                    id,
                    device,
                    topic: "note".into(),
                    payload: vec![7; 200],
                }
            })
            .collect();
        log.push(device, entries).await?;
    }
    Ok(())
}

/// Pulls everything; returns (requests, entries).
async fn pull_all(log: &HttpSharedLog, device: DeviceId) -> SharedResult<(u64, u64)> {
    let (mut cursor, mut requests, mut entries) = (0, 0, 0);
    loop {
        let page = log.pull(device, cursor, PAGE, None).await?;
        requests += 1;
        entries += page.entries.len() as u64;
        cursor = page.next_cursor;
        if !page.more {
            return Ok((requests, entries));
        }
    }
}

/// Runs the suite: each of `DEVICES` clients pushes `ops` batches.
pub(crate) async fn run(ops: u64) -> Result<(), BoxError> {
    let (push_1, pull_1) = measure(1, ops, 1).await?;
    let (push_3, pull_3) = measure(3, ops, 3).await?;
    ratio("server.pushes.3_instances_vs_1", push_3, push_1);
    ratio("server.pulls.3_instances_vs_1", pull_3, pull_1);
    Ok(())
}
