//! [`SqlSharedLog`]: the shared-log operations as SQL statements built with sea-query.

use std::collections::HashSet;
use std::time::Duration;

use sea_orm::sea_query::{
    Alias, ColumnDef, Condition, Expr, ExprTrait, Func, Index, JoinType, OnConflict, Order, Query,
    SimpleExpr, Table, Value as SqlValue,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, QueryResult};
use storex_core::uuid::Uuid;
use storex_core::BoxFuture;
use storex_seaorm::{begin_write, connect_durable, dialect_of, Dialect};
use storex_sync::{
    check_topics, check_user_name, device_of_another_user, DeviceId, DeviceInfo, Pull, PulledEntry,
    SharedEntry, SharedLogError, SharedResult, SharedSyncLog, UnreadableEntry,
};

const USERS: &str = "storex_shared_users";
const DEVICES: &str = "storex_shared_devices";
const ENTRIES: &str = "storex_shared_entries";
/// PostgreSQL advisory lock key held while the tables are created ("storex" in ASCII).
const MIGRATION_LOCK: i64 = 0x73_74_6f_72_65_78;
/// Most payload bytes one pull returns (one larger entry still comes alone).
pub const MAX_PULL_BYTES: usize = 8 * 1024 * 1024;
/// How much one page of [`SqlSharedLog::pull_page`] may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageBounds {
    /// Most entries (at most 100,000).
    pub entries: usize,
    /// Most payload bytes, over the page's entries (at most [`MAX_PULL_BYTES`]). The first
    /// entry comes whatever its size, up to `first_entry_bytes`, so that a page always moves
    /// on.
    pub bytes: usize,
    /// Largest first entry that is read (taken as at least `bytes`): a larger one is not
    /// read, and its size is answered instead ([`PagePull::FirstEntryTooLarge`]), so that
    /// the caller can make room for it first.
    pub first_entry_bytes: usize,
}

/// What [`SqlSharedLog::pull_page`] read.
#[derive(Debug)]
pub enum PagePull {
    /// A page, as [`SharedSyncLog::pull`] answers it.
    Page(Pull),
    /// Nothing was read: the first entry after the cursor carries more payload than
    /// [`PageBounds::first_entry_bytes`].
    FirstEntryTooLarge {
        /// The bytes of that entry's payload.
        payload_bytes: usize,
    },
}

/// Largest number of ids in one `IN (…)` lookup.
const LOOKUP_CHUNK: usize = 500;
/// How long a push or a compaction on PostgreSQL waits for a lock (the user's counter).
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a push or a compaction on PostgreSQL may idle between its statements.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Rows per multi-row INSERT (6 parameters each, within SQLite's 32,766).
const INSERT_CHUNK: usize = 1_000;

fn id(name: &str) -> Alias {
    Alias::new(name)
}

fn col(name: &str) -> SimpleExpr {
    Expr::col(Alias::new(name))
}

fn cursor_value(cursor: u64) -> SqlValue {
    SqlValue::BigInt(Some(i64::try_from(cursor).unwrap_or(i64::MAX)))
}

/// A pulled row's entry, or which of its columns does not read.
fn read_entry(row: &QueryResult) -> Result<SharedEntry, String> {
    let bad = |column: &str, e: DbErr| format!("its {column} does not read: {e}");
    Ok(SharedEntry {
        id: row.try_get::<Uuid>("", "id").map_err(|e| bad("id", e))?,
        device: DeviceId(
            row.try_get::<Uuid>("", "device")
                .map_err(|e| bad("device", e))?,
        ),
        topic: row.try_get("", "topic").map_err(|e| bad("topic", e))?,
        payload: row.try_get("", "payload").map_err(|e| bad("payload", e))?,
    })
}

/// Most entries one pull returns, whatever the limit asked: a page is cut by bytes anyway,
/// and the `LIMIT` bound on PostgreSQL must fit its 64-bit integers.
const MAX_PULL_ENTRIES: usize = 100_000;

/// Entry ids were once unique across all users, under this index, which a log created then
/// still has: dropped when the log opens (ids are unique per user now).
const OLD_ENTRY_IDS_INDEX: &str = "storex_shared_entries_id_key";

/// Whether the tables and indexes named in `present` are all there and none of `absent` is,
/// on PostgreSQL (elsewhere: `false`, so the caller runs its `IF NOT EXISTS` DDL). A log or
/// server opening a database so set up runs no DDL: a role that may only read and write rows
/// (a sync server run with least privilege) is refused DDL even with `IF NOT EXISTS`, and
/// DDL would make a starting server wait for the pushes under way.
pub async fn set_up_already(
    db: &impl ConnectionTrait,
    present: &[&str],
    absent: &[&str],
) -> Result<bool, DbErr> {
    if db.get_database_backend() != sea_orm::DbBackend::Postgres {
        return Ok(false);
    }
    // Each name a parameter: `to_regclass($n) IS [NOT] NULL`, all of them together.
    let tests: Vec<String> = (1..=present.len() + absent.len())
        .map(|n| {
            let is = if n <= present.len() { "NOT " } else { "" };
            format!("to_regclass(${n}::text) IS {is}NULL")
        })
        .chain(std::iter::once("TRUE".to_owned()))
        .collect();
    let sql = format!("SELECT ({}) AS ready", tests.join(" AND "));
    let names = present.iter().chain(absent).map(|name| (*name).into());
    let row = db
        .query_one_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            sql,
            names,
        ))
        .await?;
    match row {
        Some(row) => row.try_get::<bool>("", "ready"),
        None => Ok(false),
    }
}

/// The unique index of entry ids, per user.
const ENTRY_IDS_INDEX: &str = "storex_shared_entries_user_id_key";

/// The index of devices by user.
const DEVICE_USERS_INDEX: &str = "storex_shared_devices_user_idx";

/// Totals over every user of a [`SqlSharedLog`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Users.
    pub users: u64,
    /// Registered devices.
    pub devices: u64,
    /// Stored (not yet compacted) entries.
    pub entries: u64,
}

/// A shared sync log in a SQL database (SQLite or PostgreSQL).
#[derive(Clone, Debug)]
pub struct SqlSharedLog {
    db: DatabaseConnection,
    dialect: Dialect,
}

impl SqlSharedLog {
    /// Connects to `url` (see [`storex_seaorm::connect_durable`]: a SQLite file syncs every
    /// commit to disk, so a push the log confirmed survives a power cut) and creates the log's
    /// tables if they are missing.
    pub async fn connect(url: &str) -> Result<Self, storex_seaorm::Error> {
        Self::new(connect_durable(url).await?).await
    }

    /// Uses an open connection, creating the log's tables if they are missing. On a SQLite
    /// file, open it with `synchronous=FULL` (as [`storex_seaorm::connect_durable`] does): a
    /// device lets go of the entries the log confirmed, and with less a power cut can undo
    /// the last confirmed pushes.
    pub async fn new(db: DatabaseConnection) -> Result<Self, storex_seaorm::Error> {
        let dialect = dialect_of(&db)?;
        let log = SqlSharedLog { db, dialect };
        log.create_tables().await.map_err(|e| {
            storex_seaorm::Error::Storage(storex_core::Error::backend(log.name(), e))
        })?;
        Ok(log)
    }

    /// The connection.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Opens a write transaction on the log's database (on SQLite an immediate one), for
    /// [`SqlSharedLog::register_device_in`] together with writes of the caller's own.
    pub async fn begin(&self) -> SharedResult<DatabaseTransaction> {
        begin_write(&self.db).await.map_err(|e| self.unavailable(e))
    }

    /// Registers `device` of `user` inside `txn`: it exists once `txn` commits, together
    /// with whatever else the caller wrote in it (the sync server stores the device's token
    /// hash in the same transaction). Idempotent for the same user (the device keeps its
    /// position); a device of another user is refused.
    pub async fn register_device_in(
        &self,
        txn: &DatabaseTransaction,
        user: &str,
        device: DeviceId,
    ) -> SharedResult<()> {
        check_user_name(user)?;
        let new_user = Query::insert()
            .into_table(id(USERS))
            .columns([id("user_name"), id("next_cursor"), id("compacted_through")])
            .values_panic([Expr::val(user), Expr::val(0i64), Expr::val(0i64)])
            .on_conflict(OnConflict::column(id("user_name")).do_nothing().to_owned())
            .to_owned();
        txn.execute(&new_user)
            .await
            .map_err(|e| self.unavailable(e))?;
        let new_device = Query::insert()
            .into_table(id(DEVICES))
            .columns([id("device"), id("user_name"), id("acked")])
            .values_panic([Expr::val(device.0), Expr::val(user), Expr::val(0i64)])
            .on_conflict(OnConflict::column(id("device")).do_nothing().to_owned())
            .to_owned();
        txn.execute(&new_device)
            .await
            .map_err(|e| self.unavailable(e))?;
        if self.user_of(txn, device).await? != user {
            return Err(device_of_another_user(device));
        }
        Ok(())
    }

    /// Removes a device (a revoked or lost one): its later calls get
    /// [`SharedLogError::UnknownDevice`] and its position no longer holds back compaction.
    /// Its entries stay. Returns false when the device was not registered.
    pub async fn remove_device(&self, device: DeviceId) -> SharedResult<bool> {
        let delete = Query::delete()
            .from_table(id(DEVICES))
            .and_where(col("device").eq(device.0))
            .to_owned();
        let removed = self
            .db
            .execute(&delete)
            .await
            .map_err(|e| self.unavailable(e))?
            .rows_affected();
        Ok(removed > 0)
    }

    /// The user a device belongs to, or [`SharedLogError::UnknownDevice`].
    pub async fn user_of_device(&self, device: DeviceId) -> SharedResult<String> {
        self.user_of(&self.db, device).await
    }

    /// Every user with at least one registered device or stored entry.
    pub async fn users(&self) -> SharedResult<Vec<String>> {
        let query = Query::select()
            .column(id("user_name"))
            .from(id(USERS))
            .order_by(id("user_name"), Order::Asc)
            .to_owned();
        let rows = self
            .db
            .query_all(&query)
            .await
            .map_err(|e| self.unavailable(e))?;
        rows.iter()
            .map(|row| {
                row.try_get::<String>("", "user_name")
                    .map_err(|_| self.corrupt("user"))
            })
            .collect()
    }

    /// [`SharedSyncLog::pull`] with a page of at most `max_bytes` bytes of payload (and at
    /// most 8 MiB, what `pull` takes): the entries whose payloads add up to at most that, and
    /// at least the first, whatever its size, so that a page always moves on. A server that
    /// answers for its devices bounds with it what a pull makes it hold.
    pub async fn pull_within(
        &self,
        device: DeviceId,
        after: u64,
        limit: usize,
        max_bytes: usize,
        topics: Option<&[String]>,
    ) -> SharedResult<Pull> {
        let bounds = PageBounds {
            entries: limit,
            bytes: max_bytes,
            first_entry_bytes: usize::MAX,
        };
        match self.pull_page(device, after, bounds, topics).await? {
            PagePull::Page(pull) => Ok(pull),
            // Only a payload larger than the largest number SQL holds could be.
            PagePull::FirstEntryTooLarge { .. } => Err(self.corrupt("payload size")),
        }
    }

    /// [`SqlSharedLog::pull_within`] that reads the first entry only when its payload is at
    /// most [`PageBounds::first_entry_bytes`], and otherwise answers its size: a server
    /// that counts the memory its pulls take makes room for such an entry before it reads
    /// it, instead of finding out after.
    pub async fn pull_page(
        &self,
        device: DeviceId,
        after: u64,
        bounds: PageBounds,
        topics: Option<&[String]>,
    ) -> SharedResult<PagePull> {
        let limit = bounds.entries.min(MAX_PULL_ENTRIES);
        let user = self.user_of(&self.db, device).await?;
        check_topics(topics.into_iter().flatten().map(String::as_str))?;
        // Read the committed counter first: entries committing later get cursors above it.
        let (high, compacted) = self.counters(&self.db, &user).await?;
        if after < compacted {
            return Err(SharedLogError::CursorCompacted {
                cursor: after,
                compacted_through: compacted,
            });
        }
        if after > high {
            return Err(SharedLogError::CursorAhead {
                cursor: after,
                log_end: high,
                compacted_through: compacted,
            });
        }
        if limit == 0 {
            // Nothing taken: the cursor stays.
            return Ok(PagePull::Page(Pull {
                next_cursor: after,
                more: after < high,
                ..Pull::default()
            }));
        }
        if matches!(topics, Some(t) if t.is_empty()) {
            return Ok(PagePull::Page(Pull {
                next_cursor: Ord::max(high, after),
                ..Pull::default()
            }));
        }
        // The page: entries in cursor order with the running total of their payload sizes,
        // and only those within the byte budget, so a page of big entries stays bounded in
        // memory (the first entry always comes, whatever its size). The sizes are read first,
        // alone: SQLite takes a blob's `LENGTH` from its row's header when it is selected
        // as it is (not inside a window function, which would copy every payload). Only the
        // entries within the budget are then read whole.
        let mut sizes = Query::select();
        sizes
            .column(id("cursor"))
            .expr_as(Expr::cust(r#"LENGTH("payload")"#), id("size"))
            .from(id(ENTRIES))
            .and_where(col("user_name").eq(user.as_str()))
            .and_where(col("cursor").gt(cursor_value(after)))
            .and_where(col("cursor").lte(cursor_value(high)))
            .and_where(col("device").ne(device.0))
            .order_by(id("cursor"), Order::Asc)
            .limit(limit as u64 + 1);
        if let Some(topics) = topics {
            sizes.and_where(col("topic").is_in(topics.iter().map(String::as_str)));
        }
        let page = Query::select()
            .column(id("cursor"))
            .expr_as(
                Expr::cust(r#"SUM("size") OVER (ORDER BY "cursor")"#),
                id("running"),
            )
            .expr_as(
                Expr::cust(r#"ROW_NUMBER() OVER (ORDER BY "cursor")"#),
                id("place"),
            )
            .expr_as(Expr::cust("COUNT(*) OVER ()"), id("found"))
            .from_subquery(sizes, id("sizes"))
            .to_owned();
        let budget = bounds.bytes.clamp(1, MAX_PULL_BYTES);
        let first_most = i64::try_from(bounds.first_entry_bytes.max(budget)).unwrap_or(i64::MAX);
        let budget = i64::try_from(budget).unwrap_or(i64::MAX);
        let entry = |name: &str| (id("entry"), id(name));
        let query = Query::select()
            .columns([
                entry("cursor"),
                entry("id"),
                entry("device"),
                entry("topic"),
                entry("payload"),
            ])
            .column((id("page"), id("found")))
            .column((id("page"), id("running")))
            .from_subquery(page, id("page"))
            // A first entry larger than `first_most` is joined to nothing: its row comes
            // with its size and no column of the entry, whose payload is not read.
            .join_as(
                JoinType::LeftJoin,
                id(ENTRIES),
                id("entry"),
                Condition::all()
                    .add(Expr::col(entry("user_name")).eq(user.as_str()))
                    .add(Expr::col(entry("cursor")).equals((id("page"), id("cursor"))))
                    .add(Expr::cust(format!(
                        r#"("page"."place" > 1 OR "page"."running" <= {first_most})"#
                    ))),
            )
            // Numbers of ours (a caller's bytes clamped), not text: written into the SQL.
            .and_where(Expr::cust(format!(
                r#"("page"."running" <= {budget} OR "page"."place" = 1)"#
            )))
            // The one row past the limit only tells that more follow (`found`): its
            // payload is not read.
            .and_where(Expr::cust(format!(r#""page"."place" <= {limit}"#)))
            .order_by((id("page"), id("cursor")), Order::Asc)
            .to_owned();
        let rows = self
            .db
            .query_all(&query)
            .await
            .map_err(|e| self.unavailable(e))?;
        if let Some(first) = rows.first() {
            let read: Option<i64> = first
                .try_get("", "cursor")
                .map_err(|_| self.corrupt("entry cursor"))?;
            if read.is_none() {
                let size: i64 = first
                    .try_get("", "running")
                    .map_err(|_| self.corrupt("payload size"))?;
                let payload_bytes = self.as_cursor(size, "payload size")?;
                return Ok(PagePull::FirstEntryTooLarge {
                    payload_bytes: usize::try_from(payload_bytes).unwrap_or(usize::MAX),
                });
            }
        }
        // The rows past the limit were left out by the query; this only guards the slice.
        let taken = &rows[..rows.len().min(limit)];
        // A row that does not read is passed over and named, so that it does not stop
        // every pull of the user's devices; one whose cursor does not read cannot be.
        let mut entries = Vec::with_capacity(taken.len());
        let mut unreadable = Vec::new();
        let mut last_cursor = None;
        for row in taken {
            let cursor: i64 = row
                .try_get("", "cursor")
                .map_err(|_| self.corrupt("entry cursor"))?;
            let cursor = self.as_cursor(cursor, "entry cursor")?;
            last_cursor = Some(cursor);
            match read_entry(row) {
                Ok(entry) => entries.push(PulledEntry { cursor, entry }),
                Err(problem) => unreadable.push(UnreadableEntry::new(cursor, problem)),
            }
        }
        let found: i64 = match taken.last() {
            Some(row) => row
                .try_get("", "found")
                .map_err(|_| self.corrupt("page size"))?,
            None => 0,
        };
        // More may follow when the page was cut by count, or by bytes: the query found more
        // than it gave.
        let more = found > i64::try_from(taken.len()).unwrap_or(i64::MAX);
        let next_cursor = match (more, last_cursor) {
            (true, Some(last)) => last,
            _ => Ord::max(high, after),
        };
        // A compaction that committed meanwhile may have removed part of this page.
        let (_, compacted) = self.counters(&self.db, &user).await?;
        if after < compacted {
            return Err(SharedLogError::CursorCompacted {
                cursor: after,
                compacted_through: compacted,
            });
        }
        Ok(PagePull::Page(Pull {
            entries,
            unreadable,
            next_cursor,
            more,
        }))
    }

    /// How much the log holds, over all users.
    pub async fn stats(&self) -> SharedResult<LogStats> {
        let count = |table: &str| {
            Query::select()
                .expr_as(Func::count(Expr::cust("*")), id("n"))
                .from(id(table))
                .to_owned()
        };
        let mut numbers = [0u64; 3];
        for (slot, table) in numbers.iter_mut().zip([USERS, DEVICES, ENTRIES]) {
            let row = self
                .db
                .query_one(&count(table))
                .await
                .map_err(|e| self.unavailable(e))?;
            let n: i64 = match row {
                Some(row) => row.try_get("", "n").map_err(|_| self.corrupt("count"))?,
                None => 0,
            };
            *slot = self.as_cursor(n, "count")?;
        }
        Ok(LogStats {
            users: numbers[0],
            devices: numbers[1],
            entries: numbers[2],
        })
    }

    async fn create_tables(&self) -> Result<(), DbErr> {
        let tables = [USERS, DEVICES, ENTRIES, ENTRY_IDS_INDEX, DEVICE_USERS_INDEX];
        if set_up_already(&self.db, &tables, &[OLD_ENTRY_IDS_INDEX]).await? {
            return Ok(());
        }
        let users = Table::create()
            .table(id(USERS))
            .if_not_exists()
            .col(
                ColumnDef::new(id("user_name"))
                    .text()
                    .not_null()
                    .primary_key(),
            )
            .col(ColumnDef::new(id("next_cursor")).big_integer().not_null())
            .col(
                ColumnDef::new(id("compacted_through"))
                    .big_integer()
                    .not_null(),
            )
            .to_owned();
        let devices = Table::create()
            .table(id(DEVICES))
            .if_not_exists()
            .col(ColumnDef::new(id("device")).uuid().not_null().primary_key())
            .col(ColumnDef::new(id("user_name")).text().not_null())
            .col(ColumnDef::new(id("acked")).big_integer().not_null())
            .to_owned();
        let entries = Table::create()
            .table(id(ENTRIES))
            .if_not_exists()
            .col(ColumnDef::new(id("user_name")).text().not_null())
            .col(ColumnDef::new(id("cursor")).big_integer().not_null())
            .col(ColumnDef::new(id("id")).uuid().not_null())
            .col(ColumnDef::new(id("device")).uuid().not_null())
            .col(ColumnDef::new(id("topic")).text().not_null())
            .col(ColumnDef::new(id("payload")).blob().not_null())
            .primary_key(Index::create().col(id("user_name")).col(id("cursor")))
            .to_owned();
        // Entry ids are unique per user: one user's ids say nothing about another's.
        let entry_ids = Index::create()
            .if_not_exists()
            .name(ENTRY_IDS_INDEX)
            .table(id(ENTRIES))
            .col(id("user_name"))
            .col(id("id"))
            .unique()
            .to_owned();
        let device_users = Index::create()
            .if_not_exists()
            .name(DEVICE_USERS_INDEX)
            .table(id(DEVICES))
            .col(id("user_name"))
            .to_owned();
        // One transaction, and on PostgreSQL one instance at a time: servers starting together
        // on one database would otherwise race on the catalog (`CREATE … IF NOT EXISTS` is not
        // safe against a concurrent creation of the same table).
        // A write transaction from its start: on SQLite, one that first reads and then writes
        // (an index built, an old one dropped) fails at once, without waiting, if another
        // connection wrote meanwhile.
        let txn = begin_write(&self.db).await?;
        if matches!(self.dialect, Dialect::Postgres) {
            txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
                .await?;
        }
        txn.execute(&users).await?;
        txn.execute(&devices).await?;
        txn.execute(&entries).await?;
        txn.execute(&entry_ids).await?;
        let old_entry_ids = Index::drop()
            .if_exists()
            .name(OLD_ENTRY_IDS_INDEX)
            .table(id(ENTRIES))
            .to_owned();
        txn.execute(&old_entry_ids).await?;
        txn.execute(&device_users).await?;
        txn.commit().await
    }

    fn unavailable(&self, e: DbErr) -> SharedLogError {
        SharedLogError::Unavailable {
            log: self.name(),
            source: Box::new(e),
        }
    }

    /// Opens a write transaction that takes the user's counter lock. On PostgreSQL its waits
    /// for a lock are bounded ([`LOCK_TIMEOUT`]: the call fails as `Unavailable`, and is
    /// tried again), and so is its idling between statements ([`IDLE_TIMEOUT`]: the server
    /// ends the session, which releases its locks): a device whose process stopped in the
    /// middle of a push (suspended, say) does not hold every other device of its user back
    /// until the connection times out, hours later. (SQLite's writers wait their busy
    /// timeout.)
    async fn begin_counting(&self) -> SharedResult<DatabaseTransaction> {
        let txn = begin_write(&self.db)
            .await
            .map_err(|e| self.unavailable(e))?;
        if self.dialect == Dialect::Postgres {
            // A push is answered once durable: a reader may pull and acknowledge it at once,
            // and its pusher let its entries go. A server whose commits do not wait for the
            // disk has it raised to `local` (on this server's disk); any stronger setting (a
            // synchronous standby's) is kept.
            let bounds = format!(
                "SET LOCAL lock_timeout = {}; SET LOCAL idle_in_transaction_session_timeout = {}; \
                 SELECT set_config('synchronous_commit', 'local', true) \
                 WHERE current_setting('synchronous_commit') = 'off'",
                LOCK_TIMEOUT.as_millis(),
                IDLE_TIMEOUT.as_millis()
            );
            txn.execute_unprepared(&bounds)
                .await
                .map_err(|e| self.unavailable(e))?;
        }
        Ok(txn)
    }

    /// A cursor, position or count as stored: never negative unless the tables were damaged.
    fn as_cursor(&self, value: i64, what: &str) -> SharedResult<u64> {
        u64::try_from(value).map_err(|_| self.corrupt(what))
    }

    fn corrupt(&self, what: &str) -> SharedLogError {
        SharedLogError::Unavailable {
            log: self.name(),
            source: format!("the shared log's tables hold a bad {what}").into(),
        }
    }

    /// The user a device belongs to.
    async fn user_of<C: ConnectionTrait>(
        &self,
        conn: &C,
        device: DeviceId,
    ) -> SharedResult<String> {
        let query = Query::select()
            .column(id("user_name"))
            .from(id(DEVICES))
            .and_where(col("device").eq(device.0))
            .to_owned();
        let row = conn
            .query_one(&query)
            .await
            .map_err(|e| self.unavailable(e))?;
        match row {
            Some(row) => row
                .try_get::<String>("", "user_name")
                .map_err(|e| self.unavailable(e)),
            None => Err(SharedLogError::UnknownDevice { device }),
        }
    }

    /// `(next_cursor, compacted_through)` of a user.
    async fn counters<C: ConnectionTrait>(&self, conn: &C, user: &str) -> SharedResult<(u64, u64)> {
        let query = Query::select()
            .columns([id("next_cursor"), id("compacted_through")])
            .from(id(USERS))
            .and_where(col("user_name").eq(user))
            .to_owned();
        let Some(row) = conn
            .query_one(&query)
            .await
            .map_err(|e| self.unavailable(e))?
        else {
            return Ok((0, 0));
        };
        let next: i64 = row
            .try_get("", "next_cursor")
            .map_err(|e| self.unavailable(e))?;
        let compacted: i64 = row
            .try_get("", "compacted_through")
            .map_err(|e| self.unavailable(e))?;
        Ok((
            self.as_cursor(next, "cursor counter")?,
            self.as_cursor(compacted, "compaction mark")?,
        ))
    }

    async fn push_in(&self, device: DeviceId, entries: Vec<SharedEntry>) -> SharedResult<u64> {
        let txn = self.begin_counting().await?;
        let user = self.user_of(&txn, device).await?;
        check_topics(entries.iter().map(|e| e.topic.as_str()))?;
        // Lock the user's counter first: pushes of one user now run one after the other.
        let lock = Query::update()
            .table(id(USERS))
            .value(id("next_cursor"), col("next_cursor"))
            .and_where(col("user_name").eq(user.as_str()))
            .to_owned();
        let locked = txn.execute(&lock).await.map_err(|e| self.unavailable(e))?;
        if locked.rows_affected() == 0 {
            // Registering makes the row, and nothing deletes it: damaged tables. Counted from
            // nothing, the entries would land where no pull looks.
            return Err(SharedLogError::Unavailable {
                log: self.name(),
                source: format!(
                    "the shared log's tables are damaged: user `{user}` of device {device} \
                     has no row of counters"
                )
                .into(),
            });
        }
        let mut stored = HashSet::with_capacity(entries.len());
        let ids: Vec<Uuid> = entries.iter().map(|e| e.id).collect();
        for chunk in ids.chunks(LOOKUP_CHUNK) {
            let query = Query::select()
                .column(id("id"))
                .from(id(ENTRIES))
                .and_where(col("user_name").eq(user.as_str()))
                .and_where(col("id").is_in(chunk.iter().copied()))
                .to_owned();
            for row in txn
                .query_all(&query)
                .await
                .map_err(|e| self.unavailable(e))?
            {
                stored.insert(
                    row.try_get::<Uuid>("", "id")
                        .map_err(|_| self.corrupt("entry id"))?,
                );
            }
        }
        let mut fresh = Vec::with_capacity(entries.len());
        for entry in entries {
            if stored.insert(entry.id) {
                fresh.push(entry);
            }
        }
        if fresh.is_empty() {
            txn.commit().await.map_err(|e| self.unavailable(e))?;
            return Ok(0);
        }
        let count = i64::try_from(fresh.len()).unwrap_or(i64::MAX);
        let allocate = Query::update()
            .table(id(USERS))
            .value(id("next_cursor"), col("next_cursor").add(count))
            .and_where(col("user_name").eq(user.as_str()))
            .to_owned();
        txn.execute(&allocate)
            .await
            .map_err(|e| self.unavailable(e))?;
        let (last, _) = self.counters(&txn, &user).await?;
        // The counter was just raised by as many: less than that means damaged tables.
        let first = (last + 1)
            .checked_sub(fresh.len() as u64)
            .ok_or_else(|| self.corrupt("cursor counter"))?;
        // The entries are moved into the statements (payloads are not copied on the way).
        let mut cursor = first;
        let mut fresh = fresh.into_iter().peekable();
        while fresh.peek().is_some() {
            let mut insert = Query::insert();
            insert.into_table(id(ENTRIES)).columns([
                id("user_name"),
                id("cursor"),
                id("id"),
                id("device"),
                id("topic"),
                id("payload"),
            ]);
            for entry in fresh.by_ref().take(INSERT_CHUNK) {
                insert.values_panic([
                    Expr::val(user.as_str()),
                    Expr::val(cursor_value(cursor)),
                    Expr::val(entry.id),
                    Expr::val(entry.device.0),
                    Expr::val(entry.topic),
                    Expr::val(entry.payload),
                ]);
                cursor += 1;
            }
            txn.execute(&insert)
                .await
                .map_err(|e| self.unavailable(e))?;
        }
        txn.commit().await.map_err(|e| self.unavailable(e))?;
        Ok(last)
    }
}

impl SharedSyncLog for SqlSharedLog {
    fn name(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => "sql-postgres",
            _ => "sql-sqlite",
        }
    }

    fn register_device<'a>(
        &'a self,
        user: &'a str,
        device: DeviceId,
    ) -> BoxFuture<'a, SharedResult<()>> {
        Box::pin(async move {
            let txn = begin_write(&self.db)
                .await
                .map_err(|e| self.unavailable(e))?;
            self.register_device_in(&txn, user, device).await?;
            txn.commit().await.map_err(|e| self.unavailable(e))
        })
    }

    fn devices(&self, device: DeviceId) -> BoxFuture<'_, SharedResult<Vec<DeviceInfo>>> {
        Box::pin(async move {
            let user = self.user_of(&self.db, device).await?;
            let query = Query::select()
                .columns([id("device"), id("acked")])
                .from(id(DEVICES))
                .and_where(col("user_name").eq(user.as_str()))
                .order_by(id("device"), Order::Asc)
                .to_owned();
            let rows = self
                .db
                .query_all(&query)
                .await
                .map_err(|e| self.unavailable(e))?;
            rows.iter()
                .map(|row| {
                    let device: Uuid = row
                        .try_get("", "device")
                        .map_err(|_| self.corrupt("device"))?;
                    let acked: i64 = row
                        .try_get("", "acked")
                        .map_err(|_| self.corrupt("device"))?;
                    Ok(DeviceInfo {
                        device: DeviceId(device),
                        acked: self.as_cursor(acked, "device position")?,
                    })
                })
                .collect()
        })
    }

    fn push(
        &self,
        device: DeviceId,
        entries: Vec<SharedEntry>,
    ) -> BoxFuture<'_, SharedResult<u64>> {
        Box::pin(async move {
            if let Some(other) = entries.iter().find(|e| e.device != device) {
                // Refuse before touching anything; an unknown device is reported as such.
                self.user_of(&self.db, device).await?;
                return Err(SharedLogError::WrongDevice {
                    device,
                    other: other.device,
                });
            }
            self.push_in(device, entries).await
        })
    }

    fn pull<'a>(
        &'a self,
        device: DeviceId,
        after: u64,
        limit: usize,
        topics: Option<&'a [String]>,
    ) -> BoxFuture<'a, SharedResult<Pull>> {
        Box::pin(self.pull_within(device, after, limit, MAX_PULL_BYTES, topics))
    }

    fn ack(&self, device: DeviceId, cursor: u64) -> BoxFuture<'_, SharedResult<()>> {
        Box::pin(async move {
            let user = self.user_of(&self.db, device).await?;
            // Nobody can have integrated entries that do not exist yet: an ack beyond the
            // counter is kept at the counter, so it cannot compact entries pushed later.
            let (high, _) = self.counters(&self.db, &user).await?;
            let cursor = Ord::min(cursor, high);
            let update = Query::update()
                .table(id(DEVICES))
                .value(id("acked"), Expr::val(cursor_value(cursor)))
                .and_where(col("device").eq(device.0))
                .and_where(col("acked").lt(cursor_value(cursor)))
                .to_owned();
            let done = self
                .db
                .execute(&update)
                .await
                .map_err(|e| self.unavailable(e))?;
            if done.rows_affected() == 0 {
                // Already there, or the device was removed since it was looked up: that is
                // told, not taken for an ack.
                self.user_of(&self.db, device).await?;
            }
            Ok(())
        })
    }

    fn compact<'a>(&'a self, user: &'a str) -> BoxFuture<'a, SharedResult<u64>> {
        Box::pin(async move {
            check_user_name(user)?;
            let txn = self.begin_counting().await?;
            let min_acked = Query::select()
                .expr_as(Func::min(col("acked")), id("through"))
                .from(id(DEVICES))
                .and_where(col("user_name").eq(user))
                .to_owned();
            let through: Option<i64> = match txn
                .query_one(&min_acked)
                .await
                .map_err(|e| self.unavailable(e))?
            {
                Some(row) => row
                    .try_get("", "through")
                    .map_err(|_| self.corrupt("position"))?,
                None => None,
            };
            let (high, _) = self.counters(&txn, user).await?;
            let through = through.map(|t| Ord::min(t, i64::try_from(high).unwrap_or(i64::MAX)));
            let Some(through) = through.filter(|t| *t > 0) else {
                txn.commit().await.map_err(|e| self.unavailable(e))?;
                return Ok(0);
            };
            let delete = Query::delete()
                .from_table(id(ENTRIES))
                .and_where(col("user_name").eq(user))
                .and_where(col("cursor").lte(through))
                .to_owned();
            let dropped = txn
                .execute(&delete)
                .await
                .map_err(|e| self.unavailable(e))?
                .rows_affected();
            let mark = Query::update()
                .table(id(USERS))
                .value(id("compacted_through"), Expr::val(through))
                .and_where(col("user_name").eq(user))
                .and_where(col("compacted_through").lt(through))
                .to_owned();
            txn.execute(&mark).await.map_err(|e| self.unavailable(e))?;
            txn.commit().await.map_err(|e| self.unavailable(e))?;
            Ok(dropped)
        })
    }
}
