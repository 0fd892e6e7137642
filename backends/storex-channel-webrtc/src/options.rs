//! [`WebRtcOptions`]: where a peer binds, how long it waits, how large a package may be.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The default largest package frame: 64 MiB, as on the TCP channel.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;
/// The default time the data channel has to open: 15 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How a peer pairs and what its channel accepts.
///
/// ```
/// use std::time::Duration;
/// use storex_channel_webrtc::WebRtcOptions;
///
/// let options = WebRtcOptions::default()
///     .with_connect_timeout(Duration::from_secs(5))
///     .with_max_frame(8 * 1024 * 1024);
/// assert_eq!(options.max_frame, 8 * 1024 * 1024);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WebRtcOptions {
    /// The local UDP address to bind; its host candidate is the only one offered.
    /// Default `127.0.0.1:0` (loopback, any port): a wildcard address would skip loopback.
    pub bind: SocketAddr,
    /// How long [`PendingOffer::connect`](crate::PendingOffer::connect) and
    /// [`PendingAnswer::open`](crate::PendingAnswer::open) wait for the data channel to open.
    pub connect_timeout: Duration,
    /// The largest package frame sent or accepted, in bytes; larger ones are
    /// `ChannelError::TooLarge`.
    pub max_frame: usize,
    /// Send and receive buffer of the UDP socket, in bytes (default 4 MiB): with the
    /// kernel's default, datagrams are dropped under load and throughput collapses.
    pub socket_buffer: usize,
    /// Bytes handed to the data channel but not yet acknowledged by the peer, at most
    /// (default 4 MiB); a send waits beyond it, which bounds the sender's memory.
    pub send_buffer: usize,
}

impl Default for WebRtcOptions {
    fn default() -> Self {
        WebRtcOptions {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_frame: DEFAULT_MAX_FRAME,
            socket_buffer: 4 * 1024 * 1024,
            send_buffer: 4 * 1024 * 1024,
        }
    }
}

impl WebRtcOptions {
    /// Sets the local UDP address to bind.
    pub fn with_bind(mut self, bind: SocketAddr) -> Self {
        self.bind = bind;
        self
    }

    /// Sets how long the data channel has to open.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the largest package frame, in bytes.
    pub fn with_max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Sets the UDP socket's send and receive buffer, in bytes.
    pub fn with_socket_buffer(mut self, bytes: usize) -> Self {
        self.socket_buffer = bytes;
        self
    }

    /// Sets how many unacknowledged bytes the data channel may hold before a send waits.
    pub fn with_send_buffer(mut self, bytes: usize) -> Self {
        self.send_buffer = bytes;
        self
    }
}
