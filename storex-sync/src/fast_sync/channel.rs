//! [`FastSyncChannel`]: an ordered, reliable message channel between two devices, and the
//! in-memory pair.
//!
//! Channels carry [`Package`]s. Byte transports (TCP, WebRTC) send them as frames made by
//! [`Package::encode`] and read with [`Package::decode`], which refuses frames of another
//! protocol version, garbage and truncated frames with a [`ChannelError`] rather than
//! panicking. The memory pair goes through the same encoding, so tests exercise it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use storex_core::{BoxError, BoxFuture};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::fast_sync::package::Package;

/// What a channel can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The peer went away in the middle of the session.
    #[error("the channel closed")]
    Closed,
    /// A frame is larger than allowed.
    #[error("a frame is larger than the {limit} bytes allowed")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// A frame of another protocol version.
    #[error("the peer speaks fast-sync protocol version {found}, this device version {expected}")]
    WrongVersion {
        /// The peer's version.
        found: u8,
        /// Ours.
        expected: u8,
    },
    /// A frame that is not a package (garbage or truncated).
    #[error("a malformed frame: {problem}")]
    Malformed {
        /// What is wrong with it.
        problem: String,
    },
    /// The transport failed.
    #[error("the transport failed")]
    Transport(#[source] BoxError),
    /// The channel cannot be set up as asked (a pasted pairing code that is not one, say):
    /// trying again the same way fails again.
    #[error("the channel cannot be set up")]
    Setup(#[source] BoxError),
}

/// When a channel last moved bytes, either way. A byte transport marks it as the pieces of a
/// frame arrive or leave; the session reads it while a package is under way, so that a large
/// package on a slow link is not taken for a stall as long as its bytes move. Clones share
/// one mark.
#[derive(Clone, Debug)]
pub struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last mark.
    last: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

impl Activity {
    /// Marked now.
    pub fn new() -> Self {
        Activity {
            start: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Notes that bytes moved now.
    pub fn mark(&self) {
        let since = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(since, Ordering::Relaxed);
    }

    /// How long since bytes last moved.
    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Moves fast-sync packages between two peers, in order and reliably; knows nothing about
/// the protocol.
pub trait FastSyncChannel: Send + fmt::Debug {
    /// Sends one package.
    fn send(&mut self, package: Package) -> BoxFuture<'_, Result<(), ChannelError>>;

    /// The next package; `None` once the peer closed the channel cleanly.
    ///
    /// Must be cancel-safe: the session drops a pending `recv` when it is cancelled and at
    /// every heartbeat of a pause (a package half read is kept for the next call).
    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Package>, ChannelError>>;

    /// Closes the channel once what was sent has reached the peer (as far as the transport
    /// can tell). Call it before the process ends: a transport that flushes in the background
    /// (a WebRTC data channel) would otherwise lose the last packages. The default does
    /// nothing, for channels that deliver as they send.
    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// The channel's [`Activity`], if it marks one: the session then takes a package under
    /// way for stalled only once no byte moved for its stall timeout. `None` (the default,
    /// for channels that move whole frames at once): each package must travel within it.
    fn activity(&self) -> Option<Activity> {
        None
    }
}

/// One end of an in-memory channel.
#[derive(Debug)]
pub struct MemoryChannel {
    tx: mpsc::Sender<Vec<u8>>,
    rx: mpsc::Receiver<Vec<u8>>,
    max_frame: usize,
}

/// Two connected in-memory channel ends, each buffering up to `capacity` frames.
///
/// A sender reads acknowledgements only once its window of batches is full, so `capacity`
/// must be at least the window of the sessions run over it ([`FastSyncOptions::window`], 4
/// by default): with less, the receiver can wait to send an acknowledgement while the sender
/// waits to send a batch, and both end as stalled.
///
/// [`FastSyncOptions::window`]: crate::fast_sync::FastSyncOptions::window
pub fn memory_channel_pair(capacity: usize) -> (MemoryChannel, MemoryChannel) {
    let (a_tx, b_rx) = mpsc::channel(capacity.max(1));
    let (b_tx, a_rx) = mpsc::channel(capacity.max(1));
    let max_frame = 64 * 1024 * 1024;
    (
        MemoryChannel {
            tx: a_tx,
            rx: a_rx,
            max_frame,
        },
        MemoryChannel {
            tx: b_tx,
            rx: b_rx,
            max_frame,
        },
    )
}

impl MemoryChannel {
    /// Sends raw bytes as a frame, bypassing the encoding (for tests of bad frames).
    pub async fn send_raw(&mut self, frame: Vec<u8>) -> Result<(), ChannelError> {
        self.tx.send(frame).await.map_err(|_| ChannelError::Closed)
    }
}

impl FastSyncChannel for MemoryChannel {
    fn send(&mut self, package: Package) -> BoxFuture<'_, Result<(), ChannelError>> {
        Box::pin(async move {
            let frame = package.encode();
            // Refused here, as byte transports do, so the sender names what is too large.
            if frame.len() > self.max_frame {
                return Err(ChannelError::TooLarge {
                    limit: self.max_frame,
                });
            }
            self.tx.send(frame).await.map_err(|_| ChannelError::Closed)
        })
    }

    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Package>, ChannelError>> {
        Box::pin(async move {
            match self.rx.recv().await {
                None => Ok(None),
                Some(frame) if frame.len() > self.max_frame => Err(ChannelError::TooLarge {
                    limit: self.max_frame,
                }),
                Some(frame) => Package::decode(&frame).map(Some),
            }
        })
    }
}
