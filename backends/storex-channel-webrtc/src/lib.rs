//! storex-channel-webrtc: [`WebRtcChannel`], a fast-sync channel over a WebRTC data channel.
//!
//! Two peers pair with one offer string and one answer string, copied between them by any
//! means (a QR code, a chat message, a test's variable): base64 of each side's session
//! description with every host candidate already in it. Each peer binds one UDP socket, by
//! default on 127.0.0.1 with no STUN server and mDNS off, so pairing needs no network; set
//! [`WebRtcOptions::bind`] to a LAN address to pair two machines on one network.
//!
//! Packages larger than one data-channel message (64 KiB) are cut up and reassembled; a
//! package frame larger than [`WebRtcOptions::max_frame`] (64 MiB by default) is refused on
//! both sides with `ChannelError::TooLarge`, garbage and cut-off frames end the session with
//! `ChannelError::Malformed`, and a peer that goes away with `ChannelError::Closed`. The
//! data channel is encrypted (DTLS) but its peer is not authenticated: pair only with the
//! device whose offer you were given.
//!
//! ```no_run
//! # async fn demo(old: &storex_sync::SyncDevice, new: &storex_sync::SyncDevice)
//! #     -> storex_sync::Result<()> {
//! use storex_channel_webrtc::WebRtcChannel;
//! use storex_sync::fast_sync::{receive_snapshot, send_snapshot, FastSyncOptions};
//!
//! // On the old device:
//! let (pending, offer) = WebRtcChannel::offer().await?;
//! // On the new device, given `offer`:
//! let (waiting, answer) = WebRtcChannel::accept(&offer).await?;
//! // Both open at once (here in one process), then the snapshot moves.
//! let options = FastSyncOptions::default();
//! let (sending, receiving) = tokio::join!(
//!     async {
//!         let mut channel = pending.connect(&answer).await?;
//!         send_snapshot(old, &mut channel, &options).await
//!     },
//!     async {
//!         let mut channel = waiting.open().await?;
//!         receive_snapshot(new, &mut channel, &options).await
//!     },
//! );
//! sending?;
//! receiving?;
//! # Ok(()) }
//! ```

mod channel;
mod error;
mod framing;
mod options;
mod pairing;
mod runtime;

pub use channel::WebRtcChannel;
pub use error::{Error, Result};
pub use options::{WebRtcOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_FRAME};
pub use pairing::{PendingAnswer, PendingOffer};
