//! storex-seaorm: the storex storage backend over SeaORM, for SQLite (bundled, the embedded
//! default) and PostgreSQL.
//!
//! [`SeaOrmBackend`] runs every storex-core operation as SQL built with sea-query (values
//! are always bound parameters; on SQLite a find's limit is a number in the text, see
//! `sql::select`), applies batches in one transaction with multi-row INSERTs
//! and UPDATEs, and creates the registry's tables when they are missing or adopts the app's
//! existing ones.
//! [`collection_from_entity`] derives collection definitions from an app's SeaORM entities,
//! so storex writes the very tables the app reads with plain SeaORM.
//!
//! Features: `sqlite` and `postgres` (both on by default) select the drivers compiled in.

mod backend;
mod durable;
mod entity;
mod error;
mod exec;
mod introspect;
mod savepoint;
mod schema;
mod sql;
mod values;

pub use backend::{
    begin_write, connect, connect_durable, dialect_of, sqlite_file_url, Dialect, SeaOrmBackend,
};
pub use entity::collection_from_entity;
pub use error::{Error, Result};
pub use introspect::{registry_of_sqlite, sqlite_tables, SqliteTables};

/// Re-exported so apps name the same SeaORM version.
pub use sea_orm;
