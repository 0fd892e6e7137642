//! Two peers in one process: an old device sends its SQLite database to a new one over a
//! WebRTC data channel on loopback, paired by an offer string and an answer string.
//!
//! In a real migration each string would travel between the devices by hand (a QR code, a
//! message); here they are passed along in variables.
//!
//! ```text
//! cargo run -p storex-channel-webrtc --example two_peers
//! ```

use std::sync::Arc;

use storex_channel_webrtc::WebRtcChannel;
use storex_core::{object, BatchStep, CollectionDef, FieldType, Operation, Registry};
use storex_seaorm::SeaOrmBackend;
use storex_sync::fast_sync::{receive_snapshot, send_snapshot, FastSyncOptions};
use storex_sync::{Clock, DeviceId, SyncDevice, SyncOptions};

async fn device(path: std::path::PathBuf) -> Result<SyncDevice, Box<dyn std::error::Error>> {
    let registry = Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Uuid)
                .field("title", FieldType::Text)
                .primary_key(["id"]),
        )
        .build()?;
    let backend = Arc::new(SeaOrmBackend::open_sqlite_file(path).await?);
    Ok(SyncDevice::open(
        registry,
        backend,
        Clock::new(DeviceId::random()),
        SyncOptions::default(),
    )
    .await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let old = device(dir.path().join("old.db")).await?;
    let new = device(dir.path().join("new.db")).await?;
    let steps = (0..10_000)
        .map(|i| {
            BatchStep::new(Operation::create(
                "note",
                object! { "title" => format!("note {i}") },
            ))
        })
        .collect();
    old.storage().batch(steps).await?;

    // The old device offers; the offer string goes to the new device.
    let (pending, offer) = WebRtcChannel::offer().await?;
    println!("offer: {} characters of base64", offer.len());
    // The new device answers; the answer string goes back.
    let (waiting, answer) = WebRtcChannel::accept(&offer).await?;
    println!("answer: {} characters of base64", answer.len());

    let options = FastSyncOptions::default();
    let (sent, received) = tokio::join!(
        async {
            let mut channel = pending.connect(&answer).await?;
            let report = send_snapshot(&old, &mut channel, &options).await?;
            channel.close().await;
            Ok::<_, storex_sync::Error>(report)
        },
        async {
            let mut channel = waiting.open().await?;
            let report = receive_snapshot(&new, &mut channel, &options).await?;
            channel.close().await;
            Ok::<_, storex_sync::Error>(report)
        },
    );
    let (sent, received) = (sent?, received?);
    println!(
        "sent {} objects ({} bytes in {} batches) in {:?}; the new device applied {}",
        sent.objects, sent.bytes, sent.batches, sent.duration, received.objects
    );
    assert_eq!(old.digest("note").await?, new.digest("note").await?);
    println!("both devices hold the same notes");
    Ok(())
}
