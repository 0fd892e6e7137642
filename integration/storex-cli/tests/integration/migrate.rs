//! `storex migrate send` and `storex migrate receive` in two processes move a SQLite database
//! with 50k rows; the two files hold the same rows, also when the connection drops midway
//! (the receiver reconnects and resumes) and when the receiver is killed and run again. Bad
//! arguments and missing files get a clear message.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use sea_orm::ConnectionTrait;
use storex_core::{
    object, BatchStep, CollectionDef, FieldType, Operation, Query, Registry, Storage,
};
use storex_seaorm::SeaOrmBackend;

/// The code the senders and receivers of these tests share (through the environment), unless
/// a test says otherwise.
const TEST_CODE: &str = "test-code-0001";

fn storex() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_storex"));
    command.env("STOREX_MIGRATE_CODE", TEST_CODE);
    command
}

/// The next line a child printed, which must start with `prefix`, without it.
fn next_line_after(out: &mut impl BufRead, prefix: &str) -> String {
    let mut line = String::new();
    out.read_line(&mut line).expect("a line from the child");
    line.trim()
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected `{prefix}…`, got {line:?}"))
        .to_owned()
}

fn registry() -> Registry {
    Registry::builder()
        .collection(
            CollectionDef::new("item")
                .field("id", FieldType::Int)
                .field("name", FieldType::Text)
                .optional_field("score", FieldType::Float)
                .primary_key(["id"]),
        )
        .collection(
            CollectionDef::new("label")
                .field("item", FieldType::Int)
                .field("text", FieldType::Text)
                .primary_key(["item", "text"]),
        )
        .build()
        .expect("registry")
}

async fn storage(path: &std::path::Path) -> Storage {
    let backend = SeaOrmBackend::open_sqlite_file(path).await.expect("open");
    Storage::builder(registry(), backend)
        .build()
        .await
        .expect("storage")
}

/// Writes `thousands` × 1,000 items in batches.
async fn write_items(storage: &Storage, thousands: i64) {
    for chunk in 0..thousands {
        let steps = (0..1_000i64)
            .map(|i| {
                let id = chunk * 1_000 + i;
                BatchStep::new(Operation::create(
                    "item",
                    object! { "id" => id, "name" => format!("item {id}"), "score" => id as f64 / 7.0 },
                ))
            })
            .collect();
        storage.batch(steps).await.expect("items");
    }
}

/// A temporary directory holding `old.db` with `thousands` × 1,000 items, and the path of a
/// `new.db` to receive into.
async fn old_database(thousands: i64) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (old_path, new_path) = (dir.path().join("old.db"), dir.path().join("new.db"));
    write_items(&storage(&old_path).await, thousands).await;
    (dir, old_path, new_path)
}

/// Runs `storex migrate receive` into `db` from `address`, trying to reconnect for
/// `reconnect_secs` after a dropped connection, off the runtime's threads (a relay may run on
/// them); its output.
async fn receive_from(address: String, db: &Path, reconnect_secs: &'static str) -> Output {
    let db = db.to_path_buf();
    tokio::task::spawn_blocking(move || {
        storex()
            .args(["migrate", "receive", "--db"])
            .arg(&db)
            .args(["--connect", &address, "--reconnect-secs", reconnect_secs])
            .output()
            .expect("run the receiver")
    })
    .await
    .expect("the receiver's thread")
}

/// Starts `storex migrate send` on `db`: the child, its output after the address, and the
/// address it listens on.
fn start_sender(db: &std::path::Path) -> (Child, BufReader<ChildStdout>, String) {
    start_sender_with(db, &[])
}

/// [`start_sender`] with `more` arguments.
fn start_sender_with(db: &Path, more: &[&str]) -> (Child, BufReader<ChildStdout>, String) {
    spawn_sender(
        storex()
            .args(["migrate", "send", "--db"])
            .arg(db)
            .args(more),
    )
}

/// Starts the sender `command` runs: the child, its output after the address, and the
/// address it listens on.
fn spawn_sender(command: &mut Command) -> (Child, BufReader<ChildStdout>, String) {
    let mut sender = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the sender");
    let mut out = BufReader::new(sender.stdout.take().expect("stdout"));
    let address = next_line_after(&mut out, "listening on ");
    (sender, out, address)
}

#[tokio::test]
async fn a_database_of_50k_rows_moves_between_two_processes() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (old_path, new_path) = (dir.path().join("old.db"), dir.path().join("new.db"));
    {
        let old = storage(&old_path).await;
        write_items(&old, 45).await;
        let steps = (0..5_000i64)
            .map(|i| {
                BatchStep::new(Operation::create(
                    "label",
                    object! { "item" => i, "text" => format!("l{}", i % 3) },
                ))
            })
            .collect();
        old.batch(steps).await.expect("labels");
    }

    let (sender, mut sender_out, address) = start_sender(&old_path);
    let receiver = storex()
        .args(["migrate", "receive", "--db"])
        .arg(&new_path)
        .args(["--connect", &address])
        .output()
        .expect("run the receiver");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut sender_out, &mut rest).expect("the sender's summary");
    let sent = sender.wait_with_output().expect("the sender ends");
    assert!(rest.contains("sent 50000 objects"), "{rest}");
    assert!(
        receiver.status.success(),
        "receiver: {}",
        String::from_utf8_lossy(&receiver.stderr)
    );
    assert!(
        sent.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(String::from_utf8_lossy(&receiver.stdout).contains("received 50000 objects"));
    assert_same_rows(&old_path, &new_path, &["item", "label"]).await;
}

#[tokio::test]
async fn only_a_receiver_that_gives_the_printed_code_gets_the_database() {
    let (_dir, old_path, new_path) = old_database(1).await;
    let (sender, mut out, address) = spawn_sender(
        storex()
            .env_remove("STOREX_MIGRATE_CODE")
            .args(["migrate", "send", "--db"])
            .arg(&old_path),
    );
    let printed = next_line_after(&mut out, "code: ");
    let code = printed
        .split_whitespace()
        .next()
        .expect("a code")
        .to_owned();
    assert_ne!(code, TEST_CODE);

    // Connections that say nothing (a browser's spare ones) do not keep the receiver waiting
    // behind them: the sender waits 10 s for each one's code, the receiver 30 s for an answer.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(
            tokio::net::TcpStream::connect(&address)
                .await
                .expect("connect"),
        );
    }
    // Something else connects first (a browser, a port scan): it gets nothing.
    // Its answer is read alongside the receivers below, which do not wait for it.
    let mut stray = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    stray
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let stray = tokio::spawn(async move {
        let mut answer = Vec::new();
        let _ = stray.read_to_end(&mut answer).await;
        answer
    });

    // A receiver with another code is refused, and the sender waits on.
    let wrong = receive_from(address.clone(), &new_path, "0").await;
    assert_eq!(wrong.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("refused the code"), "{stderr}");
    assert!(!new_path.exists());

    let db = new_path.clone();
    let right = tokio::task::spawn_blocking(move || {
        storex()
            .env("STOREX_MIGRATE_CODE", code.to_uppercase())
            .args(["migrate", "receive", "--db"])
            .arg(&db)
            .args(["--connect", &address])
            .output()
            .expect("run the receiver")
    })
    .await
    .expect("the receiver's thread");
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
    let (rest, sent) = sender_end(sender, out).await;
    assert!(sent.status.success(), "{rest}");
    // The stray and the wrong code; the idle ones too if the copy took longer than 10 s.
    assert!(
        rest.matches("turned away a connection").count() >= 2,
        "{rest}"
    );
    drop(idle);
    let answer = stray.await.expect("the stray connection");
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    assert_same_rows(&old_path, &new_path, &["item"]).await;
}

#[tokio::test]
async fn the_new_database_gets_the_indexes_and_schema_version_and_the_sender_names_the_rest() {
    let (_dir, old_path, new_path) = old_database(1).await;
    {
        let old = SeaOrmBackend::open_sqlite_file(&old_path)
            .await
            .expect("open");
        old.connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX item_name ON item (name); \
                 CREATE INDEX item_score ON item (score, name); \
                 CREATE TRIGGER item_touch AFTER UPDATE ON item BEGIN SELECT 1; END; \
                 PRAGMA user_version = 3",
            )
            .await
            .expect("the app's indexes, a trigger and a schema version");
    }
    let (sender, sender_out, address) = start_sender(&old_path);
    let received = receive_from(address, &new_path, "0").await;
    assert!(
        received.status.success(),
        "{}",
        String::from_utf8_lossy(&received.stderr)
    );
    let (_, sent) = sender_end(sender, sender_out).await;
    let warnings = String::from_utf8_lossy(&sent.stderr);
    assert!(warnings.contains("but not:"), "{warnings}");
    assert!(warnings.contains("  - trigger `item_touch`"), "{warnings}");
    assert!(!warnings.contains("user_version"), "it moves: {warnings}");
    // The receiver, where the person moving house looks, is told too.
    let told = String::from_utf8_lossy(&received.stderr);
    assert!(told.contains("but not (an app"), "{told}");
    assert!(told.contains("  - trigger `item_touch`"), "{told}");
    assert!(
        !warnings.contains("item_name"),
        "an index that moves: {warnings}"
    );

    let new = storage(&new_path).await;
    let duplicate = object! { "id" => 1_000_000i64, "name" => "item 7" };
    let refused = new.create("item", duplicate).await;
    assert!(refused.is_err(), "the unique index came along: {refused:?}");
    let new_db = SeaOrmBackend::open_sqlite_file(&new_path)
        .await
        .expect("open");
    let indexes = new_db
        .connection()
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "SELECT group_concat(i.name, ',') AS columns FROM sqlite_schema s, \
             pragma_index_info(s.name) i WHERE s.type = 'index' AND s.tbl_name = 'item' \
             AND s.sql IS NOT NULL GROUP BY s.name ORDER BY columns",
        ))
        .await
        .expect("the new database's indexes");
    let indexes: Vec<String> = indexes
        .iter()
        .map(|row| row.try_get("", "columns").expect("columns"))
        .collect();
    assert_eq!(indexes, ["name", "score,name"]);
    let version = new_db
        .connection()
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "SELECT user_version FROM pragma_user_version",
        ))
        .await
        .expect("query")
        .expect("a row");
    let version: i32 = version.try_get("", "user_version").expect("user_version");
    assert_eq!(version, 3, "the app's schema version came along");
}

/// The number of rows of `table` in the SQLite file at `path`, counted with plain SQL.
async fn rows_in(path: &Path, table: &str) -> i64 {
    let db = SeaOrmBackend::open_sqlite_file(path).await.expect("open");
    let row = db
        .connection()
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            format!("SELECT count(*) AS n FROM \"{table}\""),
        ))
        .await
        .expect("count")
        .expect("a row");
    row.try_get("", "n").expect("n")
}

/// Key columns declared without a type (no affinity): one holding numbers is left out, by
/// name and with why (SQLite orders numbers apart from the text storex reads them as, so
/// paging by key would miss rows); one holding text moves whole.
#[tokio::test]
async fn a_key_column_without_a_type_moves_when_it_holds_text_and_is_named_when_not() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (old_path, new_path) = (dir.path().join("old.db"), dir.path().join("new.db"));
    {
        let old = SeaOrmBackend::open_sqlite_file(&old_path)
            .await
            .expect("open");
        old.connection()
            .execute_unprepared(
                "CREATE TABLE cache (id PRIMARY KEY, v TEXT); \
                 CREATE TABLE word (id PRIMARY KEY, v TEXT); \
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) \
                 INSERT INTO cache SELECT i, 'value ' || i FROM n; \
                 INSERT INTO word SELECT 'w' || id, v FROM cache",
            )
            .await
            .expect("untyped key columns");
    }
    let (sender, sender_out, address) = start_sender(&old_path);
    let received = receive_from(address, &new_path, "0").await;
    let (_, sent) = sender_end(sender, sender_out).await;
    assert!(
        received.status.success(),
        "{}",
        String::from_utf8_lossy(&received.stderr)
    );
    let warnings = String::from_utf8_lossy(&sent.stderr);
    assert!(sent.status.success(), "{warnings}");
    assert!(
        warnings.contains("table `cache` is left out: its key column `id` has no declared type"),
        "{warnings}"
    );
    let told = String::from_utf8_lossy(&received.stderr);
    assert!(
        told.contains("the new database does not have them:\n  - `cache`: its key column `id`"),
        "{told}"
    );
    assert_eq!(rows_in(&new_path, "word").await, 1_000);
}

/// The two databases hold the same rows of `collections`.
async fn assert_same_rows(old: &Path, new: &Path, collections: &[&str]) {
    let (old, new) = (storage(old).await, storage(new).await);
    for collection in collections {
        let a = old
            .find_many(collection, Query::default())
            .await
            .expect("old rows");
        let b = new
            .find_many(collection, Query::default())
            .await
            .expect("new rows");
        assert_eq!(a.len(), b.len(), "{collection}");
        assert!(a == b, "{collection}: the rows differ");
    }
}

/// What a relay does to its first connection once enough came from the target.
#[derive(Clone, Copy, PartialEq)]
enum Cut {
    /// Closes it both ways.
    Close,
    /// Stops passing on what the target sends (the client waits), until either side closes;
    /// then closes it both ways.
    Hold,
}

/// A relay on 127.0.0.1 that cuts its first connection once `cut_after` bytes came from the
/// target, and relays the later ones whole. Connection `i` goes to `targets[i]` (the last
/// target for the rest). Returns its address and how many connections it took.
async fn cutting_relay(targets: Vec<String>, cut_after: usize) -> (String, Arc<AtomicUsize>) {
    relay(targets, cut_after, Cut::Close).await
}

/// [`cutting_relay`] with the `cut` of its choice.
async fn relay(targets: Vec<String>, cut_after: usize, cut: Cut) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("relay listens");
    let address = listener.local_addr().expect("relay address").to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let index = counted.fetch_add(1, Ordering::SeqCst);
            let (first, target) = (index == 0, &targets[index.min(targets.len() - 1)]);
            let Ok(upstream) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut client_in, mut client_out) = client.into_split();
                let (mut upstream_in, mut upstream_out) = upstream.into_split();
                let mut up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_in, &mut upstream_out).await;
                });
                let mut buffer = vec![0u8; 16 * 1024];
                let mut passed = 0;
                let mut held = false;
                loop {
                    let read = tokio::select! {
                        read = upstream_in.read(&mut buffer) => read,
                        // A held connection ends when the client closes it.
                        _ = &mut up, if held => break,
                    };
                    let read = match read {
                        Ok(0) | Err(_) => break,
                        Ok(read) => read,
                    };
                    if held {
                        continue; // dropped: the client waits for it
                    }
                    if client_out.write_all(&buffer[..read]).await.is_err() {
                        break;
                    }
                    passed += read;
                    if first && passed >= cut_after {
                        match cut {
                            Cut::Close => break,
                            Cut::Hold => held = true,
                        }
                    }
                }
                // Both directions end: each side sees its connection closed.
                up.abort();
            });
        }
    });
    (address, connections)
}

/// Waits until the receiver writing `partial` applied a batch of its transfer.
async fn wait_for_applied_batch(partial: &Path) {
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(60) {
        if partial.exists() {
            let backend = SeaOrmBackend::open_sqlite_file(partial)
                .await
                .expect("open");
            let applied = backend
                .connection()
                .query_one_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Sqlite,
                    "SELECT max(last_seq) AS n FROM storex_sync_transfer",
                ))
                .await
                .ok()
                .flatten()
                .and_then(|row| row.try_get::<Option<i64>>("", "n").ok().flatten());
            let _ = backend.connection().close_by_ref().await;
            if applied.is_some_and(|n| n >= 1) {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the receiver applied no batch within a minute");
}

/// Starts `storex migrate receive` into `db` from `address` (reconnecting for 30 s) as a
/// child, its output piped.
fn start_receiver(address: &str, db: &Path) -> Child {
    storex()
        .args(["migrate", "receive", "--db"])
        .arg(db)
        .args(["--connect", address, "--reconnect-secs", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the receiver")
}

/// The rest of a sender's output and how it ended, off the runtime's threads.
async fn sender_end(sender: Child, mut out: BufReader<ChildStdout>) -> (String, Output) {
    tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).expect("the sender's output");
        (rest, sender.wait_with_output().expect("the sender ends"))
    })
    .await
    .expect("the sender's thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_where_it_broke_off() {
    let (dir, old_path, new_path) = old_database(50).await;
    let (sender, mut sender_out, address) =
        start_sender_with(&old_path, &["--reconnect-secs", "30"]);
    // Cut once some batches have arrived (of about half a megabyte each), well before the
    // end (the items take nearly 3 MB).
    let (relay, connections) = cutting_relay(vec![address], 3 * 512 * 1024).await;
    let received = receive_from(relay, &new_path, "30").await;
    let sent = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut sender_out, &mut rest).expect("the sender's output");
        (rest, sender.wait_with_output().expect("the sender ends"))
    })
    .await
    .expect("the sender's thread");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&received.stdout),
        String::from_utf8_lossy(&received.stderr),
    );
    assert!(received.status.success(), "receiver: {stdout}{stderr}");
    assert!(sent.1.status.success(), "sender: {}", sent.0);
    assert_eq!(connections.load(Ordering::SeqCst), 2, "{stdout}");
    assert!(stdout.contains("the transfer broke off"), "{stdout}");
    assert!(stdout.contains("resumed after batch"), "{stdout}");
    assert!(sent.0.contains("waiting up to 60 s"), "{}", sent.0);
    assert!(sent.0.contains("resumed after batch"), "{}", sent.0);
    assert!(!dir.path().join("new.db.partial").exists());
    assert_same_rows(&old_path, &new_path, &["item"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_told_not_to_reconnect_stops_at_the_first_drop_and_resumes_when_run_again() {
    let (dir, old_path, new_path) = old_database(50).await;
    let (sender, sender_out, address) = start_sender_with(&old_path, &["--reconnect-secs", "30"]);
    let (relay, connections) = cutting_relay(vec![address], 3 * 512 * 1024).await;
    let received = receive_from(relay.clone(), &new_path, "0").await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&received.stdout),
        String::from_utf8_lossy(&received.stderr),
    );
    assert!(!received.status.success(), "{stdout}");
    assert_eq!(connections.load(Ordering::SeqCst), 1, "{stdout}");
    assert!(!stdout.contains("the transfer broke off"), "{stdout}");
    assert!(stderr.contains("was not written"), "{stderr}");
    assert!(stderr.contains("is kept in"), "{stderr}");
    assert!(!new_path.exists());
    let partial = dir.path().join("new.db.partial");
    assert!(partial.exists(), "what arrived was not kept");

    // Run again while the sender waits: it goes on after the last batch applied.
    let again = receive_from(relay, &new_path, "0").await;
    assert_resumed(&again, &sender_end(sender, sender_out).await, &partial);
    assert_same_rows(&old_path, &new_path, &["item"]).await;
}

/// A receiver run `again` resumed the transfer it kept in `partial` and completed it, and so
/// did the sender (`sent`: its output and how it ended).
fn assert_resumed(again: &Output, sent: &(String, Output), partial: &Path) {
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(stdout.contains("resuming the transfer kept in"), "{stdout}");
    assert!(stdout.contains("resumed after batch"), "{stdout}");
    let (sent_out, sent) = sent;
    assert!(sent.status.success(), "sender: {sent_out}");
    assert!(sent_out.contains("resumed after batch"), "{sent_out}");
    assert!(!partial.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_receiver_resumes_when_run_again() {
    let (dir, old_path, new_path) = old_database(50).await;
    let (sender, sender_out, address) = start_sender_with(&old_path, &["--reconnect-secs", "30"]);
    // The first connection stops passing batches on after some arrived, so that the
    // receiver is killed in the middle, whatever the machine's speed.
    let (relay, connections) = relay(vec![address], 3 * 512 * 1024, Cut::Hold).await;
    let mut receiver = start_receiver(&relay, &new_path);
    let partial = dir.path().join("new.db.partial");
    wait_for_applied_batch(&partial).await;
    receiver.kill().expect("kill the receiver");
    let killed = receiver.wait().expect("the receiver ends");
    assert!(!killed.success());
    assert!(!new_path.exists());

    let again = receive_from(relay, &new_path, "30").await;
    assert_resumed(&again, &sender_end(sender, sender_out).await, &partial);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert_same_rows(&old_path, &new_path, &["item"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_short_leaves_no_database_and_a_new_sender_starts_over() {
    let (dir, old_path, new_path) = old_database(50).await;
    let (mut sender, _sender_out, address) = start_sender(&old_path);
    let (relay, _) = relay(vec![address], 3 * 512 * 1024, Cut::Hold).await;
    let receiver = storex()
        .args(["migrate", "receive", "--db"])
        .arg(&new_path)
        .args(["--connect", &relay, "--reconnect-secs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the receiver");
    // Once the receiver has applied a batch, the old device goes away.
    let partial = dir.path().join("new.db.partial");
    wait_for_applied_batch(&partial).await;
    sender.kill().expect("kill the sender");
    let _ = sender.wait();
    let received = tokio::task::spawn_blocking(move || receiver.wait_with_output())
        .await
        .expect("the receiver's thread")
        .expect("the receiver ends");
    let stderr = String::from_utf8_lossy(&received.stderr);
    assert!(
        !received.status.success(),
        "a cut transfer succeeded: {stderr}"
    );
    assert!(stderr.contains("was not written"), "{stderr}");
    assert!(
        !new_path.exists(),
        "a half-written database was left under the target's name"
    );
    assert!(partial.exists(), "what arrived was not kept: {stderr}");

    // A new sender takes a new snapshot: what was kept is discarded, and it starts over.
    let (sender, sender_out, address) = start_sender(&old_path);
    let again = receive_from(address, &new_path, "1").await;
    let (sent_out, sent) = sender_end(sender, sender_out).await;
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(stdout.contains("starting over"), "{stdout}");
    assert!(!stdout.contains("resumed after batch"), "{stdout}");
    assert!(sent.status.success(), "sender: {sent_out}");
    assert!(!partial.exists());
    assert_same_rows(&old_path, &new_path, &["item"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_reaching_a_restarted_sender_starts_over() {
    let (dir, old_path, new_path) = old_database(50).await;
    // After the cut the receiver reaches another sender of the same database: a new
    // snapshot, which cannot continue the first one's batches.
    let (mut first, _first_out, first_address) =
        start_sender_with(&old_path, &["--reconnect-secs", "30"]);
    let (mut second, _second_out, second_address) =
        start_sender_with(&old_path, &["--reconnect-secs", "30"]);
    let (relay, connections) =
        cutting_relay(vec![first_address, second_address], 3 * 512 * 1024).await;
    let received = receive_from(relay, &new_path, "30").await;
    for sender in [&mut first, &mut second] {
        // Each waits for the receiver to come back.
        sender.kill().expect("kill a sender");
        let _ = sender.wait();
    }
    let stderr = String::from_utf8_lossy(&received.stderr);
    assert!(!received.status.success(), "{stderr}");
    assert_eq!(connections.load(Ordering::SeqCst), 2, "{stderr}");
    assert!(stderr.contains("took a new snapshot"), "{stderr}");
    assert!(stderr.contains("was not written"), "{stderr}");
    assert!(!new_path.exists());
    assert!(!dir.path().join("new.db.partial").exists());
}

#[test]
fn sending_a_missing_file_says_so() {
    let output = storex()
        .args(["migrate", "send", "--db", "/nonexistent/old.db"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "error: no database at /nonexistent/old.db"
    );
}

/// A file name that is not Unicode would reach SQLite changed (the driver takes text): the
/// sender would open, and send, a new empty database beside the one named. (Linux: other
/// systems' file systems may refuse such a name.)
#[cfg(target_os = "linux")]
#[test]
fn a_database_path_that_is_not_unicode_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("temporary directory");
    let name = std::ffi::OsStr::from_bytes(b"old-\xff.db");
    let db = dir.path().join(name);
    std::fs::write(&db, b"").expect("write");
    let output = storex()
        .args(["migrate", "send", "--db"])
        .arg(&db)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not valid Unicode"), "{stderr}");
    // Nothing was made beside it.
    let files = std::fs::read_dir(dir.path()).expect("read").count();
    assert_eq!(files, 1, "{stderr}");
}

#[test]
fn receiving_into_an_existing_file_is_refused() {
    // The database itself, or the write-ahead log or rollback journal an earlier database
    // left beside it (SQLite would replay either into the new file).
    for left in ["taken.db", "taken.db-wal", "taken.db-journal"] {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join(left), b"").expect("write");
        let output = storex()
            .args(["migrate", "receive", "--db"])
            .arg(dir.path().join("taken.db"))
            .args(["--connect", "127.0.0.1:9"])
            .output()
            .expect("run");
        assert_eq!(output.status.code(), Some(1), "{left}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!(
                "{left} already exists; the migration writes a new database"
            )),
            "{stderr}"
        );
    }
}

#[test]
fn a_receiver_without_a_sender_reports_the_connection() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = storex()
        .args(["migrate", "receive", "--db"])
        .arg(dir.path().join("new.db"))
        .args(["--connect", "127.0.0.1:9"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: connecting to 127.0.0.1:9"),
        "{stderr}"
    );
}

#[test]
fn a_missing_argument_gets_clap_usage() {
    let output = storex()
        .args(["migrate", "receive", "--db", "x.db"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--connect <CONNECT>"));
}

#[tokio::test]
async fn a_database_moves_over_webrtc_by_offer_and_answer_codes() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("temporary directory");
    let (old_path, new_path) = (dir.path().join("old.db"), dir.path().join("new.db"));
    {
        let old = storage(&old_path).await;
        let steps = (0..5_000i64)
            .map(|id| {
                BatchStep::new(Operation::create(
                    "item",
                    object! { "id" => id, "name" => format!("item {id}"), "score" => id as f64 / 3.0 },
                ))
            })
            .collect();
        old.batch(steps).await.expect("items");
    }
    // Each side offers the address it is given: other loopback addresses here, where two
    // devices would give their addresses on the network they share.
    let mut sender = storex()
        .args([
            "migrate",
            "send",
            "--webrtc",
            "--webrtc-bind",
            "127.0.0.2",
            "--db",
        ])
        .arg(&old_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the sender");
    let mut sender_out = BufReader::new(sender.stdout.take().expect("stdout"));
    let offer = next_line_after(&mut sender_out, "offer: ");
    assert!(sdp_of(&offer).contains(" 127.0.0.2 "), "{}", sdp_of(&offer));

    let mut receiver = storex()
        .args(["migrate", "receive", "--db"])
        .arg(&new_path)
        .args(["--offer", &offer, "--webrtc-bind", "127.0.0.3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the receiver");
    let mut receiver_out = BufReader::new(receiver.stdout.take().expect("stdout"));
    let answer = next_line_after(&mut receiver_out, "answer: ");
    assert!(
        sdp_of(&answer).contains(" 127.0.0.3 "),
        "{}",
        sdp_of(&answer)
    );
    let mut stdin = sender.stdin.take().expect("stdin");
    writeln!(stdin, "{answer}").expect("paste the answer");
    drop(stdin);

    let mut rest = String::new();
    std::io::Read::read_to_string(&mut receiver_out, &mut rest).expect("the receiver's summary");
    let received = receiver.wait_with_output().expect("the receiver ends");
    assert!(
        received.status.success(),
        "receiver: {}",
        String::from_utf8_lossy(&received.stderr)
    );
    assert!(rest.contains("received 5000 objects"), "{rest}");
    let sent = sender.wait_with_output().expect("the sender ends");
    assert!(
        sent.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&sent.stderr)
    );

    let (old, new) = (storage(&old_path).await, storage(&new_path).await);
    let a = old
        .find_many("item", Query::default())
        .await
        .expect("old rows");
    let b = new
        .find_many("item", Query::default())
        .await
        .expect("new rows");
    assert_eq!(a.len(), 5_000);
    assert!(a == b, "the rows differ");
}

/// The session description an offer or answer code carries.
fn sdp_of(code: &str) -> String {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(code.trim())
        .expect("a code is base64");
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn a_bad_offer_code_gets_a_clear_message() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = storex()
        .args(["migrate", "receive", "--db"])
        .arg(dir.path().join("new.db"))
        .args(["--offer", "definitely-not-an-offer"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: reading the offer"), "{stderr}");
}
