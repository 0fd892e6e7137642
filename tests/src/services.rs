//! Outside services for tests: where to find them, and fresh databases on them.
//!
//! `scripts/services.sh` starts PostgreSQL on 127.0.0.1 and exports `STOREX_PG_URL`, and the
//! Firestore emulator, exporting `FIRESTORE_EMULATOR_HOST` and `STOREX_FIRESTORE_PROJECT`. A
//! test that needs one calls [`postgres_url`] or [`firestore_emulator`]: under `CI=true` a
//! missing variable fails the test, so a missing service can never pass silently; elsewhere
//! the test is skipped with a note.

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

/// The variable `scripts/services.sh` sets to the Firestore emulator's `host:port`; the
/// `firestore` crate reads it too and then talks to the emulator instead of Google.
pub(crate) const FIRESTORE_EMULATOR_VAR: &str = "FIRESTORE_EMULATOR_HOST";

/// The variable naming the project id tests use on the emulator.
pub(crate) const FIRESTORE_PROJECT_VAR: &str = "STOREX_FIRESTORE_PROJECT";

/// The project id used when [`FIRESTORE_PROJECT_VAR`] is not set.
const DEFAULT_FIRESTORE_PROJECT: &str = "storex-test";

/// The Firestore emulator's `(host:port, project id)`; `None` (with a note on stderr) when
/// `FIRESTORE_EMULATOR_HOST` is not set outside CI. Panics under `CI=true` when it is missing.
pub fn firestore_emulator() -> Option<(String, String)> {
    match std::env::var(FIRESTORE_EMULATOR_VAR) {
        Ok(host) if !host.is_empty() => {
            let project = std::env::var(FIRESTORE_PROJECT_VAR)
                .ok()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| DEFAULT_FIRESTORE_PROJECT.to_owned());
            Some((host, project))
        }
        _ if under_ci() => panic!(
            "{FIRESTORE_EMULATOR_VAR} is not set under CI=true: the Firestore emulator must be started by scripts/services.sh"
        ),
        _ => {
            eprintln!("note: {FIRESTORE_EMULATOR_VAR} is not set, skipping a Firestore test (run scripts/test.sh)");
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

/// A URL of the database at `url` (a test server's, where every role logs in without a
/// password) for a new role that may read and write the rows of the tables there now, and
/// do nothing else: not create, alter or index a table. A server is often run so.
pub async fn role_without_ddl_rights(url: &str) -> String {
    // Unique on a server that outlives the test run (a role keeps grants in other databases).
    let role = format!("storex_rw_{}", storex_core::uuid::Uuid::now_v7().simple());
    let admin = Database::connect(url).await.expect("connect as the owner");
    for statement in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"),
    ] {
        admin
            .execute_unprepared(&statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    admin.close().await.expect("close the owner's connection");
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{role}@{host}")
}
