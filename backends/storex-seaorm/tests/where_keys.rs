//! A where-write that answers with its keys, on SQLite for a collection keyed by one UUID,
//! reads the keys in one row and then writes: a table whose trigger skips some of the rows
//! makes the two differ, which is an error (never keys of objects left unchanged), and the
//! write is undone with the transaction the backend opened for it.

use sea_orm::ConnectionTrait;
use storex_core::{object, CollectionDef, Error, FieldType, Filter, Registry, Storage};
use storex_seaorm::SeaOrmBackend;

#[tokio::test]
async fn keys_that_a_trigger_keeps_from_the_write_are_an_error_and_nothing_is_written() {
    let registry = Registry::builder()
        .collection(
            CollectionDef::new("doc")
                .field("id", FieldType::Uuid)
                .field("state", FieldType::Text)
                .primary_key(["id"]),
        )
        .build()
        .expect("registry");
    let backend = SeaOrmBackend::connect("sqlite::memory:")
        .await
        .expect("open");
    for sql in [
        "CREATE TABLE doc (id BLOB PRIMARY KEY NOT NULL, state TEXT NOT NULL)",
        "CREATE TRIGGER keep_locked BEFORE UPDATE ON doc WHEN OLD.state = 'locked' \
         BEGIN SELECT RAISE(IGNORE); END",
    ] {
        backend
            .connection()
            .execute_unprepared(sql)
            .await
            .expect("the app's schema");
    }
    let storage = Storage::builder(registry, backend)
        .build()
        .await
        .expect("prepare");
    for state in ["open", "locked", "open"] {
        let doc = object! { "id" => storex_core::uuid::Uuid::now_v7(), "state" => state };
        storage.create("doc", doc).await.expect("create");
    }
    let changed = storage
        .update_where_returning_pks(
            "doc",
            Filter::all().eq("state", "open"),
            object! { "state" => "seen" },
        )
        .await
        .expect("no row skipped");
    assert_eq!(changed.len(), 2);
    let err = storage
        .update_where_returning_pks("doc", Filter::all(), object! { "state" => "closed" })
        .await
        .expect_err("a row was skipped");
    assert!(matches!(err, Error::Transaction { .. }), "{err}");
    assert!(err.to_string().contains("3 keys"), "{err}");
    let closed = storage
        .count("doc", Filter::all().eq("state", "closed"))
        .await
        .expect("count");
    assert_eq!(closed, 0, "the write was undone");
}
