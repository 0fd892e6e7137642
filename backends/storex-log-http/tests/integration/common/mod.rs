//! Shared test setup: a sync server on 127.0.0.1 over a SQLite file or a fresh PostgreSQL
//! database, and [`Provisioned`], an [`HttpSharedLog`] that creates server users on demand so
//! the suites (which name users, not tokens) can drive it.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use storex_core::uuid::Uuid;
use storex_core::BoxFuture;
use storex_log_http::{HttpSharedLog, RunningServer, ServerConfig, SyncServer};
use storex_sync::{DeviceId, DeviceInfo, Pull, SharedEntry, SharedResult, SharedSyncLog};

/// The admin token of the test servers.
pub const ADMIN: &str = "test-admin-token-0123456789";

/// Where a test server keeps its log.
#[derive(Debug)]
pub struct Store {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Store {
    /// A fresh SQLite file.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("server.db").display()
        );
        Store {
            url,
            _dir: Some(dir),
        }
    }

    /// The same database, reached as a new role that may only read and write the rows of
    /// the tables there now (`None` for SQLite, which has no roles).
    pub async fn as_role_without_ddl_rights(&self) -> Option<Self> {
        self.url.starts_with("postgres").then_some(())?;
        Some(Store {
            url: storex_test::role_without_ddl_rights(&self.url).await,
            _dir: None,
        })
    }

    /// A fresh PostgreSQL database, or `None` outside CI without PostgreSQL.
    pub async fn postgres() -> Option<Self> {
        let server = storex_test::postgres_url()?;
        Some(Store {
            url: storex_test::fresh_postgres_database(&server).await,
            _dir: None,
        })
    }
}

/// The test servers' configuration: admin token, no rate limit unless a test sets one,
/// `/metrics` counting afresh for every request (the tests read totals from it).
pub fn config(store: &Store) -> ServerConfig {
    ServerConfig::new(&store.url)
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .admin_token(ADMIN)
        .rate_limit(None)
        .ip_rate_limit(None)
        .stats_max_age(std::time::Duration::ZERO)
}

/// A server on a free port of 127.0.0.1.
pub async fn start(store: &Store) -> RunningServer {
    SyncServer::start(config(store))
        .await
        .expect("server starts")
}

/// An [`HttpSharedLog`] that turns the user names of the suites into server users (unique to
/// this instance) and their tokens.
#[derive(Debug)]
pub struct Provisioned {
    pub log: HttpSharedLog,
    prefix: String,
    tokens: Mutex<HashMap<String, String>>,
}

impl Provisioned {
    pub fn new(url: &str) -> Self {
        Provisioned {
            log: HttpSharedLog::new(url).expect("client"),
            prefix: Uuid::now_v7().simple().to_string(),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The token of the user the suites call `name`, created on first use.
    pub async fn user_token(&self, name: &str) -> SharedResult<String> {
        if let Some(token) = self.tokens.lock().unwrap().get(name) {
            return Ok(token.clone());
        }
        let created = self
            .log
            .create_user(ADMIN, &format!("{}-{name}", self.prefix))
            .await?;
        self.tokens
            .lock()
            .unwrap()
            .insert(name.to_owned(), created.token.clone());
        Ok(created.token)
    }
}

impl SharedSyncLog for Provisioned {
    fn name(&self) -> &'static str {
        "http (provisioned)"
    }

    fn register_device<'a>(
        &'a self,
        user: &'a str,
        device: DeviceId,
    ) -> BoxFuture<'a, SharedResult<()>> {
        Box::pin(async move {
            let token = self.user_token(user).await?;
            self.log.register_device(&token, device).await
        })
    }

    fn devices(&self, device: DeviceId) -> BoxFuture<'_, SharedResult<Vec<DeviceInfo>>> {
        self.log.devices(device)
    }

    fn push(
        &self,
        device: DeviceId,
        entries: Vec<SharedEntry>,
    ) -> BoxFuture<'_, SharedResult<u64>> {
        self.log.push(device, entries)
    }

    fn pull<'a>(
        &'a self,
        device: DeviceId,
        after: u64,
        limit: usize,
        topics: Option<&'a [String]>,
    ) -> BoxFuture<'a, SharedResult<Pull>> {
        self.log.pull(device, after, limit, topics)
    }

    fn ack(&self, device: DeviceId, cursor: u64) -> BoxFuture<'_, SharedResult<()>> {
        self.log.ack(device, cursor)
    }

    fn compact<'a>(&'a self, user: &'a str) -> BoxFuture<'a, SharedResult<u64>> {
        Box::pin(async move {
            let token = self.user_token(user).await?;
            self.log.compact(&token).await
        })
    }

    fn max_entry_bytes(&self) -> Option<usize> {
        self.log.max_entry_bytes()
    }

    fn device_credentials(&self, device: DeviceId) -> Option<String> {
        self.log.device_credentials(device)
    }

    fn restore_device_credentials(&self, device: DeviceId, credentials: &str) {
        self.log.restore_device_credentials(device, credentials)
    }

    fn live_wait<'a>(
        &'a self,
        device: DeviceId,
        after: u64,
        wait: std::time::Duration,
        topics: Option<&'a [String]>,
    ) -> Option<BoxFuture<'a, SharedResult<bool>>> {
        self.log.live_wait(device, after, wait, topics)
    }
}

/// A factory of [`Provisioned`] logs on one server, as the sync scenarios take it.
pub fn factory(
    url: String,
) -> impl Fn() -> futures::future::BoxFuture<'static, Arc<dyn SharedSyncLog>> + Sync {
    move || {
        let url = url.clone();
        Box::pin(async move { Arc::new(Provisioned::new(&url)) as Arc<dyn SharedSyncLog> })
    }
}

/// A TCP proxy on 127.0.0.1 to `target`: every connection it accepts, with one it opened to
/// `target`, goes to `relay` (which runs in a task of its own). Returns its address.
pub async fn proxy<F, R>(target: SocketAddr, relay: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream, tokio::net::TcpStream) -> R + Send + 'static,
    R: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            tokio::spawn(relay(inbound, outbound));
        }
    });
    address
}

/// The /metrics text of the server at `url`.
pub async fn metrics_text(http: &reqwest::Client, url: &str) -> String {
    http.get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of `name` in the /metrics of the server at `url`.
pub async fn metric(http: &reqwest::Client, url: &str, name: &str) -> u64 {
    metrics_text(http, url)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}
