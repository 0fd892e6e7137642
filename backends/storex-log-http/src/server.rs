//! [`SyncServer`]: the shared log over HTTP. Starting, stopping, and the background work of a
//! running instance (scheduled compaction, cross-instance wake-ups).
//!
//! An instance keeps no state of its own beyond caches that are safe to lose (rate-limit
//! buckets, wake-up channels): users, devices, tokens, entries and cursors live in the
//! database, so any number of instances can serve one PostgreSQL database, and any instance
//! can answer any device. A push on one instance wakes pulls waiting on the others through
//! PostgreSQL `LISTEN`/`NOTIFY` (see `notify.rs`).
//!
//! ## Cursors under concurrent pushes from several instances
//! Cursors come from the database, never from an instance: a push runs one transaction that
//! first locks its user's counter row (`UPDATE storex_shared_users SET next_cursor =
//! next_cursor + n`, a row lock PostgreSQL holds until commit), takes its `n` cursors from the
//! new value and inserts its entries. A second push of the same user, on any instance, waits
//! on that row lock, so one user's pushes commit one after the other in cursor order: once an
//! entry with cursor `c` is visible, every entry below `c` is visible too. A pull reads the
//! committed counter `H` first and returns only entries in `(after, H]`; an entry that commits
//! later gets a cursor above `H` and is found by the next pull. No reader can skip an entry.
//! The `scale_out` test checks it with three instance processes, thirty devices and one
//! instance killed mid-load: every device sees every other device's entry exactly once.
//!
//! ## Start-up migrations
//! Each instance creates the tables it needs at start, in a transaction that holds a
//! PostgreSQL advisory lock, so instances starting together on a fresh database do not race
//! on the catalog.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use storex_log_sql::SqlSharedLog;
use storex_sync::SharedSyncLog;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::timeout::TimeoutLayer;

use crate::auth::AuthStore;
use crate::body_budget::BodyBudget;
use crate::config::ServerConfig;
use crate::connections::{self, ConnectionLimits};
use crate::error::Error;
use crate::live::LiveUpdates;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::routes::{self, AppState, Limiter};

/// The sync server. [`SyncServer::start`] opens the database, creates the tables it needs
/// (once, even when several instances start together on PostgreSQL) and serves.
#[derive(Debug)]
pub struct SyncServer;

impl SyncServer {
    /// Opens `config.database_url` and serves on `config.listen`.
    pub async fn start(config: ServerConfig) -> Result<RunningServer, Error> {
        config
            .check()
            .map_err(|problem| Error::Config { problem })?;
        let log = SqlSharedLog::connect(&config.database_url)
            .await
            .map_err(Error::Database)?;
        Self::start_with_log(log, config).await
    }

    /// Serves `log` (an open [`SqlSharedLog`]); `config.database_url` is not used.
    pub async fn start_with_log(
        log: SqlSharedLog,
        config: ServerConfig,
    ) -> Result<RunningServer, Error> {
        config
            .check()
            .map_err(|problem| Error::Config { problem })?;
        let auth = AuthStore::new(log.connection().clone())
            .await
            .map_err(Error::Auth)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let shutdown = CancellationToken::new();
        let live = Arc::new(LiveUpdates::default());
        let notifier = if config.notify_instances {
            Notifier::start(&log, live.clone(), shutdown.clone()).await?
        } else {
            Notifier::local()
        };
        let state = Arc::new(AppState {
            log,
            auth,
            live,
            notifier,
            limiter: Limiter::new(config.rate_limit, config.ip_rate_limit),
            budget: BodyBudget::new(
                config.max_buffered_bytes,
                config.max_buffered_bytes_per_user,
            ),
            metrics: Metrics::default(),
            shutdown: shutdown.clone(),
            pushes: TaskTracker::new(),
            config,
            health: Default::default(),
            stats: Default::default(),
        });
        let app = routes::router(state.clone())
            .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                state.config.request_timeout,
            ))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                routes::count_requests,
            ));
        let limits = ConnectionLimits {
            header_timeout: state.config.header_timeout,
            write_timeout: state.config.write_timeout,
            max_connections: state.config.max_connections,
        };
        let maintenance = tokio::spawn(maintain(state.clone()));
        let stop = shutdown.clone();
        let shutdown_for_grace = shutdown.clone();
        let grace = state.config.shutdown_grace;
        let pushes = state.pushes.clone();
        let serve = tokio::spawn(async move {
            let mut serving = Box::pin(connections::serve(listener, app, limits, stop));
            let result = tokio::select! {
                result = &mut serving => result,
                // Once asked to stop, requests in flight get `grace` to finish.
                () = async {
                    shutdown_for_grace.cancelled().await;
                    tokio::time::sleep(grace).await;
                } => Ok(()),
            };
            // Connections still open after the grace are cut (and the listener closed).
            drop(serving);
            maintenance.abort();
            // A push outlives its request when the request is cancelled (its client gone,
            // or cut off by the grace): the server is down once such pushes committed or
            // failed, not while one still writes.
            pushes.close();
            if tokio::time::timeout(grace, pushes.wait()).await.is_err() {
                tracing::warn!(
                    running = pushes.len(),
                    "stopping: pushes still running after the grace period are left to end on their own"
                );
            }
            result
        });
        Ok(RunningServer {
            addr,
            shutdown,
            serve,
        })
    }
}

/// A running sync server instance.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    serve: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, e.g. `http://127.0.0.1:8787`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A token that stops the server gracefully when cancelled (e.g. on Ctrl-C).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, ends waiting pulls at once, lets running requests and pushes finish
    /// (each within the configured grace), and returns when the server is down.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Returns when the server has stopped (after [`RunningServer::shutdown_token`] was
    /// cancelled, or on an I/O error).
    pub async fn wait(self) -> Result<(), Error> {
        match self.serve.await {
            Ok(result) => result.map_err(Error::Serve),
            Err(join) => Err(Error::Serve(std::io::Error::other(join))),
        }
    }
}

/// How often the caches are trimmed.
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Trims the caches every minute and compacts every user's log when it is due.
async fn maintain(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last_compaction = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        state.limiter.trim();
        state.live.forget_idle();
        if let Some(every) = state.config.compact_every {
            if last_compaction.elapsed() >= every {
                last_compaction = tokio::time::Instant::now();
                compact_all(&state).await;
            }
        }
    }
}

async fn compact_all(state: &AppState) {
    let users = match state.log.users().await {
        Ok(users) => users,
        Err(error) => {
            state.metrics.compaction_failed();
            tracing::warn!(%error, "scheduled compaction: cannot list users");
            return;
        }
    };
    for user in users {
        match state.log.compact(&user).await {
            Ok(dropped) => state.metrics.compacted(dropped),
            Err(error) => {
                state.metrics.compaction_failed();
                tracing::warn!(%error, user, "scheduled compaction failed");
            }
        }
    }
}
