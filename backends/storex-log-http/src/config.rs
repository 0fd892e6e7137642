//! [`ServerConfig`]: where the sync server listens, where it keeps the log, and its limits.

use std::net::SocketAddr;
use std::time::Duration;

/// How many requests one device (or one token) may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests allowed in a burst above the sustained rate.
    pub burst: u32,
}

/// The sync server's settings. [`ServerConfig::new`] gives the defaults below.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen (default `127.0.0.1:8787`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// The shared log's database: `sqlite://path?mode=rwc` or `postgres://…`.
    pub database_url: String,
    /// The token that may create users (`POST /v1/users`); none disables that route.
    pub admin_token: Option<String>,
    /// Largest request body (default 8 MiB).
    pub max_body_bytes: usize,
    /// Most body bytes the instance holds at once, over all requests and pull replies
    /// (default 256 MiB, at least `max_body_bytes`). A request that would go past it waits up
    /// to 2 s for room, then is answered 503 `busy` with `Retry-After` (clients try again),
    /// so that many large pushes or pulls at once slow the server down instead of running it
    /// out of memory. A request counts with its body's length (the body limit when it gives
    /// none) from its authentication until it is done; a pull's page with its encoded reply
    /// until it is sent. At the peak the server uses about twice this for bodies, while they
    /// are decoded or encoded.
    pub max_buffered_bytes: usize,
    /// Most body bytes one user's requests (its devices', and its own) hold at once on this
    /// instance (default 32 MiB, at least `max_body_bytes`): past it, 429 `busy` at once, so
    /// that one user cannot take the whole of `max_buffered_bytes`. A request of a user that
    /// holds nothing else always gets its turn. Each instance counts its own: a client that
    /// knows several moves to the next after a 429, where the user has another share.
    pub max_buffered_bytes_per_user: usize,
    /// Most entries one push may carry (default 1,000).
    pub max_push_entries: usize,
    /// Most entries one pull returns (default 1,000).
    pub max_pull_entries: usize,
    /// Longest a pull may wait for new entries (default 30 s).
    pub max_wait: Duration,
    /// Requests per device, user or admin, counted after authentication (default 200/s,
    /// bursts of 400); none: unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Requests per client IP address, counted before authentication, so a flood of made-up
    /// tokens cannot reach the database (default 2,000/s, bursts of 4,000); none: unlimited.
    /// An IPv6 client counts by its /64 network, the least one host is given, so that it
    /// cannot get a fresh budget from each of its addresses.
    /// Behind a reverse proxy every client has the proxy's address: raise it or turn it off.
    pub ip_rate_limit: Option<RateLimit>,
    /// Longest a request may take before the server answers 408 (default 60 s; a long poll
    /// waits at most `max_wait` of it).
    pub request_timeout: Duration,
    /// Longest a graceful shutdown waits for requests in flight (default 10 s).
    pub shutdown_grace: Duration,
    /// Longest a connection may take to send a request's head once the server waits for one,
    /// idle keep-alive included (default 30 s): a client that opens connections and sends
    /// nothing, or a byte now and then, cannot hold them.
    pub header_timeout: Duration,
    /// Longest a reply may wait for its client to take any of it (default 30 s); then the
    /// connection is closed. A client that stops reading (a phone gone mid-reply) would
    /// otherwise hold its connection, and the reply's share of `max_buffered_bytes`, until
    /// the kernel gives up on it, about fifteen minutes later. A slow client that goes on
    /// reading is not cut off: on Linux the server keeps at most 128 KiB of a reply queued
    /// unsent, so each bit the client takes lets the reply go on. (Elsewhere, a client must
    /// take a third of the connection's send buffer within the timeout.)
    pub write_timeout: Duration,
    /// Most connections open at once (default 10,000); more wait in the listen queue until
    /// one closes. Keep it below the process's open-file limit.
    pub max_connections: usize,
    /// How often every user's log is compacted (default every 10 minutes); none: never. It is
    /// checked on the server's minute tick, so anything under a minute means every minute.
    pub compact_every: Option<Duration>,
    /// Wake pulls waiting on other instances through PostgreSQL LISTEN/NOTIFY (default on;
    /// ignored on SQLite).
    pub notify_instances: bool,
    /// How long `/metrics` reuses the totals it counted (default 15 s): counting whole tables
    /// is slow on a large log, and the route takes no token.
    pub stats_max_age: Duration,
}

impl ServerConfig {
    /// The defaults, with the log in `database_url`.
    pub fn new(database_url: impl Into<String>) -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            database_url: database_url.into(),
            admin_token: None,
            max_body_bytes: 8 * 1024 * 1024,
            max_buffered_bytes: 256 * 1024 * 1024,
            max_buffered_bytes_per_user: 32 * 1024 * 1024,
            max_push_entries: 1_000,
            max_pull_entries: 1_000,
            max_wait: Duration::from_secs(30),
            rate_limit: Some(RateLimit {
                per_second: 200,
                burst: 400,
            }),
            ip_rate_limit: Some(RateLimit {
                per_second: 2_000,
                burst: 4_000,
            }),
            request_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            compact_every: Some(Duration::from_secs(600)),
            notify_instances: true,
            stats_max_age: Duration::from_secs(15),
        }
    }

    /// Listens on `addr`.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Lets `token` create users.
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(token.into());
        self
    }

    /// Sets the request rate limit per caller (none: unlimited); see
    /// [`ServerConfig::ip_rate_limit()`] for the one per IP address.
    pub fn rate_limit(mut self, limit: Option<RateLimit>) -> Self {
        self.rate_limit = limit;
        self
    }

    /// Sets the request rate limit per client IP address, IPv6 per /64 (none: unlimited).
    pub fn ip_rate_limit(mut self, limit: Option<RateLimit>) -> Self {
        self.ip_rate_limit = limit;
        self
    }

    /// Sets how long `/metrics` reuses the totals it counted (zero: counts for every request).
    pub fn stats_max_age(mut self, age: Duration) -> Self {
        self.stats_max_age = age;
        self
    }

    /// Refuses a setting the server cannot work with.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.max_body_bytes < 1024 {
            return Err(format!(
                "max_body_bytes is {}, below the 1 KiB a push needs",
                self.max_body_bytes
            ));
        }
        if self.max_buffered_bytes < self.max_body_bytes
            || self.max_buffered_bytes_per_user < self.max_body_bytes
        {
            return Err(format!(
                "max_buffered_bytes ({}) and max_buffered_bytes_per_user ({}) must be at least \
                 max_body_bytes ({}): a request as large as the body limit must fit",
                self.max_buffered_bytes, self.max_buffered_bytes_per_user, self.max_body_bytes
            ));
        }
        if self.max_push_entries == 0 || self.max_pull_entries == 0 {
            return Err("max_push_entries and max_pull_entries must be at least 1".into());
        }
        for limit in [self.rate_limit, self.ip_rate_limit].into_iter().flatten() {
            if limit.per_second == 0 || limit.burst == 0 {
                return Err("a rate limit needs per_second and burst above 0".into());
            }
        }
        if self.request_timeout <= self.max_wait {
            return Err(format!(
                "request_timeout ({:?}) must be longer than max_wait ({:?})",
                self.request_timeout, self.max_wait
            ));
        }
        if self.header_timeout.is_zero()
            || self.write_timeout.is_zero()
            || self.max_connections == 0
        {
            return Err(
                "header_timeout, write_timeout and max_connections must be above zero".into(),
            );
        }
        if self.compact_every == Some(Duration::ZERO) {
            return Err("compact_every must be longer than zero".into());
        }
        if matches!(&self.admin_token, Some(t) if t.len() < 16) {
            return Err("the admin token must be at least 16 characters".into());
        }
        Ok(())
    }
}
