//! `storex sync`: one sync of a device's SQLite database with a shared log: a sync server
//! (`--server URL --user TOKEN`) or a shared log in a SQLite file (`--shared-log FILE --user
//! NAME`). The database's tables are read from the file, at the schema version the program
//! that owns it keeps in `PRAGMA user_version` (1 if it keeps none); the device id (and the
//! server's device token) are kept in the database's settings, so the next sync is the same
//! device.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use storex_app::SyncedStorage;
use storex_log_http::HttpSharedLog;
use storex_log_sql::SqlSharedLog;
use storex_seaorm::connect;

use crate::tables::tables_of;
use storex_sync::SharedSyncLog;

/// The flags of `storex sync`.
#[derive(Debug, clap::Args)]
pub(crate) struct SyncArgs {
    /// The device's SQLite database.
    #[arg(long)]
    db: PathBuf,
    /// A sync server's URL (`storex serve`). Without it or `--shared-log`, the environment
    /// variable STOREX_SERVER's (read here, not by clap: a server in the environment must
    /// not conflict with a `--shared-log` given on the command line).
    #[arg(long, conflicts_with = "shared_log")]
    server: Option<String>,
    /// A shared log in a SQLite file, for devices on one machine.
    #[arg(long)]
    shared_log: Option<PathBuf>,
    /// The user: its token for a sync server, its name for a shared-log file.
    #[arg(long, env = "STOREX_USER", hide_env_values = true)]
    user: String,
    /// Go on without the changes this device made after the backup its database was restored
    /// from, which every sync names as a problem (they are on the other devices only:
    /// `storex migrate` from one of them into a new database brings everything).
    #[arg(long)]
    forget_restore: bool,
}

fn sqlite_url(path: &Path, create: bool) -> Result<String> {
    Ok(storex_seaorm::sqlite_file_url(
        path,
        if create { "rwc" } else { "rw" },
    )?)
}

/// Syncs the database once and prints what happened.
pub(crate) async fn sync(args: SyncArgs) -> Result<()> {
    if !args.db.is_file() {
        bail!("no database at {}", args.db.display());
    }
    let server = match (&args.server, &args.shared_log) {
        (None, None) => std::env::var("STOREX_SERVER").ok(),
        (server, _) => server.clone(),
    };
    let log: Arc<dyn SharedSyncLog> = match (&server, &args.shared_log) {
        (Some(server), _) => Arc::new(HttpSharedLog::new(server)?),
        (None, Some(file)) => Arc::new(
            SqlSharedLog::connect(&sqlite_url(file, true)?)
                .await
                .with_context(|| format!("opening the shared log {}", file.display()))?,
        ),
        (None, None) => bail!("give --server URL (or set STOREX_SERVER) or --shared-log FILE"),
    };
    let db = connect(&sqlite_url(&args.db, false)?)
        .await
        .with_context(|| format!("opening {}", args.db.display()))?;
    let tables = tables_of(&db, &args.db).await?;
    // The owner's migrations raise it as they change the tables: a table whose columns
    // changed under the same version is refused, as in an app.
    let user_version = tables.user_version;
    let version = schema_version(user_version);
    let registry = tables.registry;
    for def in registry.collections() {
        if integer_keyed(def) {
            eprintln!(
                "warning: table `{}` is keyed by an integer: rows made on two devices with the \
                 same key are taken for one row, and the later write wins (give rows made on \
                 several devices UUID or text keys)",
                def.name()
            );
        }
    }
    let mut builder = SyncedStorage::builder(db).shared_log(log, args.user);
    for collection in registry.collections() {
        builder = builder.collection(collection.clone().version(version));
    }
    let app = builder.open().await.map_err(|e| match e {
        storex_app::Error::SchemaChangedWithoutVersion { .. } => {
            anyhow::Error::new(e).context(format!(
                "preparing the database for sync: the database's `PRAGMA user_version` is \
                 still {user_version}; the program that changed the table should raise it with the \
                 change (devices whose program has not changed yet then keep the new rows \
                 until it has)"
            ))
        }
        e => anyhow::Error::new(e).context("preparing the database for sync"),
    })?;
    // The database is another program's: rows it wrote since the last run (with plain SQL,
    // unseen by storex) are logged now. (Changes to rows already logged, and deletes, made
    // outside storex are not seen.)
    let since = app
        .device()
        .log_existing_rows()
        .await
        .context("logging the rows written since the last sync")?;
    let logged = app.existing_rows_logged() + since;
    if logged > 0 {
        say!("{logged} rows written outside storex logged for the other devices");
    }
    if args.forget_restore {
        let forgetting = app.continuous().forget_restore().await;
        forgetting.context("forgetting the restore from a backup")?;
    }
    let report = app.sync_once().await.context("syncing")?;
    say!(
        "device {}: pushed {}, pulled {}, applied {}, conflicts {}, in {:.0} ms",
        app.device_id(),
        report.pushed,
        report.pulled,
        report.applied,
        report.conflicts,
        report.duration.as_secs_f64() * 1e3
    );
    if report.held > 0 || report.quarantined > 0 {
        say!(
            "held back {} pulled entries and quarantined {} payloads that did not open; they \
             are tried again at later syncs",
            report.held,
            report.quarantined
        );
    }
    // Problems fail the command, so that a job that runs it sees them (an unfinished copy
    // into this database, which keeps the sync from pulling, is one of them).
    for problem in &report.problems {
        eprintln!("problem: {problem}");
    }
    let problems = report.problems.len();
    if problems > 0 {
        bail!("the sync left {problems} problems (above); what it could do is done");
    }
    Ok(())
}

/// The schema version the tables of a database whose `PRAGMA user_version` is `user_version`
/// sync at: one more, so that a first migration (from 0, never set, to 1) raises it too; 1
/// for a negative one.
fn schema_version(user_version: i32) -> u32 {
    u32::try_from(user_version).map_or(1, |v| v + 1)
}

/// Whether `def`'s key has an integer field: an auto-incremented one gives rows made on two
/// devices the same keys.
fn integer_keyed(def: &storex_core::CollectionDef) -> bool {
    def.pk_fields().iter().any(|f| {
        def.field_def(f)
            .is_some_and(|d| d.ty == storex_core::FieldType::Int)
    })
}
