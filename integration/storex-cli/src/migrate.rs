//! `storex migrate send|receive`: a whole SQLite database to a new device over TCP, with a
//! progress bar; the fast-sync protocol does the work (verified, resumable batches).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use storex_channel_tcp::TcpChannel;
use storex_core::{Registry, StorageBackend};
use storex_seaorm::{registry_of_sqlite, SeaOrmBackend};
use storex_sync::fast_sync::{
    read_offer, receive_offer, send_snapshot, FastSyncOptions, Progress, TransferReport,
};
use storex_sync::{Clock, DeviceId, SyncDevice, SyncOptions};
use tokio::net::TcpListener;

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg:<24} [{bar:40}] {pos}/{len} objects ({per_sec})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Options whose progress drives `bar`, one collection at a time.
fn options(bar: &ProgressBar) -> FastSyncOptions {
    let bar = bar.clone();
    FastSyncOptions::default().with_progress(Arc::new(move |p: &Progress| {
        if bar.message() != p.collection {
            bar.set_message(p.collection.clone());
            bar.set_length(p.objects_total);
        }
        bar.set_position(p.objects_done);
    }))
}

async fn open_device(db: &Path, registry: Registry) -> Result<SyncDevice> {
    let backend: Arc<dyn StorageBackend> = Arc::new(
        SeaOrmBackend::open_sqlite_file(db)
            .await
            .with_context(|| format!("opening {}", db.display()))?,
    );
    Ok(SyncDevice::open(
        registry,
        backend,
        Clock::new(DeviceId::random()),
        SyncOptions::default(),
    )
    .await?)
}

fn summary(report: &TransferReport, verb: &str) {
    say!(
        "{verb} {} objects ({:.1} MB) in {} batches in {:.1} s",
        report.objects,
        report.bytes as f64 / 1_048_576.0,
        report.batches,
        report.duration.as_secs_f64()
    );
}

/// Offers the database at `db` on `listen` and sends it to the first device that connects.
pub(crate) async fn send(db: &Path, listen: &str) -> Result<()> {
    if !db.is_file() {
        bail!("no database at {}", db.display());
    }
    let backend = SeaOrmBackend::open_sqlite_file(db)
        .await
        .with_context(|| format!("opening {}", db.display()))?;
    let registry = registry_of_sqlite(backend.connection())
        .await
        .with_context(|| format!("reading the tables of {}", db.display()))?;
    let device = SyncDevice::open(
        registry,
        Arc::new(backend),
        Clock::new(DeviceId::random()),
        SyncOptions::default(),
    )
    .await?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    say!("listening on {}", listener.local_addr()?);
    let mut channel = TcpChannel::accept(&listener).await?;
    let bar = progress_bar();
    let report = send_snapshot(&device, &mut channel, &options(&bar)).await;
    bar.finish_and_clear();
    let report = report?;
    summary(&report, "sent");
    Ok(())
}

/// Connects to a sender at `connect` and writes what it sends into a new database at `db`.
pub(crate) async fn receive(db: &Path, connect: &str) -> Result<()> {
    if db.exists() {
        bail!(
            "{} already exists; the migration writes a new database",
            db.display()
        );
    }
    let mut channel = TcpChannel::connect(connect)
        .await
        .with_context(|| format!("connecting to {connect}"))?;
    let bar = progress_bar();
    let options = options(&bar);
    let offer = read_offer(&mut channel, &options).await?;
    let registry = offer.registry().context("the sender's schema")?;
    let device = open_device(db, registry).await?;
    let report = receive_offer(&device, &mut channel, offer, &options).await;
    bar.finish_and_clear();
    let report = report?;
    summary(&report, "received");
    Ok(())
}
