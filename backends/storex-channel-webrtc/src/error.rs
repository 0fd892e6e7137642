//! [`Error`]: what pairing two peers can fail with.
//!
//! Once a channel is open, its failures are [`ChannelError`]s like those of every other
//! fast-sync channel; this type covers what comes before: a pasted offer or answer that is
//! not one, a connection that does not open in time, and the WebRTC stack itself.

use std::time::Duration;

use storex_sync::fast_sync::{ChannelError, FastSyncError};

/// What pairing two peers over WebRTC can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The offer string is not an offer made by [`WebRtcChannel::offer`](crate::WebRtcChannel::offer).
    #[error("not a valid WebRTC offer: {problem}")]
    InvalidOffer {
        /// What is wrong with it.
        problem: String,
    },
    /// The answer string is not an answer made by [`WebRtcChannel::accept`](crate::WebRtcChannel::accept).
    #[error("not a valid WebRTC answer: {problem}")]
    InvalidAnswer {
        /// What is wrong with it.
        problem: String,
    },
    /// The data channel did not open within the connect timeout.
    #[error("the WebRTC data channel did not open within {waited:?} (is the peer running and reachable?)")]
    Timeout {
        /// How long this side waited.
        waited: Duration,
    },
    /// This device's own network candidates were not gathered within the connect timeout,
    /// before any peer is involved.
    #[error("gathering this device's WebRTC candidates did not finish within {waited:?} (is the bind address one of this machine's?)")]
    GatheringTimeout {
        /// How long this side waited.
        waited: Duration,
    },
    /// The connection failed or closed before the data channel opened.
    #[error("the WebRTC connection {state} before the data channel opened")]
    ConnectionFailed {
        /// The connection's last state, e.g. `failed`.
        state: String,
    },
    /// The WebRTC stack failed.
    #[error("the WebRTC stack failed")]
    WebRtc(#[source] webrtc::error::Error),
}

impl From<webrtc::error::Error> for Error {
    fn from(e: webrtc::error::Error) -> Self {
        Error::WebRtc(e)
    }
}

/// A pasted offer or answer that is not one cannot be set up however often it is tried
/// ([`ChannelError::Setup`]); the rest is a failure of the transport, which may pass.
impl From<Error> for ChannelError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidOffer { .. } | Error::InvalidAnswer { .. } => {
                ChannelError::Setup(Box::new(e))
            }
            other => ChannelError::Transport(Box::new(other)),
        }
    }
}

/// Lets pairing failures travel as `storex_sync` errors (a failure of the channel: see
/// `From<Error> for ChannelError`), so `?` works in code that runs a fast-sync session.
impl From<Error> for storex_sync::Error {
    fn from(e: Error) -> Self {
        FastSyncError::Channel(e.into()).into()
    }
}

/// The result type of this crate's pairing calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_that_is_not_one_is_not_worth_retrying_a_timeout_is() {
        let invalid: storex_sync::Error = Error::InvalidAnswer {
            problem: "truncated".into(),
        }
        .into();
        assert!(!invalid.is_transient(), "{invalid:?}");
        let timeout: storex_sync::Error = Error::Timeout {
            waited: Duration::from_secs(1),
        }
        .into();
        assert!(timeout.is_transient(), "{timeout:?}");
    }
}
