//! Pairing two peers with one offer string and one answer string.
//!
//! Each peer binds one UDP socket (by default on 127.0.0.1), gathers its host candidate
//! fully and only then writes its session description, so the offer and the answer carry
//! every candidate and no trickle step is needed: the strings are base64 of the SDP. No STUN
//! or TURN server is used and mDNS is off, so pairing works with no network at all. The
//! strings are checked before use, and a string that is not an offer (or not an answer) is
//! an [`Error::InvalidOffer`] (or [`Error::InvalidAnswer`]) saying why.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rtc::ice::mdns::MulticastDnsMode;
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::RTCDataChannelState;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelMessage};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
};

use crate::channel::WebRtcChannel;
use crate::error::{Error, Result};
use crate::options::WebRtcOptions;
use crate::runtime::BufferedRuntime;

/// The data channel's label.
const LABEL: &str = "storex-fast-sync";
/// Threads that drive the peer connections, shared by every connection of the process, so
/// the transport does not compete with the app's own tasks for the app's runtime.
const REACTOR_THREADS: usize = 2;

/// Hands the connection's events to whoever waits for them.
struct Events {
    gathered: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
    channels: mpsc::UnboundedSender<Arc<dyn DataChannel>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.state.send_replace(state);
    }

    async fn on_data_channel(&self, data_channel: Arc<dyn DataChannel>) {
        let _ = self.channels.send(data_channel);
    }
}

/// A peer connection with its event receivers.
pub(crate) struct Peer {
    pub(crate) pc: Arc<dyn PeerConnection>,
    pub(crate) state: watch::Receiver<RTCPeerConnectionState>,
    gathered: watch::Receiver<bool>,
    channels: mpsc::UnboundedReceiver<Arc<dyn DataChannel>>,
    pub(crate) options: WebRtcOptions,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("state", &*self.state.borrow())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// True once the connection can no longer carry anything.
pub(crate) fn is_gone(state: &RTCPeerConnectionState) -> bool {
    matches!(
        state,
        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
    )
}

impl Peer {
    async fn build(options: &WebRtcOptions) -> Result<Peer> {
        let (gathered_tx, gathered) = watch::channel(false);
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let (channels_tx, channels) = mpsc::unbounded_channel();
        let events = Events {
            gathered: gathered_tx,
            state: state_tx,
            channels: channels_tx,
        };
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .build();
        let pc = PeerConnectionBuilder::new()
            .with_setting_engine(settings)
            .with_runtime(Arc::new(BufferedRuntime::new(options.socket_buffer)))
            .with_handler(Arc::new(events))
            .with_udp_addrs(vec![options.bind])
            .with_dedicated_reactor_pool_size(REACTOR_THREADS)
            .with_data_channel_send_buffer_limit(options.send_buffer.max(1))
            .build()
            .await?;
        Ok(Peer {
            pc: Arc::new(pc),
            state,
            gathered,
            channels,
            options: options.clone(),
        })
    }

    /// Waits until every local candidate is gathered; returns the description with them.
    async fn gathered_description(&mut self) -> Result<String> {
        let waited = self.options.connect_timeout;
        tokio::time::timeout(waited, self.gathered.wait_for(|done| *done))
            .await
            .map_err(|_| Error::GatheringTimeout { waited })?
            .map_err(|_| Error::ConnectionFailed {
                state: "closed".into(),
            })?;
        let description =
            self.pc
                .local_description()
                .await
                .ok_or_else(|| Error::ConnectionFailed {
                    state: "lost its local description".into(),
                })?;
        Ok(base64::engine::general_purpose::STANDARD.encode(description.sdp))
    }

    /// Waits until `dc` is open, the connection fails, or the timeout passes. Messages that
    /// arrive while waiting are returned, to be read first.
    async fn open(
        mut self,
        dc: Option<Arc<dyn DataChannel>>,
        deadline: tokio::time::Instant,
    ) -> Result<WebRtcChannel> {
        let waited = self.options.connect_timeout;
        let opening = async {
            let dc = match dc {
                Some(dc) => dc,
                None => {
                    let Peer {
                        channels, state, ..
                    } = &mut self;
                    loop {
                        tokio::select! {
                            dc = channels.recv() => match dc {
                                Some(dc) if suits(&dc).await => break dc,
                                // Not the channel the protocol needs: refused, and waited past.
                                Some(other) => {
                                    let _ = other.close().await;
                                }
                                None => return Err(Error::ConnectionFailed {
                                    state: "closed".into(),
                                }),
                            },
                            gone = state.wait_for(is_gone) => return Err(gone_error(gone.ok().map(|s| *s))),
                        }
                    }
                }
            };
            let mut early = Vec::new();
            if dc.ready_state().await.ok() != Some(RTCDataChannelState::Open) {
                loop {
                    tokio::select! {
                        biased;
                        event = dc.poll() => match event {
                            Some(DataChannelEvent::OnOpen) => break,
                            Some(DataChannelEvent::OnMessage(message)) => {
                                early.push(message);
                                break;
                            }
                            Some(DataChannelEvent::OnClose) | None => {
                                return Err(Error::ConnectionFailed { state: "closed".into() })
                            }
                            Some(_) => {}
                        },
                        gone = self.state.wait_for(is_gone) => return Err(gone_error(gone.ok().map(|s| *s))),
                    }
                }
            }
            Ok::<_, Error>((dc, early))
        };
        let (dc, early) = tokio::time::timeout_at(deadline, opening)
            .await
            .map_err(|_| Error::Timeout { waited })??;
        // Data channels the peer opens later are closed: each would hold events in the
        // connection's driver for as long as it runs. (The task ends with the connection.)
        let (_, none) = mpsc::unbounded_channel();
        let mut later = std::mem::replace(&mut self.channels, none);
        tokio::spawn(async move {
            while let Some(extra) = later.recv().await {
                let _ = extra.close().await;
            }
        });
        Ok(WebRtcChannel::new(self, dc, early))
    }

    /// Closes the connection (errors ignored: it is being given up).
    async fn abandon(self) {
        let _ = self.pc.close().await;
    }
}

fn gone_error(state: Option<RTCPeerConnectionState>) -> Error {
    Error::ConnectionFailed {
        state: state.map_or_else(|| "closed".into(), |s| s.to_string()),
    }
}

/// Whether a data channel the peer opened is the one the protocol runs on: its label, and
/// ordered. (It must be reliable too, but webrtc 0.21 reports no retransmission limits for a
/// channel the peer opened: those checks pass until it does.)
async fn suits(dc: &Arc<dyn DataChannel>) -> bool {
    dc.label().await.is_ok_and(|label| label == LABEL)
        && dc.ordered().await.unwrap_or(false)
        && dc.max_retransmits().await.is_ok_and(|n| n.is_none())
        && dc.max_packet_life_time().await.is_ok_and(|t| t.is_none())
}

/// Which side wrote a description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Offer,
    Answer,
}

/// Reads an offer or answer string back into a session description, checking it is one.
fn decode(text: &str, kind: Kind) -> Result<RTCSessionDescription> {
    let invalid = |problem: &str| match kind {
        Kind::Offer => Error::InvalidOffer {
            problem: problem.to_owned(),
        },
        Kind::Answer => Error::InvalidAnswer {
            problem: problem.to_owned(),
        },
    };
    // Pasted strings may be wrapped over several lines.
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() {
        return Err(invalid("the string is empty"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| invalid(&format!("not base64 ({e})")))?;
    let sdp = String::from_utf8(bytes).map_err(|_| invalid("not text once decoded"))?;
    if !sdp.starts_with("v=0") {
        return Err(invalid("not a session description"));
    }
    // The offerer lets the answerer choose the DTLS role; an answer has chosen.
    let is_offer = sdp.contains("a=setup:actpass");
    match (kind, is_offer) {
        (Kind::Offer, false) => return Err(invalid("this is an answer, not an offer")),
        (Kind::Answer, true) => return Err(invalid("this is an offer, not an answer")),
        _ => {}
    }
    if !sdp.contains("m=application") {
        return Err(invalid("it has no data channel section"));
    }
    if !sdp.contains("a=candidate:") {
        return Err(invalid("it carries no ICE candidate"));
    }
    let parsed = match kind {
        Kind::Offer => RTCSessionDescription::offer(sdp),
        Kind::Answer => RTCSessionDescription::answer(sdp),
    };
    parsed.map_err(|e| invalid(&format!("the session description does not parse ({e})")))
}

/// The offering side, waiting for the answer.
///
/// Made by [`WebRtcChannel::offer`]; give its offer string to the other peer and pass the
/// answer string it returns to [`PendingOffer::connect`].
pub struct PendingOffer {
    peer: Peer,
    dc: Arc<dyn DataChannel>,
}

impl fmt::Debug for PendingOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingOffer")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// The answering side, waiting for the offerer to connect.
///
/// Made by [`WebRtcChannel::accept`]; give its answer string to the offerer, then call
/// [`PendingAnswer::open`].
pub struct PendingAnswer {
    peer: Peer,
}

impl fmt::Debug for PendingAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAnswer")
            .field("peer", &self.peer)
            .finish()
    }
}

impl WebRtcChannel {
    /// Starts pairing as the offering side, with [`WebRtcOptions::default`]: returns the
    /// pending side and the offer string to give to the other peer.
    ///
    /// Must run inside a Tokio runtime (with time enabled).
    pub async fn offer() -> Result<(PendingOffer, String)> {
        Self::offer_with(&WebRtcOptions::default()).await
    }

    /// Starts pairing as the offering side, with `options`.
    pub async fn offer_with(options: &WebRtcOptions) -> Result<(PendingOffer, String)> {
        let mut peer = Peer::build(options).await?;
        let made = async {
            let dc = peer.pc.create_data_channel(LABEL, None).await?;
            let offer = peer.pc.create_offer(None).await?;
            peer.pc.set_local_description(offer).await?;
            let text = peer.gathered_description().await?;
            Ok::<_, Error>((dc, text))
        }
        .await;
        match made {
            Ok((dc, text)) => Ok((PendingOffer { peer, dc }, text)),
            Err(e) => {
                peer.abandon().await;
                Err(e)
            }
        }
    }

    /// Answers an offer string, with [`WebRtcOptions::default`]: returns the pending side
    /// and the answer string to give back to the offerer.
    ///
    /// An `offer` that is not an offer string is an [`Error::InvalidOffer`].
    pub async fn accept(offer: &str) -> Result<(PendingAnswer, String)> {
        Self::accept_with(offer, &WebRtcOptions::default()).await
    }

    /// Answers an offer string, with `options`.
    pub async fn accept_with(
        offer: &str,
        options: &WebRtcOptions,
    ) -> Result<(PendingAnswer, String)> {
        let offer = decode(offer, Kind::Offer)?;
        let mut peer = Peer::build(options).await?;
        let made = async {
            peer.pc
                .set_remote_description(offer)
                .await
                .map_err(|e| Error::InvalidOffer {
                    problem: format!("the connection refused it ({e})"),
                })?;
            let answer = peer.pc.create_answer(None).await?;
            peer.pc.set_local_description(answer).await?;
            peer.gathered_description().await
        }
        .await;
        match made {
            Ok(text) => Ok((PendingAnswer { peer }, text)),
            Err(e) => {
                peer.abandon().await;
                Err(e)
            }
        }
    }
}

impl PendingOffer {
    /// Whether `answer` reads as an answer string ([`Error::InvalidAnswer`] if not), without
    /// taking this offer: a mistyped answer can be asked for again, where
    /// [`PendingOffer::connect`] would have ended the offer with it.
    pub fn check_answer(&self, answer: &str) -> Result<()> {
        decode(answer, Kind::Answer).map(|_| ())
    }

    /// Takes the other peer's answer string and waits for the data channel to open
    /// (at most the connect timeout, then [`Error::Timeout`]).
    ///
    /// An `answer` that is not an answer string is an [`Error::InvalidAnswer`].
    pub async fn connect(self, answer: &str) -> Result<WebRtcChannel> {
        let deadline = tokio::time::Instant::now() + self.peer.options.connect_timeout;
        let answer = match decode(answer, Kind::Answer) {
            Ok(answer) => answer,
            Err(e) => {
                self.peer.abandon().await;
                return Err(e);
            }
        };
        if let Err(e) = self.peer.pc.set_remote_description(answer).await {
            self.peer.abandon().await;
            return Err(Error::InvalidAnswer {
                problem: format!("the connection refused it ({e})"),
            });
        }
        let pc = self.peer.pc.clone();
        match self.peer.open(Some(self.dc), deadline).await {
            Ok(channel) => Ok(channel),
            Err(e) => {
                let _ = pc.close().await;
                Err(e)
            }
        }
    }

    /// How long [`PendingOffer::connect`] waits for the channel to open.
    pub fn connect_timeout(&self) -> Duration {
        self.peer.options.connect_timeout
    }
}

impl PendingAnswer {
    /// Waits for the offerer to connect and the data channel to open (at most the connect
    /// timeout, counted from this call, then [`Error::Timeout`]).
    pub async fn open(self) -> Result<WebRtcChannel> {
        let deadline = tokio::time::Instant::now() + self.peer.options.connect_timeout;
        let pc = self.peer.pc.clone();
        match self.peer.open(None, deadline).await {
            Ok(channel) => Ok(channel),
            Err(e) => {
                let _ = pc.close().await;
                Err(e)
            }
        }
    }
}

/// What arrived before the channel was handed over.
pub(crate) type Early = Vec<RTCDataChannelMessage>;

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(sdp: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(sdp)
    }

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
        a=setup:actpass\r\na=mid:0\r\n\
        a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n";

    fn problem(result: Result<RTCSessionDescription>) -> String {
        match result {
            Err(Error::InvalidOffer { problem } | Error::InvalidAnswer { problem }) => problem,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn strings_that_are_not_descriptions_are_refused_with_a_reason() {
        assert!(problem(decode("", Kind::Offer)).contains("empty"));
        assert!(problem(decode("%%%not base64%%%", Kind::Offer)).contains("base64"));
        assert!(problem(decode(&encode("hello"), Kind::Offer)).contains("session description"));
        let no_candidate = OFFER.replace("a=candidate", "a=x");
        assert!(problem(decode(&encode(&no_candidate), Kind::Offer)).contains("candidate"));
        assert!(problem(decode(&encode(OFFER), Kind::Answer)).contains("an offer, not an answer"));
        let answer = OFFER.replace("actpass", "active");
        assert!(problem(decode(&encode(&answer), Kind::Offer)).contains("an answer, not an offer"));
    }

    #[test]
    fn a_wrapped_offer_string_is_read() {
        let text = encode(OFFER);
        let wrapped: String = text
            .as_bytes()
            .chunks(40)
            .map(|line| format!("{}\n", String::from_utf8_lossy(line)))
            .collect();
        let description = decode(&wrapped, Kind::Offer).expect("an offer");
        assert_eq!(description.sdp, OFFER);
    }
}
