//! storex-channel-tcp: [`TcpChannel`], a fast-sync channel over a TCP connection.
//!
//! Each package travels as one frame: a 4-byte big-endian length, then the package's
//! versioned encoding. A frame longer than the limit (64 MiB unless set otherwise) is
//! refused on both sides: the sender does not send it, the receiver ends the session with
//! `ChannelError::TooLarge` before reading it. Garbage and truncated frames end the session
//! with `ChannelError::Malformed`; a peer that goes away mid-session, also in the middle of
//! a frame, with `ChannelError::Closed` or a transport error. Nothing from the network is trusted.
//! Closing waits at most [`CLOSE_WAIT`] for what is still buffered to reach the peer.
//!
//! ```no_run
//! # async fn demo(device: &storex_sync::SyncDevice) -> storex_sync::Result<()> {
//! use storex_channel_tcp::TcpChannel;
//! use storex_sync::fast_sync::{send_snapshot, FastSyncOptions};
//!
//! let mut channel = TcpChannel::connect("127.0.0.1:7070").await?;
//! send_snapshot(device, &mut channel, &FastSyncOptions::default()).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{SinkExt, StreamExt};
use storex_core::BoxFuture;
use storex_sync::fast_sync::{Activity, ChannelError, FastSyncChannel, FastSyncError, Package};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio_util::bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, Framed, LengthDelimitedCodec};

/// The default largest frame: 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

/// How long [`FastSyncChannel::close`] waits for what is still buffered to reach the peer.
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Length-prefixed frames; a connection that ends inside a frame reads as
/// `UnexpectedEof` (the peer went away), not as the codec's generic error.
struct Frames(LengthDelimitedCodec);

impl Decoder for Frames {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        self.0.decode(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        match self.0.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection ended inside a frame",
            )),
        }
    }
}

impl Encoder<Bytes> for Frames {
    type Error = io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        self.0.encode(frame, dst)
    }
}

/// A fast-sync channel over one TCP connection.
pub struct TcpChannel {
    framed: Framed<Watched, Frames>,
    max_frame: usize,
    activity: Activity,
}

/// The connection, marking the channel's [`Activity`] whenever bytes are read or written:
/// a frame of many megabytes on a slow link is under way as long as its bytes move.
struct Watched {
    stream: TcpStream,
    activity: Activity,
}

impl Watched {
    fn moved<T>(
        &self,
        polled: Poll<io::Result<T>>,
        bytes: impl Fn(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        if let Poll::Ready(Ok(done)) = &polled {
            if bytes(done) {
                self.activity.mark();
            }
        }
        polled
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let read = buf.filled().len() > before;
        self.moved(polled, |_| read)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.moved(polled, |written| *written > 0)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl fmt::Debug for TcpChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpChannel")
            .field("peer", &self.framed.get_ref().stream.peer_addr().ok())
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

fn transport(e: std::io::Error) -> storex_sync::Error {
    FastSyncError::Channel(ChannelError::Transport(Box::new(e))).into()
}

impl TcpChannel {
    /// Wraps a connected stream, with frames of at most [`DEFAULT_MAX_FRAME`] bytes.
    pub fn new(stream: TcpStream) -> Self {
        Self::with_max_frame(stream, DEFAULT_MAX_FRAME)
    }

    /// Wraps a connected stream, with frames of at most `max_frame` bytes (at most 4 GiB − 1,
    /// what the 4-byte length can say).
    pub fn with_max_frame(stream: TcpStream, max_frame: usize) -> Self {
        let max_frame = max_frame.min(u32::MAX as usize);
        // Small packages (acknowledgements) must not wait for more data.
        let _ = stream.set_nodelay(true);
        let codec = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .max_frame_length(max_frame)
            .new_codec();
        let activity = Activity::new();
        let watched = Watched {
            stream,
            activity: activity.clone(),
        };
        TcpChannel {
            framed: Framed::new(watched, Frames(codec)),
            max_frame,
            activity,
        }
    }

    /// Connects to a listening peer.
    pub async fn connect(address: impl ToSocketAddrs) -> storex_sync::Result<Self> {
        let stream = TcpStream::connect(address).await.map_err(transport)?;
        Ok(Self::new(stream))
    }

    /// Waits for a peer on `listener` and returns the channel to it.
    pub async fn accept(listener: &TcpListener) -> storex_sync::Result<Self> {
        let (stream, _) = listener.accept().await.map_err(transport)?;
        Ok(Self::new(stream))
    }
}

impl FastSyncChannel for TcpChannel {
    fn send(&mut self, package: Package) -> BoxFuture<'_, Result<(), ChannelError>> {
        Box::pin(async move {
            let frame = package.encode();
            if frame.len() > self.max_frame {
                return Err(ChannelError::TooLarge {
                    limit: self.max_frame,
                });
            }
            self.framed
                .send(Bytes::from(frame))
                .await
                .map_err(|e| ChannelError::Transport(Box::new(e)))
        })
    }

    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Package>, ChannelError>> {
        Box::pin(async move {
            match self.framed.next().await {
                None => Ok(None),
                Some(Ok(frame)) => Package::decode(&frame).map(Some),
                // The codec refuses an oversized frame before reading it.
                Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    Err(ChannelError::TooLarge {
                        limit: self.max_frame,
                    })
                }
                Some(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    Err(ChannelError::Closed)
                }
                Some(Err(e)) => Err(ChannelError::Transport(Box::new(e))),
            }
        })
    }

    fn activity(&self) -> Option<Activity> {
        Some(self.activity.clone())
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Flushes what is buffered and shuts the write half down; the peer reads the end.
            // A peer that stopped reading would hold the flush for ever: it gets a while.
            let closing = SinkExt::<Bytes>::close(&mut self.framed);
            let _ = tokio::time::timeout(CLOSE_WAIT, closing).await;
        })
    }
}
