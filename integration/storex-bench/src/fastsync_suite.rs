//! Suite `fastsync`: a whole SQLite database streamed to another over TCP on loopback, for
//! 100k and 1M small rows (or `--ops` rows), next to the rate of inserting the same rows
//! into a fresh SQLite file with plain SeaORM `insert_many` in the same run: our stack's
//! limit. Rates count the app's rows; the versions of each row's object (the sender's client
//! sync log folded in) travel with them, which is part of the measured time. The receiving
//! database's size per row is printed next to that of the rows alone.
//!
//! The old device sends from a task of its own on a multi-thread runtime (a thread per core),
//! as it would from its own machine; the new device receives on another.
//!
//! Then the same over a WebRTC data channel on loopback (`fastsync.webrtc_*`): the channel's
//! own throughput (MB/s of package frames, 1 MiB packages one way, no database), and the
//! 100k-row (or `--ops`) SQLite-to-SQLite transfer in rows/s. Pairing is not timed.

#![allow(unreachable_pub)] // SeaORM entities must be `pub` inside their modules.

use std::sync::Arc;
use std::time::Instant;

use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait, Schema, TransactionTrait};
use storex_channel_tcp::TcpChannel;
use storex_channel_webrtc::WebRtcChannel;
use storex_core::uuid::Uuid;
use storex_core::{object, BatchStep, Operation, Registry, StorageBackend};
use storex_seaorm::{collection_from_entity, SeaOrmBackend};
use storex_sync::fast_sync::{
    receive_snapshot, send_snapshot, EncodedObjects, FastSyncChannel, FastSyncOptions, Package,
};
use storex_sync::{Clock, DeviceId, SyncDevice, SyncOptions};
use tokio::net::TcpListener;

use crate::allocations::AllocationCount;
use crate::report::{database_bytes, figure, rate, ratio, BoxError};

mod row {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "row")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub n: i64,
        pub label: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

async fn device(dir: &std::path::Path, name: &str) -> Result<SyncDevice, BoxError> {
    let registry = Registry::builder()
        .collection(collection_from_entity(row::Entity)?)
        .build()?;
    let backend: Arc<dyn StorageBackend> =
        Arc::new(SeaOrmBackend::open_sqlite_file(dir.join(name)).await?);
    Ok(SyncDevice::open(
        registry,
        backend,
        Clock::new(DeviceId::random()),
        SyncOptions::default(),
    )
    .await?)
}

/// The same rows through plain SeaORM into a fresh file: rows/s.
async fn insert_many_rate(dir: &std::path::Path, rows: u64) -> Result<f64, BoxError> {
    let backend = SeaOrmBackend::open_sqlite_file(dir.join("plain.db")).await?;
    let db = backend.connection();
    let mut create = Schema::new(db.get_database_backend()).create_table_from_entity(row::Entity);
    db.execute(create.if_not_exists()).await?;
    let start = Instant::now();
    let mut done = 0;
    while done < rows {
        let n = (rows - done).min(1_000);
        let txn = db.begin().await?;
        let models = (done..done + n).map(|i| row::ActiveModel {
            id: Set(Uuid::now_v7()),
            n: Set(i as i64),
            label: Set(format!("row {i}")),
        });
        row::Entity::insert_many(models)
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        done += n;
    }
    Ok(rows as f64 / start.elapsed().as_secs_f64())
}

/// `rows` rows written to `device` through storex, 1,000 a batch, then their journal
/// records indexed into the device's log, as its next sync would (timed apart, as `name`).
async fn fill(old: &SyncDevice, rows: u64, name: &str) -> Result<(), BoxError> {
    let mut written = 0;
    while written < rows {
        let n = (rows - written).min(1_000);
        let steps = (written..written + n)
            .map(|i| {
                BatchStep::new(Operation::create(
                    "row",
                    object! { "n" => i as i64, "label" => format!("row {i}") },
                ))
            })
            .collect();
        old.storage().batch(steps).await?;
        written += n;
    }
    let start = Instant::now();
    let indexed = old.log().index_journal().await?;
    rate(name, indexed, start.elapsed());
    Ok(())
}

fn size_label(rows: u64) -> String {
    if rows >= 1_000_000 {
        format!("{}m", rows / 1_000_000)
    } else {
        format!("{}k", rows / 1_000)
    }
}

async fn one_size(rows: u64) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let (old, new) = (
        device(dir.path(), "old.db").await?,
        device(dir.path(), "new.db").await?,
    );
    let label = size_label(rows);
    fill(
        &old,
        rows,
        &format!("fastsync.tcp_{label}.sender_journal_index"),
    )
    .await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let options = FastSyncOptions::default();
    let allocations = AllocationCount::start();
    let start = Instant::now();
    let receiving = async {
        let mut channel = TcpChannel::accept(&listener).await?;
        receive_snapshot(&new, &mut channel, &options).await
    };
    // The old device sends from a task of its own, as it would from its own machine.
    let (sending_device, sending_options) = (old.clone(), options.clone());
    let sending = tokio::spawn(async move {
        let mut channel = TcpChannel::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        send_snapshot(&sending_device, &mut channel, &sending_options)
            .await
            .map_err(|e| e.to_string())
    });
    let received = receiving.await;
    let sent = sending.await?;
    let elapsed = start.elapsed();
    // Both devices' (they run in this one process).
    allocations.report(&format!("fastsync.tcp_{label}.allocations_per_row"), rows);
    let (received, sent) = (received?, sent?);
    if old.digest("row").await? != new.digest("row").await? || received.objects != sent.objects {
        return Err("the receiving database differs from the sender's".into());
    }
    let transfer = rate(&format!("fastsync.tcp_{label}.rows"), rows, elapsed);
    figure(
        &format!("fastsync.tcp_{label}.payload"),
        sent.bytes as f64 / 1_048_576.0 / elapsed.as_secs_f64(),
        "MB/s",
    );
    let plain = insert_many_rate(dir.path(), rows).await?;
    figure(
        &format!("fastsync.tcp_{label}.seaorm_insert_many"),
        plain,
        "rows/s",
    );
    // What the new device keeps besides the rows: its database (with its write-ahead log)
    // per row, next to the rows alone inserted with `insert_many`.
    drop(new);
    for (file, name) in [("new.db", "receiver"), ("plain.db", "insert_many")] {
        figure(
            &format!("fastsync.tcp_{label}.{name}_database.bytes_per_row"),
            database_bytes(dir.path(), file)? as f64 / rows as f64,
            "bytes",
        );
    }
    ratio(
        &format!("fastsync.tcp_{label}.share_of_insert_many"),
        transfer,
        plain,
    );
    Ok(())
}

/// Two WebRTC channels on loopback, paired through their offer and answer strings.
async fn webrtc_pair() -> Result<(WebRtcChannel, WebRtcChannel), BoxError> {
    let (pending, offer) = WebRtcChannel::offer().await?;
    let (waiting, answer) = WebRtcChannel::accept(&offer).await?;
    let (a, b) = tokio::join!(pending.connect(&answer), waiting.open());
    Ok((a?, b?))
}

/// The WebRTC channel alone: 1 MiB packages one way, MB/s of frames received.
async fn webrtc_channel() -> Result<(), BoxError> {
    const PACKAGES: u64 = 256;
    let (mut a, mut b) = webrtc_pair().await?;
    let package = Package::Batch {
        seq: 1,
        collection: "row".into(),
        objects: EncodedObjects::encode(&[object! { "blob" => vec![7u8; 1024 * 1024] }]),
    };
    let frame_bytes = package.encode().len() as u64;
    let start = Instant::now();
    let sending = async {
        for _ in 0..PACKAGES {
            a.send(package.clone()).await?;
        }
        Ok::<_, BoxError>(())
    };
    let receiving = async {
        for _ in 0..PACKAGES {
            if b.recv().await? != Some(package.clone()) {
                return Err::<(), BoxError>("a package arrived changed".into());
            }
        }
        Ok(())
    };
    let (sent, received) = tokio::join!(sending, receiving);
    let elapsed = start.elapsed();
    sent?;
    received?;
    figure(
        "fastsync.webrtc_channel.payload",
        (PACKAGES * frame_bytes) as f64 / 1_048_576.0 / elapsed.as_secs_f64(),
        "MB/s",
    );
    a.close().await;
    b.close().await;
    Ok(())
}

/// `rows` rows SQLite-to-SQLite over WebRTC on loopback.
async fn webrtc_rows(rows: u64) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let (old, new) = (
        device(dir.path(), "old.db").await?,
        device(dir.path(), "new.db").await?,
    );
    fill(
        &old,
        rows,
        &format!("fastsync.webrtc_{}.sender_journal_index", size_label(rows)),
    )
    .await?;
    let (mut a, mut b) = webrtc_pair().await?;
    let options = FastSyncOptions::default();
    let (sending_device, sending_options) = (old.clone(), options.clone());
    let start = Instant::now();
    let sending = tokio::spawn(async move {
        let sent = send_snapshot(&sending_device, &mut a, &sending_options).await;
        (sent, a)
    });
    let received = receive_snapshot(&new, &mut b, &options).await;
    let (sent, a) = sending.await?;
    let elapsed = start.elapsed();
    let (received, sent) = (received?, sent?);
    if old.digest("row").await? != new.digest("row").await? || received.objects != sent.objects {
        return Err("the receiving database differs from the sender's".into());
    }
    let label = size_label(rows);
    figure(
        &format!("fastsync.webrtc_{label}.rows"),
        rows as f64 / elapsed.as_secs_f64(),
        "rows/s",
    );
    figure(
        &format!("fastsync.webrtc_{label}.payload"),
        sent.bytes as f64 / 1_048_576.0 / elapsed.as_secs_f64(),
        "MB/s",
    );
    a.close().await;
    b.close().await;
    Ok(())
}

/// Runs the suite: `ops` rows, or 100k and 1M over TCP and 100k over WebRTC.
pub(crate) async fn run(ops: Option<u64>) -> Result<(), BoxError> {
    match ops {
        Some(rows) => {
            one_size(rows).await?;
            webrtc_channel().await?;
            webrtc_rows(rows).await
        }
        None => {
            one_size(100_000).await?;
            one_size(1_000_000).await?;
            webrtc_channel().await?;
            webrtc_rows(100_000).await
        }
    }
}
