//! Counts beyond what the databases take, in a query handed to the backend directly (past
//! `Storage`'s validation): a limit that large takes every row, a skip that large none; no
//! panic, on SQLite and PostgreSQL.

use std::sync::Arc;

use storex_core::{object, Operation, Query, StorageBackend};
use storex_seaorm::SeaOrmBackend;
use storex_test::fixture_registry;

async fn counts_past_an_i64_are_kept_within(backend: SeaOrmBackend) {
    backend
        .prepare(&Arc::new(fixture_registry()))
        .await
        .expect("prepare");
    for id in 1..=3 {
        let item = object! { "id" => id, "name" => format!("item {id}") };
        backend
            .execute(Operation::create("item", item))
            .await
            .expect("create");
    }
    let find = |query: Query| backend.execute(Operation::find_many("item", query));
    for limit in [i64::MAX as u64 + 1, u64::MAX] {
        let all = find(Query::default().limit(limit)).await.expect("find");
        assert_eq!(
            all.into_objects().expect("objects").len(),
            3,
            "limit {limit}"
        );
        let after_one = find(Query::default().limit(limit).skip(1))
            .await
            .expect("find");
        assert_eq!(
            after_one.into_objects().expect("objects").len(),
            2,
            "limit {limit}, skip 1"
        );
    }
    for skip in [i64::MAX as u64 + 1, u64::MAX] {
        let none = find(Query::default().skip(skip)).await.expect("find");
        assert!(
            none.into_objects().expect("objects").is_empty(),
            "skip {skip}"
        );
        let none = find(Query::default().skip(skip).limit(u64::MAX))
            .await
            .expect("find");
        assert!(
            none.into_objects().expect("objects").is_empty(),
            "skip {skip}, limit u64::MAX"
        );
    }
}

#[tokio::test]
async fn sqlite_keeps_counts_past_an_i64_within() {
    let backend = SeaOrmBackend::connect("sqlite::memory:")
        .await
        .expect("connect");
    counts_past_an_i64_are_kept_within(backend).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_keeps_counts_past_an_i64_within() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let url = storex_test::fresh_postgres_database(&server).await;
    let backend = SeaOrmBackend::connect(&url).await.expect("connect");
    counts_past_an_i64_are_kept_within(backend).await;
}
