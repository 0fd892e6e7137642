//! Setup shared by the WebRTC tests: pairing two channels in one process.

#![allow(dead_code)] // Each test file uses its own part.

use storex_channel_webrtc::{WebRtcChannel, WebRtcOptions};

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
