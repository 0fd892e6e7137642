//! An update by filter that answers with its keys, on SQLite for a collection keyed by one
//! UUID, reads the keys in one row and then writes, unless the table has triggers (one may
//! keep rows from the update): then it answers, as `RETURNING` does, the keys of the objects
//! it did update, never those a trigger left unchanged.

use sea_orm::ConnectionTrait;
use storex_core::{object, CollectionDef, FieldType, Filter, Registry, Storage};
use storex_seaorm::SeaOrmBackend;

/// A storage of documents keyed by a UUID, on an in-memory SQLite database the app's `sql`
/// made first.
async fn docs_after(sql: &[&str]) -> Storage {
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
    for statement in sql {
        backend
            .connection()
            .execute_unprepared(statement)
            .await
            .expect("the app's schema");
    }
    Storage::builder(registry, backend)
        .build()
        .await
        .expect("prepare")
}

#[tokio::test]
async fn keys_that_a_trigger_keeps_from_the_update_are_not_answered() {
    let storage = docs_after(&[
        "CREATE TABLE doc (id BLOB PRIMARY KEY NOT NULL, state TEXT NOT NULL)",
        "CREATE TRIGGER keep_locked BEFORE UPDATE ON doc WHEN OLD.state = 'locked' \
         BEGIN SELECT RAISE(IGNORE); END",
    ])
    .await;
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
    let closed = storage
        .update_where_returning_pks("doc", Filter::all(), object! { "state" => "closed" })
        .await
        .expect("the locked one is skipped");
    assert_eq!(sorted(closed), sorted(changed), "the two that were open");
    let locked = storage
        .count("doc", Filter::all().eq("state", "locked"))
        .await
        .expect("count");
    assert_eq!(locked, 1);
}

fn sorted(mut pks: Vec<storex_core::Pk>) -> Vec<storex_core::Pk> {
    pks.sort_by_key(|pk| format!("{pk}"));
    pks
}

/// A key another program stored as text in a UUID-keyed table does not read as a UUID: the
/// update by filter fails as the data's fault (not transient: sync sets the change aside
/// rather than retrying it for ever), as a row read by `RETURNING` would.
#[tokio::test]
async fn a_key_stored_as_text_fails_the_update_as_unreadable_data() {
    let storage = docs_after(&[
        "CREATE TABLE doc (id BLOB PRIMARY KEY NOT NULL, state TEXT NOT NULL)",
        "INSERT INTO doc VALUES ('0190a0d2-7b3c-7def-8123-456789abcdef', 'open')",
    ])
    .await;
    let err = storage
        .update_where_returning_pks("doc", Filter::all(), object! { "state" => "seen" })
        .await
        .expect_err("the key does not read as a UUID");
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("doc"), "{err}");
}
