//! [`AuthStore`]: users, devices and the hashes of their tokens, in the server's database next
//! to the shared log's tables.
//!
//! Tables:
//! - `storex_http_users (user_name PK, token_hash UNIQUE)`
//! - `storex_http_devices (device PK, user_name, token_hash UNIQUE, revoked)`
//!
//! Nothing here is cached: every instance of a scaled-out server reads the same rows, so a
//! revocation takes effect everywhere at once.

use sea_orm::sea_query::{Alias, ColumnDef, Expr, ExprTrait, Query, SimpleExpr, Table};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, TransactionTrait};
use storex_core::uuid::Uuid;
use storex_sync::DeviceId;

use crate::token::hash_token;

const USERS: &str = "storex_http_users";
const DEVICES: &str = "storex_http_devices";
/// PostgreSQL advisory lock key held while the tables are created ("stxhttp").
const MIGRATION_LOCK: i64 = 0x73_74_78_68_74_74_70;

fn id(name: &str) -> Alias {
    Alias::new(name)
}

fn col(name: &str) -> SimpleExpr {
    Expr::col(Alias::new(name))
}

/// What [`AuthStore::create_user`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UserCreation {
    /// The user is new.
    Created,
    /// The user existed already with this very token: a repeated request.
    Repeated,
    /// The user existed already with another token.
    Taken,
    /// The token is another user's.
    TokenTaken,
}

/// A device found by its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DeviceRecord {
    pub(crate) device: DeviceId,
    pub(crate) user: String,
    pub(crate) revoked: bool,
}

/// What [`AuthStore::add_device`] did with a device's token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeviceToken {
    /// A new device, with its token.
    Added,
    /// A device of the same user registered again: the new token replaces the old.
    Replaced,
    /// The device was revoked; it stays revoked and gets no token.
    Revoked,
    /// The device belongs to another user; nothing changed.
    OtherUser,
    /// Another device has this token already (a client that chose it twice); nothing
    /// changed.
    TokenTaken,
}

/// Users, devices and their token hashes.
#[derive(Clone, Debug)]
pub(crate) struct AuthStore {
    db: DatabaseConnection,
}

impl AuthStore {
    /// Uses `db`, creating the tables if they are missing.
    pub(crate) async fn new(db: DatabaseConnection) -> Result<Self, DbErr> {
        if storex_log_sql::set_up_already(&db, &[USERS, DEVICES], &[]).await? {
            return Ok(AuthStore { db });
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
            .col(
                ColumnDef::new(id("token_hash"))
                    .text()
                    .not_null()
                    .unique_key(),
            )
            .to_owned();
        let devices = Table::create()
            .table(id(DEVICES))
            .if_not_exists()
            .col(ColumnDef::new(id("device")).uuid().not_null().primary_key())
            .col(ColumnDef::new(id("user_name")).text().not_null())
            .col(
                ColumnDef::new(id("token_hash"))
                    .text()
                    .not_null()
                    .unique_key(),
            )
            .col(ColumnDef::new(id("revoked")).boolean().not_null())
            .to_owned();
        let txn = db.begin().await?;
        if db.get_database_backend() == DbBackend::Postgres {
            txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
                .await?;
        }
        txn.execute(&users).await?;
        txn.execute(&devices).await?;
        txn.commit().await?;
        Ok(AuthStore { db })
    }

    /// Creates `user` with a token hash. A user of that name with the same token is
    /// reported as [`UserCreation::Repeated`] (a retried request whose first answer was lost),
    /// one with another token as [`UserCreation::Taken`], a token another user has as
    /// [`UserCreation::TokenTaken`].
    pub(crate) async fn create_user(&self, user: &str, token: &str) -> Result<UserCreation, DbErr> {
        let token_hash = hash_token(token);
        if let Some(outcome) = self.existing_user(user, &token_hash).await? {
            return Ok(outcome);
        }
        let insert = Query::insert()
            .into_table(id(USERS))
            .columns([id("user_name"), id("token_hash")])
            .values_panic([Expr::val(user), Expr::val(token_hash.clone())])
            .to_owned();
        match self.db.execute(&insert).await {
            Ok(_) => Ok(UserCreation::Created),
            // Two requests racing for one name (or one request and its retry): the loser
            // sees the unique key, and the row that won says which it is. With no row of
            // that name, the token's hash, also unique, is what refused it.
            Err(e) if is_unique_violation(&e) => Ok(self
                .existing_user(user, &token_hash)
                .await?
                .unwrap_or(UserCreation::TokenTaken)),
            Err(e) => Err(e),
        }
    }

    /// What creating `user` with `token_hash` meets if the user exists (`None` if not).
    async fn existing_user(
        &self,
        user: &str,
        token_hash: &str,
    ) -> Result<Option<UserCreation>, DbErr> {
        let exists = Query::select()
            .column(id("token_hash"))
            .from(id(USERS))
            .and_where(col("user_name").eq(user))
            .to_owned();
        let Some(row) = self.db.query_one(&exists).await? else {
            return Ok(None);
        };
        let stored: String = row.try_get("", "token_hash")?;
        Ok(Some(if stored == token_hash {
            UserCreation::Repeated
        } else {
            UserCreation::Taken
        }))
    }

    /// The user a user token belongs to.
    pub(crate) async fn user_by_token(&self, token: &str) -> Result<Option<String>, DbErr> {
        let query = Query::select()
            .column(id("user_name"))
            .from(id(USERS))
            .and_where(col("token_hash").eq(hash_token(token)))
            .to_owned();
        match self.db.query_one(&query).await? {
            Some(row) => Ok(Some(row.try_get("", "user_name")?)),
            None => Ok(None),
        }
    }

    /// Stores a device's token hash, through `conn` (the transaction that registers the
    /// device in the log, so both exist or neither does).
    pub(crate) async fn add_device<C: ConnectionTrait>(
        &self,
        conn: &C,
        device: DeviceId,
        user: &str,
        token: &str,
    ) -> Result<DeviceToken, DbErr> {
        // A token is unique to its device: a clash would otherwise fail the write as the
        // database refusing it (a 503 a client retries for ever).
        let holder = Query::select()
            .column(id("device"))
            .from(id(DEVICES))
            .and_where(col("token_hash").eq(hash_token(token)))
            .and_where(col("device").ne(device.0))
            .to_owned();
        if conn.query_one(&holder).await?.is_some() {
            return Ok(DeviceToken::TokenTaken);
        }
        let query = Query::select()
            .columns([id("user_name"), id("revoked")])
            .from(id(DEVICES))
            .and_where(col("device").eq(device.0))
            .to_owned();
        if let Some(row) = conn.query_one(&query).await? {
            let owner: String = row.try_get("", "user_name")?;
            let revoked: bool = row.try_get("", "revoked")?;
            if owner != user {
                return Ok(DeviceToken::OtherUser);
            }
            if revoked {
                return Ok(DeviceToken::Revoked);
            }
            // Registered again (its first answer was lost): a new token replaces the old.
            let update = Query::update()
                .table(id(DEVICES))
                .value(id("token_hash"), Expr::val(hash_token(token)))
                .and_where(col("device").eq(device.0))
                .to_owned();
            conn.execute(&update).await?;
            return Ok(DeviceToken::Replaced);
        }
        let insert = Query::insert()
            .into_table(id(DEVICES))
            .columns([
                id("device"),
                id("user_name"),
                id("token_hash"),
                id("revoked"),
            ])
            .values_panic([
                Expr::val(device.0),
                Expr::val(user),
                Expr::val(hash_token(token)),
                Expr::val(false),
            ])
            .to_owned();
        conn.execute(&insert).await?;
        Ok(DeviceToken::Added)
    }

    /// The device a device token belongs to.
    pub(crate) async fn device_by_token(&self, token: &str) -> Result<Option<DeviceRecord>, DbErr> {
        let query = Query::select()
            .columns([id("device"), id("user_name"), id("revoked")])
            .from(id(DEVICES))
            .and_where(col("token_hash").eq(hash_token(token)))
            .to_owned();
        let Some(row) = self.db.query_one(&query).await? else {
            return Ok(None);
        };
        Ok(Some(DeviceRecord {
            device: DeviceId(row.try_get::<Uuid>("", "device")?),
            user: row.try_get("", "user_name")?,
            revoked: row.try_get("", "revoked")?,
        }))
    }

    /// Checks that the database answers.
    pub(crate) async fn ping(&self) -> Result<(), DbErr> {
        self.db.execute_unprepared("SELECT 1").await.map(|_| ())
    }

    /// Marks a device of `user` revoked; false when `user` has no such device.
    pub(crate) async fn revoke(&self, user: &str, device: DeviceId) -> Result<bool, DbErr> {
        let update = Query::update()
            .table(id(DEVICES))
            .value(id("revoked"), Expr::val(true))
            .and_where(col("device").eq(device.0))
            .and_where(col("user_name").eq(user))
            .to_owned();
        Ok(self.db.execute(&update).await?.rows_affected() > 0)
    }
}

fn is_unique_violation(e: &DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}
