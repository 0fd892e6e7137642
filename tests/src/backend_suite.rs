//! The backend conformance suite: every operation, filter, order, batch, transaction and
//! validation rule of storex-core, checked against a real backend.

use std::future::Future;

use futures::future::{join_all, BoxFuture};
use futures::FutureExt;
use storex_core::chrono::{DateTime, TimeZone, Utc};
use storex_core::serde_json::json;
use storex_core::uuid::Uuid;
use storex_core::{
    object, BatchStep, Error, Filter, Object, Operation, Outcome, Pk, Query, Replacement, Storage,
    StorageBackend, UuidPkMiddleware, Value,
};

use crate::fixtures::fixture_registry;
use crate::suite::SuiteReport;

type Check = fn(Storage) -> BoxFuture<'static, ()>;

macro_rules! checks {
    ($($name:ident),+ $(,)?) => {
        vec![$((stringify!($name), (|s| $name(s).boxed()) as Check)),+]
    };
}

/// Runs every check, each on a fresh backend made by `make`, and panics listing every
/// failed check. Call it from a backend crate's `tests/integration/conformance.rs`.
pub async fn backend_suite<F, Fut, B>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
    B: StorageBackend,
{
    run_backend_suite(make)
        .await
        .assert_all_passed("conformance");
}

/// Runs every check, each on a fresh backend made by `make`, and reports what passed and
/// what failed without panicking.
pub async fn run_backend_suite<F, Fut, B>(make: F) -> SuiteReport
where
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
    B: StorageBackend,
{
    let mut report = SuiteReport::default();
    for (name, check) in all_checks() {
        let storage = Storage::builder(fixture_registry(), make().await)
            .with(UuidPkMiddleware::new())
            .build()
            .await;
        match storage {
            Ok(storage) => report.run(name, check(storage)).await,
            Err(e) => report.fail(name, format!("building the storage failed: {e}")),
        }
    }
    report
}

fn all_checks() -> Vec<(&'static str, Check)> {
    checks![
        create_returns_the_key,
        create_then_find_by_pk_returns_every_field,
        text_round_trips_unicode,
        int_round_trips_extremes,
        float_round_trips_exactly,
        bool_round_trips,
        datetime_round_trips_with_microseconds,
        datetime_sub_microseconds_are_dropped,
        json_round_trips_nested_documents,
        blob_round_trips_every_byte,
        uuid_round_trips,
        null_and_missing_optional_fields_read_as_null,
        large_text_and_blob_round_trip,
        create_with_existing_key_is_refused,
        refused_duplicate_leaves_the_original_unchanged,
        unique_index_refuses_duplicate_values,
        unique_index_allows_many_nulls,
        update_refused_by_unique_index_changes_nothing,
        put_creates_an_object_or_replaces_the_one_with_its_key,
        puts_in_a_batch_create_and_replace_and_the_last_of_a_key_wins,
        put_refused_by_unique_index_changes_nothing,
        put_without_its_key_is_refused,
        puts_on_compound_keys_and_on_all_key_collections,
        compound_key_create_and_find,
        compound_keys_may_share_a_prefix,
        uuid_keys_are_filled_on_create,
        update_by_pk_changes_only_given_fields,
        update_by_pk_can_set_an_optional_field_to_null,
        update_by_pk_of_a_missing_object_updates_nothing,
        update_where_updates_only_matching_objects,
        update_where_without_match_updates_nothing,
        delete_by_pk_removes_only_that_object,
        delete_by_pk_of_a_missing_object_deletes_nothing,
        delete_where_removes_only_matching_objects,
        where_writes_on_a_compound_key_collection,
        update_where_returning_pks_answers_the_keys_it_changed,
        delete_where_returning_pks_answers_the_keys_it_deleted,
        where_writes_returning_pks_on_a_compound_key_collection,
        where_writes_returning_pks_in_a_batch_and_a_transaction,
        where_writes_returning_pks_on_a_uuid_key_collection,
        find_one_of_a_missing_object_is_none,
        find_one_honours_order_and_skip,
        find_many_without_order_sorts_by_key,
        filter_eq,
        filter_ne_includes_null_fields,
        filter_lt,
        filter_lte,
        filter_gt,
        filter_gte,
        filter_in,
        filter_in_with_empty_list_matches_nothing,
        filter_in_takes_up_to_its_limit_of_values,
        filter_eq_null_matches_null_fields,
        filter_ne_null_matches_set_fields,
        filter_conditions_combine_with_and,
        filter_on_a_datetime_range,
        filter_on_uuid_and_bool,
        filter_on_float,
        negative_zero_is_zero,
        nul_characters_are_refused,
        datetimes_beyond_year_9999_are_refused,
        text_compares_by_bytes,
        order_ascending_puts_nulls_first,
        order_descending_puts_nulls_last,
        order_by_several_fields,
        order_ties_break_by_key,
        limit_and_skip_page_through_results,
        skip_past_the_end_is_empty,
        find_values_reads_the_fields_asked_in_their_order,
        find_values_reads_every_type_and_null,
        find_values_refuses_unknown_or_no_fields,
        count_with_and_without_filter,
        batch_applies_every_step,
        batch_placeholder_fills_a_child_field,
        batch_placeholder_fills_the_key_of_a_later_update,
        batch_failing_last_step_leaves_nothing,
        batch_error_names_the_failing_step,
        batch_mixes_updates_and_deletes,
        updates_by_key_in_a_batch_each_set_their_own_values,
        updates_by_key_in_a_batch_set_every_type_and_null,
        many_updates_by_key_in_a_batch_on_a_compound_key,
        a_refused_update_among_updates_alike_names_its_step_and_changes_nothing,
        transaction_commit_makes_writes_visible,
        transaction_rollback_discards_writes,
        transaction_dropped_without_commit_rolls_back,
        transaction_reads_its_own_writes,
        transaction_failed_batch_undoes_only_the_batch,
        validation_unknown_collection_writes_nothing,
        validation_wrong_type_writes_nothing,
        validation_missing_required_field_writes_nothing,
        validation_unknown_field_writes_nothing,
        validation_refuses_a_key_update,
        concurrent_writers_all_land,
        concurrent_transactions_both_commit,
    ]
}

// ---- helpers -----------------------------------------------------------------------------

fn item(id: i64, name: &str) -> Object {
    object! { "id" => id, "name" => name }
}

async fn create_item(s: &Storage, object: Object) {
    s.create("item", object).await.expect("create item");
}

async fn put_items(s: &Storage, items: &[(i64, &str, Option<i64>)]) {
    for (id, name, n) in items {
        create_item(s, object! { "id" => *id, "name" => *name, "n" => *n }).await;
    }
}

async fn get(s: &Storage, id: i64) -> Option<Object> {
    s.find_by_pk("item", id).await.expect("find item")
}

async fn ids(s: &Storage, query: Query) -> Vec<i64> {
    s.find_many("item", query)
        .await
        .expect("find items")
        .iter()
        .map(|o| o["id"].as_int().expect("id is an int"))
        .collect()
}

async fn ids_where(s: &Storage, filter: Filter) -> Vec<i64> {
    ids(s, Query::new(filter)).await
}

async fn count(s: &Storage, collection: &str) -> u64 {
    s.count(collection, Filter::all()).await.expect("count")
}

async fn round_trip(s: &Storage, field: &str, value: Value) {
    let mut object = item(1, "x");
    object.insert(field.to_owned(), value.clone());
    create_item(s, object).await;
    let found = get(s, 1).await.expect("object stored");
    assert_eq!(found[field], value, "field `{field}` did not round-trip");
}

fn at(secs: i64, micros: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, micros * 1000)
        .single()
        .expect("valid timestamp")
}

async fn seed_numbers(s: &Storage) {
    put_items(
        s,
        &[
            (1, "a", Some(10)),
            (2, "b", Some(20)),
            (3, "c", None),
            (4, "d", Some(30)),
            (5, "e", Some(20)),
        ],
    )
    .await;
}

// ---- values ------------------------------------------------------------------------------

async fn create_returns_the_key(s: Storage) {
    let pk = s.create("item", item(42, "answer")).await.expect("create");
    assert_eq!(pk, Pk::from(42));
}

async fn create_then_find_by_pk_returns_every_field(s: Storage) {
    create_item(&s, item(1, "one")).await;
    let found = get(&s, 1).await.expect("found");
    let fields: Vec<&str> = found.keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        vec!["at", "body", "data", "doc", "flag", "id", "n", "name", "ref_id", "score"],
        "a found object carries every field of its collection"
    );
    assert_eq!(found["name"], Value::from("one"));
}

async fn text_round_trips_unicode(s: Storage) {
    round_trip(
        &s,
        "name",
        Value::from("Grüße, 世界! 🎉 e\u{301} ' \" \\ %_ \n\t"),
    )
    .await;
}

async fn int_round_trips_extremes(s: Storage) {
    for (id, n) in [(1, i64::MIN), (2, i64::MAX), (3, 0), (4, -1)] {
        create_item(&s, object! { "id" => id, "name" => "x", "n" => n }).await;
        assert_eq!(get(&s, id).await.expect("found")["n"], Value::Int(n));
    }
    create_item(&s, item(i64::MIN, "min key")).await;
    assert!(get(&s, i64::MIN).await.is_some(), "i64::MIN works as a key");
}

async fn float_round_trips_exactly(s: Storage) {
    for (id, f) in [
        (1, 0.1),
        (2, f64::MAX),
        (3, f64::MIN_POSITIVE),
        (4, -2.5),
        (5, 1.0 / 3.0),
        (6, 5e-324),
    ] {
        create_item(&s, object! { "id" => id, "name" => "x", "score" => f }).await;
        let found = get(&s, id).await.expect("found");
        assert_eq!(
            found["score"],
            Value::Float(f),
            "float {f:e} did not round-trip"
        );
    }
}

async fn bool_round_trips(s: Storage) {
    for (id, b) in [(1, true), (2, false)] {
        create_item(&s, object! { "id" => id, "name" => "x", "flag" => b }).await;
        assert_eq!(get(&s, id).await.expect("found")["flag"], Value::Bool(b));
    }
}

async fn datetime_round_trips_with_microseconds(s: Storage) {
    round_trip(&s, "at", Value::DateTime(at(1_700_000_000, 123_456))).await;
}

async fn datetime_sub_microseconds_are_dropped(s: Storage) {
    let precise = Utc
        .timestamp_opt(1_700_000_000, 123_456_789)
        .single()
        .expect("valid");
    create_item(&s, object! { "id" => 1, "name" => "x", "at" => precise }).await;
    let found = get(&s, 1).await.expect("found");
    assert_eq!(found["at"], Value::DateTime(at(1_700_000_000, 123_456)));
}

async fn json_round_trips_nested_documents(s: Storage) {
    let doc = json!({"a": [1, 2.5, null, {"b": "ü"}], "big": 9_007_199_254_740_993_i64, "t": true, "e": {}});
    round_trip(&s, "doc", Value::Json(doc)).await;
}

async fn blob_round_trips_every_byte(s: Storage) {
    let bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    round_trip(&s, "data", Value::Blob(bytes)).await;
}

async fn uuid_round_trips(s: Storage) {
    round_trip(&s, "ref_id", Value::Uuid(Uuid::now_v7())).await;
}

async fn null_and_missing_optional_fields_read_as_null(s: Storage) {
    create_item(
        &s,
        object! { "id" => 1, "name" => "explicit", "n" => Value::Null },
    )
    .await;
    create_item(&s, item(2, "missing")).await;
    for id in [1, 2] {
        let found = get(&s, id).await.expect("found");
        assert_eq!(found["n"], Value::Null, "object {id}");
        assert_eq!(found["doc"], Value::Null, "object {id}");
    }
}

async fn large_text_and_blob_round_trip(s: Storage) {
    let text: String = "storex ✓ ".repeat(100_000);
    let blob: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    create_item(
        &s,
        object! { "id" => 1, "name" => "large", "body" => text.clone(), "data" => blob.clone() },
    )
    .await;
    let found = get(&s, 1).await.expect("found");
    assert!(found["body"] == Value::Text(text), "large text changed");
    assert!(found["data"] == Value::Blob(blob), "large blob changed");
}

// ---- keys and uniqueness -----------------------------------------------------------------

async fn create_with_existing_key_is_refused(s: Storage) {
    create_item(&s, item(1, "first")).await;
    let err = s
        .create("item", item(1, "second"))
        .await
        .expect_err("duplicate accepted");
    assert!(
        matches!(err, Error::DuplicateKey { .. }),
        "wrong error: {err}"
    );
}

async fn refused_duplicate_leaves_the_original_unchanged(s: Storage) {
    create_item(&s, item(1, "first")).await;
    let _ = s.create("item", item(1, "second")).await;
    assert_eq!(
        get(&s, 1).await.expect("found")["name"],
        Value::from("first")
    );
    assert_eq!(count(&s, "item").await, 1);
}

async fn unique_index_refuses_duplicate_values(s: Storage) {
    s.create("account", object! { "email" => "a@x" })
        .await
        .expect("first");
    let err = s
        .create("account", object! { "email" => "a@x" })
        .await
        .expect_err("accepted");
    assert!(
        matches!(err, Error::DuplicateKey { .. }),
        "wrong error: {err}"
    );
    assert_eq!(count(&s, "account").await, 1);
}

async fn unique_index_allows_many_nulls(s: Storage) {
    for email in ["a@x", "b@x", "c@x"] {
        s.create("account", object! { "email" => email })
            .await
            .expect("null nick never clashes");
    }
    assert_eq!(count(&s, "account").await, 3);
}

async fn update_refused_by_unique_index_changes_nothing(s: Storage) {
    s.create("account", object! { "email" => "a@x", "nick" => "ann" })
        .await
        .expect("a");
    let b = s
        .create("account", object! { "email" => "b@x", "nick" => "bob" })
        .await
        .expect("b");
    let err = s
        .update_where(
            "account",
            Filter::all().eq("email", "b@x"),
            object! { "email" => "a@x", "nick" => "bo" },
        )
        .await
        .expect_err("clash accepted");
    assert!(
        matches!(err, Error::DuplicateKey { .. }),
        "wrong error: {err}"
    );
    let found = s
        .find_by_pk("account", b)
        .await
        .expect("find")
        .expect("b exists");
    assert_eq!(found["email"], Value::from("b@x"));
    assert_eq!(found["nick"], Value::from("bob"));
}

async fn compound_key_create_and_find(s: Storage) {
    let pk = s
        .create(
            "membership",
            object! { "group" => "g1", "member" => 7, "role" => "admin" },
        )
        .await
        .expect("create");
    assert_eq!(pk, Pk(vec![Value::from("g1"), Value::from(7)]));
    let found = s
        .find_by_pk("membership", pk)
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found["role"], Value::from("admin"));
}

async fn compound_keys_may_share_a_prefix(s: Storage) {
    for (group, member) in [("g1", 1), ("g1", 2), ("g2", 1)] {
        s.create(
            "membership",
            object! { "group" => group, "member" => member, "role" => "r" },
        )
        .await
        .expect("distinct compound keys");
    }
    let err = s
        .create(
            "membership",
            object! { "group" => "g1", "member" => 2, "role" => "r" },
        )
        .await
        .expect_err("duplicate compound key accepted");
    assert!(
        matches!(err, Error::DuplicateKey { .. }),
        "wrong error: {err}"
    );
    assert_eq!(count(&s, "membership").await, 3);
}

async fn uuid_keys_are_filled_on_create(s: Storage) {
    let a = s
        .create("notebook", object! { "name" => "a" })
        .await
        .expect("a");
    let b = s
        .create("notebook", object! { "name" => "b" })
        .await
        .expect("b");
    let (Some(Value::Uuid(ua)), Some(Value::Uuid(ub))) = (a.single(), b.single()) else {
        panic!("keys are not uuids: {a} {b}");
    };
    assert_ne!(ua, ub);
    assert_eq!(ua.get_version_num(), 7);
    let found = s
        .find_by_pk("notebook", a)
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found["name"], Value::from("a"));
}

// ---- updates and deletes -----------------------------------------------------------------

async fn update_by_pk_changes_only_given_fields(s: Storage) {
    create_item(
        &s,
        object! { "id" => 1, "name" => "old", "n" => 5, "flag" => true },
    )
    .await;
    let updated = s
        .update_by_pk("item", 1, object! { "name" => "new" })
        .await
        .expect("update");
    assert_eq!(updated, 1);
    let found = get(&s, 1).await.expect("found");
    assert_eq!(found["name"], Value::from("new"));
    assert_eq!(found["n"], Value::Int(5));
    assert_eq!(found["flag"], Value::Bool(true));
}

async fn update_by_pk_can_set_an_optional_field_to_null(s: Storage) {
    create_item(&s, object! { "id" => 1, "name" => "x", "n" => 5 }).await;
    s.update_by_pk("item", 1, object! { "n" => Value::Null })
        .await
        .expect("update");
    assert_eq!(get(&s, 1).await.expect("found")["n"], Value::Null);
}

async fn update_by_pk_of_a_missing_object_updates_nothing(s: Storage) {
    create_item(&s, item(1, "x")).await;
    let updated = s
        .update_by_pk("item", 2, object! { "name" => "y" })
        .await
        .expect("update");
    assert_eq!(updated, 0);
    assert!(get(&s, 2).await.is_none(), "an update must not create");
}

async fn update_where_updates_only_matching_objects(s: Storage) {
    seed_numbers(&s).await;
    let updated = s
        .update_where(
            "item",
            Filter::all().eq("n", 20),
            object! { "name" => "twenty" },
        )
        .await
        .expect("update");
    assert_eq!(updated, 2);
    assert_eq!(
        ids_where(&s, Filter::all().eq("name", "twenty")).await,
        vec![2, 5]
    );
    assert_eq!(get(&s, 1).await.expect("found")["name"], Value::from("a"));
}

async fn update_where_without_match_updates_nothing(s: Storage) {
    seed_numbers(&s).await;
    let updated = s
        .update_where("item", Filter::all().eq("n", 99), object! { "name" => "z" })
        .await
        .expect("update");
    assert_eq!(updated, 0);
    assert!(ids_where(&s, Filter::all().eq("name", "z"))
        .await
        .is_empty());
}

async fn delete_by_pk_removes_only_that_object(s: Storage) {
    seed_numbers(&s).await;
    assert_eq!(s.delete_by_pk("item", 3).await.expect("delete"), 1);
    assert_eq!(ids(&s, Query::default()).await, vec![1, 2, 4, 5]);
}

async fn delete_by_pk_of_a_missing_object_deletes_nothing(s: Storage) {
    seed_numbers(&s).await;
    assert_eq!(s.delete_by_pk("item", 9).await.expect("delete"), 0);
    assert_eq!(count(&s, "item").await, 5);
}

async fn delete_where_removes_only_matching_objects(s: Storage) {
    seed_numbers(&s).await;
    let deleted = s
        .delete_where("item", Filter::all().gte("n", 20))
        .await
        .expect("delete");
    assert_eq!(deleted, 3);
    assert_eq!(ids(&s, Query::default()).await, vec![1, 3]);
}

async fn where_writes_on_a_compound_key_collection(s: Storage) {
    for (group, member) in [("g1", 1), ("g1", 2), ("g2", 1)] {
        s.create(
            "membership",
            object! { "group" => group, "member" => member, "role" => "r" },
        )
        .await
        .expect("create");
    }
    let updated = s
        .update_where(
            "membership",
            Filter::all().eq("member", 1),
            object! { "role" => "lead" },
        )
        .await
        .expect("update");
    assert_eq!(updated, 2);
    let deleted = s
        .delete_where("membership", Filter::all().eq("group", "g1"))
        .await
        .expect("delete");
    assert_eq!(deleted, 2);
    let left = s
        .find_many("membership", Query::default())
        .await
        .expect("find");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["role"], Value::from("lead"));
}

/// Keys of the one-field `item` collection, sorted (a backend answers in no set order).
fn sorted_ids(pks: Vec<Pk>) -> Vec<i64> {
    let mut ids: Vec<i64> = pks
        .iter()
        .map(|pk| {
            pk.single()
                .and_then(Value::as_int)
                .expect("a one-field int key")
        })
        .collect();
    ids.sort_unstable();
    ids
}

async fn update_where_returning_pks_answers_the_keys_it_changed(s: Storage) {
    seed_numbers(&s).await;
    let pks = s
        .update_where_returning_pks(
            "item",
            Filter::all().eq("n", 20),
            object! { "name" => "twenty" },
        )
        .await
        .expect("update");
    assert_eq!(sorted_ids(pks), vec![2, 5]);
    assert_eq!(
        ids_where(&s, Filter::all().eq("name", "twenty")).await,
        vec![2, 5]
    );
    assert_eq!(get(&s, 1).await.expect("found")["name"], Value::from("a"));
    let none = s
        .update_where_returning_pks("item", Filter::all().eq("n", 99), object! { "name" => "z" })
        .await
        .expect("update nothing");
    assert!(none.is_empty(), "no match, no keys: {none:?}");
}

async fn delete_where_returning_pks_answers_the_keys_it_deleted(s: Storage) {
    seed_numbers(&s).await;
    let pks = s
        .delete_where_returning_pks("item", Filter::all().gte("n", 20))
        .await
        .expect("delete");
    assert_eq!(sorted_ids(pks), vec![2, 4, 5]);
    assert_eq!(ids(&s, Query::default()).await, vec![1, 3]);
    let none = s
        .delete_where_returning_pks("item", Filter::all().gte("n", 20))
        .await
        .expect("delete nothing");
    assert!(none.is_empty(), "no match, no keys: {none:?}");
}

async fn where_writes_returning_pks_on_a_compound_key_collection(s: Storage) {
    for (group, member) in [("g1", 1), ("g1", 2), ("g2", 1)] {
        s.create(
            "membership",
            object! { "group" => group, "member" => member, "role" => "r" },
        )
        .await
        .expect("create");
    }
    let key = |group: &str, member: i64| Pk(vec![group.into(), member.into()]);
    let sorted = |mut pks: Vec<Pk>| {
        pks.sort_by_key(|pk| format!("{pk}"));
        pks
    };
    let updated = s
        .update_where_returning_pks(
            "membership",
            Filter::all().eq("member", 1),
            object! { "role" => "lead" },
        )
        .await
        .expect("update");
    assert_eq!(sorted(updated), vec![key("g1", 1), key("g2", 1)]);
    let deleted = s
        .delete_where_returning_pks("membership", Filter::all().eq("group", "g1"))
        .await
        .expect("delete");
    assert_eq!(sorted(deleted), vec![key("g1", 1), key("g1", 2)]);
}

async fn where_writes_returning_pks_in_a_batch_and_a_transaction(s: Storage) {
    seed_numbers(&s).await;
    let outcomes = s
        .batch(vec![
            BatchStep::new(Operation::update_where_returning_pks(
                "item",
                Filter::all().eq("n", 10),
                object! { "n" => 20 },
            )),
            BatchStep::new(Operation::delete_where_returning_pks(
                "item",
                Filter::all().eq("n", 20),
            )),
        ])
        .await
        .expect("batch");
    let [updated, deleted] = outcomes.as_slice() else {
        panic!("one outcome per step: {outcomes:?}");
    };
    assert!(matches!(updated, Outcome::UpdatedPks { .. }), "{updated:?}");
    assert_eq!(updated.count(), Some(1));
    assert!(matches!(deleted, Outcome::DeletedPks { .. }), "{deleted:?}");
    let deleted = deleted.clone().into_pks().expect("keys");
    assert_eq!(
        sorted_ids(deleted),
        vec![1, 2, 5],
        "the update's object too"
    );
    // Rolled back: the keys were reported, the objects stay.
    let tx = s.begin().await.expect("begin");
    let outcome = tx
        .execute(Operation::delete_where_returning_pks("item", Filter::all()))
        .await
        .expect("delete");
    assert_eq!(sorted_ids(outcome.into_pks().expect("keys")), vec![3, 4]);
    tx.rollback().await.expect("rollback");
    assert_eq!(ids(&s, Query::default()).await, vec![3, 4]);
}

// ---- finds, filters, order, paging -------------------------------------------------------

async fn find_one_of_a_missing_object_is_none(s: Storage) {
    create_item(&s, item(1, "x")).await;
    assert!(get(&s, 2).await.is_none());
    let found = s
        .find_one("item", Query::new(Filter::all().eq("name", "y")))
        .await
        .expect("find");
    assert!(found.is_none());
}

async fn find_one_honours_order_and_skip(s: Storage) {
    seed_numbers(&s).await;
    let found = s
        .find_one("item", Query::default().order_desc("n").skip(1))
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found["id"], Value::Int(2), "second-largest n, ties by key");
}

async fn find_many_without_order_sorts_by_key(s: Storage) {
    for id in [5, -3, 2, 100, 0] {
        create_item(&s, item(id, "x")).await;
    }
    assert_eq!(ids(&s, Query::default()).await, vec![-3, 0, 2, 5, 100]);
}

async fn filter_eq(s: Storage) {
    seed_numbers(&s).await;
    assert_eq!(ids_where(&s, Filter::all().eq("n", 20)).await, vec![2, 5]);
    assert_eq!(ids_where(&s, Filter::all().eq("name", "c")).await, vec![3]);
}

async fn filter_ne_includes_null_fields(s: Storage) {
    seed_numbers(&s).await;
    assert_eq!(
        ids_where(&s, Filter::all().ne("n", 20)).await,
        vec![1, 3, 4]
    );
}

async fn filter_lt(s: Storage) {
    seed_numbers(&s).await;
    assert_eq!(ids_where(&s, Filter::all().lt("n", 20)).await, vec![1]);
}

async fn filter_lte(s: Storage) {
    seed_numbers(&s).await;
    assert_eq!(
        ids_where(&s, Filter::all().lte("n", 20)).await,
        vec![1, 2, 5]
    );
}

async fn filter_gt(s: Storage) {
    seed_numbers(&s).await;
    assert_eq!(ids_where(&s, Filter::all().gt("n", 20)).await, vec![4]);
}

async fn filter_gte(s: Storage) {
    seed_numbers(&s).await;
    assert_eq!(
        ids_where(&s, Filter::all().gte("n", 20)).await,
        vec![2, 4, 5]
    );
}

async fn filter_in(s: Storage) {
    seed_numbers(&s).await;
    assert_eq!(
        ids_where(&s, Filter::all().is_in("n", [10, 30, 99])).await,
        vec![1, 4]
    );
    assert_eq!(
        ids_where(&s, Filter::all().is_in("name", ["b", "e"])).await,
        vec![2, 5]
    );
}

async fn filter_in_with_empty_list_matches_nothing(s: Storage) {
    seed_numbers(&s).await;
    assert!(ids_where(&s, Filter::all().is_in("n", Vec::<i64>::new()))
        .await
        .is_empty());
    let deleted = s
        .delete_where("item", Filter::all().is_in("id", Vec::<i64>::new()))
        .await
        .expect("delete");
    assert_eq!(deleted, 0);
}

async fn filter_in_takes_up_to_its_limit_of_values(s: Storage) {
    seed_numbers(&s).await;
    // The most one statement takes (with the rest of the query), and one more.
    let many: Vec<i64> = (1..=storex_core::MAX_IN_VALUES as i64).collect();
    assert_eq!(
        ids_where(&s, Filter::all().is_in("id", many.clone())).await,
        vec![1, 2, 3, 4, 5]
    );
    let too_many = Filter::all().is_in("id", many).is_in("n", [10]);
    let err = s
        .find_many("item", Query::new(too_many))
        .await
        .expect_err("more than the limit");
    assert!(
        matches!(err, Error::InvalidOperation { .. }) && !err.is_transient(),
        "{err}"
    );
}

async fn filter_eq_null_matches_null_fields(s: Storage) {
    seed_numbers(&s).await;
    assert_eq!(
        ids_where(&s, Filter::all().eq("n", Value::Null)).await,
        vec![3]
    );
}

async fn filter_ne_null_matches_set_fields(s: Storage) {
    seed_numbers(&s).await;
    assert_eq!(
        ids_where(&s, Filter::all().ne("n", Value::Null)).await,
        vec![1, 2, 4, 5]
    );
}

async fn filter_conditions_combine_with_and(s: Storage) {
    seed_numbers(&s).await;
    let filter = Filter::all().gte("n", 10).lt("n", 30).ne("name", "b");
    assert_eq!(ids_where(&s, filter).await, vec![1, 5]);
}

async fn filter_on_a_datetime_range(s: Storage) {
    for (id, secs) in [(1, 100), (2, 200), (3, 300)] {
        create_item(
            &s,
            object! { "id" => id, "name" => "x", "at" => at(secs, 0) },
        )
        .await;
    }
    let filter = Filter::all().gt("at", at(100, 0)).lte("at", at(300, 0));
    assert_eq!(ids_where(&s, filter).await, vec![2, 3]);
    let filter = Filter::all().lt("at", at(200, 1));
    assert_eq!(
        ids_where(&s, filter).await,
        vec![1, 2],
        "microseconds count in comparisons"
    );
}

async fn filter_on_uuid_and_bool(s: Storage) {
    let target = Uuid::now_v7();
    create_item(
        &s,
        object! { "id" => 1, "name" => "x", "ref_id" => target, "flag" => true },
    )
    .await;
    create_item(
        &s,
        object! { "id" => 2, "name" => "x", "ref_id" => Uuid::now_v7(), "flag" => true },
    )
    .await;
    create_item(
        &s,
        object! { "id" => 3, "name" => "x", "ref_id" => target, "flag" => false },
    )
    .await;
    assert_eq!(
        ids_where(&s, Filter::all().eq("ref_id", target)).await,
        vec![1, 3]
    );
    assert_eq!(
        ids_where(&s, Filter::all().eq("ref_id", target).eq("flag", true)).await,
        vec![1]
    );
}

async fn filter_on_float(s: Storage) {
    for (id, f) in [(1, -1.5), (2, 0.25), (3, 2.0)] {
        create_item(&s, object! { "id" => id, "name" => "x", "score" => f }).await;
    }
    assert_eq!(
        ids_where(&s, Filter::all().gt("score", 0.0)).await,
        vec![2, 3]
    );
    assert_eq!(
        ids_where(&s, Filter::all().eq("score", 0.25)).await,
        vec![2]
    );
}

async fn negative_zero_is_zero(s: Storage) {
    create_item(&s, object! { "id" => 1, "name" => "x", "score" => -0.0 }).await;
    create_item(&s, object! { "id" => 2, "name" => "y", "score" => 1.0 }).await;
    assert_eq!(ids_where(&s, Filter::all().eq("score", 0.0)).await, vec![1]);
    assert_eq!(
        ids_where(&s, Filter::all().eq("score", -0.0)).await,
        vec![1]
    );
    assert_eq!(
        ids_where(&s, Filter::all().lt("score", 0.0)).await,
        Vec::<i64>::new()
    );
}

async fn nul_characters_are_refused(s: Storage) {
    let text = s
        .create("item", object! { "id" => 1, "name" => "a\0b" })
        .await
        .expect_err("a NUL in text was stored");
    assert!(text.to_string().contains("NUL"), "{text}");
    let json = s
        .create(
            "item",
            object! { "id" => 2, "name" => "x", "doc" => json!({ "k": "a\u{0}" }) },
        )
        .await
        .expect_err("a NUL in JSON was stored");
    assert!(json.to_string().contains("NUL"), "{json}");
    assert_eq!(ids_where(&s, Filter::all()).await, Vec::<i64>::new());
}

async fn datetimes_beyond_year_9999_are_refused(s: Storage) {
    let far = Utc
        .with_ymd_and_hms(10_000, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid date");
    let err = s
        .create("item", object! { "id" => 1, "name" => "x", "at" => far })
        .await
        .expect_err("year 10000 was stored");
    assert!(err.to_string().contains("9999"), "{err}");
    let last = Utc
        .with_ymd_and_hms(9_999, 12, 31, 23, 59, 59)
        .single()
        .expect("a valid date");
    create_item(&s, object! { "id" => 2, "name" => "y", "at" => last }).await;
    assert_eq!(ids_where(&s, Filter::all()).await, vec![2]);
}

async fn text_compares_by_bytes(s: Storage) {
    for (id, name) in [(1, "b"), (2, "B"), (3, "a"), (4, "é"), (5, "z")] {
        create_item(&s, item(id, name)).await;
    }
    let sorted = ids(&s, Query::default().order_asc("name")).await;
    assert_eq!(sorted, vec![2, 3, 1, 5, 4], "byte order: B < a < b < z < é");
    assert_eq!(ids_where(&s, Filter::all().lt("name", "a")).await, vec![2]);
}

async fn order_ascending_puts_nulls_first(s: Storage) {
    seed_numbers(&s).await;
    assert_eq!(
        ids(&s, Query::default().order_asc("n")).await,
        vec![3, 1, 2, 5, 4]
    );
}

async fn order_descending_puts_nulls_last(s: Storage) {
    seed_numbers(&s).await;
    assert_eq!(
        ids(&s, Query::default().order_desc("n")).await,
        vec![4, 2, 5, 1, 3]
    );
}

async fn order_by_several_fields(s: Storage) {
    put_items(
        &s,
        &[
            (1, "b", Some(1)),
            (2, "a", Some(2)),
            (3, "b", Some(3)),
            (4, "a", Some(1)),
        ],
    )
    .await;
    let sorted = ids(&s, Query::default().order_asc("name").order_desc("n")).await;
    assert_eq!(sorted, vec![2, 4, 3, 1]);
}

async fn order_ties_break_by_key(s: Storage) {
    put_items(
        &s,
        &[(9, "same", None), (3, "same", None), (6, "same", None)],
    )
    .await;
    assert_eq!(
        ids(&s, Query::default().order_desc("name")).await,
        vec![3, 6, 9]
    );
}

async fn limit_and_skip_page_through_results(s: Storage) {
    for id in 1..=10 {
        create_item(&s, item(id, "x")).await;
    }
    assert_eq!(ids(&s, Query::default().limit(3)).await, vec![1, 2, 3]);
    assert_eq!(
        ids(&s, Query::default().skip(3).limit(3)).await,
        vec![4, 5, 6]
    );
    assert_eq!(ids(&s, Query::default().skip(8)).await, vec![9, 10]);
    assert_eq!(
        ids(&s, Query::default().order_desc("id").limit(2)).await,
        vec![10, 9]
    );
    assert!(ids(&s, Query::default().limit(0)).await.is_empty());
    // The largest counts validation lets through are taken.
    let most = i64::MAX as u64;
    assert_eq!(
        ids(&s, Query::default().skip(9).limit(most)).await,
        vec![10]
    );
    assert!(ids(&s, Query::default().skip(most)).await.is_empty());
    // The same query again with other counts answers by each (nothing kept from the last).
    for n in [1, 4, 2, 4] {
        assert_eq!(ids(&s, Query::default().limit(n)).await.len() as u64, n);
    }
}

async fn skip_past_the_end_is_empty(s: Storage) {
    seed_numbers(&s).await;
    assert!(ids(&s, Query::default().skip(50)).await.is_empty());
}

async fn find_values_reads_the_fields_asked_in_their_order(s: Storage) {
    seed_numbers(&s).await;
    let query = Query::new(Filter::all().gte("id", 2))
        .order_desc("n")
        .skip(1)
        .limit(3);
    let rows = s
        .find_values("item", query.clone(), &["n", "id", "name", "n"])
        .await
        .expect("find values");
    // The same objects, in the same order, as a find of whole objects.
    let objects = s.find_many("item", query).await.expect("find many");
    let expected: Vec<Vec<Value>> = objects
        .iter()
        .map(|o| {
            vec![
                o["n"].clone(),
                o["id"].clone(),
                o["name"].clone(),
                o["n"].clone(),
            ]
        })
        .collect();
    assert_eq!(rows, expected);
    // n desc puts NULLs last: 30 (4) is skipped, then 20 (2), 20 (5), NULL (3).
    let ids: Vec<Value> = rows.iter().map(|row| row[1].clone()).collect();
    assert_eq!(ids, vec![Value::Int(2), Value::Int(5), Value::Int(3)]);
    assert_eq!(rows[2][0], Value::Null);
    // Nothing found: no rows.
    let none = s
        .find_values("item", Query::new(Filter::all().eq("id", 99)), &["id"])
        .await
        .expect("find values");
    assert!(none.is_empty());
}

async fn find_values_reads_every_type_and_null(s: Storage) {
    let fields = [
        "id", "name", "n", "score", "flag", "at", "doc", "data", "ref_id", "body",
    ];
    let full = object! {
        "id" => 1,
        "name" => "full",
        "n" => -7,
        "score" => 2.5,
        "flag" => true,
        "at" => Value::DateTime(at(1_700_000_000, 123_456)),
        "doc" => Value::Json(json!({"a": [1, null, "x"]})),
        "data" => Value::Blob(vec![0, 1, 255]),
        "ref_id" => Value::Uuid(Uuid::from_u128(42)),
        "body" => "text",
    };
    create_item(&s, full.clone()).await;
    create_item(&s, item(2, "empty")).await;
    let rows = s
        .find_values("item", Query::default(), &fields)
        .await
        .expect("find values");
    let whole = s
        .find_many("item", Query::default())
        .await
        .expect("find many");
    assert_eq!(rows.len(), 2);
    for (row, object) in rows.iter().zip(&whole) {
        for (value, field) in row.iter().zip(fields) {
            assert_eq!(value, &object[field], "field `{field}`");
        }
    }
    for (value, field) in rows[0].iter().zip(fields) {
        assert_eq!(value, &full[field], "field `{field}`");
    }
    assert!(rows[1][2..].iter().all(Value::is_null), "{:?}", rows[1]);
}

async fn find_values_refuses_unknown_or_no_fields(s: Storage) {
    create_item(&s, item(1, "x")).await;
    let err = s
        .find_values("item", Query::default(), &["id", "colour"])
        .await
        .expect_err("accepted an unknown field");
    assert!(
        matches!(err, Error::UnknownField { ref field, .. } if field == "colour"),
        "wrong error: {err}"
    );
    let err = s
        .find_values("item", Query::default(), &[])
        .await
        .expect_err("accepted no field");
    assert!(
        matches!(err, Error::InvalidOperation { .. }),
        "wrong error: {err}"
    );
}

async fn count_with_and_without_filter(s: Storage) {
    assert_eq!(count(&s, "item").await, 0);
    seed_numbers(&s).await;
    assert_eq!(count(&s, "item").await, 5);
    assert_eq!(
        s.count("item", Filter::all().eq("n", 20))
            .await
            .expect("count"),
        2
    );
}

// ---- batches -----------------------------------------------------------------------------

async fn put_creates_an_object_or_replaces_the_one_with_its_key(s: Storage) {
    let pk = s
        .put("item", object! { "id" => 1, "name" => "first", "n" => 7 })
        .await
        .expect("put creates");
    assert_eq!(pk, Pk::from(1));
    assert_eq!(get(&s, 1).await.expect("created")["n"], Value::from(7));
    let outcome = s
        .execute(Operation::put("item", item(1, "second")))
        .await
        .expect("put replaces");
    assert_eq!(outcome, Outcome::Put { pk: Pk::from(1) });
    let found = get(&s, 1).await.expect("still there");
    assert_eq!(found["name"], Value::from("second"));
    // Every field is replaced: one left out is null now.
    assert_eq!(found["n"], Value::Null);
    assert_eq!(count(&s, "item").await, 1);
}

async fn puts_in_a_batch_create_and_replace_and_the_last_of_a_key_wins(s: Storage) {
    put_items(&s, &[(1, "kept", Some(1)), (2, "old", Some(2))]).await;
    // More puts than one statement of the SQL backend holds, a key twice among them.
    let mut steps: Vec<BatchStep> = (2..=1_501)
        .map(|id| BatchStep::new(Operation::put("item", item(id, "put"))))
        .collect();
    steps.push(BatchStep::new(Operation::put("item", item(5, "again"))));
    let outcomes = s.batch(steps).await.expect("batch");
    assert_eq!(outcomes.len(), 1_501);
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Put { .. })));
    assert_eq!(outcomes[1_500], Outcome::Put { pk: Pk::from(5) });
    assert_eq!(count(&s, "item").await, 1_501);
    let name = |o: Option<Object>| o.expect("found")["name"].clone();
    assert_eq!(name(get(&s, 1).await), Value::from("kept"));
    assert_eq!(name(get(&s, 2).await), Value::from("put"));
    assert_eq!(get(&s, 2).await.expect("found")["n"], Value::Null);
    assert_eq!(name(get(&s, 5).await), Value::from("again"));
    assert_eq!(name(get(&s, 1_501).await), Value::from("put"));
    // A key twice in a few puts (one statement on the SQL backends).
    let outcomes = s
        .batch(vec![
            BatchStep::new(Operation::put("item", item(9, "first"))),
            BatchStep::new(Operation::put("item", item(10, "other"))),
            BatchStep::new(Operation::put("item", item(9, "last"))),
        ])
        .await
        .expect("a key twice");
    assert_eq!(outcomes.len(), 3);
    assert_eq!(name(get(&s, 9).await), Value::from("last"));
    assert_eq!(count(&s, "item").await, 1_501);
}

async fn put_refused_by_unique_index_changes_nothing(s: Storage) {
    let a = s
        .create("account", object! { "email" => "a@x" })
        .await
        .expect("a");
    let b = s
        .create("account", object! { "email" => "b@x" })
        .await
        .expect("b");
    let key = |pk: &Pk| pk.single().cloned().expect("one field");
    let err = s
        .batch(vec![
            BatchStep::new(Operation::put(
                "account",
                object! { "id" => key(&a), "email" => "a2@x" },
            )),
            BatchStep::new(Operation::put(
                "account",
                object! { "id" => key(&b), "email" => "a2@x" },
            )),
        ])
        .await
        .expect_err("clash accepted");
    match err {
        Error::BatchStep { step, source } => {
            assert_eq!(step, 1);
            assert!(
                matches!(*source, Error::DuplicateKey { .. }),
                "wrong cause: {source}"
            );
        }
        other => panic!("wrong error: {other}"),
    }
    let email = |o: Option<Object>| o.expect("found")["email"].clone();
    assert_eq!(
        email(s.find_by_pk("account", a).await.expect("a")),
        Value::from("a@x")
    );
    assert_eq!(
        email(s.find_by_pk("account", b).await.expect("b")),
        Value::from("b@x")
    );
}

async fn put_without_its_key_is_refused(s: Storage) {
    // A put names its object: no key is made up for it, not even a UUID.
    let err = s
        .put("account", object! { "email" => "a@x" })
        .await
        .expect_err("accepted");
    assert!(
        matches!(err, Error::MissingField { ref field, .. } if field == "id"),
        "wrong error: {err}"
    );
    assert_eq!(count(&s, "account").await, 0);
}

async fn puts_on_compound_keys_and_on_all_key_collections(s: Storage) {
    // A compound key, one of whose fields has a reserved word for its name.
    for role in ["member", "owner"] {
        s.put(
            "membership",
            object! { "group" => "g", "member" => 1, "role" => role },
        )
        .await
        .expect("put");
    }
    s.put(
        "membership",
        object! { "group" => "g", "member" => 2, "role" => "member" },
    )
    .await
    .expect("another");
    let first = s
        .find_by_pk("membership", Pk(vec![Value::from("g"), Value::from(1)]))
        .await
        .expect("find")
        .expect("found");
    assert_eq!(first["role"], Value::from("owner"));
    assert_eq!(count(&s, "membership").await, 2);
    // Nothing but the key: the second put of an object leaves it as it is.
    let steps = (0..2)
        .map(|_| {
            BatchStep::new(Operation::put(
                "tagging",
                object! { "tag" => "red", "item_id" => 1 },
            ))
        })
        .collect();
    let outcomes = s.batch(steps).await.expect("puts");
    assert_eq!(outcomes.len(), 2);
    s.put("tagging", object! { "tag" => "red", "item_id" => 1 })
        .await
        .expect("once more");
    assert_eq!(count(&s, "tagging").await, 1);
}

async fn batch_applies_every_step(s: Storage) {
    let steps = (1..=50)
        .map(|id| BatchStep::new(Operation::create("item", item(id, "batch"))))
        .collect();
    let outcomes = s.batch(steps).await.expect("batch");
    assert_eq!(outcomes.len(), 50);
    assert_eq!(outcomes[49], Outcome::Created { pk: Pk::from(50) });
    assert_eq!(count(&s, "item").await, 50);
}

async fn batch_placeholder_fills_a_child_field(s: Storage) {
    let outcomes = s
        .batch(vec![
            BatchStep::new(Operation::create("notebook", object! { "name" => "home" }))
                .placeholder("book"),
            BatchStep::new(Operation::create("note", object! { "body" => "milk" }))
                .replace(Replacement::field("notebook_id", "book")),
            BatchStep::new(Operation::create("note", object! { "body" => "eggs" }))
                .replace(Replacement::field("notebook_id", "book")),
        ])
        .await
        .expect("batch");
    let book = outcomes[0]
        .created_pk()
        .and_then(Pk::single)
        .cloned()
        .expect("notebook key");
    let notes = s
        .find_many("note", Query::new(Filter::all().eq("notebook_id", book)))
        .await
        .expect("find");
    assert_eq!(notes.len(), 2);
}

async fn batch_placeholder_fills_the_key_of_a_later_update(s: Storage) {
    let outcomes = s
        .batch(vec![
            BatchStep::new(Operation::create("notebook", object! { "name" => "draft" }))
                .placeholder("nb"),
            BatchStep::new(Operation::update_by_pk(
                "notebook",
                Value::Null,
                object! { "name" => "final" },
            ))
            .replace(Replacement::pk("nb")),
        ])
        .await
        .expect("batch");
    assert_eq!(outcomes[1], Outcome::Updated { count: 1 });
    let pk = outcomes[0].created_pk().cloned().expect("key");
    let found = s
        .find_by_pk("notebook", pk)
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found["name"], Value::from("final"));
}

async fn batch_failing_last_step_leaves_nothing(s: Storage) {
    create_item(&s, item(1, "existing")).await;
    let result = s
        .batch(vec![
            BatchStep::new(Operation::create("item", item(2, "new"))),
            BatchStep::new(Operation::update_by_pk(
                "item",
                1,
                object! { "name" => "changed" },
            )),
            BatchStep::new(Operation::delete_by_pk("item", 1)),
            BatchStep::new(Operation::create("item", item(2, "duplicate"))),
        ])
        .await;
    assert!(result.is_err(), "a batch with a failing step succeeded");
    assert_eq!(ids(&s, Query::default()).await, vec![1]);
    assert_eq!(
        get(&s, 1).await.expect("still there")["name"],
        Value::from("existing")
    );
}

async fn batch_error_names_the_failing_step(s: Storage) {
    create_item(&s, item(1, "existing")).await;
    let err = s
        .batch(vec![
            BatchStep::new(Operation::create("item", item(2, "ok"))),
            BatchStep::new(Operation::create("item", item(1, "clash"))),
            BatchStep::new(Operation::create("item", item(3, "never"))),
        ])
        .await
        .expect_err("accepted");
    match err {
        Error::BatchStep { step, source } => {
            assert_eq!(step, 1);
            assert!(
                matches!(*source, Error::DuplicateKey { .. }),
                "wrong cause: {source}"
            );
        }
        other => panic!("wrong error: {other}"),
    }
}

async fn batch_mixes_updates_and_deletes(s: Storage) {
    seed_numbers(&s).await;
    let outcomes = s
        .batch(vec![
            BatchStep::new(Operation::update_where(
                "item",
                Filter::all().eq("n", 20),
                object! { "n" => 21 },
            )),
            BatchStep::new(Operation::delete_where("item", Filter::all().lt("n", 21))),
            BatchStep::new(Operation::delete_by_pk("item", 3)),
        ])
        .await
        .expect("batch");
    assert_eq!(
        outcomes,
        vec![
            Outcome::Updated { count: 2 },
            Outcome::Deleted { count: 1 },
            Outcome::Deleted { count: 1 }
        ]
    );
    assert_eq!(ids(&s, Query::default()).await, vec![2, 4, 5]);
}

async fn updates_by_key_in_a_batch_each_set_their_own_values(s: Storage) {
    seed_numbers(&s).await;
    let update = |id: i64, name: &str, n: Option<i64>| {
        BatchStep::new(Operation::update_by_pk(
            "item",
            id,
            object! { "name" => name, "n" => n },
        ))
    };
    let outcomes = s
        .batch(vec![
            update(1, "one", Some(11)),
            update(2, "two", None),
            update(9, "missing", Some(99)),
            update(4, "four", Some(44)),
            // The same key again: applied after the first, so it wins.
            update(1, "uno", Some(111)),
            update(5, "five", Some(55)),
        ])
        .await
        .expect("batch");
    let counts: Vec<_> = outcomes.iter().map(Outcome::count).collect();
    assert_eq!(
        counts,
        [1, 1, 0, 1, 1, 1].map(Some),
        "each step's own count"
    );
    for (id, name, n) in [
        (1, "uno", Value::from(111)),
        (2, "two", Value::Null),
        (3, "c", Value::Null),
        (4, "four", Value::from(44)),
        (5, "five", Value::from(55)),
    ] {
        let object = get(&s, id).await.expect("found");
        assert_eq!(object["name"], Value::from(name), "item {id}");
        assert_eq!(object["n"], n, "item {id}");
    }
    assert!(get(&s, 9).await.is_none(), "an update must not create");
    // Every object there, one of them twice: the later update still wins.
    let outcomes = s
        .batch(vec![
            update(2, "dos", Some(2)),
            update(3, "tres", Some(3)),
            update(2, "two again", Some(22)),
        ])
        .await
        .expect("batch");
    assert!(
        outcomes.iter().all(|o| o.count() == Some(1)),
        "{outcomes:?}"
    );
    let object = get(&s, 2).await.expect("found");
    assert_eq!(object["name"], Value::from("two again"));
    assert_eq!(object["n"], Value::from(22));
}

async fn updates_by_key_in_a_batch_set_every_type_and_null(s: Storage) {
    seed_numbers(&s).await;
    let every_type = |n: i64| {
        object! {
            "n" => n,
            "score" => n as f64 + 0.5,
            "flag" => n % 2 == 0,
            "at" => Value::DateTime(at(1_700_000_000 + n, 123_456)),
            "doc" => Value::Json(json!({"n": n, "list": [n, null]})),
            "data" => Value::Blob(vec![0, n as u8, 255]),
            "ref_id" => Value::Uuid(Uuid::from_u128(n as u128)),
        }
    };
    let all_null = || {
        let mut changes = every_type(0);
        for value in changes.values_mut() {
            *value = Value::Null;
        }
        changes
    };
    // Nulls first: a database that takes the values' types from the first row must still
    // take every type the columns hold.
    let rows = [
        (1, all_null()),
        (2, every_type(2)),
        (4, all_null()),
        (5, every_type(5)),
    ];
    let steps = rows
        .iter()
        .map(|(id, changes)| BatchStep::new(Operation::update_by_pk("item", *id, changes.clone())))
        .collect();
    let outcomes = s.batch(steps).await.expect("batch");
    assert!(
        outcomes.iter().all(|o| o.count() == Some(1)),
        "{outcomes:?}"
    );
    for (id, changes) in rows {
        let found = get(&s, id).await.expect("found");
        for (field, value) in changes {
            assert_eq!(found[&field], value, "item {id}, field `{field}`");
        }
    }
}

async fn many_updates_by_key_in_a_batch_on_a_compound_key(s: Storage) {
    // More than one statement's worth of rows.
    let members = 2_500_i64;
    let creates = (0..members)
        .map(|member| {
            BatchStep::new(Operation::create(
                "membership",
                object! { "group" => "g", "member" => member, "role" => "r" },
            ))
        })
        .collect();
    s.batch(creates).await.expect("creates");
    let updates = (0..members)
        .map(|member| {
            BatchStep::new(Operation::update_by_pk(
                "membership",
                Pk(vec!["g".into(), member.into()]),
                object! { "role" => format!("role {member}") },
            ))
        })
        .collect();
    let outcomes = s.batch(updates).await.expect("updates");
    assert!(outcomes.iter().all(|o| o.count() == Some(1)));
    let found = s
        .find_many("membership", Query::default())
        .await
        .expect("find");
    assert_eq!(found.len(), members as usize);
    for object in found {
        let member = object["member"].as_int().expect("member");
        assert_eq!(object["role"], Value::from(format!("role {member}")));
    }
}

async fn a_refused_update_among_updates_alike_names_its_step_and_changes_nothing(s: Storage) {
    let mut keys = Vec::new();
    for (email, nick) in [("a@x", "ann"), ("b@x", "bob"), ("c@x", "cat")] {
        keys.push(
            s.create("account", object! { "email" => email, "nick" => nick })
                .await
                .expect("create"),
        );
    }
    let rename = |key: &Pk, nick: &str| {
        BatchStep::new(Operation::update_by_pk(
            "account",
            key.clone(),
            object! { "nick" => nick },
        ))
    };
    // The third takes the nick the second has just taken.
    let err = s
        .batch(vec![
            rename(&keys[0], "anna"),
            rename(&keys[1], "bobby"),
            rename(&keys[2], "bobby"),
        ])
        .await
        .expect_err("a clash accepted");
    match err {
        Error::BatchStep { step, source } => {
            assert_eq!(step, 2, "the clashing step");
            assert!(
                matches!(*source, Error::DuplicateKey { .. }),
                "wrong cause: {source}"
            );
        }
        other => panic!("wrong error: {other}"),
    }
    // Two objects trading a value: one after the other, the first step clashes (one
    // statement for both could accept it, depending on the order it visits the rows).
    let err = s
        .batch(vec![rename(&keys[0], "bob"), rename(&keys[1], "ann")])
        .await
        .expect_err("a clash accepted");
    assert!(
        matches!(&err, Error::BatchStep { step: 0, source } if matches!(**source, Error::DuplicateKey { .. })),
        "wrong error: {err}"
    );
    for (key, nick) in keys.iter().zip(["ann", "bob", "cat"]) {
        let found = s
            .find_by_pk("account", key.clone())
            .await
            .expect("find")
            .expect("exists");
        assert_eq!(found["nick"], Value::from(nick), "nothing changed");
    }
}

// ---- transactions ------------------------------------------------------------------------

async fn transaction_commit_makes_writes_visible(s: Storage) {
    let tx = s.begin().await.expect("begin");
    tx.execute(Operation::create("item", item(1, "a")))
        .await
        .expect("create");
    tx.execute(Operation::create("item", item(2, "b")))
        .await
        .expect("create");
    tx.commit().await.expect("commit");
    assert_eq!(ids(&s, Query::default()).await, vec![1, 2]);
}

async fn transaction_rollback_discards_writes(s: Storage) {
    create_item(&s, item(1, "kept")).await;
    let tx = s.begin().await.expect("begin");
    tx.execute(Operation::create("item", item(2, "b")))
        .await
        .expect("create");
    tx.execute(Operation::update_by_pk(
        "item",
        1,
        object! { "name" => "changed" },
    ))
    .await
    .expect("update");
    tx.rollback().await.expect("rollback");
    assert_eq!(ids(&s, Query::default()).await, vec![1]);
    assert_eq!(
        get(&s, 1).await.expect("found")["name"],
        Value::from("kept")
    );
}

async fn transaction_dropped_without_commit_rolls_back(s: Storage) {
    {
        let tx = s.begin().await.expect("begin");
        tx.execute(Operation::create("item", item(1, "a")))
            .await
            .expect("create");
    }
    // Give a backend that finishes the rollback in the background a moment.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(count(&s, "item").await, 0);
}

async fn transaction_reads_its_own_writes(s: Storage) {
    let tx = s.begin().await.expect("begin");
    tx.execute(Operation::create("item", item(1, "a")))
        .await
        .expect("create");
    let found = tx
        .execute(Operation::count("item", Filter::all().eq("name", "a")))
        .await
        .expect("count");
    assert_eq!(found, Outcome::Counted(1));
    tx.commit().await.expect("commit");
}

async fn transaction_failed_batch_undoes_only_the_batch(s: Storage) {
    let tx = s.begin().await.expect("begin");
    tx.execute(Operation::create("item", item(1, "before")))
        .await
        .expect("create");
    let batch = Operation::Batch {
        steps: vec![
            BatchStep::new(Operation::create("item", item(2, "in batch"))),
            BatchStep::new(Operation::create("item", item(1, "clash"))),
        ],
    };
    assert!(tx.execute(batch).await.is_err(), "failing batch succeeded");
    tx.execute(Operation::create("item", item(3, "after")))
        .await
        .expect("still usable");
    tx.commit().await.expect("commit");
    assert_eq!(ids(&s, Query::default()).await, vec![1, 3]);
}

// ---- validation --------------------------------------------------------------------------

async fn validation_unknown_collection_writes_nothing(s: Storage) {
    let err = s.create("items", item(1, "x")).await.expect_err("accepted");
    assert!(
        matches!(err, Error::UnknownCollection { .. }),
        "wrong error: {err}"
    );
    assert_eq!(count(&s, "item").await, 0);
}

async fn validation_wrong_type_writes_nothing(s: Storage) {
    let err = s
        .create("item", object! { "id" => 1, "name" => "x", "n" => "five" })
        .await
        .expect_err("accepted");
    assert!(
        matches!(err, Error::TypeMismatch { .. }),
        "wrong error: {err}"
    );
    assert_eq!(count(&s, "item").await, 0);
}

async fn validation_missing_required_field_writes_nothing(s: Storage) {
    let err = s
        .create("item", object! { "id" => 1 })
        .await
        .expect_err("accepted");
    assert!(
        matches!(err, Error::MissingField { .. }),
        "wrong error: {err}"
    );
    assert_eq!(count(&s, "item").await, 0);
}

async fn validation_unknown_field_writes_nothing(s: Storage) {
    let err = s
        .create(
            "item",
            object! { "id" => 1, "name" => "x", "colour" => "red" },
        )
        .await
        .expect_err("accepted");
    assert!(
        matches!(err, Error::UnknownField { .. }),
        "wrong error: {err}"
    );
    assert_eq!(count(&s, "item").await, 0);
}

async fn validation_refuses_a_key_update(s: Storage) {
    create_item(&s, item(1, "x")).await;
    let err = s
        .update_by_pk("item", 1, object! { "id" => 2 })
        .await
        .expect_err("accepted");
    assert!(
        matches!(err, Error::InvalidOperation { .. }),
        "wrong error: {err}"
    );
    assert!(get(&s, 1).await.is_some() && get(&s, 2).await.is_none());
}

// ---- concurrency -------------------------------------------------------------------------

async fn concurrent_writers_all_land(s: Storage) {
    let writers = (0..8i64).map(|w| {
        let s = s.clone();
        async move {
            for i in 0..25i64 {
                s.create("item", item(w * 1000 + i, "w"))
                    .await
                    .expect("concurrent create");
            }
        }
    });
    join_all(writers).await;
    assert_eq!(count(&s, "item").await, 200);
}

async fn concurrent_transactions_both_commit(s: Storage) {
    let txs = (0..2i64).map(|t| {
        let s = s.clone();
        async move {
            let tx = s.begin().await.expect("begin");
            for i in 0..10i64 {
                tx.execute(Operation::create("item", item(t * 100 + i, "tx")))
                    .await
                    .expect("create in transaction");
            }
            tx.commit().await.expect("commit");
        }
    });
    join_all(txs).await;
    assert_eq!(count(&s, "item").await, 20);
}

/// (SQLite reads such keys in one row before the write, instead of `RETURNING` them.)
async fn where_writes_returning_pks_on_a_uuid_key_collection(s: Storage) {
    let mut keys = std::collections::BTreeMap::new();
    for name in ["a", "b", "b", "c", "b"] {
        let pk = s
            .create("notebook", object! { "name" => name })
            .await
            .expect("create");
        keys.entry(name).or_insert_with(Vec::new).push(pk);
    }
    let sorted = |mut pks: Vec<Pk>| {
        pks.sort_by_key(|pk| format!("{pk}"));
        pks
    };
    let expected = |name: &str| sorted(keys[name].clone());
    let updated = s
        .update_where_returning_pks(
            "notebook",
            Filter::all().eq("name", "b"),
            object! { "name" => "bee" },
        )
        .await
        .expect("update");
    assert_eq!(sorted(updated), expected("b"));
    let none = s
        .update_where_returning_pks(
            "notebook",
            Filter::all().eq("name", "b"),
            object! { "name" => "x" },
        )
        .await
        .expect("update nothing");
    assert!(none.is_empty(), "{none:?}");
    // In a transaction, rolled back: the keys were answered, nothing changed.
    let tx = s.begin().await.expect("begin");
    let outcome = tx
        .execute(Operation::delete_where_returning_pks(
            "notebook",
            Filter::all().ne("name", "bee"),
        ))
        .await
        .expect("delete");
    let mut others = expected("a");
    others.extend(expected("c"));
    assert_eq!(sorted(outcome.into_pks().expect("keys")), sorted(others));
    tx.rollback().await.expect("rollback");
    assert_eq!(count(&s, "notebook").await, 5);
    let deleted = s
        .delete_where_returning_pks("notebook", Filter::all().eq("name", "bee"))
        .await
        .expect("delete");
    assert_eq!(sorted(deleted), expected("b"));
    assert_eq!(count(&s, "notebook").await, 2);
}
