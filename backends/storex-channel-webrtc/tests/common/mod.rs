//! Setup shared by the WebRTC tests: pairing two channels in one process, and SQLite devices.

#![allow(dead_code)] // Each test file uses its own part.

use std::sync::Arc;

use storex_channel_webrtc::{WebRtcChannel, WebRtcOptions};
use storex_core::{Registry, StorageBackend};
use storex_seaorm::SeaOrmBackend;
use storex_sync::{Clock, DeviceId, SyncDevice, SyncOptions};

/// Two open channels, paired through their offer and answer strings: (offerer, answerer).
pub(crate) async fn pair_with(options: &WebRtcOptions) -> (WebRtcChannel, WebRtcChannel) {
    let (pending, offer) = WebRtcChannel::offer_with(options).await.expect("offer");
    let (waiting, answer) = WebRtcChannel::accept_with(&offer, options)
        .await
        .expect("accept");
    let (a, b) = tokio::join!(pending.connect(&answer), waiting.open());
    (a.expect("connect"), b.expect("open"))
}

/// [`pair_with`] the default options.
pub(crate) async fn pair() -> (WebRtcChannel, WebRtcChannel) {
    pair_with(&WebRtcOptions::default()).await
}

/// A device on a fresh SQLite file in `dir`.
pub(crate) async fn device(dir: &std::path::Path, name: &str, registry: Registry) -> SyncDevice {
    let backend: Arc<dyn StorageBackend> = Arc::new(
        SeaOrmBackend::open_sqlite_file(dir.join(name))
            .await
            .expect("open"),
    );
    SyncDevice::open(
        registry,
        backend,
        Clock::new(DeviceId::random()),
        SyncOptions::default(),
    )
    .await
    .expect("device")
}
