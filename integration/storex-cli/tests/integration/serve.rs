//! `storex serve` and `storex user` as an operator runs them: configuration from flags and
//! the environment, a user created over HTTP, a clean stop on SIGTERM, clear errors.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const ADMIN: &str = "cli-admin-token-0123456789";

fn storex() -> Command {
    Command::new(env!("CARGO_BIN_EXE_storex"))
}

/// Starts `storex serve` on a free port; returns the child and its URL.
fn serve(db: &std::path::Path) -> (Child, String) {
    let mut child = storex()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env(
            "STOREX_DATABASE_URL",
            format!("sqlite://{}?mode=rwc", db.display()),
        )
        .env("STOREX_ADMIN_TOKEN", ADMIN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run storex serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("read the first line");
    let url = first
        .trim()
        .strip_prefix("storex sync server listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
        .to_owned();
    (child, url)
}

/// Runs `storex user --name NAME` against the server at `url` with the admin token.
fn create_user(url: &str, name: &str) -> std::process::Output {
    storex()
        .args([
            "user",
            "--server",
            url,
            "--name",
            name,
            "--admin-token",
            ADMIN,
        ])
        .output()
        .expect("run storex user")
}

#[test]
fn serve_takes_its_settings_from_the_environment_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (mut child, url) = serve(&dir.path().join("server.db"));
    let output = storex()
        .args(["user", "--server", &url, "--name", "ann"])
        .env("STOREX_ADMIN_TOKEN", ADMIN)
        .output()
        .expect("run storex user");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("user: ann"), "{stdout}");
    assert!(stdout.contains("token: stx_"), "{stdout}");
    // The same name twice is refused with the server's reason.
    let output = create_user(&url, "ann");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("exists already"), "{stderr}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "storex serve exited with {status}");
    assert!(dir.path().join("server.db").exists());
}

#[test]
fn serve_without_a_database_or_with_a_short_admin_token_says_why() {
    let output = storex()
        .arg("serve")
        .env_remove("STOREX_DATABASE_URL")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--database-url"), "{stderr}");

    let dir = tempfile::tempdir().expect("temporary directory");
    let output = storex()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            "short",
            "--database-url",
        ])
        .arg(format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("s.db").display()
        ))
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("admin token must be at least 16 characters"),
        "{stderr}"
    );
}

#[test]
fn user_against_no_server_says_it_cannot_reach_it() {
    let output = storex()
        .args([
            "user",
            "--server",
            "http://127.0.0.1:9",
            "--name",
            "x",
            "--admin-token",
            ADMIN,
        ])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot create user `x` on http://127.0.0.1:9"),
        "{stderr}"
    );
    assert!(stderr.contains("unavailable"), "{stderr}");
}

/// A SQLite file with a `note` table, as an app would have; `rows` notes in it.
async fn app_db(path: &std::path::Path, rows: &[(&str, &str)]) {
    use sea_orm::{ConnectionTrait, Database};
    let db = Database::connect(format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("connect");
    db.execute_unprepared("CREATE TABLE note (id TEXT NOT NULL PRIMARY KEY, title TEXT NOT NULL)")
        .await
        .expect("create");
    db.close().await.expect("close");
    insert_notes(path, rows).await;
}

/// Writes `rows` notes into the file with plain SQL, as the app does.
async fn insert_notes(path: &std::path::Path, rows: &[(&str, &str)]) {
    use sea_orm::{ConnectionTrait, Database};
    let db = Database::connect(format!("sqlite://{}?mode=rw", path.display()))
        .await
        .expect("connect");
    for (id, title) in rows {
        db.execute_unprepared(&format!("INSERT INTO note VALUES ('{id}', '{title}')"))
            .await
            .expect("insert");
    }
    db.close().await.expect("close");
}

async fn titles(path: &std::path::Path) -> Vec<String> {
    use sea_orm::{ConnectionTrait, Database, Statement};
    let db = Database::connect(format!("sqlite://{}?mode=ro", path.display()))
        .await
        .expect("connect");
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT title FROM note ORDER BY title",
        ))
        .await
        .expect("query");
    rows.iter()
        .map(|r| r.try_get::<String>("", "title").expect("title"))
        .collect()
}

fn run_sync(db: &std::path::Path, url: &str, token: &str) -> String {
    let output = storex()
        .args(["sync", "--server", url, "--db"])
        .arg(db)
        .env("STOREX_USER", token)
        .output()
        .expect("run storex sync");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_moves_an_apps_rows_between_two_databases_through_the_server() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (mut child, url) = serve(&dir.path().join("server.db"));
    let output = create_user(&url, "ann");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let token = stdout
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("a token")
        .to_owned();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    app_db(&a, &[("n1", "from a"), ("n2", "also from a")]).await;
    app_db(&b, &[("n3", "from b")]).await;

    let first = run_sync(&a, &url, &token);
    assert!(
        first.contains("2 rows written outside storex logged"),
        "{first}"
    );
    assert!(first.contains("pushed 2"), "{first}");
    let on_b = run_sync(&b, &url, &token);
    assert!(on_b.contains("pushed 1, pulled 2, applied 2"), "{on_b}");
    let again = run_sync(&a, &url, &token);
    assert!(again.contains("pushed 0, pulled 1, applied 1"), "{again}");
    let device = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("device "))
            .and_then(|l| l.split(':').next())
            .map(str::to_owned)
    };
    assert_eq!(device(&first), device(&again), "the same device both times");
    assert_eq!(titles(&a).await, titles(&b).await);
    assert_eq!(titles(&a).await.len(), 3);
    // The app goes on writing with plain SQL between two runs: the new row travels too.
    insert_notes(&a, &[("n4", "written by the app later")]).await;
    let later = run_sync(&a, &url, &token);
    assert!(
        later.contains("1 rows written outside storex logged") && later.contains("pushed 1"),
        "{later}"
    );
    run_sync(&b, &url, &token);
    assert_eq!(titles(&a).await, titles(&b).await);
    assert_eq!(titles(&a).await.len(), 4);

    // Clear messages for a missing file and a missing user.
    let output = storex()
        .args(["sync", "--server", &url, "--user", &token, "--db"])
        .arg(dir.path().join("missing.db"))
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no database at"));
    let output = storex()
        .args(["sync", "--server", &url, "--db"])
        .arg(&a)
        .env_remove("STOREX_USER")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--user"));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_help_does_not_print_the_database_password_from_the_environment() {
    let output = storex()
        .args(["serve", "--help"])
        .env(
            "STOREX_DATABASE_URL",
            "postgres://storex:hunter2-secret@db/storex",
        )
        .output()
        .expect("run");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("STOREX_DATABASE_URL"), "{help}");
    assert!(!help.contains("hunter2"), "{help}");
}
