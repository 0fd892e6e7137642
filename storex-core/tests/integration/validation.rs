//! Bad operations are refused with a message that says what is wrong, and nothing is written.

use storex_core::chrono::{TimeZone, Utc};
use storex_core::{
    object, BatchStep, CollectionDef, FieldType, Filter, MemoryBackend, Operation, Pk, Predicate,
    Query, Registry, Replacement, Storage, UuidPkMiddleware, Value,
};

async fn storage() -> Storage {
    let registry = Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Uuid)
                .field("title", FieldType::Text)
                .optional_field("stars", FieldType::Int)
                .int_range("stars", 0, 5)
                .optional_field("weight", FieldType::Float)
                .optional_field("due", FieldType::DateTime)
                .optional_field("meta", FieldType::Json)
                .primary_key(["id"]),
        )
        .collection(
            CollectionDef::new("tag")
                .field("note_id", FieldType::Uuid)
                .field("name", FieldType::Text)
                .primary_key(["note_id", "name"]),
        )
        .build()
        .expect("valid registry");
    let storage = Storage::builder(registry, MemoryBackend::new())
        .with(UuidPkMiddleware::new())
        .build()
        .await
        .expect("build");
    storage
        .create("note", object! { "title" => "keep" })
        .await
        .expect("seed");
    storage
}

async fn refused(op: Operation) -> String {
    let storage = storage().await;
    let err = storage
        .execute(op)
        .await
        .expect_err("bad operation accepted");
    let notes = storage
        .find_many("note", Query::default())
        .await
        .expect("find");
    assert_eq!(notes.len(), 1, "a refused operation wrote something");
    assert_eq!(
        notes[0]["title"],
        Value::from("keep"),
        "a refused operation changed something"
    );
    err.to_string()
}

fn uuid() -> Value {
    Value::Uuid(storex_core::uuid::Uuid::now_v7())
}

#[tokio::test]
async fn unknown_collection() {
    let msg = refused(Operation::create("notes", object! { "title" => "x" })).await;
    assert_eq!(msg, "unknown collection `notes`");
}

#[tokio::test]
async fn unknown_field() {
    let msg = refused(Operation::create(
        "note",
        object! { "title" => "x", "colour" => "red" },
    ))
    .await;
    assert_eq!(msg, "collection `note` has no field `colour`");
}

#[tokio::test]
async fn wrong_type() {
    let msg = refused(Operation::create("note", object! { "title" => 5 })).await;
    assert_eq!(msg, "field `title` of `note` takes text, got int");
}

#[tokio::test]
async fn int_for_a_float_field() {
    let msg = refused(Operation::create(
        "note",
        object! { "title" => "x", "weight" => 1 },
    ))
    .await;
    assert_eq!(msg, "field `weight` of `note` takes float, got int");
}

#[tokio::test]
async fn missing_required_field() {
    let msg = refused(Operation::create("note", object! { "stars" => 3 })).await;
    assert_eq!(msg, "field `title` of `note` is required");
}

#[tokio::test]
async fn null_in_a_required_field() {
    let msg = refused(Operation::create(
        "note",
        object! { "title" => Value::Null },
    ))
    .await;
    assert_eq!(msg, "field `title` of `note` is required");
}

#[tokio::test]
async fn non_finite_float() {
    let msg = refused(Operation::create(
        "note",
        object! { "title" => "x", "weight" => f64::NAN },
    ))
    .await;
    assert_eq!(
        msg,
        "invalid operation on `note`: field `weight` must hold a finite float, got NaN"
    );
}

#[tokio::test]
async fn update_of_a_key_field() {
    let msg = refused(Operation::update_where(
        "note",
        Filter::all(),
        object! { "id" => uuid() },
    ))
    .await;
    assert_eq!(
        msg,
        "invalid operation on `note`: primary-key field `id` cannot be updated"
    );
}

#[tokio::test]
async fn update_setting_a_required_field_to_null() {
    let msg = refused(Operation::update_where(
        "note",
        Filter::all(),
        object! { "title" => Value::Null },
    ))
    .await;
    assert_eq!(msg, "field `title` of `note` is required");
}

#[tokio::test]
async fn update_without_changes() {
    let msg = refused(Operation::update_where("note", Filter::all(), object! {})).await;
    assert_eq!(
        msg,
        "invalid operation on `note`: an update needs at least one change"
    );
}

#[tokio::test]
async fn key_with_the_wrong_number_of_fields() {
    let msg = refused(Operation::delete_by_pk("tag", uuid())).await;
    assert_eq!(
        msg,
        "invalid operation on `tag`: its primary key has 2 field(s), the key given has 1"
    );
}

#[tokio::test]
async fn key_of_the_wrong_type() {
    let msg = refused(Operation::update_by_pk(
        "note",
        7,
        object! { "title" => "x" },
    ))
    .await;
    assert_eq!(msg, "field `id` of `note` takes uuid, got int");
}

#[tokio::test]
async fn filter_on_an_unknown_field() {
    let msg = refused(Operation::delete_where(
        "note",
        Filter::all().eq("titel", "keep"),
    ))
    .await;
    assert_eq!(msg, "collection `note` has no field `titel`");
}

#[tokio::test]
async fn filter_value_of_the_wrong_type() {
    let msg = refused(Operation::delete_where(
        "note",
        Filter::all().gt("stars", "3"),
    ))
    .await;
    assert_eq!(msg, "field `stars` of `note` takes int, got text");
}

#[tokio::test]
async fn ordering_comparison_with_null() {
    let msg = refused(Operation::delete_where(
        "note",
        Filter::all().lt("stars", Value::Null),
    ))
    .await;
    assert_eq!(
        msg,
        "invalid operation on `note`: field `stars` cannot be compared with null except by eq or ne"
    );
}

#[tokio::test]
async fn null_inside_an_in_list() {
    let filter = Filter::all().with("stars", Predicate::In(vec![Value::Int(1), Value::Null]));
    let msg = refused(Operation::delete_where("note", filter)).await;
    assert_eq!(
        msg,
        "invalid operation on `note`: field `stars` cannot be compared with null except by eq or ne"
    );
}

#[tokio::test]
async fn filter_on_a_json_field() {
    let filter = Filter::all().eq("meta", storex_core::serde_json::json!({"a": 1}));
    let msg = refused(Operation::delete_where("note", filter)).await;
    assert_eq!(
        msg,
        "invalid operation on `note`: json field `meta` cannot be filtered on"
    );
}

#[tokio::test]
async fn order_by_a_json_field() {
    let storage = storage().await;
    let err = storage
        .find_many("note", Query::default().order_asc("meta"))
        .await
        .expect_err("accepted");
    assert_eq!(
        err.to_string(),
        "invalid operation on `note`: json field `meta` cannot be ordered by"
    );
}

#[tokio::test]
async fn order_by_an_unknown_field() {
    let storage = storage().await;
    let err = storage
        .find_many("note", Query::default().order_asc("rank"))
        .await
        .expect_err("accepted");
    assert_eq!(err.to_string(), "collection `note` has no field `rank`");
}

#[tokio::test]
async fn a_read_inside_a_batch() {
    let op = Operation::Batch {
        steps: vec![BatchStep::new(Operation::count("note", Filter::all()))],
    };
    let msg = refused(op).await;
    assert_eq!(msg, "batch step 0 failed, nothing of the batch was applied");
}

async fn batch_cause(steps: Vec<BatchStep>) -> String {
    let storage = storage().await;
    let err = storage.batch(steps).await.expect_err("accepted");
    assert_eq!(
        storage.count("note", Filter::all()).await.expect("count"),
        1,
        "batch wrote something"
    );
    match err {
        storex_core::Error::BatchStep { step, source } => format!("step {step}: {source}"),
        other => panic!("not a batch error: {other}"),
    }
}

#[tokio::test]
async fn a_placeholder_used_before_it_is_made() {
    let cause = batch_cause(vec![
        BatchStep::new(Operation::create("tag", object! { "name" => "x" }))
            .replace(Replacement::field("note_id", "n")),
        BatchStep::new(Operation::create("note", object! { "title" => "n" })).placeholder("n"),
    ])
    .await;
    assert_eq!(
        cause,
        "step 0: invalid operation on `tag`: placeholder `n` is not produced by an earlier step"
    );
}

#[tokio::test]
async fn a_placeholder_on_a_compound_key() {
    let cause = batch_cause(vec![BatchStep::new(Operation::create(
        "tag",
        object! { "note_id" => uuid(), "name" => "x" },
    ))
    .placeholder("t")])
    .await;
    assert_eq!(
        cause,
        "step 0: invalid operation on `tag`: placeholder `t` names the key of `tag`, which has a compound key"
    );
}

#[tokio::test]
async fn a_placeholder_defined_twice() {
    let cause = batch_cause(vec![
        BatchStep::new(Operation::create("note", object! { "title" => "a" })).placeholder("n"),
        BatchStep::new(Operation::create("note", object! { "title" => "b" })).placeholder("n"),
    ])
    .await;
    assert_eq!(
        cause,
        "step 1: invalid operation on `note`: placeholder `n` is defined twice"
    );
}

#[tokio::test]
async fn a_placeholder_of_the_wrong_type_for_its_field() {
    // A note key (uuid) put into an int field is caught when the batch runs.
    let cause = batch_cause(vec![
        BatchStep::new(Operation::create("note", object! { "title" => "a" })).placeholder("n"),
        BatchStep::new(Operation::update_where("note", Filter::all(), object! {}))
            .replace(Replacement::field("stars", "n")),
    ])
    .await;
    assert_eq!(cause, "step 1: field `stars` of `note` takes int, got uuid");
}

#[tokio::test]
async fn datetimes_keep_microseconds_only() {
    let storage = storage().await;
    let due = Utc
        .timestamp_opt(1_700_000_000, 987_654_321)
        .single()
        .expect("valid");
    let pk: Pk = storage
        .create("note", object! { "title" => "x", "due" => due })
        .await
        .expect("create");
    let found = storage
        .find_by_pk("note", pk)
        .await
        .expect("find")
        .expect("found");
    let Value::DateTime(stored) = found["due"] else {
        panic!("not a datetime")
    };
    assert_eq!(stored.timestamp_subsec_nanos(), 987_654_000);
}

#[tokio::test]
async fn a_nul_anywhere_in_json_is_refused_and_escaped_text_is_not() {
    let nested = storex_core::serde_json::json!({ "a": [1, { "deep": "x\u{0}y" }] });
    let in_a_key = storex_core::serde_json::json!({ "k\u{0}": 1 });
    for meta in [nested, in_a_key] {
        let problem = refused(Operation::create(
            "note",
            object! { "title" => "t", "meta" => Value::Json(meta) },
        ))
        .await;
        assert!(problem.contains("NUL"), "{problem}");
    }
    // The six characters `\u0000` are text, not a NUL.
    let storage = storage().await;
    let escaped = storex_core::serde_json::json!({ "k": "\\u0000" });
    storage
        .create(
            "note",
            object! { "title" => "t", "meta" => Value::Json(escaped) },
        )
        .await
        .expect("escaped text is no NUL");
}

#[tokio::test]
async fn int_outside_its_range() {
    let expected = "invalid operation on `note`: field `stars` holds 6, outside 0..=5";
    let create = Operation::create("note", object! { "title" => "x", "stars" => 6 });
    assert_eq!(refused(create).await, expected);
    let update = Operation::update_where("note", Filter::all(), object! { "stars" => 6 });
    assert_eq!(refused(update).await, expected);
    let below = Operation::create("note", object! { "title" => "x", "stars" => -1 });
    assert!(refused(below).await.contains("holds -1, outside 0..=5"));
}

#[tokio::test]
async fn an_int_range_bounds_writes_not_filters() {
    let storage = storage().await;
    storage
        .create("note", object! { "title" => "five", "stars" => 5 })
        .await
        .expect("the range's edge is inside it");
    let found = storage
        .find_many("note", Query::new(Filter::all().lt("stars", 1_000_000)))
        .await
        .expect("a filter compares with any int");
    assert_eq!(found.len(), 1);
}

#[test]
fn an_int_range_on_a_field_that_is_no_int_or_is_empty_is_refused() {
    let build = |def: CollectionDef| Registry::builder().collection(def).build();
    let note = || {
        CollectionDef::new("note")
            .field("id", FieldType::Int)
            .field("title", FieldType::Text)
            .primary_key(["id"])
    };
    let refused = |def| build(def).expect_err("refused").to_string();
    assert!(refused(note().int_range("title", 0, 1)).contains("which is text"));
    assert!(refused(note().int_range("missing", 0, 1)).contains("unknown field `missing`"));
    assert!(refused(note().int_range("id", 2, 1)).contains("is empty (2..=1)"));
    build(note().int_range("id", 1, 1)).expect("a range of one value");
}

#[tokio::test]
async fn the_memory_backend_asked_directly_refuses_every_write_to_an_unknown_collection() {
    use storex_core::{Error, StorageBackend};
    let backend = MemoryBackend::new();
    for op in [
        Operation::delete_by_pk("nope", 1i64),
        Operation::delete_where("nope", Filter::all()),
        Operation::update_by_pk("nope", 1i64, object! { "title" => "x" }),
    ] {
        let result = backend.execute(op.clone()).await;
        assert!(
            matches!(result, Err(Error::UnknownCollection { .. })),
            "{op:?}: {result:?}"
        );
    }
}

/// Counts the operations that pass it.
#[derive(Debug, Default)]
struct Passed(std::sync::atomic::AtomicUsize);

impl storex_core::Middleware for Passed {
    fn process<'a>(
        &'a self,
        op: Operation,
        next: storex_core::Next<'a>,
    ) -> storex_core::BoxFuture<'a, storex_core::Result<storex_core::Outcome>> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        next.run(op)
    }
}

#[tokio::test]
async fn a_placeholder_filling_an_unknown_field_of_a_create_is_refused_before_anything_runs() {
    let passed = std::sync::Arc::new(Passed::default());
    let storage = Storage::builder(
        storage().await.registry().as_ref().clone(),
        MemoryBackend::new(),
    )
    .with_arc(passed.clone())
    .build()
    .await
    .expect("build");
    let err = storage
        .batch(vec![
            BatchStep::new(Operation::create(
                "note",
                object! { "id" => uuid(), "title" => "n" },
            ))
            .placeholder("n"),
            BatchStep::new(Operation::create(
                "tag",
                object! { "note_id" => uuid(), "name" => "x" },
            ))
            .replace(Replacement::field("typo", "n")),
        ])
        .await
        .expect_err("accepted");
    assert_eq!(
        storex_core::error_chain(&err),
        "batch step 1 failed, nothing of the batch was applied: collection `tag` has no field `typo`"
    );
    assert_eq!(
        passed.0.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "it reached the chain"
    );
}

fn with_defaults() -> CollectionDef {
    CollectionDef::new("task")
        .field("id", FieldType::Int)
        .field("title", FieldType::Text)
        .field("done", FieldType::Bool)
        .default_value("done", false)
        .optional_field("stars", FieldType::Int)
        .int_range("stars", 0, 5)
        .default_value("stars", 3)
        .primary_key(["id"])
}

#[tokio::test]
async fn a_create_or_put_that_leaves_out_a_field_with_a_default_writes_the_default() {
    let registry = Registry::builder()
        .collection(with_defaults())
        .build()
        .expect("valid registry");
    let storage = Storage::builder(registry, MemoryBackend::new())
        .build()
        .await
        .expect("build");
    // A required field with a default may be left out.
    storage
        .create("task", object! { "id" => 1, "title" => "a" })
        .await
        .expect("create");
    // An explicit null stays null; a given value is kept.
    storage
        .create(
            "task",
            object! { "id" => 2, "title" => "b", "done" => true, "stars" => Value::Null },
        )
        .await
        .expect("create");
    storage
        .execute(Operation::put(
            "task",
            object! { "id" => 2, "title" => "c" },
        ))
        .await
        .expect("put");
    let row = |id: i64| {
        let storage = storage.clone();
        async move {
            storage
                .find_by_pk("task", id)
                .await
                .expect("find")
                .expect("row")
        }
    };
    let first = row(1).await;
    assert_eq!(first["done"], Value::Bool(false));
    assert_eq!(first["stars"], Value::Int(3));
    let second = row(2).await;
    assert_eq!(
        second["done"],
        Value::Bool(false),
        "a put replaces every field"
    );
    assert_eq!(second["stars"], Value::Int(3));
    // An explicit null in a required field is still refused.
    let err = storage
        .create(
            "task",
            object! { "id" => 3, "title" => "d", "done" => Value::Null },
        )
        .await
        .expect_err("null in a required field");
    assert!(err.to_string().contains("done"), "{err}");
}

#[test]
fn a_default_that_does_not_fit_its_field_is_refused() {
    let refused = |def: CollectionDef| {
        Registry::builder()
            .collection(def)
            .build()
            .expect_err("refused")
            .to_string()
    };
    let task = with_defaults;
    assert!(refused(task().default_value("missing", 1)).contains("unknown field `missing`"));
    assert!(refused(task().default_value("id", 1)).contains("primary-key field `id`"));
    assert!(refused(task().default_value("title", Value::Null)).contains("null"));
    assert!(refused(task().default_value("title", 1)).contains("int, not text"));
    assert!(refused(task().default_value("stars", 9)).contains("outside 0..=5"));
    assert!(refused(task().default_value("title", "a\0b")).contains("a NUL character"));
    Registry::builder()
        .collection(task().default_value("title", "untitled"))
        .build()
        .expect("a text default");
}
