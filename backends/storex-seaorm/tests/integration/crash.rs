//! A SQLite file never shows half a batch: neither after a failing step, checked by
//! reopening the file, nor after the process is killed in the middle of writing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use storex_core::{object, BatchStep, Filter, Object, Operation, Query, Storage};
use storex_seaorm::SeaOrmBackend;
use storex_test::fixture_registry;

async fn open(path: &Path) -> Storage {
    let backend = SeaOrmBackend::open_sqlite_file(path)
        .await
        .expect("open the file");
    Storage::builder(fixture_registry(), backend)
        .build()
        .await
        .expect("prepare")
}

async fn dump(storage: &Storage) -> Vec<Object> {
    storage
        .find_many("item", Query::default())
        .await
        .expect("read every row")
}

fn item(id: i64) -> Object {
    object! { "id" => id, "name" => format!("item {id}"), "n" => id * 2 }
}

#[tokio::test]
async fn a_batch_whose_last_step_fails_leaves_the_file_as_it_was() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("app.db");
    let before = {
        let storage = open(&path).await;
        let seed: Vec<BatchStep> = (1..=100)
            .map(|id| BatchStep::new(Operation::create("item", item(id))))
            .collect();
        storage.batch(seed).await.expect("seed");
        dump(&storage).await
    };

    {
        let storage = open(&path).await;
        let mut steps: Vec<BatchStep> = (101..=2_600)
            .map(|id| BatchStep::new(Operation::create("item", item(id))))
            .collect();
        steps.push(BatchStep::new(Operation::update_where(
            "item",
            Filter::all().lte("id", 50),
            object! { "name" => "changed" },
        )));
        steps.push(BatchStep::new(Operation::delete_where(
            "item",
            Filter::all().gt("id", 90),
        )));
        steps.push(BatchStep::new(Operation::create("item", item(7)))); // duplicate key: fails
        let err = storage
            .batch(steps)
            .await
            .expect_err("the last step must fail");
        assert!(
            err.to_string().starts_with("batch step 2502 failed"),
            "{err}"
        );
    }

    let reopened = open(&path).await;
    assert_eq!(
        dump(&reopened).await,
        before,
        "the file changed after a failed batch"
    );
}

const CHILD_VAR: &str = "STOREX_CRASH_CHILD_DB";
const ROWS_PER_BATCH: i64 = 5_000;

/// Run as a child process by `a_killed_writer_leaves_whole_batches_only`: writes batches
/// until it is killed.
#[tokio::test]
async fn crash_child_writer() {
    let Ok(path) = std::env::var(CHILD_VAR) else {
        return; // only meaningful as the child of the test below
    };
    let storage = open(Path::new(&path)).await;
    println!("writing");
    for batch in 0i64.. {
        let steps = (0..ROWS_PER_BATCH)
            .map(|i| BatchStep::new(Operation::create("item", item(batch * ROWS_PER_BATCH + i))))
            .collect();
        storage.batch(steps).await.expect("batch");
    }
}

#[tokio::test]
async fn a_killed_writer_leaves_whole_batches_only() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("crash.db");
    drop(open(&path).await); // create the tables first

    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["crash::crash_child_writer", "--exact", "--nocapture"])
        .env(CHILD_VAR, &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the writer");
    let storage = open(&path).await;
    // Wait until some batches are in, then kill the writer in the middle of another.
    let mut waited = Duration::ZERO;
    while storage.count("item", Filter::all()).await.expect("count") < 2 * ROWS_PER_BATCH as u64 {
        assert!(
            waited < Duration::from_secs(60),
            "the writer made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    tokio::time::sleep(Duration::from_millis(37)).await;
    child.kill().expect("kill the writer");
    child.wait().expect("reap the writer");
    drop(storage);

    let reopened = open(&path).await;
    let count = reopened.count("item", Filter::all()).await.expect("count");
    println!("{count} rows survived the kill");
    assert!(
        count >= 2 * ROWS_PER_BATCH as u64,
        "committed batches were lost: {count} rows"
    );
    assert_eq!(
        count % ROWS_PER_BATCH as u64,
        0,
        "a partial batch is visible: {count} rows"
    );
    let ids: Vec<i64> = dump(&reopened)
        .await
        .iter()
        .filter_map(|o| o["id"].as_int())
        .collect();
    let expected: Vec<i64> = (0..count as i64).collect();
    assert!(ids == expected, "rows of whole batches only, in order");
}
