//! Drives the `storex` binary as a user would.

use std::process::Command;

fn storex() -> Command {
    Command::new(env!("CARGO_BIN_EXE_storex"))
}

#[test]
fn demo_shows_two_devices_converging() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = storex()
        .args(["demo", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run storex");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("phone holds 3 notes"), "{stdout}");
    assert!(stdout.contains("laptop holds 3 notes"), "{stdout}");
    assert!(
        stdout.contains("[x] buy milk (done)"),
        "the later edit wins: {stdout}"
    );
    assert!(stdout.contains("converged"), "{stdout}");
    for file in ["phone.db", "laptop.db", "shared-log.db"] {
        assert!(dir.path().join(file).exists(), "{file} kept in --dir");
    }
}

#[test]
fn bad_arguments_get_a_clear_message() {
    let output = storex().arg("dmeo").output().expect("run storex");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unrecognized subcommand 'dmeo'"),
        "{stderr}"
    );
}

#[test]
fn an_unusable_folder_is_reported() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a folder").expect("write");
    let output = storex()
        .args(["demo", "--dir"])
        .arg(&file)
        .output()
        .expect("run storex");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: creating "), "{stderr}");
}

/// Writes one note on the demo's phone after its syncs, and has the log index it: an
/// unshared entry for `storex log` and `storex status` to show.
fn write_after_the_sync(phone: &std::path::Path) {
    use std::sync::Arc;
    use storex_core::{object, StorageBackend};
    use storex_seaorm::{registry_of_sqlite, SeaOrmBackend};
    use storex_sync::{Clock, DeviceId, SyncDevice, SyncOptions};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // The demo's schema, read from its file as the CLI's own commands read it.
        let sqlite = SeaOrmBackend::open_sqlite_file(phone).await.expect("open");
        let registry = registry_of_sqlite(sqlite.connection())
            .await
            .expect("registry");
        let backend: Arc<dyn StorageBackend> = Arc::new(sqlite);
        let clock = Clock::new(DeviceId::random());
        let device = SyncDevice::open(registry, backend, clock, SyncOptions::default())
            .await
            .expect("device");
        device
            .storage()
            .create("note", object! { "title" => "written after the sync" })
            .await
            .expect("write");
        assert_eq!(device.log().len().await.expect("indexed"), 1);
    });
}

/// Runs `sql` on the SQLite database at `db`, as a fault or another program would; returns
/// how many rows it changed.
fn run_sql(db: &std::path::Path, sql: &str) -> u64 {
    use sea_orm::ConnectionTrait;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let sqlite = storex_seaorm::SeaOrmBackend::open_sqlite_file(db)
            .await
            .expect("open");
        let done = sqlite.connection().execute_unprepared(sql).await;
        done.expect("ran").rows_affected()
    })
}

#[test]
fn log_and_status_inspect_a_device() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let demo = storex()
        .args(["demo", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run demo");
    assert!(demo.status.success());
    let phone = dir.path().join("phone.db");
    let inspect = |command: &str, extra: &[&str]| {
        let output = storex()
            .arg(command)
            .args(extra)
            .arg("--db")
            .arg(&phone)
            .output()
            .expect("run storex");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // The phone's own changes went into its versions index as they were pushed, and the
    // laptop's as they were applied: three objects, no log entry.
    let stdout = inspect("log", &["--limit", "3"]);
    assert_eq!(
        stdout,
        "0 entries in the log\nand the versions of 3 objects (changes applied or pushed, folded)\n"
    );
    let stdout = inspect("status", &[]);
    assert!(stdout.contains("not yet pushed:  0"), "{stdout}");
    assert!(stdout.contains("log entries:     0"), "{stdout}");
    assert!(stdout.contains("versioned:       3 objects"), "{stdout}");

    write_after_the_sync(&phone);
    let stdout = inspect("log", &["--limit", "3"]);
    assert!(stdout.starts_with("1 entry in the log:\n"), "{stdout}");
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(stdout.contains(" note"), "{stdout}");
    assert!(stdout.contains("] unshared\n"), "{stdout}");
    let stdout = inspect("status", &[]);
    assert!(stdout.contains("not yet pushed:  1"), "{stdout}");
    assert!(stdout.contains("log entries:     1"), "{stdout}");

    // A row that does not read is listed as such, not a reason to fail.
    // (Every row's `fields` overwritten with text that is not JSON.)
    run_sql(&phone, "UPDATE storex_sync_log SET fields = '{not json'");
    let stdout = inspect("log", &[]);
    assert!(
        stdout.starts_with("0 entries in the log\nand 1 row that does not read (damaged):\n  "),
        "{stdout}"
    );
    assert!(stdout.contains("fields"), "{stdout}");
    let stdout = inspect("status", &[]);
    assert!(stdout.contains("log entries:     1"), "{stdout}");

    // So is a row of the versions index that does not read.
    let one = "UPDATE storex_sync_versions SET state = x'ff' WHERE object = \
               (SELECT min(object) FROM storex_sync_versions WHERE object LIKE 'note%')";
    assert_eq!(run_sql(&phone, one), 1);
    let stdout = inspect("log", &[]);
    assert!(
        stdout.contains("of which 1 row that does not read (damaged):\n  "),
        "{stdout}"
    );
    let stdout = inspect("status", &[]);
    assert!(
        stdout.contains("versioned:       3 objects (changes applied or pushed, folded)\n                 1 row that does not read"),
        "{stdout}"
    );
    let missing = storex()
        .args(["status", "--db", "/nonexistent.db"])
        .output()
        .expect("run status");
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr).trim(),
        "error: no database at /nonexistent.db"
    );
}

#[test]
fn sync_warns_of_tables_keyed_by_integers_and_of_those_it_leaves_out() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("device.db");
    run_sql(
        &db,
        "CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT NOT NULL); \
         CREATE TABLE tag (name TEXT PRIMARY KEY); \
         CREATE TABLE audit (message TEXT); \
         CREATE VIRTUAL TABLE item_search USING fts5(name)",
    );
    // A server in the environment does not stand in the way of a shared log given as a flag.
    let output = storex()
        .args(["sync", "--db"])
        .arg(&db)
        .arg("--shared-log")
        .arg(dir.path().join("shared.db"))
        .args(["--user", "ann"])
        .env("STOREX_SERVER", "http://127.0.0.1:9")
        .output()
        .expect("run storex");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: table `item` is keyed by an integer"),
        "{stderr}"
    );
    assert!(!stderr.contains("`tag`"), "a text key is fine: {stderr}");
    assert!(
        stderr.contains("warning: table `audit` is left out: it has no primary key"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: table `item_search` is left out: it is a virtual table"),
        "{stderr}"
    );
}

#[test]
fn a_table_changed_with_a_new_user_version_syncs_and_one_changed_without_is_named() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("device.db");
    let sync = || {
        storex()
            .args(["sync", "--db"])
            .arg(&db)
            .arg("--shared-log")
            .arg(dir.path().join("shared.db"))
            .args(["--user", "ann"])
            .output()
            .expect("run storex")
    };
    // The program never set a version (0).
    run_sql(&db, "CREATE TABLE tag (name TEXT PRIMARY KEY)");
    let first = sync();
    assert!(first.status.success(), "{first:?}");
    // Its first migration adds a column and sets the version to 1: the sync goes on.
    run_sql(
        &db,
        "ALTER TABLE tag ADD COLUMN shade TEXT; PRAGMA user_version = 1",
    );
    let first_migration = sync();
    assert!(first_migration.status.success(), "{first_migration:?}");
    // The next one raises it again.
    run_sql(
        &db,
        "ALTER TABLE tag ADD COLUMN colour TEXT; PRAGMA user_version = 2",
    );
    let migrated = sync();
    assert!(migrated.status.success(), "{migrated:?}");
    // One that does not raise it is named.
    run_sql(&db, "ALTER TABLE tag ADD COLUMN size TEXT");
    let unversioned = sync();
    assert_eq!(unversioned.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unversioned.stderr);
    assert!(
        stderr.contains("`PRAGMA user_version` is still 2"),
        "{stderr}"
    );
}

#[test]
fn a_database_restored_from_a_backup_is_named_until_told_to_go_on() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let shared = dir.path().join("shared.db");
    let sync = |db: &std::path::Path, more: &[&str]| {
        storex()
            .args(["sync", "--user", "ann", "--db"])
            .arg(db)
            .arg("--shared-log")
            .arg(&shared)
            .args(more)
            .env_remove("STOREX_SERVER")
            .output()
            .expect("run storex")
    };
    let succeeds = |db: &std::path::Path, more: &[&str]| {
        let output = sync(db, more);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
    };
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let backup = dir.path().join("a-backup.db");
    let table = "CREATE TABLE item (id TEXT PRIMARY KEY, name TEXT)";
    run_sql(
        &a,
        &format!("{table}; INSERT INTO item VALUES ('x', 'one')"),
    );
    run_sql(&b, table);
    succeeds(&a, &[]);
    succeeds(&b, &[]);
    run_sql(&a, &format!("VACUUM INTO '{}'", backup.display()));
    // After the backup: a new row on `a`, then one on `b` that `a` pulls.
    run_sql(&a, "INSERT INTO item VALUES ('y', 'two')");
    succeeds(&a, &[]);
    run_sql(&b, "INSERT INTO item VALUES ('z', 'three')");
    succeeds(&b, &[]);
    succeeds(&a, &[]);
    // `a`'s database is restored from the backup.
    for suffix in ["", "-wal", "-shm"] {
        let file = dir.path().join(format!("a.db{suffix}"));
        if file.exists() {
            std::fs::remove_file(&file).expect("remove");
        }
    }
    std::fs::copy(&backup, &a).expect("restore");
    let restored = sync(&a, &[]);
    let stderr = String::from_utf8_lossy(&restored.stderr);
    assert_eq!(restored.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("restored from a backup"), "{stderr}");
    // Said again, until told to go on without the row made after the backup.
    assert_eq!(sync(&a, &[]).status.code(), Some(1));
    succeeds(&a, &["--forget-restore"]);
    succeeds(&a, &[]);
    let count = "SELECT COUNT(*) FROM item WHERE id = 'y'";
    assert_eq!(run_sql_count(&a, count), 0);
    assert_eq!(run_sql_count(&b, count), 1);
}

#[test]
fn a_sync_that_leaves_problems_fails_and_names_them() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let shared = dir.path().join("shared.db");
    let sync = |db: &std::path::Path| {
        storex()
            .args(["sync", "--user", "ann", "--db"])
            .arg(db)
            .arg("--shared-log")
            .arg(&shared)
            .env_remove("STOREX_SERVER")
            .output()
            .expect("run storex")
    };
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    run_sql(
        &a,
        "CREATE TABLE item (id TEXT PRIMARY KEY, name TEXT); \
         INSERT INTO item VALUES ('x', 'one')",
    );
    run_sql(&b, "CREATE TABLE item (id TEXT PRIMARY KEY, name TEXT)");
    let pushed = sync(&a);
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    // What `a` pushed no longer opens: `b`'s sync goes through, but says so and fails.
    run_sql(
        &shared,
        "UPDATE storex_shared_entries SET payload = x'0badbeef'",
    );
    let pulled = sync(&b);
    let stderr = String::from_utf8_lossy(&pulled.stderr);
    assert_eq!(pulled.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("problem: "), "{stderr}");
    assert!(
        stderr.contains("error: the sync left 1 problems"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&pulled.stdout);
    assert!(stdout.contains("quarantined 1 payloads"), "{stdout}");
}

#[test]
fn sync_takes_one_shared_log_and_says_how_to_name_one() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("device.db");
    run_sql(&db, "CREATE TABLE item (id TEXT PRIMARY KEY)");
    let run = |args: &[&str]| {
        let output = storex()
            .args(["sync", "--user", "ann", "--db"])
            .arg(&db)
            .args(args)
            .env_remove("STOREX_SERVER")
            .output()
            .expect("run storex");
        assert!(!output.status.success(), "{args:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let both = run(&["--server", "http://127.0.0.1:9", "--shared-log", "x.db"]);
    assert!(both.contains("cannot be used with"), "{both}");
    let neither = run(&[]);
    assert!(
        neither.contains("give --server URL (or set STOREX_SERVER) or --shared-log FILE"),
        "{neither}"
    );
}

#[test]
fn inspecting_a_database_without_a_sync_log_changes_nothing() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("plain.db");
    run_sql(&db, "CREATE TABLE item (id TEXT PRIMARY KEY)");
    for command in ["log", "status"] {
        let output = storex()
            .args([command, "--db"])
            .arg(&db)
            .output()
            .expect("run storex");
        assert_eq!(output.status.code(), Some(1), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("holds no storex sync log"), "{stderr}");
    }
    let tables = run_sql_count(
        &db,
        "SELECT count(*) FROM sqlite_master WHERE name GLOB 'storex_*'",
    );
    assert_eq!(tables, 0, "no table of storex's was added");
}

/// The number `sql` (one row, one integer column) gives on the database at `db`.
fn run_sql_count(db: &std::path::Path, sql: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let sqlite = storex_seaorm::SeaOrmBackend::open_sqlite_file(db)
            .await
            .expect("open");
        let row = sqlite
            .connection()
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Sqlite,
                sql,
            ))
            .await
            .expect("ran")
            .expect("a row");
        row.try_get_by_index::<i64>(0).expect("a count")
    })
}
