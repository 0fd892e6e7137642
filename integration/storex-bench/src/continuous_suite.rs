//! Suite `continuous`: entries through the SQL shared log on a SQLite file, end to end.
//!
//! Device A writes `ops` notes (not timed), then pushes them; device B pulls and applies
//! them afterwards: entries per second for the push, for the pull+apply, and for the two one
//! after the other (`push_then_pull`); then the shared log's database size per entry. Both
//! run with the default options, so A's push folds what it pushed into its versions index.
//!
//! Then end to end as devices run (target: 50,000 entries/s): A writes `ops` more notes (not
//! timed) and pushes them while B, a separate device, keeps syncing as it would in the
//! background (polling every millisecond when a sync brought nothing); the time from A's push
//! starting to B holding every entry. The two devices run on their own tasks of a
//! multi-thread runtime (a thread per core), as two devices would on their own machines.
//!
//! Then one write's travel time from A to B: A writes one note, A syncs, B syncs; the median
//! of 20 trips.
//!
//! Last, compaction (`continuous.compact`): A writes `ops` more notes and pushes them with
//! compaction off, which keeps them in its client log as shared rows (as entries indexed
//! before their push are kept); then compacting them is timed.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use storex_core::{
    object, BatchStep, CollectionDef, FieldType, Operation, Registry, StorageBackend,
};
use storex_log_sql::SqlSharedLog;
use storex_seaorm::SeaOrmBackend;
use storex_sync::{
    Clock, ContinuousOptions, ContinuousSync, SharedSyncLog, SyncDevice, SyncOptions,
};

use crate::allocations::AllocationCount;
use crate::report::{database_bytes, figure, rate, BoxError};

const TRIPS: usize = 20;

fn registry() -> Result<Registry, BoxError> {
    Ok(Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Uuid)
                .field("title", FieldType::Text)
                .field("stars", FieldType::Int)
                .primary_key(["id"]),
        )
        .build()?)
}

/// A device on its own SQLite file, syncing through `log` with `options`.
async fn device(
    dir: &Path,
    name: &str,
    log: &Arc<dyn SharedSyncLog>,
    options: ContinuousOptions,
) -> Result<ContinuousSync, BoxError> {
    let id = log.create_device("bench").await?;
    let backend: Arc<dyn StorageBackend> =
        Arc::new(SeaOrmBackend::open_sqlite_file(dir.join(name)).await?);
    let device =
        SyncDevice::open(registry()?, backend, Clock::new(id), SyncOptions::default()).await?;
    Ok(ContinuousSync::new(device, log.clone(), options))
}

/// Writes notes `from..from + count` on `device`, in batches of 1,000.
async fn write_notes(device: &ContinuousSync, from: u64, count: u64) -> Result<(), BoxError> {
    let mut written = from;
    while written < from + count {
        let n = (from + count - written).min(1_000);
        let steps = (written..written + n)
            .map(|i| {
                BatchStep::new(Operation::create(
                    "note",
                    object! { "title" => format!("note {i}"), "stars" => (i % 5) as i64 },
                ))
            })
            .collect();
        device.device().storage().batch(steps).await?;
        written += n;
    }
    Ok(())
}

async fn same_notes(a: &ContinuousSync, b: &ContinuousSync) -> Result<(), BoxError> {
    if a.device().digest("note").await? != b.device().digest("note").await? {
        return Err("the devices differ after the sync".into());
    }
    Ok(())
}

/// Runs the suite with `ops` entries.
pub(crate) async fn run(ops: u64) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("shared.db").display()
    );
    let log: Arc<dyn SharedSyncLog> = Arc::new(SqlSharedLog::connect(&url).await?);
    let a = device(dir.path(), "a.db", &log, ContinuousOptions::default()).await?;
    let b = device(dir.path(), "b.db", &log, ContinuousOptions::default()).await?;

    write_notes(&a, 0, ops).await?;
    let allocations = AllocationCount::start();
    let start = Instant::now();
    let pushed = a.sync_once().await?.pushed;
    let push_time = start.elapsed();
    allocations.report("continuous.push.allocations_per_entry", ops);
    let allocations = AllocationCount::start();
    let start = Instant::now();
    let pulled = b.sync_once().await?;
    let pull_time = start.elapsed();
    allocations.report("continuous.pull_apply.allocations_per_entry", ops);
    if pushed != ops || pulled.integrated != ops {
        return Err(format!("pushed {pushed}, integrated {} of {ops}", pulled.integrated).into());
    }
    rate("continuous.push.entries", ops, push_time);
    rate("continuous.pull_apply.entries", ops, pull_time);
    rate(
        "continuous.push_then_pull.entries",
        ops,
        push_time + pull_time,
    );
    // What the shared log keeps of an entry (its payload, routing fields and indexes).
    figure(
        "continuous.shared_log_database.bytes_per_entry",
        database_bytes(dir.path(), "shared.db")? as f64 / ops as f64,
        "bytes",
    );
    same_notes(&a, &b).await?;

    write_notes(&a, ops, ops).await?;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let start = Instant::now();
    let pusher = tokio::spawn({
        let a = a.clone();
        async move { a.sync_once().await.map(|report| report.pushed) }
    });
    let puller = tokio::spawn({
        let b = b.clone();
        async move {
            let mut integrated = 0;
            while integrated < ops {
                let report = b.sync_once().await?;
                integrated += report.integrated;
                if report.pulled == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Ok::<u64, storex_sync::Error>(integrated)
        }
    });
    let (pushed, integrated) = (pusher.await??, puller.await??);
    rate("continuous.end_to_end.entries", ops, start.elapsed());
    if pushed != ops || integrated != ops {
        return Err(format!("pushed {pushed}, integrated {integrated} of {ops}").into());
    }
    same_notes(&a, &b).await?;

    let mut trips: Vec<Duration> = Vec::with_capacity(TRIPS);
    for i in 0..TRIPS {
        let start = Instant::now();
        let pk = a
            .device()
            .storage()
            .create(
                "note",
                object! { "title" => format!("trip {i}"), "stars" => 1i64 },
            )
            .await?;
        a.sync_once().await?;
        b.sync_once().await?;
        if b.device().storage().find_by_pk("note", pk).await?.is_none() {
            return Err("the write did not arrive".into());
        }
        trips.push(start.elapsed());
    }
    trips.sort();
    figure(
        "continuous.one_write_a_to_b.median",
        trips[TRIPS / 2].as_secs_f64() * 1000.0,
        "ms",
    );

    let keeping = ContinuousSync::new(
        a.device().clone(),
        log.clone(),
        ContinuousOptions::default().with_compact_per_sync(0),
    );
    write_notes(&keeping, 2 * ops, ops).await?;
    let pushed = keeping.sync_once().await?.pushed;
    let start = Instant::now();
    let compacted = a.device().log().compact().await?;
    if pushed != ops || compacted != ops {
        return Err(format!("pushed {pushed}, compacted {compacted} of {ops}").into());
    }
    rate("continuous.compact.entries", ops, start.elapsed());
    Ok(())
}
