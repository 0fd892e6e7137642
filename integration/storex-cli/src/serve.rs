//! `storex serve`: runs the sync server (storex-log-http) until Ctrl-C or SIGTERM, and
//! `storex user`: creates a user on a running server and prints its token.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use storex_log_http::{ClientOptions, HttpSharedLog, RateLimit, ServerConfig, SyncServer};

/// The flags of `storex serve` (each also read from the environment).
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Where to listen.
    #[arg(long, env = "STOREX_LISTEN", default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// The shared log's database: postgres://… or sqlite://path?mode=rwc.
    #[arg(long, env = "STOREX_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The token that may create users (at least 16 characters); without it users cannot be
    /// created over HTTP.
    #[arg(long, env = "STOREX_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, env = "STOREX_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Most request and pull-reply body bytes held at once; past it, requests wait up to 2 s
    /// and are then answered 503 `busy` (clients try again). At least --max-body-bytes.
    #[arg(long, env = "STOREX_MAX_BUFFERED_BYTES", default_value_t = 256 * 1024 * 1024)]
    max_buffered_bytes: usize,
    /// Most body bytes one user's requests hold at once on this instance; past it, 429
    /// `busy`. At least --max-body-bytes.
    #[arg(long, env = "STOREX_MAX_BUFFERED_BYTES_PER_USER", default_value_t = 32 * 1024 * 1024)]
    max_buffered_bytes_per_user: usize,
    /// Most entries one push may carry.
    #[arg(long, env = "STOREX_MAX_PUSH_ENTRIES", default_value_t = 1000)]
    max_push_entries: usize,
    /// Requests per second per token (0: unlimited); bursts of twice as many.
    #[arg(long, env = "STOREX_RATE_LIMIT", default_value_t = 200)]
    rate_limit: u32,
    /// Requests per second per client IP address before authentication (0: unlimited); bursts
    /// of twice as many. Behind a reverse proxy every client has the proxy's address.
    #[arg(long, env = "STOREX_IP_RATE_LIMIT", default_value_t = 2000)]
    ip_rate_limit: u32,
    /// Seconds between scheduled compactions (0: never).
    #[arg(long, env = "STOREX_COMPACT_EVERY", default_value_t = 600)]
    compact_every: u64,
    /// Most connections open at once; more wait until one closes. Keep it below the
    /// process's open-file limit.
    #[arg(long, env = "STOREX_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
}

/// Serves until Ctrl-C or SIGTERM, then shuts down gracefully.
pub(crate) async fn serve(args: ServeArgs) -> Result<()> {
    let mut config = ServerConfig::new(&args.database_url).listen(args.listen);
    config.admin_token = args.admin_token;
    config.max_body_bytes = args.max_body_bytes;
    config.max_buffered_bytes = args.max_buffered_bytes;
    config.max_buffered_bytes_per_user = args.max_buffered_bytes_per_user;
    config.max_push_entries = args.max_push_entries;
    config.rate_limit = (args.rate_limit > 0).then(|| RateLimit {
        per_second: args.rate_limit,
        burst: args.rate_limit.saturating_mul(2),
    });
    config.ip_rate_limit = (args.ip_rate_limit > 0).then(|| RateLimit {
        per_second: args.ip_rate_limit,
        burst: args.ip_rate_limit.saturating_mul(2),
    });
    config.compact_every =
        (args.compact_every > 0).then(|| Duration::from_secs(args.compact_every));
    config.max_connections = usize::try_from(args.max_connections).unwrap_or(usize::MAX);
    let server = SyncServer::start(config)
        .await
        .context("cannot start the sync server")?;
    say!("storex sync server listening on {}", server.url());
    say!("press Ctrl-C to stop");
    let stop = server.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    server.wait().await.context("the sync server failed")?;
    say!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Creates user `name` on the server at `server` and prints its token.
pub(crate) async fn create_user(server: &str, admin_token: &str, name: &str) -> Result<()> {
    // A person waits for the answer: two quick retries, not the background default.
    let options = ClientOptions {
        retries: 2,
        ..ClientOptions::default()
    };
    let client = HttpSharedLog::with_options(server, options)?;
    let user = client
        .create_user(admin_token, name)
        .await
        .with_context(|| format!("cannot create user `{name}` on {server}"))?;
    say!("user: {}", user.user);
    say!("token: {}", user.token);
    say!("(shown once: the server keeps only its hash)");
    Ok(())
}
