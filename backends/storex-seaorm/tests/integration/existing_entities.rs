//! An app with an ordinary SeaORM data layer: its entities give the registry, its own schema
//! code creates the tables, storex writes to them, and plain SeaORM reads what storex wrote
//! (and the other way round), value for value, on SQLite and PostgreSQL.

#![allow(unreachable_pub)] // SeaORM entities must be `pub` inside their modules.

use sea_orm::entity::prelude::*;
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, Database, DatabaseConnection, QueryOrder, Schema,
};
use storex_core::chrono::{TimeZone, Utc};
use storex_core::serde_json::json;
use storex_core::{
    object, BatchStep, Filter, Operation, Registry, Replacement, Storage, UuidPkMiddleware, Value,
};
use storex_seaorm::{collection_from_entity, SeaOrmBackend};

mod notebook {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "notebook")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

mod note {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "note")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub notebook_id: Uuid,
        pub title: String,
        pub body: Option<String>,
        pub stars: i32,
        pub weight: f64,
        pub pinned: bool,
        pub created_at: DateTimeUtc,
        pub meta: Json,
        pub attachment: Option<Vec<u8>>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

async fn app_schema(db: &DatabaseConnection) {
    let schema = Schema::new(db.get_database_backend());
    for mut stmt in [
        schema.create_table_from_entity(notebook::Entity),
        schema.create_table_from_entity(note::Entity),
    ] {
        stmt.if_not_exists();
        db.execute(&stmt).await.expect("the app creates its tables");
    }
}

fn registry() -> Registry {
    Registry::builder()
        .collection(collection_from_entity(notebook::Entity).expect("notebook entity"))
        .collection(
            collection_from_entity(note::Entity)
                .expect("note entity")
                .child_of("notebook", "notebook_id"),
        )
        .build()
        .expect("registry from entities")
}

async fn storex_and_app_share_tables(db: DatabaseConnection) {
    app_schema(&db).await;
    let backend = SeaOrmBackend::new(db.clone()).expect("wrap the app's connection");
    let storage = Storage::builder(registry(), backend)
        .with(UuidPkMiddleware::new())
        .build()
        .await
        .expect("adopt the app's tables");

    let created_at = Utc
        .timestamp_opt(1_700_000_000, 123_456_000)
        .single()
        .expect("valid");
    let outcomes = storage
        .batch(vec![
            BatchStep::new(Operation::create("notebook", object! { "name" => "home" }))
                .placeholder("book"),
            BatchStep::new(Operation::create(
                "note",
                object! {
                    "title" => "milk", "stars" => 3, "weight" => 0.5, "pinned" => true,
                    "created_at" => created_at, "meta" => json!({"tags": ["shop"]}),
                    "attachment" => vec![0u8, 1, 255],
                },
            ))
            .replace(Replacement::field("notebook_id", "book")),
        ])
        .await
        .expect("storex writes through the app's tables");
    let note_id = outcomes[1]
        .created_pk()
        .and_then(|pk| pk.single())
        .and_then(Value::as_uuid)
        .expect("a uuid key");

    // Plain SeaORM reads exactly what storex wrote.
    let read = note::Entity::find_by_id(note_id)
        .one(&db)
        .await
        .expect("query")
        .expect("the app sees the note");
    let book = notebook::Entity::find()
        .one(&db)
        .await
        .expect("query")
        .expect("the notebook");
    assert_eq!(read.notebook_id, book.id);
    assert_eq!(read.title, "milk");
    assert_eq!(read.body, None);
    assert_eq!(read.stars, 3);
    assert_eq!(read.weight, 0.5);
    assert!(read.pinned);
    assert_eq!(read.created_at, created_at);
    assert_eq!(read.meta, json!({"tags": ["shop"]}));
    assert_eq!(read.attachment, Some(vec![0u8, 1, 255]));

    // The app writes with plain SeaORM; storex reads it and updates it.
    let app_note = note::ActiveModel {
        id: Set(Uuid::now_v7()),
        notebook_id: Set(book.id),
        title: Set("eggs".into()),
        body: Set(Some("a dozen".into())),
        stars: Set(5),
        weight: Set(1.25),
        pinned: Set(false),
        created_at: Set(created_at),
        meta: Set(json!(null)),
        attachment: Set(None),
    };
    note::Entity::insert(app_note)
        .exec(&db)
        .await
        .expect("the app inserts");
    let found = storage
        .find_one(
            "note",
            storex_core::Query::new(Filter::all().eq("title", "eggs")),
        )
        .await
        .expect("find")
        .expect("storex sees the app's note");
    assert_eq!(found["body"], Value::from("a dozen"));
    assert_eq!(found["stars"], Value::Int(5));
    let updated = storage
        .update_where(
            "note",
            Filter::all().gte("stars", 3),
            object! { "pinned" => true },
        )
        .await
        .expect("update");
    assert_eq!(updated, 2);
    let pinned = note::Entity::find()
        .filter(note::Column::Pinned.eq(true))
        .order_by_asc(note::Column::Title)
        .all(&db)
        .await
        .expect("query");
    assert_eq!(
        pinned.iter().map(|n| n.title.as_str()).collect::<Vec<_>>(),
        vec!["eggs", "milk"]
    );

    // An `i32` column takes no value the app could not read back.
    let too_large = storage
        .update_by_pk("note", note_id, object! { "stars" => 1_i64 << 40 })
        .await
        .expect_err("a value beyond the column's i32");
    assert!(
        too_large
            .to_string()
            .contains("outside -2147483648..=2147483647"),
        "{too_large}"
    );
    let read = note::Entity::find_by_id(note_id)
        .one(&db)
        .await
        .expect("the app still reads the note")
        .expect("the note");
    assert_eq!(read.stars, 3);
}

#[tokio::test]
async fn sqlite_app_tables_are_shared_with_plain_seaorm() {
    let db = Database::connect("sqlite::memory:").await.expect("connect");
    storex_and_app_share_tables(db).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_app_tables_are_shared_with_plain_seaorm() {
    let Some(server) = storex_test::postgres_url() else {
        return;
    };
    let url = storex_test::fresh_postgres_database(&server).await;
    let db = Database::connect(&url).await.expect("connect");
    storex_and_app_share_tables(db).await;
}

#[test]
fn unsupported_entity_columns_are_refused_with_a_hint() {
    mod naive {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "event")]
        pub struct Model {
            #[sea_orm(primary_key)]
            pub id: i64,
            pub at: DateTime,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }
    let err = collection_from_entity(naive::Entity).expect_err("naive datetime accepted");
    assert_eq!(
        err.to_string(),
        "column `at` of table `event` has type DateTime, which storex cannot store: use DateTimeUtc: storex keeps datetimes with their time zone"
    );
}

#[test]
fn an_entity_in_a_schema_of_its_own_is_refused() {
    mod scoped {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(schema_name = "app", table_name = "event")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub id: Uuid,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }
    let err = collection_from_entity(scoped::Entity).expect_err("a schema-qualified table");
    assert!(
        err.to_string().contains("table `event` is in schema `app`"),
        "{err}"
    );
}

#[test]
fn entity_columns_map_to_field_types() {
    let def = collection_from_entity(note::Entity).expect("note");
    let types: Vec<(String, storex_core::FieldType, bool)> = def
        .fields()
        .iter()
        .map(|f| (f.name.clone(), f.ty, f.optional))
        .collect();
    use storex_core::FieldType::*;
    let expected = [
        ("id", Uuid, false),
        ("notebook_id", Uuid, false),
        ("title", Text, false),
        ("body", Text, true),
        ("stars", Int, false),
        ("weight", Float, false),
        ("pinned", Bool, false),
        ("created_at", DateTime, false),
        ("meta", Json, false),
        ("attachment", Blob, true),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(n, t, o)| (String::from(*n), *t, *o))
        .collect();
    assert_eq!(types, expected);
    assert_eq!(def.pk_fields(), ["id".to_owned()]);
    assert_eq!(
        def.int_range_of("stars"),
        Some((i32::MIN.into(), i32::MAX.into()))
    );
}

#[tokio::test]
async fn a_registry_is_read_back_from_a_sqlite_file() {
    let db = Database::connect("sqlite::memory:").await.expect("connect");
    app_schema(&db).await;
    let read = storex_seaorm::registry_of_sqlite(&db)
        .await
        .expect("introspect");
    let expected = registry();
    for name in ["notebook", "note"] {
        let (got, want) = (
            read.collection(name).expect("read"),
            expected.collection(name).expect("expected"),
        );
        assert_eq!(got.fields(), want.fields(), "{name}");
        assert_eq!(got.pk_fields(), want.pk_fields(), "{name}");
    }
}

#[tokio::test]
async fn naive_datetime_columns_of_another_program_are_read_as_text() {
    use sea_orm::ConnectionTrait;
    let db = Database::connect("sqlite::memory:").await.expect("connect");
    db.execute_unprepared(
        "CREATE TABLE event (id TEXT NOT NULL PRIMARY KEY, at DATETIME, stamp TIMESTAMP, \
         utc timestamp_with_timezone_text)",
    )
    .await
    .expect("another program's table");
    let read = storex_seaorm::registry_of_sqlite(&db)
        .await
        .expect("introspect");
    let types: Vec<(String, storex_core::FieldType)> = read
        .collection("event")
        .expect("event")
        .fields()
        .iter()
        .map(|f| (f.name.clone(), f.ty))
        .collect();
    use storex_core::FieldType::{DateTime, Text};
    let expected = [
        ("id", Text),
        ("at", Text),
        ("stamp", Text),
        ("utc", DateTime),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(n, t)| (String::from(*n), *t))
        .collect();
    assert_eq!(types, expected);
}

#[tokio::test]
async fn virtual_tables_and_tables_without_a_key_are_left_out_by_name() {
    use sea_orm::ConnectionTrait;
    let db = Database::connect("sqlite::memory:").await.expect("connect");
    app_schema(&db).await;
    db.execute_unprepared(
        "CREATE VIRTUAL TABLE note_search USING fts5(title); \
         CREATE TABLE audit (message TEXT); \
         CREATE TABLE sqlitex (id TEXT NOT NULL PRIMARY KEY); \
         CREATE TABLE \"to do\" (id TEXT NOT NULL PRIMARY KEY); \
         CREATE TABLE shelf (id TEXT NOT NULL PRIMARY KEY, \"shelf label\" TEXT)",
    )
    .await
    .expect("a full-text index, a table without a key, names storex does not take");
    let tables = storex_seaorm::sqlite_tables(&db).await.expect("introspect");
    let names: Vec<&str> = tables.registry.collections().map(|c| c.name()).collect();
    // (`sqlitex` only looks like SQLite's own tables to an unescaped `LIKE 'sqlite_%'`.)
    assert_eq!(
        names,
        ["note", "notebook", "sqlitex"],
        "only the keyed tables"
    );
    let left: Vec<&str> = tables.left_out.iter().map(|(t, _)| t.as_str()).collect();
    assert!(
        left.contains(&"audit") && left.contains(&"note_search"),
        "{left:?}"
    );
    assert!(
        left.iter().any(|t| t.starts_with("note_search_")),
        "its shadow tables: {left:?}"
    );
    // A table or column name storex does not take leaves that table out, with why; the
    // others are still taken.
    for odd in ["to do", "shelf"] {
        let (_, why) = tables
            .left_out
            .iter()
            .find(|(t, _)| t == odd)
            .unwrap_or_else(|| panic!("`{odd}` left out: {left:?}"));
        assert!(why.contains("identifier") || why.contains("name"), "{why}");
    }
    db.execute_unprepared("DROP TABLE \"to do\"; DROP TABLE shelf")
        .await
        .expect("drop");
    // The strict reading names the table without a key; virtual tables are no error.
    let err = storex_seaorm::registry_of_sqlite(&db)
        .await
        .expect_err("a table without a key");
    assert!(
        err.to_string().contains("audit") || format!("{err:?}").contains("audit"),
        "{err:?}"
    );
    db.execute_unprepared("DROP TABLE audit")
        .await
        .expect("drop");
    let read = storex_seaorm::registry_of_sqlite(&db)
        .await
        .expect("virtual tables are left out");
    assert!(read.collection("note_search").is_err());
}

#[tokio::test]
async fn numbers_in_columns_without_text_affinity_read_as_their_text() {
    let db = Database::connect("sqlite::memory:").await.expect("connect");
    db.execute_unprepared(
        "CREATE TABLE reading (id INTEGER PRIMARY KEY, at DATETIME, amount NUMERIC, \
         memo, label VARCHAR(10)); \
         INSERT INTO reading (id, at, amount, memo, label) VALUES \
         (1, 1704103200, 1, 'first', 'a'), (2, '2024-01-01 10:00:00', 1.5, 7, 8)",
    )
    .await
    .expect("another program's table");
    let registry = storex_seaorm::registry_of_sqlite(&db)
        .await
        .expect("introspect");
    let storage = Storage::builder(registry, SeaOrmBackend::new(db.clone()).expect("backend"))
        .build()
        .await
        .expect("storage");
    let rows = storage
        .find_many("reading", storex_core::Query::default())
        .await
        .expect("the rows read");
    let text = |s: &str| Value::Text(s.into());
    assert_eq!(rows[0]["at"], text("1704103200"));
    assert_eq!(rows[1]["at"], text("2024-01-01 10:00:00"));
    assert_eq!(rows[0]["amount"], text("1"));
    assert_eq!(rows[1]["amount"], text("1.5"));
    assert_eq!(rows[1]["memo"], text("7"));
    assert_eq!(rows[1]["label"], text("8"));
    // Written back into a column of the same declared type, a number is a number again.
    storage
        .create(
            "reading",
            object! { "id" => 3i64, "at" => "1704103300", "amount" => "2.5" },
        )
        .await
        .expect("write");
    let kinds = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "SELECT typeof(at) || ' ' || typeof(amount) AS kinds FROM reading WHERE id = 3",
        ))
        .await
        .expect("query")
        .expect("row");
    let kinds: String = kinds.try_get("", "kinds").expect("kinds");
    assert_eq!(kinds, "integer real");
}

#[tokio::test]
async fn a_key_column_without_affinity_holding_numbers_leaves_its_table_out() {
    let db = Database::connect("sqlite::memory:").await.expect("connect");
    db.execute_unprepared(
        "CREATE TABLE loose (id PRIMARY KEY, v TEXT); INSERT INTO loose VALUES (1, 'a'); \
         CREATE TABLE strict_any (id ANY PRIMARY KEY, v TEXT) STRICT; \
         INSERT INTO strict_any VALUES (2.5, 'b'); \
         CREATE TABLE numeric_any (id ANY PRIMARY KEY, v TEXT); \
         INSERT INTO numeric_any VALUES (3, 'c'); \
         CREATE TABLE texts (id PRIMARY KEY, v TEXT); INSERT INTO texts VALUES ('t', 'd')",
    )
    .await
    .expect("another program's tables");
    let tables = storex_seaorm::sqlite_tables(&db).await.expect("introspect");
    let left_out: Vec<&str> = tables.left_out.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(left_out, ["loose", "strict_any"], "{:?}", tables.left_out);
    assert!(tables.left_out[0].1.contains("`id` has no declared type"));
    // `ANY` outside a STRICT table has numeric affinity: text compares as a number there.
    assert!(tables.registry.collection("numeric_any").is_ok());
    assert!(tables.registry.collection("texts").is_ok());
    let err = storex_seaorm::registry_of_sqlite(&db)
        .await
        .expect_err("the strict reading refuses it");
    assert!(format!("{err:?}").contains("loose"), "{err:?}");
}

#[tokio::test]
async fn a_sqlite_file_whose_name_holds_url_characters_opens_by_that_name() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let name = "budget%2024 (v?2) #1.db";
    let backend = SeaOrmBackend::open_sqlite_file(dir.path().join(name))
        .await
        .expect("open");
    backend
        .connection()
        .execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .await
        .expect("write");
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|f| f.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".db"))
        .collect();
    assert_eq!(files, [name]);
}

mod task {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "task")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
        pub title: String,
        #[sea_orm(default_value = false)]
        pub done: bool,
        #[sea_orm(default_value = 3)]
        pub stars: i32,
        #[sea_orm(default_value = 2)]
        pub weight: f64,
        #[sea_orm(default_value = "draft")]
        pub status: Option<String>,
        #[sea_orm(default_value = 0.1)]
        pub ratio: f32,
        #[sea_orm(default_value = 1)]
        pub visible: bool,
        #[sea_orm(default_value = "2000-01-01T00:00:00Z")]
        pub since: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[tokio::test]
async fn literal_column_defaults_of_an_entity_are_field_defaults_and_table_defaults() {
    let def = collection_from_entity(task::Entity).expect("entity");
    assert_eq!(def.default_of("title"), None);
    assert_eq!(def.default_of("done"), Some(&Value::Bool(false)));
    assert_eq!(def.default_of("stars"), Some(&Value::Int(3)));
    assert_eq!(def.default_of("weight"), Some(&Value::Float(2.0)));
    assert_eq!(def.default_of("status"), Some(&Value::from("draft")));
    assert_eq!(def.default_of("ratio"), Some(&Value::Float(0.1)));
    assert_eq!(def.default_of("visible"), Some(&Value::Bool(true)));
    assert_eq!(def.default_of("since"), None, "not a literal of its type");
    let registry = Registry::builder()
        .collection(def)
        .build()
        .expect("registry");
    let backend = SeaOrmBackend::connect("sqlite::memory:")
        .await
        .expect("connect");
    let db = backend.connection().clone();
    let storage = Storage::builder(registry, backend)
        .build()
        .await
        .expect("storage creates the table");
    // A create through storex that leaves them out, and an insert of the app's own that
    // does, give the same row.
    storage
        .create("task", object! { "id" => 1, "title" => "a" })
        .await
        .expect("create");
    db.execute_unprepared("INSERT INTO task (id, title) VALUES (2, 'a')")
        .await
        .expect("an insert without the defaulted columns");
    let mut rows = Vec::new();
    for id in [1, 2] {
        let mut row = storage
            .find_by_pk("task", id)
            .await
            .expect("find")
            .expect("row");
        row.remove("id");
        rows.push(row);
    }
    assert_eq!(
        rows[0],
        object! {
            "title" => "a", "done" => false, "stars" => 3, "weight" => 2.0, "status" => "draft",
            "ratio" => 0.1, "visible" => true, "since" => Value::Null,
        }
    );
    assert_eq!(rows[0], rows[1]);
}
