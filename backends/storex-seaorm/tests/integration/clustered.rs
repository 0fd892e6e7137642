//! A collection declared `clustered` gets a `WITHOUT ROWID` table on SQLite (one B-tree in key
//! order, no second index for its key), works like any other on both databases, and an
//! existing table of the ordinary layout is adopted as it is.

use sea_orm::{ConnectionTrait, Statement};
use storex_core::{object, CollectionDef, FieldType, Filter, Query, Registry, Storage};
use storex_seaorm::{Dialect, SeaOrmBackend};

fn registry(clustered: bool) -> Registry {
    let def = CollectionDef::new("tag")
        .field("name", FieldType::Text)
        .field("uses", FieldType::Int)
        .primary_key(["name"]);
    let def = if clustered { def.clustered() } else { def };
    Registry::builder()
        .collection(def)
        .build()
        .expect("registry")
}

/// The `CREATE TABLE` statement SQLite keeps for table `tag`.
async fn sqlite_table_sql(backend: &SeaOrmBackend) -> String {
    let rows = backend
        .connection()
        .query_all_raw(Statement::from_string(
            backend.connection().get_database_backend(),
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'tag'",
        ))
        .await
        .expect("read the schema");
    let row = rows.first().expect("table tag exists");
    row.try_get_by_index::<String>(0).expect("its sql")
}

/// Creates, reads in key order, updates and deletes through a clustered collection.
async fn works_like_any_collection(storage: &Storage) {
    for (name, uses) in [("b", 2i64), ("a", 1), ("c", 3)] {
        storage
            .create("tag", object! { "name" => name, "uses" => uses })
            .await
            .expect("create");
    }
    storage
        .update_where(
            "tag",
            Filter::all().eq("name", "b"),
            object! { "uses" => 20i64 },
        )
        .await
        .expect("update");
    storage
        .delete_where("tag", Filter::all().eq("name", "c"))
        .await
        .expect("delete");
    let rows = storage
        .find_many("tag", Query::default().order_asc("name"))
        .await
        .expect("find");
    assert_eq!(
        rows,
        vec![
            object! { "name" => "a", "uses" => 1i64 },
            object! { "name" => "b", "uses" => 20i64 },
        ]
    );
}

#[tokio::test]
async fn sqlite_keeps_a_clustered_collection_without_row_ids() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let backend = SeaOrmBackend::open_sqlite_file(dir.path().join("clustered.db"))
        .await
        .expect("open");
    let storage = Storage::builder(registry(true), backend.clone())
        .build()
        .await
        .expect("prepare");
    assert_eq!(backend.dialect(), Dialect::Sqlite);
    let sql = sqlite_table_sql(&backend).await;
    assert!(sql.ends_with("WITHOUT ROWID"), "{sql}");
    works_like_any_collection(&storage).await;
}

#[tokio::test]
async fn sqlite_adopts_an_existing_table_of_the_ordinary_layout() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("adopted.db");
    let before = SeaOrmBackend::open_sqlite_file(&path).await.expect("open");
    Storage::builder(registry(false), before.clone())
        .build()
        .await
        .expect("prepare the ordinary table");
    assert!(!sqlite_table_sql(&before).await.contains("WITHOUT ROWID"));
    drop(before);

    let backend = SeaOrmBackend::open_sqlite_file(&path)
        .await
        .expect("reopen");
    let storage = Storage::builder(registry(true), backend.clone())
        .build()
        .await
        .expect("adopt it");
    assert!(!sqlite_table_sql(&backend).await.contains("WITHOUT ROWID"));
    works_like_any_collection(&storage).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_ignores_the_hint_and_works() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let url = storex_test::fresh_postgres_database(&server).await;
    let backend = SeaOrmBackend::connect(&url).await.expect("connect");
    let storage = Storage::builder(registry(true), backend)
        .build()
        .await
        .expect("prepare");
    works_like_any_collection(&storage).await;
}
