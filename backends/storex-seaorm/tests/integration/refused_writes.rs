//! A write an adopted table refuses for what it writes (a check, a foreign key, on PostgreSQL
//! a value too long for its column, a deferred foreign key at commit) fails with
//! `Error::Refused`, which is not transient: sync sets such an entry aside instead of
//! retrying it forever. On SQLite and PostgreSQL.

use sea_orm::ConnectionTrait;
use storex_core::{
    object, BatchStep, CollectionDef, Error, FieldType, Filter, Object, Operation, Registry,
    Storage,
};
use storex_seaorm::SeaOrmBackend;

fn registry() -> Registry {
    Registry::builder()
        .collection(
            CollectionDef::new("shelf")
                .field("id", FieldType::Int)
                .primary_key(["id"]),
        )
        .collection(
            CollectionDef::new("book")
                .field("id", FieldType::Int)
                .field("shelf", FieldType::Int)
                .field("pages", FieldType::Int)
                .optional_field("code", FieldType::Text)
                .primary_key(["id"]),
        )
        .collection(
            CollectionDef::new("loan")
                .field("id", FieldType::Int)
                .field("book", FieldType::Int)
                .primary_key(["id"]),
        )
        .build()
        .expect("registry")
}

/// The app's own tables, made before storex sees them, with constraints storex does not know.
const TABLES: [&str; 3] = [
    "CREATE TABLE shelf (id BIGINT PRIMARY KEY NOT NULL)",
    "CREATE TABLE book (id BIGINT PRIMARY KEY NOT NULL, \
     shelf BIGINT NOT NULL REFERENCES shelf (id), \
     pages BIGINT NOT NULL CHECK (pages > 0), \
     code VARCHAR(3))",
    "CREATE TABLE loan (id BIGINT PRIMARY KEY NOT NULL, \
     book BIGINT NOT NULL REFERENCES book (id) DEFERRABLE INITIALLY DEFERRED)",
];

/// Storage over the app's `tables`, made first, with shelf 1.
async fn adopted(backend: SeaOrmBackend, tables: &[&str]) -> Storage {
    for table in tables {
        backend
            .connection()
            .execute_unprepared(table)
            .await
            .expect("the app's table");
    }
    let storage = Storage::builder(registry(), backend)
        .build()
        .await
        .expect("prepare");
    storage
        .create("shelf", object! { "id" => 1 })
        .await
        .expect("shelf");
    storage
}

async fn refused_writes_are_not_transient(backend: SeaOrmBackend, cases: &[(&str, Object)]) {
    let storage = adopted(backend, &TABLES).await;
    storage
        .create("book", object! { "id" => 1, "shelf" => 1, "pages" => 10 })
        .await
        .expect("a valid book");
    storage
        .create(
            "book",
            object! { "id" => 5, "shelf" => 1, "pages" => 10, "code" => "abc" },
        )
        .await
        .expect("a code that fits");
    for (what, book) in cases {
        let err = storage
            .create("book", book.clone())
            .await
            .expect_err("the database must refuse it");
        assert!(
            matches!(&err, Error::Refused { collection, .. } if collection == "book"),
            "{what}: {err}"
        );
        assert!(!err.is_transient(), "{what}: {err}");
    }
    // A deferred foreign key fails at commit: a refusal too.
    let tx = storage.begin().await.expect("begin");
    tx.execute(Operation::create(
        "loan",
        object! { "id" => 1, "book" => 99 },
    ))
    .await
    .expect("accepted until the commit");
    let err = tx.commit().await.expect_err("refused at commit");
    assert!(
        matches!(err, Error::Refused { .. }) && !err.is_transient(),
        "deferred: {err}"
    );
    // So at the commit of a batch's own transaction.
    let err = storage
        .batch(vec![BatchStep::new(Operation::create(
            "loan",
            object! { "id" => 2, "book" => 99 },
        ))])
        .await
        .expect_err("refused at the batch's commit");
    assert!(
        matches!(err, Error::Refused { .. }) && !err.is_transient(),
        "deferred, in a batch: {err}"
    );
}

/// 2,500 updates by key alike (more than one statement's rows), one of them refused by the
/// table's check: the error names that step and no update of the batch stays.
async fn a_refused_update_in_a_later_statement_names_its_step(backend: SeaOrmBackend) {
    let storage = adopted(backend, &TABLES[..2]).await;
    let books = (0..2_500)
        .map(|id| {
            BatchStep::new(Operation::create(
                "book",
                object! { "id" => id, "shelf" => 1, "pages" => 10 },
            ))
        })
        .collect();
    storage.batch(books).await.expect("books");
    let updates: Vec<BatchStep> = (0..2_500)
        .map(|id| {
            let pages = if id == 1_700 { 0 } else { 20 + id };
            BatchStep::new(Operation::update_by_pk(
                "book",
                id,
                object! { "pages" => pages },
            ))
        })
        .collect();
    let err = storage
        .batch(updates)
        .await
        .expect_err("the check must refuse it");
    match err {
        Error::BatchStep { step, source } => {
            assert_eq!(step, 1_700, "the step setting no pages");
            assert!(matches!(*source, Error::Refused { .. }), "{source}");
        }
        other => panic!("wrong error: {other}"),
    }
    let changed = storage
        .count("book", Filter::all().ne("pages", 10))
        .await
        .expect("count");
    assert_eq!(changed, 0, "no update of the batch stays");
    // Inside the app's transaction: the refused batch is undone alone, and the transaction
    // goes on (PostgreSQL would abort a whole transaction on an error).
    let refused_batch = || {
        (0..10)
            .map(|id| {
                let pages = if id == 7 { 0 } else { 30 };
                BatchStep::new(Operation::update_by_pk(
                    "book",
                    id,
                    object! { "pages" => pages },
                ))
            })
            .collect()
    };
    let tx = storage.begin().await.expect("begin");
    tx.execute(Operation::update_by_pk(
        "book",
        100,
        object! { "pages" => 40 },
    ))
    .await
    .expect("an update before");
    let err = tx
        .execute(Operation::Batch {
            steps: refused_batch(),
        })
        .await
        .expect_err("the check must refuse it");
    assert!(
        matches!(&err, Error::BatchStep { step: 7, .. }),
        "wrong error: {err}"
    );
    tx.execute(Operation::update_by_pk(
        "book",
        101,
        object! { "pages" => 41 },
    ))
    .await
    .expect("the transaction goes on");
    tx.commit().await.expect("commit");
    let pages = |id: i64| {
        let storage = storage.clone();
        async move {
            storage
                .find_by_pk("book", id)
                .await
                .expect("find")
                .expect("the book")["pages"]
                .clone()
        }
    };
    assert_eq!(pages(100).await, 40.into());
    assert_eq!(pages(101).await, 41.into());
    assert_eq!(
        storage
            .count("book", Filter::all().eq("pages", 30))
            .await
            .expect("count"),
        0,
        "nothing of the refused batch"
    );
}

#[tokio::test]
async fn sqlite_names_the_refused_update_of_a_large_batch() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let backend = SeaOrmBackend::open_sqlite_file(dir.path().join("updates.db"))
        .await
        .expect("open");
    a_refused_update_in_a_later_statement_names_its_step(backend).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_names_the_refused_update_of_a_large_batch() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let url = storex_test::fresh_postgres_database(&server).await;
    let backend = SeaOrmBackend::connect(&url).await.expect("connect");
    a_refused_update_in_a_later_statement_names_its_step(backend).await;
}

fn constraint_cases() -> Vec<(&'static str, Object)> {
    vec![
        ("check", object! { "id" => 2, "shelf" => 1, "pages" => 0 }),
        (
            "foreign key",
            object! { "id" => 3, "shelf" => 9, "pages" => 10 },
        ),
    ]
}

#[tokio::test]
async fn sqlite_reports_refused_writes_as_such() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let backend = SeaOrmBackend::open_sqlite_file(dir.path().join("constraints.db"))
        .await
        .expect("open");
    refused_writes_are_not_transient(backend, &constraint_cases()).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_reports_refused_writes_as_such() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let url = storex_test::fresh_postgres_database(&server).await;
    let backend = SeaOrmBackend::connect(&url).await.expect("connect");
    let mut cases = constraint_cases();
    cases.push((
        "too long",
        object! { "id" => 4, "shelf" => 1, "pages" => 10, "code" => "abcd" },
    ));
    refused_writes_are_not_transient(backend, &cases).await;
}

#[tokio::test]
async fn a_row_that_does_not_read_as_its_fields_is_not_transient() {
    use storex_core::Query;
    let backend = SeaOrmBackend::connect("sqlite::memory:")
        .await
        .expect("connect");
    // SQLite keeps what it is given: text in an adopted table's integer column.
    backend
        .connection()
        .execute_unprepared(
            "CREATE TABLE tally (id TEXT NOT NULL PRIMARY KEY, n INTEGER NOT NULL); \
             INSERT INTO tally VALUES ('a', 'not a number')",
        )
        .await
        .expect("the app's table");
    let registry = Registry::builder()
        .collection(
            CollectionDef::new("tally")
                .field("id", FieldType::Text)
                .field("n", FieldType::Int)
                .primary_key(["id"]),
        )
        .build()
        .expect("registry");
    let storage = Storage::builder(registry, backend)
        .build()
        .await
        .expect("adopt");
    let err = storage
        .find_many("tally", Query::default())
        .await
        .expect_err("the row does not read");
    assert!(
        matches!(&err, Error::InvalidDefinition { collection, .. } if collection == "tally")
            && !err.is_transient(),
        "{err}"
    );
}
