//! Outside services for tests: where to find them, and fresh databases on them.
//!
//! `scripts/services.sh` starts PostgreSQL on 127.0.0.1 and exports `STOREX_PG_URL`. A test
//! that needs it calls [`postgres_url`]: under `CI=true` a missing variable fails the test,
//! so a missing service can never pass silently; elsewhere the test is skipped with a note.

use std::sync::atomic::{AtomicU64, Ordering};

use sea_orm::{ConnectionTrait, Database};

/// The variable `scripts/services.sh` sets to the PostgreSQL server's URL.
pub(crate) const POSTGRES_URL_VAR: &str = "STOREX_PG_URL";

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The PostgreSQL server's URL; `None` (with a note on stderr) when it is not configured
/// outside CI. Panics under `CI=true` when it is missing.
pub fn postgres_url() -> Option<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if under_ci() => panic!(
            "{POSTGRES_URL_VAR} is not set under CI=true: PostgreSQL must be started by scripts/services.sh"
        ),
        _ => {
            eprintln!("note: {POSTGRES_URL_VAR} is not set, skipping a PostgreSQL test (run scripts/test.sh)");
            None
        }
    }
}

/// Creates a new, empty database on the server at `server_url` and returns its URL.
pub async fn fresh_postgres_database(server_url: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "storex_test_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let admin = Database::connect(server_url)
        .await
        .expect("connect to the PostgreSQL server");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    admin.close().await.expect("close the admin connection");
    let (base, _) = server_url
        .rsplit_once('/')
        .expect("a PostgreSQL URL ends in /database");
    format!("{base}/{name}")
}
