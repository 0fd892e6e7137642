//! [`Error`]: what starting or stopping the sync server, or building its client, fails with.
//! Errors of shared-log calls are `storex_sync::SharedLogError`s.

use std::net::SocketAddr;

use storex_sync::SharedLogError;

/// What the server or the client setup fails with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server's database could not be opened or prepared.
    #[error("cannot open the sync server's database")]
    Database(#[source] storex_seaorm::Error),
    /// The auth tables could not be created or read.
    #[error("cannot prepare the sync server's auth tables")]
    Auth(#[source] sea_orm::DbErr),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("the sync server stopped with an error")]
    Serve(#[source] std::io::Error),
    /// A setting is unusable.
    #[error("invalid configuration: {problem}")]
    Config {
        /// What is wrong.
        problem: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    /// A request to the server got no answer, or not all of it, in time (the source of a
    /// `SharedLogError::Unavailable`).
    #[error("{waiting_for} did not come from the server within {after:?}")]
    TimedOut {
        /// What did not come: an answer, or the rest of the reply.
        waiting_for: &'static str,
        /// How long the client waited.
        after: std::time::Duration,
    },
    /// A shared-log call failed.
    #[error(transparent)]
    SharedLog(#[from] SharedLogError),
}
