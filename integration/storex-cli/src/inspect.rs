//! `storex log` and `storex status`: what a device's client sync log and versions index
//! hold.
//!
//! They read without indexing the journal (they do not know the app's collections, whose
//! rows indexing reads): writes still in the journal are counted, not listed.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use storex_core::{Registry, Storage};
use storex_seaorm::sea_orm::{ConnectionTrait, DbBackend, Statement};
use storex_seaorm::{connect, SeaOrmBackend};
use storex_sync::{with_sync_log, ClientSyncLog, EntryOp, LOG_COLLECTION, STATE_COLLECTION};

/// A storage on the sync tables of the database at `db` (which must exist).
async fn open(db: &Path) -> Result<Storage> {
    if !db.is_file() {
        bail!("no database at {}", db.display());
    }
    // Looking changes nothing: a file without a sync log is told so, read only, before it
    // is opened as a device's (which would give it storex's tables and a write-ahead log).
    let reading = connect(&storex_seaorm::sqlite_file_url(db, "ro")?)
        .await
        .with_context(|| format!("opening {}", db.display()))?;
    let found = reading
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
            [LOG_COLLECTION.into()],
        ))
        .await
        .with_context(|| format!("reading the tables of {}", db.display()))?;
    let _ = reading.close().await;
    if found.is_none() {
        bail!("{} holds no storex sync log", db.display());
    }
    let backend = SeaOrmBackend::open_sqlite_file(db)
        .await
        .with_context(|| format!("opening {}", db.display()))?;
    let registry = with_sync_log(&Registry::default())?;
    Ok(Storage::builder_shared(registry, Arc::new(backend))
        .build()
        .await?)
}

/// Prints the last `limit` entries of the log, oldest first.
pub(crate) async fn log(db: &Path, limit: usize) -> Result<()> {
    let storage = open(db).await?;
    let log = ClientSyncLog::inspect(storage);
    let read = log.all().await?;
    let entries = read.entries;
    let waiting = log.journal_records().await?;
    let skip = entries.len().saturating_sub(limit);
    say!(
        "{} {} in the log{}",
        entries.len(),
        if entries.len() == 1 {
            "entry"
        } else {
            "entries"
        },
        if skip > 0 {
            format!(", the last {limit}:")
        } else if entries.is_empty() {
            String::new()
        } else {
            ":".into()
        }
    );
    for stored in entries.iter().skip(skip) {
        let e = &stored.entry;
        let op = match e.op {
            EntryOp::Create => "create",
            EntryOp::Update => "update",
            EntryOp::Delete => "delete",
        };
        let fields: Vec<&str> = e.fields.keys().map(String::as_str).collect();
        let flags = match (stored.shared, stored.integrated) {
            (false, _) => "unshared",
            (true, true) => "shared",
            (true, false) => "held",
        };
        say!(
            "{} {:>8} {op:<6} {}{} [{}] {flags}",
            e.hlc.clock_text(),
            &e.device.to_string()[28..],
            e.collection,
            e.pk,
            fields.join(","),
        );
    }
    say_damaged("and", &read.damaged);
    if waiting > 0 {
        say!("and {waiting} writes in the journal, logged at the app's next sync");
    }
    let versioned = log.versioned_objects().await?;
    if versioned > 0 {
        say!("and the versions of {versioned} objects (changes applied or pushed, folded)");
    }
    say_damaged("of which", &log.versions_that_do_not_read().await?);
    Ok(())
}

/// Prints counts of the log and the shared-log cursor.
pub(crate) async fn status(db: &Path) -> Result<()> {
    let storage = open(db).await?;
    let log = ClientSyncLog::inspect(storage.clone());
    let total = log.len().await?;
    let waiting = log.journal_records().await?;
    let unshared = log.unshared_count().await?;
    let held = log.held().await?;
    let cursor = storage
        .find_by_pk(STATE_COLLECTION, "shared_log_cursor")
        .await?
        .and_then(|row| row.get("value").and_then(storex_core::Value::as_int))
        .unwrap_or(0);
    let newest = log
        .max_hlc()
        .await?
        .map_or_else(|| "none".to_owned(), |h| h.clock_text());
    say!("log entries:     {total}");
    say!("journal records: {waiting} (writes not yet in the log)");
    say!(
        "versioned:       {} objects (changes applied or pushed, folded)",
        log.versioned_objects().await?
    );
    let unread = log.versions_that_do_not_read().await?.len();
    if unread > 0 {
        say!("                 {} (see storex log)", unreadable(unread));
    }
    say!("not yet pushed:  {unshared}");
    if held.damaged.is_empty() {
        say!("held back:       {}", held.entries.len());
    } else {
        say!(
            "held back:       {} and {} (see storex log)",
            held.entries.len(),
            unreadable(held.damaged.len())
        );
    }
    say!("shared cursor:   {cursor}");
    say!("newest change:   {newest}");
    Ok(())
}

/// Lists the `problems` of rows that do not read, if any, after a line starting `lead`.
fn say_damaged(lead: &str, problems: &[String]) {
    if problems.is_empty() {
        return;
    }
    say!("{lead} {} (damaged):", unreadable(problems.len()));
    for problem in problems {
        say!("  {problem}");
    }
}

/// "1 row that does not read", "2 rows that do not read".
fn unreadable(count: usize) -> String {
    if count == 1 {
        "1 row that does not read".into()
    } else {
        format!("{count} rows that do not read")
    }
}
