//! [`Notifier`]: tells waiting pulls that a user's log grew, on this instance and, on
//! PostgreSQL, on every other instance serving the same database.
//!
//! After a push commits, the instance wakes its own waiters and runs
//! `pg_notify('storex_push', '<cursor> <user>')`. Every instance keeps one `LISTEN` connection
//! and wakes its waiters for the user named. Notifications are hints, never data: a woken pull
//! re-reads the log. When the listening connection drops (and notifications may have been
//! missed), every waiter is woken to re-read, the listener reconnects, and the waiters are
//! woken again shortly after, covering pushes made while it reconnected.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use storex_log_sql::SqlSharedLog;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::live::LiveUpdates;

/// After a lost `LISTEN` connection, waiters are woken again this long (and three times as
/// long) after it dropped.
const RECONNECT_WAKE: Duration = Duration::from_secs(1);

/// The PostgreSQL notification channel.
pub(crate) const CHANNEL: &str = "storex_push";

/// Wakes the pulls waiting for a user's entries.
#[derive(Debug)]
pub(crate) struct Notifier {
    /// The database to `NOTIFY` through; none on SQLite or when disabled.
    postgres: Option<DatabaseConnection>,
}

impl Notifier {
    /// Wakes only this instance's waiters.
    pub(crate) fn local() -> Self {
        Notifier { postgres: None }
    }

    /// On PostgreSQL, listens for the other instances' pushes until `shutdown`; elsewhere
    /// the same as [`Notifier::local`].
    pub(crate) async fn start(
        log: &SqlSharedLog,
        live: Arc<LiveUpdates>,
        shutdown: CancellationToken,
    ) -> Result<Self, Error> {
        let db = log.connection();
        if db.get_database_backend() != DbBackend::Postgres {
            return Ok(Notifier::local());
        }
        let mut listener =
            sqlx::postgres::PgListener::connect_with(db.get_postgres_connection_pool())
                .await
                .map_err(|e| Error::Config {
                    problem: format!("cannot open the PostgreSQL LISTEN connection: {e}"),
                })?;
        listener.listen(CHANNEL).await.map_err(|e| Error::Config {
            problem: format!("cannot LISTEN on `{CHANNEL}`: {e}"),
        })?;
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    received = listener.try_recv() => received,
                };
                match received {
                    Ok(Some(notification)) => match parse(notification.payload()) {
                        Some((cursor, user)) => live.notify(user, cursor),
                        None => tracing::warn!(
                            payload = notification.payload(),
                            "ignoring a malformed push notification"
                        ),
                    },
                    // The connection dropped: something may have been missed. The listener
                    // reconnects and listens again on the next receive; wake the waiters now
                    // and twice more, so a push during the reconnection is not left to their
                    // timeout.
                    Ok(None) => {
                        live.wake_all();
                        let live = live.clone();
                        tokio::spawn(async move {
                            for delay in [RECONNECT_WAKE, RECONNECT_WAKE * 3] {
                                tokio::time::sleep(delay).await;
                                live.wake_all();
                            }
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "LISTEN connection failed; retrying");
                        live.wake_all();
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
            }
        });
        Ok(Notifier {
            postgres: Some(db.clone()),
        })
    }

    /// `user`'s log reaches `cursor` now.
    pub(crate) async fn pushed(&self, live: &LiveUpdates, user: &str, cursor: u64) {
        live.notify(user, cursor);
        if let Some(db) = &self.postgres {
            let statement = Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_notify($1, $2)",
                [CHANNEL.into(), format!("{cursor} {user}").into()],
            );
            if let Err(error) = db.execute_raw(statement).await {
                // Other instances' waiters then wake at their timeout instead: late, not lost.
                tracing::warn!(%error, "cannot notify the other instances of a push");
            }
        }
    }
}

fn parse(payload: &str) -> Option<(u64, &str)> {
    let (cursor, user) = payload.split_once(' ')?;
    Some((cursor.parse().ok()?, user))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn payloads_parse_and_garbage_does_not() {
        assert_eq!(parse("12 ann lee"), Some((12, "ann lee")));
        assert_eq!(parse("x ann"), None);
        assert_eq!(parse("12"), None);
    }
}
