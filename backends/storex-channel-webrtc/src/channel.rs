//! [`WebRtcChannel`]: a fast-sync channel over an open WebRTC data channel.
//!
//! The data channel is ordered and reliable (SCTP with retransmission), which is what
//! [`FastSyncChannel`] asks for. Each package frame is cut into data-channel messages and
//! put back together on the other side (see the `framing` module). A frame longer than the
//! limit is refused on both sides: the sender does not send it, the receiver ends the
//! session with [`ChannelError::TooLarge`] as soon as the frame's header announces it.
//! Messages that are not frames end the session with [`ChannelError::Malformed`]; a peer
//! that closes, or whose connection fails, with [`ChannelError::Closed`].
//!
//! `send` is not cancel-safe (a cancelled send may leave half a frame on the wire, which the
//! peer then refuses); `recv` is, so it can be raced against a timeout as the protocol does.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use storex_core::BoxFuture;
use storex_sync::fast_sync::{Activity, ChannelError, FastSyncChannel, Package};
use tokio::sync::watch;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelMessage};
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState};

use crate::framing::{split, Reassembler, MESSAGE_LIMIT};
use crate::pairing::{is_gone, Early, Peer};

/// How long closing waits for sent data to be acknowledged before it closes anyway.
const LINGER: Duration = Duration::from_secs(5);

/// A fast-sync channel over a WebRTC data channel.
///
/// Made by pairing: [`WebRtcChannel::offer`] and [`PendingOffer::connect`](crate::PendingOffer::connect)
/// on one peer, [`WebRtcChannel::accept`] and [`PendingAnswer::open`](crate::PendingAnswer::open)
/// on the other. Dropping it closes the connection once what was sent is acknowledged
/// (or after a few seconds); [`WebRtcChannel::close`] does the same and waits for it.
pub struct WebRtcChannel {
    pc: Arc<dyn PeerConnection>,
    dc: Arc<dyn DataChannel>,
    state: watch::Receiver<RTCPeerConnectionState>,
    early: VecDeque<RTCDataChannelMessage>,
    reassembler: Reassembler,
    max_frame: usize,
    closed: bool,
    /// Marked as each message of a frame arrives or is taken by the data channel.
    activity: Activity,
}

impl fmt::Debug for WebRtcChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebRtcChannel")
            .field("state", &*self.state.borrow())
            .field("max_frame", &self.max_frame)
            .field("in_frame", &self.reassembler.in_frame())
            .finish_non_exhaustive()
    }
}

fn send_error(e: webrtc::error::Error) -> ChannelError {
    match e {
        webrtc::error::Error::ErrDataChannelClosed => ChannelError::Closed,
        other => ChannelError::Transport(Box::new(other)),
    }
}

/// Waits until what was sent is acknowledged (or [`LINGER`] passes), then closes.
async fn shut_down(pc: Arc<dyn PeerConnection>, dc: Arc<dyn DataChannel>) {
    let _ = tokio::time::timeout(LINGER, async {
        while dc.outstanding_bytes().await.is_ok_and(|bytes| bytes > 0) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let _ = dc.close().await;
    let _ = pc.close().await;
}

impl WebRtcChannel {
    pub(crate) fn new(peer: Peer, dc: Arc<dyn DataChannel>, early: Early) -> Self {
        // Frame lengths travel as 32 bits.
        let max_frame = peer.options.max_frame.min(u32::MAX as usize);
        WebRtcChannel {
            pc: peer.pc,
            dc,
            state: peer.state,
            early: early.into(),
            reassembler: Reassembler::new(max_frame),
            max_frame,
            closed: false,
            activity: Activity::new(),
        }
    }

    /// The largest package frame this channel sends or accepts, in bytes.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Sends one raw data-channel message, bypassing the framing: for testing how a peer
    /// handles bad input.
    pub async fn send_raw(&mut self, message: &[u8]) -> Result<(), ChannelError> {
        self.dc
            .send(BytesMut::from(message))
            .await
            .map_err(send_error)
    }

    /// Closes the channel: waits (a few seconds at most) until the peer has acknowledged
    /// everything sent, then closes the data channel and the connection.
    pub async fn close(mut self) {
        self.shut_down_once().await;
    }

    async fn shut_down_once(&mut self) {
        if !self.closed {
            self.closed = true;
            shut_down(self.pc.clone(), self.dc.clone()).await;
        }
    }

    /// The next message from the peer, or how the conversation ended.
    async fn next_message(&mut self) -> Next {
        if let Some(message) = self.early.pop_front() {
            return Next::Message(message);
        }
        let WebRtcChannel { dc, state, .. } = self;
        loop {
            tokio::select! {
                // Whatever arrived before a close is still read.
                biased;
                event = dc.poll() => match event {
                    Some(DataChannelEvent::OnMessage(message)) => return Next::Message(message),
                    Some(DataChannelEvent::OnClose) => return Next::Closed,
                    None => return Next::Failed,
                    Some(_) => {}
                },
                _ = state.wait_for(is_gone) => return Next::Failed,
            }
        }
    }
}

/// What the data channel gives next.
enum Next {
    /// A message.
    Message(RTCDataChannelMessage),
    /// The peer closed the data channel.
    Closed,
    /// The connection failed, or its driver ended.
    Failed,
}

impl Drop for WebRtcChannel {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        // Closing right away could cut off the last packages sent; let them drain first.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(shut_down(self.pc.clone(), self.dc.clone()));
        }
    }
}

impl FastSyncChannel for WebRtcChannel {
    fn send(&mut self, package: Package) -> BoxFuture<'_, Result<(), ChannelError>> {
        Box::pin(async move {
            let frame = package.encode();
            if frame.len() > self.max_frame {
                return Err(ChannelError::TooLarge {
                    limit: self.max_frame,
                });
            }
            for message in split(&frame, MESSAGE_LIMIT) {
                self.dc.send(message).await.map_err(send_error)?;
                self.activity.mark();
            }
            Ok(())
        })
    }

    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Package>, ChannelError>> {
        Box::pin(async move {
            loop {
                let message = match self.next_message().await {
                    Next::Message(message) => message,
                    // A close between frames is the end of the conversation; within one,
                    // the peer went away mid-package.
                    Next::Closed if !self.reassembler.in_frame() => return Ok(None),
                    // The connection failed: the peer did not end the conversation.
                    Next::Closed | Next::Failed => return Err(ChannelError::Closed),
                };
                self.activity.mark();
                if message.is_string {
                    return Err(ChannelError::Malformed {
                        problem: "a text message where binary frames were expected".into(),
                    });
                }
                if let Some(frame) = self.reassembler.push(&message.data)? {
                    return Package::decode(&frame).map(Some);
                }
            }
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.shut_down_once())
    }

    fn activity(&self) -> Option<Activity> {
        Some(self.activity.clone())
    }
}
