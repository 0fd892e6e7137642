//! The device lock of a PostgreSQL database: a session advisory lock on the schema the
//! storage's tables are in, held by a connection of its own.
//!
//! The connection is made with the pool's options (not taken from the pool, so a pool of one
//! connection is still the app's). The server lets the lock go when the session ends: when
//! its process ends and the socket closes, or, for a client machine that died or dropped off
//! the network, when the server's TCP keepalives (asked for here: after 30 s idle, 3 probes
//! 10 s apart) find it gone, about a minute later. The keepalives also keep an idle
//! connection alive through NAT and load balancers, and the session turns off
//! `idle_session_timeout`. A server restart, or an administrator ending the session, lets the
//! lock go for good: it is not taken again until the next open. A pooler in transaction or
//! statement mode (PgBouncer) cannot hold a session lock: connect directly, or in session
//! mode.

use std::time::Duration;

use sea_orm::DatabaseConnection;

use super::DeviceLock;
use crate::error::Result;

/// Locks the device of the PostgreSQL schema `db`'s tables are in.
#[cfg(feature = "postgres")]
pub(super) async fn take(db: &DatabaseConnection, wait: Duration) -> Result<Option<DeviceLock>> {
    use sea_orm::sqlx::{self, Connection};
    use sea_orm::{
        ConnectionTrait, DatabaseConnectionType, DbBackend, DbErr, RuntimeErr, Statement,
    };

    use super::RETRY_EVERY;
    use crate::error::Error;

    // A mock or proxy connection has no pool to make a connection like its own with.
    if !matches!(
        db.inner,
        DatabaseConnectionType::SqlxPostgresPoolConnection(_)
    ) {
        return Ok(None);
    }
    let failed = |e: sqlx::Error| DbErr::Conn(RuntimeErr::SqlxError(e.into()));
    // Asked of the pool: its connections may set a search path a new connection does not.
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT current_database()::text AS database, \
             coalesce(current_schema(), '')::text AS schema",
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("the current database and schema".into()))?;
    let database: String = row.try_get("", "database")?;
    let schema: String = row.try_get("", "schema")?;
    let options = (*db.get_postgres_connection_pool().connect_options())
        .clone()
        .options(KEEPALIVES);
    let mut connection = sqlx::postgres::PgConnection::connect_with(&options)
        .await
        .map_err(failed)?;
    // PostgreSQL 14 and later may end idle sessions; older ones do not know the setting.
    let _ = sqlx::query("SET idle_session_timeout = 0")
        .execute(&mut connection)
        .await;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(ADVISORY_LOCK_CLASS)
            .bind(&schema)
            .fetch_one(&mut connection)
            .await
            .map_err(failed)?;
        if taken {
            return Ok(Some(DeviceLock::postgres(connection)));
        }
        if tokio::time::Instant::now() >= deadline {
            let holder = holder(&mut connection, &schema).await;
            let _ = connection.close().await;
            return Err(Error::DatabaseInUse {
                database: format!(
                    "schema `{schema}` of the PostgreSQL database `{database}`{holder}"
                ),
            });
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// Without the `postgres` feature a PostgreSQL device cannot be locked.
#[cfg(not(feature = "postgres"))]
pub(super) async fn take(_: &DatabaseConnection, _: Duration) -> Result<Option<DeviceLock>> {
    Err(crate::error::Error::DeviceLockUnsupported {
        database: "PostgreSQL",
        feature: "postgres",
    })
}

/// The first of the two keys of the advisory locks storex takes ("STRX"); the second is the
/// hash of the schema's name.
#[cfg(feature = "postgres")]
const ADVISORY_LOCK_CLASS: i32 = 0x5354_5258;

/// The server's TCP keepalives on the lock's session, so that the lock of a client machine
/// that died goes within about a minute, not the system's two hours.
#[cfg(feature = "postgres")]
const KEEPALIVES: [(&str, &str); 3] = [
    ("tcp_keepalives_idle", "30"),
    ("tcp_keepalives_interval", "10"),
    ("tcp_keepalives_count", "3"),
];

/// Who holds the lock of `schema`, as the server tells it (", held by …"), or nothing when
/// it does not say.
#[cfg(feature = "postgres")]
async fn holder(connection: &mut sea_orm::sqlx::postgres::PgConnection, schema: &str) -> String {
    use sea_orm::sqlx;

    let row: std::result::Result<(i32, Option<String>, Option<String>), _> = sqlx::query_as(
        "SELECT l.pid, host(a.client_addr), \
                to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') \
         FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.classid = $1::oid AND l.objid = hashtext($2)::oid AND l.objsubid = 2 \
         LIMIT 1",
    )
    .bind(i64::from(ADVISORY_LOCK_CLASS))
    .bind(schema)
    .fetch_one(connection)
    .await;
    match row {
        Ok((pid, client, since)) => {
            let client = client.map_or(String::new(), |c| format!(" for a client at {c}"));
            let since = since.map_or(String::new(), |s| format!(" since {s} UTC"));
            format!(
                ", locked by server process {pid}{client}{since} (if that client is gone, \
                 `SELECT pg_terminate_backend({pid})` lets the lock go)"
            )
        }
        Err(_) => String::new(),
    }
}
