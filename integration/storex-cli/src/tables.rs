//! The tables of a SQLite file that `storex sync` and `storex migrate send` take, with a
//! warning for each one they leave out, and for `migrate send` a warning of what of the
//! schema the new database does not get.

use std::path::Path;

use anyhow::{Context, Result};
use storex_seaorm::sea_orm::DatabaseConnection;
use storex_seaorm::{sqlite_tables, SqliteTables};

/// The tables of `db` (the file at `path`) that storex can take; each table left out is
/// named on standard error with why.
pub(crate) async fn tables_of(db: &DatabaseConnection, path: &Path) -> Result<SqliteTables> {
    let tables = sqlite_tables(db)
        .await
        .with_context(|| format!("reading the tables of {}", path.display()))?;
    for (table, why) in &tables.left_out {
        eprintln!("warning: table `{table}` is left out: {why}");
    }
    Ok(tables)
}

/// Names on standard error what of the schema of the tables sent a database created on the
/// other side does not get (it gets their columns, primary keys and indexes over columns).
pub(crate) fn warn_not_carried(tables: &SqliteTables) {
    if tables.not_carried.is_empty() {
        return;
    }
    eprintln!(
        "warning: the new database gets the tables' columns, primary keys and indexes over \
         columns, but not:"
    );
    for what in &tables.not_carried {
        eprintln!("  - {what}");
    }
    eprintln!("  (an app that relies on them recreates them on the new device)");
}
