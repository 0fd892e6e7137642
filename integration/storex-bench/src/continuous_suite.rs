//! Suite `continuous`: entries through the SQL shared log on a SQLite file, end to end.
//!
//! Device A writes `ops` notes (not timed), then pushes them; device B pulls and applies
//! them afterwards: entries per second for the push, for the pull+apply, and for the two one
//! after the other (`push_then_pull`); then the shared log's database size per entry. These
//! syncs do not compact A's client log; compacting it afterwards is timed apart
//! (`continuous.compact`).
//!
//! Then end to end as devices run (target: 50,000 entries/s), with the default options (a
//! sync compacts up to 10,000 pushed entries): A writes `ops` more notes (not timed) and
//! pushes them while B, a separate device, keeps syncing as it would in the background
//! (polling every millisecond when a sync brought nothing); the time from A's push starting
//! to B holding every entry. The two devices run on their own tasks of a multi-thread runtime
//! (a thread per core), as two devices would on their own machines.
//!
//! Last, one write's travel time from A to B: A writes one note, A syncs, B syncs; the median
//! of 20 trips, after A's log is compacted (as its idle syncs would).

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

/// Another engine for `engine`'s device, with the default options.
fn with_default_options(engine: ContinuousSync, log: &Arc<dyn SharedSyncLog>) -> ContinuousSync {
    ContinuousSync::new(
        engine.device().clone(),
        log.clone(),
        ContinuousOptions::default(),
    )
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
    let no_compaction = ContinuousOptions::default().with_compact_per_sync(0);
    let a = device(dir.path(), "a.db", &log, no_compaction.clone()).await?;
    let b = device(dir.path(), "b.db", &log, no_compaction).await?;

    write_notes(&a, 0, ops).await?;
    let start = Instant::now();
    let pushed = a.sync_once().await?.pushed;
    let push_time = start.elapsed();
    let start = Instant::now();
    let pulled = b.sync_once().await?;
    let pull_time = start.elapsed();
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
    let start = Instant::now();
    let compacted = a.device().log().compact().await?;
    if compacted != ops {
        return Err(format!("compacted {compacted} of {ops}").into());
    }
    rate("continuous.compact.entries", ops, start.elapsed());

    let (a, b) = (with_default_options(a, &log), with_default_options(b, &log));
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

    // The trips measure a device in its steady state, not one compacting the backlog of
    // the bulk push above (which its next syncs would do, 10,000 entries each).
    a.device().log().compact().await?;
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
    Ok(())
}
