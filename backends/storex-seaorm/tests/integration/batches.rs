//! Large batches become multi-row INSERTs; a failure deep inside one still names the exact
//! step and leaves nothing behind, on SQLite and PostgreSQL; updates alike run as one
//! statement, a key updated twice taking the later update.

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

/// Updates alike (the same fields) run as one statement per group; a key updated twice in a
/// batch takes the later update, whatever the key's type, and every step counts its row.
async fn a_key_updated_twice_in_a_batch_takes_the_later_update(backend: SeaOrmBackend) {
    let storage = storage(backend).await;
    let accounts: Vec<storex_core::uuid::Uuid> =
        (0..3).map(|_| storex_core::uuid::Uuid::new_v4()).collect();
    for (i, id) in accounts.iter().enumerate() {
        let account = object! { "id" => *id, "email" => format!("{i}@example.org") };
        storage.create("account", account).await.expect("account");
        let item = object! { "id" => i as i64, "name" => format!("item {i}") };
        storage.create("item", item).await.expect("item");
    }
    let update = |collection: &str, key: storex_core::Value, field: &str, value: &str| {
        BatchStep::new(Operation::update_by_pk(
            collection,
            storex_core::Pk(vec![key]),
            object! { field => value },
        ))
    };
    let account = |i: usize| storex_core::Value::Uuid(accounts[i]);
    let item = |i: i64| storex_core::Value::Int(i);
    let steps = vec![
        update("account", account(0), "email", "first"),
        update("account", account(1), "email", "other"),
        update("account", account(0), "email", "later"),
        update("account", account(2), "email", "third"),
        update("item", item(0), "name", "first"),
        update("item", item(1), "name", "other"),
        update("item", item(0), "name", "later"),
        update("item", item(2), "name", "third"),
    ];
    let outcomes = storage.batch(steps).await.expect("batch");
    for (step, outcome) in outcomes.iter().enumerate() {
        assert!(
            matches!(outcome, storex_core::Outcome::Updated { count: 1 }),
            "step {step}: {outcome:?}"
        );
    }
    let email = storage
        .find_by_pk("account", accounts[0])
        .await
        .expect("find")
        .expect("account");
    assert_eq!(email["email"], storex_core::Value::from("later"));
    let name = storage
        .find_by_pk("item", 0i64)
        .await
        .expect("find")
        .expect("item");
    assert_eq!(name["name"], storex_core::Value::from("later"));
}

#[tokio::test]
async fn sqlite_applies_the_later_of_two_updates_of_a_key_in_a_batch() {
    let backend = SeaOrmBackend::connect("sqlite::memory:")
        .await
        .expect("connect");
    a_key_updated_twice_in_a_batch_takes_the_later_update(backend).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_applies_the_later_of_two_updates_of_a_key_in_a_batch() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let url = storex_test::fresh_postgres_database(&server).await;
    let backend = SeaOrmBackend::connect(&url).await.expect("connect");
    a_key_updated_twice_in_a_batch_takes_the_later_update(backend).await;
}
