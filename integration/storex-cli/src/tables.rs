//! The tables of a SQLite file that `storex sync` and `storex migrate send` take, with a
//! warning for each one they leave out.

use std::path::Path;

use anyhow::{Context, Result};
use storex_core::Registry;
use storex_seaorm::sea_orm::DatabaseConnection;
use storex_seaorm::sqlite_tables;

/// The registry of the tables of `db` (the file at `path`) that storex can take; each table
/// left out is named on standard error with why.
pub(crate) async fn tables_of(db: &DatabaseConnection, path: &Path) -> Result<Registry> {
    let tables = sqlite_tables(db)
        .await
        .with_context(|| format!("reading the tables of {}", path.display()))?;
    for (table, why) in &tables.left_out {
        eprintln!("warning: table `{table}` is left out: {why}");
    }
    Ok(tables.registry)
}
