//! Large batches become multi-row INSERTs; a failure deep inside one still names the exact
//! step and leaves nothing behind, on SQLite and PostgreSQL.

use storex_core::{object, BatchStep, Error, Filter, Operation, Storage};
use storex_seaorm::SeaOrmBackend;
use storex_test::fixture_registry;

async fn storage(backend: SeaOrmBackend) -> Storage {
    Storage::builder(fixture_registry(), backend)
        .build()
        .await
        .expect("prepare")
}

fn create(id: i64) -> BatchStep {
    BatchStep::new(Operation::create(
        "item",
        object! { "id" => id, "name" => format!("item {id}") },
    ))
}

async fn a_clash_in_a_later_chunk_names_its_step(backend: SeaOrmBackend) {
    let storage = storage(backend).await;
    storage
        .create("item", object! { "id" => 1_700, "name" => "existing" })
        .await
        .expect("seed");
    // 2,500 creates: three INSERT statements of up to 1,000 rows; step 1,699 clashes.
    let steps: Vec<BatchStep> = (1..=2_500).map(create).collect();
    let err = storage
        .batch(steps)
        .await
        .expect_err("duplicate key accepted");
    match err {
        Error::BatchStep { step, source } => {
            assert_eq!(step, 1_699, "the step creating id 1700");
            assert!(
                matches!(*source, Error::DuplicateKey { .. }),
                "wrong cause: {source}"
            );
        }
        other => panic!("wrong error: {other}"),
    }
    assert_eq!(
        storage.count("item", Filter::all()).await.expect("count"),
        1
    );

    // The same batch without the clash lands whole.
    let steps: Vec<BatchStep> = (2_000..4_500).map(create).collect();
    assert_eq!(storage.batch(steps).await.expect("batch").len(), 2_500);
    assert_eq!(
        storage.count("item", Filter::all()).await.expect("count"),
        2_501
    );
}

#[tokio::test]
async fn sqlite_names_the_failing_step_of_a_large_batch() {
    let backend = SeaOrmBackend::connect("sqlite::memory:")
        .await
        .expect("connect");
    a_clash_in_a_later_chunk_names_its_step(backend).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_names_the_failing_step_of_a_large_batch() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let url = storex_test::fresh_postgres_database(&server).await;
    let backend = SeaOrmBackend::connect(&url).await.expect("connect");
    a_clash_in_a_later_chunk_names_its_step(backend).await;
}
