//! The server's connections: accepting them, serving HTTP/1 on each, and closing them.
//!
//! In place of `axum::serve`, which sets no timer on its connections, so that a client that
//! opens connections and never finishes a request head (or leaves them idle) would hold
//! them, and their file descriptors, for ever. Here each connection must send a complete
//! request head within [`ServerConfig::header_timeout`] of waiting for one (idle keep-alive
//! included), and at most [`ServerConfig::max_connections`] are open at once: past that, new
//! connections wait in the listen queue until one closes. A connection whose client takes
//! nothing of a reply for [`ServerConfig::write_timeout`] is closed (see [`WriteTimeout`]).
//!
//! [`ServerConfig::header_timeout`]: crate::ServerConfig::header_timeout
//! [`ServerConfig::max_connections`]: crate::ServerConfig::max_connections
//! [`ServerConfig::write_timeout`]: crate::ServerConfig::write_timeout

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::write_timeout::WriteTimeout;

/// Most bytes of a reply the kernel keeps queued and not yet sent (`TCP_NOTSENT_LOWAT`).
#[cfg(any(target_os = "linux", target_os = "android"))]
const UNSENT_LOW_WATER: u32 = 128 * 1024;

/// How a served connection behaves.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnectionLimits {
    /// Longest wait for a complete request head.
    pub(crate) header_timeout: Duration,
    /// Longest a reply may wait for its client to take any of it.
    pub(crate) write_timeout: Duration,
    /// Most connections open at once.
    pub(crate) max_connections: usize,
}

/// Accepts connections on `listener` and serves `app` on each until `shutdown` is
/// cancelled; then closes the listener (new clients are refused at once, and fail over to
/// another instance), asks every connection to close after its request in flight, and
/// returns once all have closed.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = open.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => break,
            },
        };
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // the listener itself is fine, so it goes on after a breath.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_connection(stream, remote, app, limits, shutdown).await;
            drop(permit);
        });
        // Ended connections leave the set as they end, not only at shutdown.
        while connections.try_join_next().is_some() {}
    }
    // Open, the listener would go on completing handshakes of clients nobody answers.
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves HTTP/1 on one connection, with the client's address for the per-IP rate limit.
async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    // Small replies (acknowledgements) must not wait for more data.
    let _ = stream.set_nodelay(true);
    // The kernel queues at most this much of a reply unsent, so that a client reading
    // slowly frees room in small steps, each a sign of progress to the write timeout (with
    // a send buffer grown to megabytes, a third of it must drain before a write goes on).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(UNSENT_LOW_WATER);
    let service = app.map_request(move |mut request: axum::http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        request.map(axum::body::Body::new)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let stream = WriteTimeout::new(stream, limits.write_timeout);
    let connection =
        builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, %remote, "connection ended with an error");
            }
            return;
        }
        () = shutdown.cancelled() => {}
    }
    // The request in flight is answered, then the connection closes.
    connection.as_mut().graceful_shutdown();
    if let Err(error) = connection.await {
        tracing::debug!(%error, %remote, "connection ended with an error");
    }
}
