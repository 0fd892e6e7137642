//! The device lock of a PostgreSQL database: a session advisory lock on the schema the
//! storage's tables are in, held by a connection of its own, and watched while it is held.
//!
//! The connection is made with the pool's options (not taken from the pool, so a pool of one
//! connection is still the app's). The server lets the lock go when the session ends: when
//! its process ends and the socket closes, or, for a client machine that died or dropped off
//! the network, when the server's TCP keepalives (asked for here: after 30 s idle, 3 probes
//! 10 s apart) find it gone, about a minute later. The keepalives also keep an idle
//! connection alive through NAT and load balancers, and the session turns off
//! `idle_session_timeout`.
//!
//! A session can also end while the storage lives: the server restarts, an administrator
//! ends it, the network breaks. A task pings the session every 10 s (an answer may take
//! 10 s); when the session is gone it takes the lock again on a new one, and meanwhile the
//! app's writes to synced collections fail as transient. A session of its own the server
//! still keeps but this side no longer reaches (its ping, or a try to take the lock again,
//! went unanswered) is ended by the new one (or, if the pool's options now name another
//! role, which may not end it, left to the server's keepalives). If another opener holds the
//! lock by then, it is lost: the app's writes are refused from then on, until the storage is
//! opened again, since the two openers' clocks could stamp two changes alike. So they are if
//! the task stops (the runtime that opened the storage shut down), since the session goes
//! with it. Who holds a session is read from `pg_stat_activity`, which the lock's role must
//! be able to read (as every role can by default).
//!
//! Each opener, once it holds the lock, marks it as its own: it writes a random token into a
//! one-row table of the schema, `storex_device_lock` (made by the first), and reads it back.
//! A watcher that takes the lock again reads the token: another one says another opener held
//! the lock meanwhile, even one that has let it go again (it may have stamped changes with a
//! clock ahead of this storage's), and the lock is lost. So it is when the token no longer
//! reads (the table was dropped, or the role may no longer read it), and when the database
//! was restored from a backup taken before this open, or failed over to an asynchronous
//! replica the token had not reached. The token is flushed to disk as it is committed (a
//! `synchronous_commit` of `off` is raised to `local` for it), so a server's crash recovery
//! keeps it; a synchronous standby has it if the server's settings wait for one. The first opener needs `CREATE` on the schema, as
//! for storex's other tables; the role of a later open, if another, needs `SELECT, INSERT,
//! UPDATE` on the table. An open fails if the mark is not written within 30 s, or if
//! something else than a table has the table's name. A retake on a standby (the pool's host
//! now names one) waits, as transient: a standby's locks are its own.
//!
//! Not seen: a write made in the up to 20 s before a lost session is noticed, and a task that
//! does not run (its runtime alive but idle) and so pings nothing.
//!
//! A pooler in transaction or statement mode (PgBouncer) cannot hold a session lock: connect
//! directly, or in session mode.

use std::time::Duration;

use sea_orm::DatabaseConnection;

use super::DeviceLock;
use crate::error::Result;

#[cfg(feature = "postgres")]
pub(super) use locked::*;

/// Locks the device of the PostgreSQL schema `db`'s tables are in.
#[cfg(feature = "postgres")]
pub(super) async fn take(db: &DatabaseConnection, wait: Duration) -> Result<Option<DeviceLock>> {
    take_watched(db, wait, WATCH).await
}

/// Without the `postgres` feature a PostgreSQL device cannot be locked.
#[cfg(not(feature = "postgres"))]
pub(super) async fn take(_: &DatabaseConnection, _: Duration) -> Result<Option<DeviceLock>> {
    Err(crate::error::Error::DeviceLockUnsupported {
        database: "PostgreSQL",
        feature: "postgres",
    })
}

/// The lock, its session and its watcher; only with the `postgres` feature.
#[cfg(feature = "postgres")]
mod locked {
    use std::time::Duration;

    use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
    use sea_orm::sqlx::{self, Connection};
    use sea_orm::{
        ConnectionTrait, DatabaseConnection, DatabaseConnectionType, DbBackend, DbErr, RuntimeErr,
        Statement,
    };
    use tokio::sync::watch;

    use super::super::{DeviceLock, RETRY_EVERY};
    use crate::error::{Error, Result};

    /// How a held lock is watched.
    #[derive(Clone, Copy, Debug)]
    pub(in crate::device_lock) struct Watch {
        /// How often the lock's session is pinged.
        pub every: Duration,
        /// How long a ping may take before the session counts as gone.
        pub ping_timeout: Duration,
        /// How often a lock whose session is gone is tried again.
        pub retake_every: Duration,
        /// How long one try may take (connecting included) before it counts as failed.
        pub attempt_timeout: Duration,
    }

    /// How a storage's lock is watched.
    pub(in crate::device_lock) const WATCH: Watch = Watch {
        every: Duration::from_secs(10),
        ping_timeout: Duration::from_secs(10),
        retake_every: Duration::from_secs(1),
        attempt_timeout: Duration::from_secs(30),
    };

    /// Where a lock stands, as its watcher last saw it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(in crate::device_lock) enum Standing {
        /// Held by the session of this server process (when the server says which).
        Held {
            /// The session's server process.
            process: Option<i32>,
        },
        /// Its session is gone; being taken again.
        Retaking {
            /// Why the last try failed, if it did.
            failed: Option<String>,
        },
        /// Another opener took it while its session was gone (and may have let it go since),
        /// or the lock's mark says no more that this storage holds it.
        Lost {
            /// What was found, completing "its session ended and …".
            why: String,
        },
    }

    /// A PostgreSQL device's lock. Dropping it ends its watcher, and with it the session.
    #[derive(Debug)]
    pub(in crate::device_lock) struct PostgresLock {
        /// Where the lock stands.
        pub(in crate::device_lock) standing: watch::Receiver<Standing>,
        /// The device, as messages name it.
        device: String,
        /// The task that holds the session and watches it.
        watcher: tokio::task::AbortHandle,
    }

    impl Drop for PostgresLock {
        fn drop(&mut self) {
            self.watcher.abort();
        }
    }

    impl PostgresLock {
        /// Why an app's write to `collection` may not run now, if it may not.
        pub(in crate::device_lock) fn refusal(
            &self,
            collection: &str,
        ) -> Option<storex_core::Error> {
            let device = &self.device;
            // A watcher that stopped (the runtime that opened the storage shut down) took the
            // session with it; one that found the lock lost stops too.
            let stopped = self.standing.has_changed().is_err();
            let refused = |why: String| storex_core::Error::Refused {
                collection: collection.to_owned(),
                detail: format!(
                    "storex-app refused it, not the database: {why}; two openers of one device \
                     would keep two clocks, so this storage writes no more: open it again \
                     (once the other opener is closed)"
                ),
            };
            match &*self.standing.borrow() {
                Standing::Lost { why } => Some(refused(format!(
                    "this storage lost the device lock of {device}: its session ended and {why}"
                ))),
                _ if stopped => Some(refused(format!(
                    "the task that held the device lock of {device} stopped (the runtime that \
                     opened the storage shut down), and the lock with it"
                ))),
                Standing::Held { .. } => None,
                Standing::Retaking { failed } => {
                    let failed = match failed {
                        Some(why) => format!("; the last try failed: {why}"),
                        None => String::new(),
                    };
                    Some(storex_core::Error::backend(
                        "storex-app",
                        format!(
                            "the device lock of {device} is being taken again (its session \
                             ended: the server restarted, or the connection broke){failed}; \
                             try the write again in a moment"
                        ),
                    ))
                }
            }
        }
    }

    /// [`super::take`], watched as `watch` says.
    pub(in crate::device_lock) async fn take_watched(
        db: &DatabaseConnection,
        wait: Duration,
        watch: Watch,
    ) -> Result<Option<DeviceLock>> {
        // A mock or proxy connection has no pool to make a connection like its own with.
        if !matches!(
            db.inner,
            DatabaseConnectionType::SqlxPostgresPoolConnection(_)
        ) {
            return Ok(None);
        }
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
        let device = format!("schema `{schema}` of the PostgreSQL database `{database}`");
        if schema.is_empty() {
            return Err(DbErr::Custom(format!(
                "no schema of the PostgreSQL database `{database}` is on the search path: \
                 there is nowhere to keep the device's tables (create the schema, or set the \
                 search path to one that exists)"
            ))
            .into());
        }
        let pool = db.get_postgres_connection_pool().clone();
        let mut connection = connect(&lock_options_of(&pool)).await.map_err(failed)?;
        let session = session_of(&mut connection).await.map_err(failed)?;
        let deadline = tokio::time::Instant::now() + wait;
        while !try_lock(&mut connection, &schema).await.map_err(failed)? {
            if tokio::time::Instant::now() >= deadline {
                let holder = match holder(&mut connection, &schema).await {
                    Ok(Some(holder)) => holder.session.described(),
                    _ => String::new(),
                };
                let _ = connection.close().await;
                return Err(Error::DatabaseInUse {
                    database: format!("{device}{holder}"),
                });
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
        // Bounded: a schema tool's transaction that holds the table would hold the open, and
        // the lock with it, for as long as it lasts.
        let marked =
            tokio::time::timeout(watch.attempt_timeout, mark_held(&mut connection, &schema))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "{} (a transaction that holds the table, or a synchronous standby \
                         that does not answer?)",
                        no_answer(watch.attempt_timeout)
                    ))
                });
        let token = match marked {
            Ok(token) => token,
            Err(why) => {
                let _ = connection.close().await;
                return Err(DbErr::Custom(format!(
                    "cannot mark the device lock of {device} as this storage's, in {}: {why}",
                    lock_table(&schema)
                ))
                .into());
            }
        };
        let (standing, watching) = watch::channel(Standing::Held {
            process: session.as_ref().map(|s| s.process),
        });
        let held = Hold { schema, token };
        let watcher = tokio::spawn(watch_lock(connection, session, pool, held, watch, standing))
            .abort_handle();
        Ok(Some(DeviceLock::postgres(PostgresLock {
            standing: watching,
            device,
            watcher,
        })))
    }

    /// A server session, told apart from a later one with the same process id.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(in crate::device_lock) struct Session {
        /// Its server process.
        pub process: i32,
        /// When it started, if the server tells it.
        started: Option<String>,
        /// Its client's address, if it came over TCP and the server tells it.
        client: Option<String>,
    }

    impl Session {
        /// ", locked by server process …", for a refusal's message.
        fn described(&self) -> String {
            let process = self.process;
            let client = match &self.client {
                Some(c) => format!(" for a client at {c}"),
                None => String::new(),
            };
            let since = match &self.started {
                Some(s) => format!(" since {s}"),
                None => String::new(),
            };
            format!(
                ", locked by server process {process}{client}{since} (if that client is \
                 gone, `SELECT pg_terminate_backend({process})` lets the lock go)"
            )
        }
    }

    /// What a watcher holds: the lock of `schema`, marked with `token`.
    struct Hold {
        /// The schema whose lock it is.
        schema: String,
        /// The token this storage wrote into the schema's lock table as it took the lock.
        token: String,
    }

    /// The most sessions a watcher remembers as its own while it takes its lock again.
    const SESSIONS_REMEMBERED: usize = 16;

    /// Pings the lock's session every `watch.every`. Once the session is gone, takes the lock
    /// again on a new one (ending first a session of its own the server still keeps), or
    /// says it is lost if another opener's session holds it or held it meanwhile.
    async fn watch_lock(
        mut connection: PgConnection,
        session: Option<Session>,
        pool: PgPool,
        held: Hold,
        watch: Watch,
        standing: watch::Sender<Standing>,
    ) {
        // The sessions of this watcher's that may hold the lock: the one that took it, and
        // any whose try was cut short (its answer lost, or out of time).
        let mut ours: Vec<Session> = session.into_iter().collect();
        loop {
            tokio::time::sleep(watch.every).await;
            if let Ok(Ok(())) = tokio::time::timeout(watch.ping_timeout, connection.ping()).await {
                continue;
            }
            standing.send_replace(Standing::Retaking { failed: None });
            // Dropped, not closed: a connection that does not answer may not answer a close.
            drop(connection);
            connection = loop {
                let options = lock_options_of(&pool);
                let attempt = retake(&options, &held, &mut ours);
                let failed = match tokio::time::timeout(watch.attempt_timeout, attempt).await {
                    Ok(Ok(Retaken::Held(connection))) => break connection,
                    Ok(Ok(Retaken::Lost(why))) => {
                        standing.send_replace(Standing::Lost { why });
                        return;
                    }
                    // Ours still holds it, and was asked to end.
                    Ok(Ok(Retaken::NotYet)) => None,
                    Ok(Ok(Retaken::Unusable(why))) => Some(why),
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(no_answer(watch.attempt_timeout)),
                };
                standing.send_replace(Standing::Retaking { failed });
                if ours.len() > SESSIONS_REMEMBERED {
                    // The first is the one that held the lock before: kept.
                    ours.remove(1);
                }
                tokio::time::sleep(watch.retake_every).await;
            };
            standing.send_replace(Standing::Held {
                process: ours.last().map(|s| s.process),
            });
        }
    }

    /// What a try cut short by `timeout` failed with.
    fn no_answer(timeout: Duration) -> String {
        format!("no answer within {} s", timeout.as_secs_f32())
    }

    /// What one try to take a lock again found.
    enum Retaken {
        /// Taken, by this connection's session (then the only one in `ours`).
        Held(PgConnection),
        /// Held by another opener's session, or held by one meanwhile (the lock's mark is
        /// not this storage's): why, completing "its session ended and …".
        Lost(String),
        /// Held by a session of ours, which was asked to end, or by one ending.
        NotYet,
        /// The session cannot hold the device's lock, for now: why.
        Unusable(String),
    }

    /// Tries once to take `held`'s lock on a new session, which is added to `ours` (the
    /// sessions of this watcher's that may hold it) before it asks.
    async fn retake(
        options: &PgConnectOptions,
        held: &Hold,
        ours: &mut Vec<Session>,
    ) -> sqlx::Result<Retaken> {
        let schema = held.schema.as_str();
        let mut connection = connect(options).await?;
        // Known before it asks, so that a session whose answer is lost is known as ours.
        let session = session_of(&mut connection).await?;
        // A standby's locks are its own (the primary's would still be free), and what it says
        // of holders is of its own: asked nothing, and the sessions of ours stay remembered.
        let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut connection)
            .await?;
        if standby {
            let _ = connection.close().await;
            return Ok(Retaken::Unusable(
                "the server reached is a standby (in recovery), whose locks the primary does \
                 not see: point the pool's options at the primary"
                    .to_owned(),
            ));
        }
        ours.extend(session.clone());
        if try_lock(&mut connection, schema).await? {
            ours.clear();
            ours.extend(session);
            let found = marked_token(&mut connection, schema).await;
            if matches!(&found, Ok(Some(token)) if *token == held.token) {
                return Ok(Retaken::Held(connection));
            }
            let _ = connection.close().await;
            let lost = match found {
                Ok(Some(_)) => "the lock's mark is no more this storage's: another opener held \
                                the lock meanwhile (or the database was restored from an older \
                                backup, or failed over to a replica that lacks the mark)"
                    .to_owned(),
                Ok(None) => "the lock's mark is gone: its row was deleted (or the database was \
                             restored, or failed over, without it), so another opener may have \
                             held the lock meanwhile"
                    .to_owned(),
                Err(e) if lasting(&e) => format!("the lock's mark does not read ({e})"),
                Err(e) => return Err(e),
            };
            return Ok(Retaken::Lost(lost));
        }
        if let Some(session) = &session {
            ours.retain(|s| s != session);
        }
        let retaken = match holder(&mut connection, schema).await? {
            Some(holder) if ours.contains(&holder.session) => {
                // One of ours, which the server keeps though this side cannot reach it:
                // sessions of one role may end each other's.
                sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(holder.session.process)
                    .execute(&mut connection)
                    .await?;
                Retaken::NotYet
            }
            // The process of one of ours, ending (listed no more), or one this session may
            // not see the start of (the pool's options now name another role): left to end.
            Some(holder)
                if ours.iter().any(|s| s.process == holder.session.process)
                    && (!holder.listed || holder.session.started.is_none()) =>
            {
                Retaken::NotYet
            }
            Some(_) => Retaken::Lost("another opener took the lock meanwhile".to_owned()),
            // Let go between the two questions.
            None => Retaken::NotYet,
        };
        let _ = connection.close().await;
        Ok(retaken)
    }

    /// The options of a lock's session for `db`: its pool's, with the server's keepalives.
    #[cfg(test)]
    pub(in crate::device_lock) fn lock_options(db: &DatabaseConnection) -> PgConnectOptions {
        lock_options_of(db.get_postgres_connection_pool())
    }

    /// The options of a lock's session: `pool`'s as they are now (an app may change them, to
    /// give new credentials), with the server's keepalives.
    fn lock_options_of(pool: &PgPool) -> PgConnectOptions {
        (*pool.connect_options()).clone().options(KEEPALIVES)
    }

    /// A new session with `options`, which never ends for being idle.
    pub(in crate::device_lock) async fn connect(
        options: &PgConnectOptions,
    ) -> sqlx::Result<PgConnection> {
        let mut connection = PgConnection::connect_with(options).await?;
        // PostgreSQL 14 and later may end idle sessions; older ones do not know the setting.
        let _ = sqlx::query("SET idle_session_timeout = 0")
            .execute(&mut connection)
            .await;
        Ok(connection)
    }

    /// Takes `schema`'s lock on `connection` if it is free.
    async fn try_lock(connection: &mut PgConnection, schema: &str) -> sqlx::Result<bool> {
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(ADVISORY_LOCK_CLASS)
            .bind(schema)
            .fetch_one(connection)
            .await
    }

    /// The lock table of `schema`, quoted for SQL.
    fn lock_table(schema: &str) -> String {
        format!("\"{}\".storex_device_lock", schema.replace('"', "\"\""))
    }

    /// Marks `schema`'s lock, held by `connection`, as this opener's: writes a new random
    /// token into the schema's lock table (made if missing), committed durably, and reads it
    /// back, as a watcher will. Returns the token, or why it could not.
    async fn mark_held(
        connection: &mut PgConnection,
        schema: &str,
    ) -> std::result::Result<String, String> {
        let table = lock_table(schema);
        let text = |e: sqlx::Error| e.to_string();
        // Made only by a lock's holder, so never by two sessions at once (and without the
        // notice `IF NOT EXISTS` would log on every open).
        let kind: Option<String> = sqlx::query_scalar(
            "SELECT c.relkind::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = 'storex_device_lock'",
        )
        .bind(schema)
        .fetch_optional(&mut *connection)
        .await
        .map_err(text)?;
        match kind.as_deref() {
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE TABLE {table} \
                     (id smallint PRIMARY KEY CHECK (id = 1), token text NOT NULL)"
                )))
                .execute(&mut *connection)
                .await
                .map_err(text)?;
            }
            Some("r" | "p") => {}
            Some(other) => {
                return Err(format!(
                    "something else than a table has that name (relkind `{other}`): rename it"
                ))
            }
        }
        let token = storex_core::uuid::Uuid::new_v4().to_string();
        // On disk before the open returns, even where the server or the role turned
        // synchronous commits off: a crash that lost it would read as another opener's mark.
        // (Only raised to a local flush: waiting for a synchronous standby that does not
        // answer would hold the lock in a backend that outlives this session.)
        let mut transaction = connection.begin().await.map_err(text)?;
        sqlx::query(
            "SELECT set_config('synchronous_commit', 'local', true) \
             WHERE current_setting('synchronous_commit') = 'off'",
        )
        .execute(&mut *transaction)
        .await
        .map_err(text)?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (id, token) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET token = excluded.token"
        )))
        .bind(&token)
        .execute(&mut *transaction)
        .await
        .map_err(text)?;
        transaction.commit().await.map_err(text)?;
        match marked_token(connection, schema).await.map_err(text)? {
            Some(read) if read == token => Ok(token),
            // A row-level security policy, say.
            read => Err(format!("the token reads back as {read:?}, not as written")),
        }
    }

    /// The token `schema`'s lock is marked with, if any.
    async fn marked_token(
        connection: &mut PgConnection,
        schema: &str,
    ) -> sqlx::Result<Option<String>> {
        let table = lock_table(schema);
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT token FROM {table} WHERE id = 1"
        )))
        .fetch_optional(connection)
        .await
    }

    /// Whether `e` would come again on every try: the statement no longer fits the lock
    /// table (SQLSTATE class 42: the table or a column gone, another kind of object in its
    /// place, a privilege taken away), or its token no longer reads as text.
    fn lasting(e: &sqlx::Error) -> bool {
        match e {
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::TypeNotFound { .. } => true,
            e => e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|code| code.starts_with("42")),
        }
    }

    /// The session `connection` runs on, as `pg_stat_activity` tells it; none when it does
    /// not list it.
    async fn session_of(connection: &mut PgConnection) -> sqlx::Result<Option<Session>> {
        let row: Option<(i32, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT pid, \
                to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US \"UTC\"'), \
                host(client_addr) \
             FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        )
        .fetch_optional(connection)
        .await?;
        Ok(row.map(|(process, started, client)| Session {
            process,
            started,
            client,
        }))
    }

    /// The session holding a lock.
    pub(in crate::device_lock) struct Holder {
        /// The session.
        pub session: Session,
        /// Whether `pg_stat_activity` still lists it (a session ending may hold its locks a
        /// moment after it is listed no more).
        listed: bool,
    }

    /// The session that holds `schema`'s lock; none when nothing holds it.
    pub(in crate::device_lock) async fn holder(
        connection: &mut PgConnection,
        schema: &str,
    ) -> sqlx::Result<Option<Holder>> {
        let row: Option<(i32, bool, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT l.pid, a.pid IS NOT NULL, \
                to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US \"UTC\"'), \
                host(a.client_addr) \
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid = $1::oid AND l.objid = hashtext($2)::oid AND l.objsubid = 2 \
             LIMIT 1",
        )
        .bind(i64::from(ADVISORY_LOCK_CLASS))
        .bind(schema)
        .fetch_optional(connection)
        .await?;
        Ok(row.map(|(process, listed, started, client)| Holder {
            session: Session {
                process,
                started,
                client,
            },
            listed,
        }))
    }

    /// A driver error as the database error it is.
    fn failed(e: sqlx::Error) -> DbErr {
        DbErr::Conn(RuntimeErr::SqlxError(e.into()))
    }

    /// The first of the two keys of the advisory locks storex takes ("STRX"); the second is
    /// the hash of the schema's name.
    const ADVISORY_LOCK_CLASS: i32 = 0x5354_5258;

    /// The server's TCP keepalives on the lock's session, so that the lock of a client machine
    /// that died goes within about a minute, not the system's two hours.
    const KEEPALIVES: [(&str, &str); 3] = [
        ("tcp_keepalives_idle", "30"),
        ("tcp_keepalives_interval", "10"),
        ("tcp_keepalives_count", "3"),
    ];
}
