//! storex-log-http: the storex sync server ([`SyncServer`], run by `storex serve`) and
//! [`HttpSharedLog`], the `SharedSyncLog` client apps use to reach it.
//!
//! Desktop and mobile apps cannot hold database credentials; they talk to a sync server. The
//! server keeps the shared log in PostgreSQL (or a SQLite file on a single machine) through
//! `storex_log_sql::SqlSharedLog`, so it scales the way PostgreSQL does: it holds no state of
//! its own beyond caches that are safe to lose, and several instances can serve one database.
//!
//! ## Protocol
//! JSON over HTTP (see [`api`]); every call carries `Authorization: Bearer <token>`:
//! - the **admin token** (server configuration) creates users: `POST /v1/users`;
//! - a **user token** registers devices (`POST /v1/devices`), revokes them
//!   (`DELETE /v1/devices/{id}`) and compacts (`POST /v1/compact`);
//! - a **device token** pushes (`POST /v1/push`), pulls (`POST /v1/pull`, with `wait_ms` a long
//!   poll that answers as soon as another device pushes: the live update), acks
//!   (`POST /v1/ack`) and lists its user's devices (`GET /v1/devices`).
//!
//! Tokens are random and stored as hashes only. A device token speaks only for its device: it
//! cannot push another device's entries nor read another user's. Errors are JSON with a stable
//! code (see [`api::ErrorDetail`]). Request bodies (each, and the bytes held at once, per
//! instance and per user), entries per push and requests per token are limited; compaction runs on a schedule; `/health` and `/metrics` report totals.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use storex_log_http::{HttpSharedLog, ServerConfig, SyncServer};
//! use storex_sync::SharedSyncLog;
//!
//! let server = SyncServer::start(
//!     ServerConfig::new("sqlite:///tmp/storex-server.db?mode=rwc")
//!         .admin_token("an admin secret of 16+ characters"),
//! )
//! .await?;
//! let log = HttpSharedLog::new(&server.url())?;
//! let ann = log.create_user("an admin secret of 16+ characters", "ann").await?;
//! let phone = log.create_device(&ann.token).await?;
//! let token = log.device_token(phone); // keep it: HttpSharedLog::add_device after a restart
//! # drop(token);
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod api;
mod auth;
mod body_budget;
mod client;
mod config;
mod connections;
mod error;
mod live;
mod metrics;
mod notify;
mod problem;
mod routes;
mod server;
mod token;
mod write_timeout;

pub use client::{ClientOptions, HttpSharedLog, SLOW_LINK_PAUSE, SLOW_PUSH};
pub use config::{RateLimit, ServerConfig};
pub use error::Error;
pub use server::{RunningServer, SyncServer};
pub use tokio_util::sync::CancellationToken;
