//! Reading a SQLite database's schema back (`sqlite_tables`): its indexes over plain columns
//! come into the registry, and a storage opened on it with that registry makes no second copy
//! of them; what a registry cannot hold (foreign keys, defaults, CHECKs, triggers, views,
//! partial indexes…) is named, `user_version` is read, and a table created from the
//! registry has the indexes it was given.

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use storex_core::{object, IndexDef, Storage};
use storex_seaorm::SeaOrmBackend;

const SCHEMA: &str = "\
    CREATE TABLE shelf (id INTEGER PRIMARY KEY AUTOINCREMENT, label TEXT NOT NULL UNIQUE); \
    CREATE TABLE book (\
        id TEXT NOT NULL PRIMARY KEY, \
        shelf_id INTEGER REFERENCES shelf(id), \
        title TEXT NOT NULL COLLATE NOCASE, \
        isbn TEXT, \
        pages INTEGER DEFAULT 0 CHECK (pages >= 0), \
        \"check\" TEXT, \
        title_length INTEGER GENERATED ALWAYS AS (length(title)) STORED); \
    CREATE INDEX book_shelf ON book (shelf_id, title); \
    CREATE UNIQUE INDEX book_isbn ON book (isbn); \
    CREATE INDEX book_isbn_plain ON book (isbn); \
    CREATE INDEX book_isbn_twice ON book (isbn); \
    CREATE INDEX book_long ON book (pages) WHERE pages > 500; \
    CREATE INDEX book_lower ON book (lower(title)); \
    CREATE INDEX book_recent ON book (title DESC); \
    CREATE TABLE note (id TEXT NOT NULL PRIMARY KEY, \"check\" TEXT /* CHECK (x) */); \
    CREATE TRIGGER book_touch AFTER UPDATE ON book BEGIN SELECT 1; END; \
    CREATE VIEW long_book AS SELECT id FROM book WHERE pages > 500; \
    PRAGMA user_version = 7";

async fn database() -> DatabaseConnection {
    let db = Database::connect("sqlite::memory:").await.expect("connect");
    db.execute_unprepared(SCHEMA)
        .await
        .expect("the app's schema");
    db
}

async fn index_names(db: &DatabaseConnection) -> Vec<String> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT name FROM sqlite_schema WHERE type = 'index' ORDER BY name",
        ))
        .await
        .expect("indexes");
    rows.iter()
        .map(|row| row.try_get::<String>("", "name").expect("name"))
        .collect()
}

fn index(fields: &[&str], unique: bool) -> IndexDef {
    IndexDef {
        fields: fields.iter().map(|f| f.to_string()).collect(),
        unique,
    }
}

#[tokio::test]
async fn indexes_over_plain_columns_come_into_the_registry_once() {
    let db = database().await;
    let tables = storex_seaorm::sqlite_tables(&db).await.expect("introspect");
    let book = tables.registry.collection("book").expect("book");
    assert_eq!(
        book.indices(),
        [
            index(&["isbn"], true),
            index(&["isbn"], false),
            index(&["title"], false),
            index(&["shelf_id", "title"], false),
        ],
        "by name, an index over the same columns once; not the partial one nor the \
         expression"
    );
    let shelf = tables.registry.collection("shelf").expect("shelf");
    assert_eq!(
        shelf.indices(),
        [index(&["label"], true)],
        "a UNIQUE constraint"
    );
    assert!(tables
        .registry
        .collection("note")
        .expect("note")
        .indices()
        .is_empty());
}

#[tokio::test]
async fn what_a_registry_cannot_hold_is_named() {
    let db = database().await;
    let tables = storex_seaorm::sqlite_tables(&db).await.expect("introspect");
    let expected = [
        "the descending order or collation of index `book_recent` of `book` (the index is \
         carried without it)",
        // `title` compares without case, and so does the index over it.
        "the descending order or collation of index `book_shelf` of `book` (the index is \
         carried without it)",
        "index `book_long` of `book`: a partial index (with WHERE)",
        "index `book_lower` of `book`: an index on an expression",
        "the foreign keys of `book` (to `shelf`)",
        "the defaults of `book` (`pages`)",
        "the generated columns of `book` (`title_length`)",
        "the CHECK constraints of `book`",
        "the column collations of `book`",
        "AUTOINCREMENT of `shelf`",
        "trigger `book_touch`",
        "view `long_book`",
    ];
    for text in expected {
        assert!(
            tables.not_carried.iter().any(|n| n == text),
            "`{text}` in {:#?}",
            tables.not_carried
        );
    }
    assert_eq!(
        tables.not_carried.len(),
        expected.len(),
        "nothing else (a column named \"check\" and a comment are no CHECK constraint): {:#?}",
        tables.not_carried
    );
    assert_eq!(
        tables.user_version, 7,
        "the schema version, for a tool to carry"
    );
}

#[tokio::test]
async fn a_storage_on_the_database_read_adds_no_second_index() {
    let db = database().await;
    let registry = storex_seaorm::sqlite_tables(&db)
        .await
        .expect("introspect")
        .registry;
    let before = index_names(&db).await;
    let backend = SeaOrmBackend::new(db.clone()).expect("backend");
    Storage::builder(registry, backend)
        .build()
        .await
        .expect("storage");
    assert_eq!(index_names(&db).await, before);
}

#[tokio::test]
async fn a_database_made_from_the_registry_read_has_its_unique_indexes() {
    let source = database().await;
    let registry = storex_seaorm::sqlite_tables(&source)
        .await
        .expect("introspect")
        .registry;
    let target = SeaOrmBackend::connect("sqlite::memory:")
        .await
        .expect("target");
    let storage = Storage::builder(registry, target)
        .build()
        .await
        .expect("storage");
    storage
        .create("shelf", object! { "id" => 1i64, "label" => "a" })
        .await
        .expect("a shelf");
    storage
        .create("shelf", object! { "id" => 2i64, "label" => "a" })
        .await
        .expect_err("the label is unique");
    let book = |id: &str| object! { "id" => id, "title" => id, "isbn" => "123" };
    storage.create("book", book("x")).await.expect("a book");
    storage
        .create("book", book("y"))
        .await
        .expect_err("the ISBN is unique");
}

/// A column another program declared plainly `JSON` has numeric affinity: SQLite stores a
/// document that is a number as that number, and it reads back as the document it was.
#[tokio::test]
async fn numbers_in_a_column_declared_json_read_back_as_documents() {
    let db = Database::connect("sqlite::memory:").await.expect("open");
    db.execute_unprepared("CREATE TABLE doc (id TEXT NOT NULL PRIMARY KEY, body JSON)")
        .await
        .expect("the app's table");
    let registry = storex_seaorm::registry_of_sqlite(&db)
        .await
        .expect("the schema read");
    let storage = Storage::builder(registry, SeaOrmBackend::new(db).expect("backend"))
        .build()
        .await
        .expect("prepare");
    let documents = [
        storex_core::serde_json::json!(42),
        storex_core::serde_json::json!(-7),
        storex_core::serde_json::json!(1.5),
        storex_core::serde_json::json!("text"),
        storex_core::serde_json::json!({ "a": [1, 2] }),
        storex_core::serde_json::json!(null),
    ];
    for (i, body) in documents.iter().enumerate() {
        storage
            .create(
                "doc",
                object! { "id" => i.to_string(), "body" => body.clone() },
            )
            .await
            .expect("create");
    }
    for (i, body) in documents.iter().enumerate() {
        let found = storage
            .find_by_pk("doc", i.to_string())
            .await
            .expect("the document reads")
            .expect("found");
        assert_eq!(found["body"], storex_core::Value::Json(body.clone()), "{i}");
    }
}
