//! Index names are one namespace per database: two indexes whose usual names coincide both
//! exist, on SQLite and PostgreSQL (before, the second was silently skipped).

use storex_core::{object, CollectionDef, Error, FieldType, Registry, Storage};
use storex_seaorm::SeaOrmBackend;

fn registry() -> Registry {
    let long = "a".repeat(40);
    Registry::builder()
        .collection(
            CollectionDef::new("user")
                .field("id", FieldType::Int)
                .field("org_email", FieldType::Text)
                .primary_key(["id"])
                .unique_index(["org_email"]),
        )
        .collection(
            CollectionDef::new("user_org")
                .field("id", FieldType::Int)
                .field("email", FieldType::Text)
                .primary_key(["id"])
                .unique_index(["email"]),
        )
        // Two indexes whose names differ only after the 63 bytes a name may have.
        .collection(
            CollectionDef::new("wide")
                .field("id", FieldType::Int)
                .field(format!("{long}_x"), FieldType::Text)
                .field(format!("{long}_y"), FieldType::Text)
                .primary_key(["id"])
                .unique_index([format!("{long}_x")])
                .unique_index([format!("{long}_y")]),
        )
        .build()
        .expect("registry")
}

async fn colliding_index_names_are_all_created(backend: SeaOrmBackend) {
    let storage = Storage::builder(registry(), backend)
        .build()
        .await
        .expect("prepare");
    let long = "a".repeat(40);
    let cases = [
        ("user", "org_email".to_owned()),
        ("user_org", "email".to_owned()),
        ("wide", format!("{long}_x")),
        ("wide", format!("{long}_y")),
    ];
    for (n, (collection, field)) in cases.iter().enumerate() {
        let base = (n as i64) * 10;
        let row = |id: i64| {
            let mut row = object! { "id" => id };
            for other in [format!("{long}_x"), format!("{long}_y")] {
                if collection == &"wide" {
                    row.insert(other.clone(), format!("{other}-{id}").into());
                }
            }
            row.insert(field.clone(), "same".into());
            row
        };
        storage
            .create(collection, row(base + 1))
            .await
            .expect("first");
        let err = storage
            .create(collection, row(base + 2))
            .await
            .expect_err("the unique index is missing");
        assert!(
            matches!(err, Error::DuplicateKey { .. }),
            "{collection}.{field}: {err}"
        );
    }
}

#[tokio::test]
async fn sqlite_creates_every_index_when_names_coincide() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let backend = SeaOrmBackend::open_sqlite_file(dir.path().join("indexes.db"))
        .await
        .expect("open");
    colliding_index_names_are_all_created(backend).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_creates_every_index_when_names_coincide() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let url = storex_test::fresh_postgres_database(&server).await;
    let backend = SeaOrmBackend::connect(&url).await.expect("connect");
    colliding_index_names_are_all_created(backend).await;
}
