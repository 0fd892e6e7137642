//! One test per reconciliation rule, on the pure `reconcile` function: a replica here is a
//! map of what a device knows, updated with each reconciliation's operations and entries.

use std::collections::HashMap;

use storex_core::uuid::Uuid;
use storex_core::{object, CollectionDef, FieldType, Object, Operation, Pk, Registry, Value};
use storex_sync::{
    object_key, reconcile, DeviceId, EntryOp, Hlc, HoldReason, KnownObject, LogEntry, ObjectKey,
    Reconciliation,
};

fn registry() -> Registry {
    Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Int)
                .field("title", FieldType::Text)
                .optional_field("body", FieldType::Text)
                .optional_field("stars", FieldType::Int)
                .int_range("stars", 0, 5)
                .primary_key(["id"])
                .version(2),
        )
        .collection(
            CollectionDef::new("tag")
                .field("note", FieldType::Int)
                .field("name", FieldType::Text)
                .primary_key(["note", "name"]),
        )
        .build()
        .expect("valid registry")
}

fn device(n: u128) -> DeviceId {
    DeviceId(Uuid::from_u128(n))
}

fn hlc(millis: u64, counter: u32, dev: u128) -> Hlc {
    Hlc {
        millis,
        counter,
        device: device(dev),
    }
}

fn entry(at: Hlc, id: i64, op: EntryOp, fields: Object) -> LogEntry {
    LogEntry {
        id: Uuid::now_v7(),
        device: at.device,
        hlc: at,
        collection: "note".into(),
        pk: Pk::from(id),
        op,
        fields,
        schema_version: 2,
    }
}

fn create(at: Hlc, id: i64, title: &str) -> LogEntry {
    entry(
        at,
        id,
        EntryOp::Create,
        object! { "id" => id, "title" => title },
    )
}

fn update(at: Hlc, id: i64, fields: Object) -> LogEntry {
    entry(at, id, EntryOp::Update, fields)
}

fn delete(at: Hlc, id: i64) -> LogEntry {
    entry(at, id, EntryOp::Delete, Object::new())
}

/// What one device knows, kept up to date as it reconciles.
#[derive(Default)]
struct Replica {
    known: HashMap<ObjectKey, KnownObject>,
}

impl Replica {
    fn receive(&mut self, incoming: Vec<LogEntry>) -> Reconciliation {
        let registry = registry();
        let out = reconcile(&registry, &self.known, incoming);
        for op in &out.operations {
            match op {
                Operation::Create { collection, object } => {
                    let def = registry.collection(collection).expect("known");
                    let key = (
                        collection.clone(),
                        serde_json_pk(&def.pk_of(object).expect("key")),
                    );
                    self.known.entry(key).or_default().current = Some(object.clone());
                }
                Operation::UpdateByPk {
                    collection,
                    pk,
                    changes,
                } => {
                    let row = self
                        .known
                        .get_mut(&(collection.clone(), serde_json_pk(pk)))
                        .and_then(|k| k.current.as_mut())
                        .expect("updated row exists");
                    row.extend(changes.clone());
                }
                Operation::DeleteByPk { collection, pk } => {
                    self.known
                        .entry((collection.clone(), serde_json_pk(pk)))
                        .or_default()
                        .current = None;
                }
                other => panic!("unexpected operation {other:?}"),
            }
        }
        for e in &out.integrated {
            self.known
                .entry(object_key(e))
                .or_default()
                .entries
                .push(e.clone());
        }
        out
    }

    fn row(&self, id: i64) -> Option<Object> {
        self.known
            .get(&("note".to_owned(), serde_json_pk(&Pk::from(id))))
            .and_then(|k| k.current.clone())
    }
}

fn serde_json_pk(pk: &Pk) -> String {
    storex_core::serde_json::to_string(pk).expect("serialize key")
}

fn title(row: &Object) -> &str {
    row["title"].as_text().expect("title is text")
}

#[test]
fn a_create_of_an_unseen_object_creates_it() {
    let mut r = Replica::default();
    let out = r.receive(vec![create(hlc(1, 0, 1), 1, "a")]);
    assert!(matches!(out.operations[..], [Operation::Create { .. }]));
    assert_eq!(title(&r.row(1).expect("created")), "a");
}

#[test]
fn a_newer_update_sets_its_fields() {
    let mut r = Replica::default();
    r.receive(vec![create(hlc(1, 0, 1), 1, "a")]);
    r.receive(vec![update(hlc(2, 0, 2), 1, object! { "title" => "b" })]);
    assert_eq!(title(&r.row(1).expect("row")), "b");
}

#[test]
fn an_update_older_than_the_current_value_loses() {
    let mut r = Replica::default();
    r.receive(vec![
        create(hlc(1, 0, 1), 1, "a"),
        update(hlc(5, 0, 1), 1, object! { "title" => "new" }),
    ]);
    let out = r.receive(vec![update(hlc(3, 0, 2), 1, object! { "title" => "old" })]);
    assert!(out.operations.is_empty());
    assert_eq!(out.conflicts, 1);
    assert_eq!(title(&r.row(1).expect("row")), "new");
}

#[test]
fn concurrent_updates_of_different_fields_both_apply() {
    let mut r = Replica::default();
    r.receive(vec![create(hlc(1, 0, 1), 1, "a")]);
    r.receive(vec![
        update(hlc(2, 0, 1), 1, object! { "title" => "t" }),
        update(hlc(2, 0, 2), 1, object! { "body" => "b" }),
    ]);
    let row = r.row(1).expect("row");
    assert_eq!((title(&row), row["body"].as_text()), ("t", Some("b")));
}

#[test]
fn concurrent_updates_of_one_field_the_greatest_timestamp_wins() {
    let mut r = Replica::default();
    r.receive(vec![create(hlc(1, 0, 1), 1, "a")]);
    r.receive(vec![
        update(hlc(9, 0, 2), 1, object! { "title" => "late" }),
        update(hlc(7, 0, 3), 1, object! { "title" => "early" }),
    ]);
    assert_eq!(title(&r.row(1).expect("row")), "late");
}

#[test]
fn equal_milliseconds_are_ordered_by_counter() {
    let mut r = Replica::default();
    r.receive(vec![create(hlc(1, 0, 1), 1, "a")]);
    r.receive(vec![
        update(hlc(5, 2, 1), 1, object! { "title" => "second" }),
        update(hlc(5, 1, 2), 1, object! { "title" => "first" }),
    ]);
    assert_eq!(title(&r.row(1).expect("row")), "second");
}

#[test]
fn equal_milliseconds_and_counters_are_ordered_by_device() {
    let mut r = Replica::default();
    r.receive(vec![create(hlc(1, 0, 1), 1, "a")]);
    r.receive(vec![
        update(hlc(5, 0, 9), 1, object! { "title" => "device 9" }),
        update(hlc(5, 0, 3), 1, object! { "title" => "device 3" }),
    ]);
    assert_eq!(title(&r.row(1).expect("row")), "device 9");
}

#[test]
fn a_delete_removes_the_object() {
    let mut r = Replica::default();
    r.receive(vec![create(hlc(1, 0, 1), 1, "a")]);
    let out = r.receive(vec![delete(hlc(2, 0, 2), 1)]);
    assert!(matches!(out.operations[..], [Operation::DeleteByPk { .. }]));
    assert!(r.row(1).is_none());
}

#[test]
fn a_delete_wins_over_older_updates_arriving_later() {
    let mut r = Replica::default();
    r.receive(vec![create(hlc(1, 0, 1), 1, "a"), delete(hlc(5, 0, 1), 1)]);
    let out = r.receive(vec![update(
        hlc(4, 0, 2),
        1,
        object! { "title" => "too late" },
    )]);
    assert!(out.operations.is_empty());
    assert_eq!(out.conflicts, 1);
    assert!(r.row(1).is_none());
}

#[test]
fn an_update_newer_than_a_delete_does_not_resurrect_the_object() {
    let mut r = Replica::default();
    r.receive(vec![create(hlc(1, 0, 1), 1, "a"), delete(hlc(5, 0, 1), 1)]);
    let out = r.receive(vec![update(hlc(6, 0, 2), 1, object! { "title" => "edit" })]);
    assert!(out.operations.is_empty());
    assert!(r.row(1).is_none());
}

#[test]
fn a_create_newer_than_a_delete_recreates_the_object() {
    let mut r = Replica::default();
    r.receive(vec![create(hlc(1, 0, 1), 1, "a"), delete(hlc(5, 0, 1), 1)]);
    r.receive(vec![create(hlc(8, 0, 2), 1, "again")]);
    assert_eq!(title(&r.row(1).expect("recreated")), "again");
}

#[test]
fn a_recreated_object_keeps_nothing_written_before_the_delete() {
    let mut r = Replica::default();
    r.receive(vec![
        create(hlc(1, 0, 1), 1, "a"),
        update(hlc(2, 0, 1), 1, object! { "body" => "old body" }),
        delete(hlc(5, 0, 1), 1),
        create(hlc(8, 0, 2), 1, "again"),
    ]);
    assert_eq!(r.row(1).expect("recreated")["body"], Value::Null);
}

#[test]
fn a_create_older_than_a_known_delete_stays_deleted() {
    let mut r = Replica::default();
    r.receive(vec![delete(hlc(5, 0, 2), 1)]);
    let out = r.receive(vec![create(hlc(3, 0, 1), 1, "a")]);
    assert!(out.operations.is_empty());
    assert!(r.row(1).is_none());
}

#[test]
fn an_update_for_an_object_never_seen_is_kept_not_dropped() {
    let mut r = Replica::default();
    let out = r.receive(vec![update(
        hlc(5, 0, 2),
        1,
        object! { "title" => "edited" },
    )]);
    assert_eq!(out.integrated.len(), 1, "the update is kept");
    assert!(out.operations.is_empty(), "no object to apply it to yet");
    r.receive(vec![create(hlc(3, 0, 1), 1, "original")]);
    assert_eq!(
        title(&r.row(1).expect("created")),
        "edited",
        "the kept update wins"
    );
}

#[test]
fn the_order_of_arrival_does_not_change_the_result() {
    let entries = vec![
        create(hlc(1, 0, 1), 1, "a"),
        update(hlc(4, 0, 2), 1, object! { "title" => "b", "stars" => 2 }),
        update(hlc(3, 0, 3), 1, object! { "title" => "c", "body" => "x" }),
        delete(hlc(6, 0, 1), 2),
        create(hlc(2, 0, 2), 2, "two"),
    ];
    let mut forward = Replica::default();
    for e in entries.clone() {
        forward.receive(vec![e]);
    }
    let mut backward = Replica::default();
    backward.receive(entries.into_iter().rev().collect());
    for id in [1, 2] {
        assert_eq!(forward.row(id), backward.row(id), "object {id}");
    }
    let row = forward.row(1).expect("row");
    assert_eq!(
        (title(&row), row["stars"].as_int(), row["body"].as_text()),
        ("b", Some(2), Some("x"))
    );
}

#[test]
fn an_entry_already_known_is_a_duplicate() {
    let mut r = Replica::default();
    let e = create(hlc(1, 0, 1), 1, "a");
    r.receive(vec![e.clone()]);
    let out = r.receive(vec![e]);
    assert_eq!(out.duplicates, 1);
    assert!(out.operations.is_empty() && out.integrated.is_empty());
}

#[test]
fn a_duplicate_inside_one_batch_counts_once() {
    let mut r = Replica::default();
    let e = create(hlc(1, 0, 1), 1, "a");
    let out = r.receive(vec![e.clone(), e]);
    assert_eq!((out.duplicates, out.integrated.len()), (1, 1));
}

#[test]
fn an_unknown_collection_is_held_and_does_not_block_the_others() {
    let mut r = Replica::default();
    let mut stray = create(hlc(1, 0, 1), 7, "x");
    stray.collection = "calendar".into();
    let out = r.receive(vec![stray, create(hlc(2, 0, 1), 1, "a")]);
    assert_eq!(out.held.len(), 1);
    assert_eq!(out.held[0].reason, HoldReason::UnknownCollection);
    assert!(r.row(1).is_some());
}

#[test]
fn an_entry_from_a_newer_schema_is_held() {
    let mut r = Replica::default();
    let mut newer = create(hlc(1, 0, 1), 1, "a");
    newer.schema_version = 3;
    let out = r.receive(vec![newer]);
    assert_eq!(
        out.held[0].reason,
        HoldReason::NewerSchema { entry: 3, local: 2 }
    );
    assert!(r.row(1).is_none());
}

#[test]
fn an_entry_from_an_older_schema_applies() {
    let mut r = Replica::default();
    let mut older = create(hlc(1, 0, 1), 1, "a");
    older.schema_version = 1;
    assert!(r.receive(vec![older]).held.is_empty());
    assert!(r.row(1).is_some());
}

#[test]
fn an_unknown_field_of_a_known_schema_is_ignored_and_reported() {
    let mut r = Replica::default();
    let e = entry(
        hlc(1, 0, 1),
        1,
        EntryOp::Create,
        object! { "id" => 1, "title" => "a", "colour" => "red" },
    );
    let id = e.id;
    let out = r.receive(vec![e]);
    assert_eq!(out.ignored_fields, vec![(id, "colour".to_owned())]);
    let row = r.row(1).expect("applied");
    assert!(!row.contains_key("colour"));
}

#[test]
fn a_value_of_the_wrong_type_is_held() {
    let mut r = Replica::default();
    let e = entry(
        hlc(1, 0, 1),
        1,
        EntryOp::Create,
        object! { "id" => 1, "title" => 5 },
    );
    let out = r.receive(vec![e, create(hlc(1, 0, 2), 2, "ok")]);
    assert_eq!(
        out.held[0].reason,
        HoldReason::InvalidValue {
            field: "title".into(),
            problem: "int in a text field".into()
        }
    );
    assert!(r.row(1).is_none() && r.row(2).is_some());
}

#[test]
fn an_int_outside_its_fields_range_is_held() {
    let mut r = Replica::default();
    r.receive(vec![create(hlc(1, 0, 1), 1, "a")]);
    let out = r.receive(vec![
        update(hlc(2, 0, 1), 1, object! { "stars" => 1_i64 << 40 }),
        update(hlc(2, 0, 2), 1, object! { "title" => "b" }),
    ]);
    assert_eq!(
        out.held[0].reason,
        HoldReason::InvalidValue {
            field: "stars".into(),
            problem: format!("holds {}, outside 0..=5", 1_i64 << 40)
        }
    );
    let row = r.row(1).expect("row");
    assert_eq!((title(&row), row["stars"].clone()), ("b", Value::Null));
}

#[test]
fn a_null_in_a_required_field_is_held() {
    let mut r = Replica::default();
    let e = update(hlc(1, 0, 1), 1, object! { "title" => Value::Null });
    let out = r.receive(vec![e]);
    assert!(
        matches!(&out.held[0].reason, HoldReason::InvalidValue { field, .. } if field == "title")
    );
}

#[test]
fn a_key_with_the_wrong_number_of_fields_is_held() {
    let mut r = Replica::default();
    let mut e = create(hlc(1, 0, 1), 1, "a");
    e.collection = "tag".into();
    e.schema_version = 1;
    let out = r.receive(vec![e]);
    assert!(
        matches!(&out.held[0].reason, HoldReason::InvalidValue { problem, .. } if problem.contains("wrong number"))
    );
}

#[test]
fn fields_a_create_leaves_out_are_null() {
    let mut r = Replica::default();
    r.receive(vec![create(hlc(1, 0, 1), 1, "a")]);
    let row = r.row(1).expect("row");
    assert_eq!(
        (row["body"].clone(), row["stars"].clone()),
        (Value::Null, Value::Null)
    );
}

#[test]
fn a_newer_create_of_an_existing_key_resets_the_fields_it_leaves_out() {
    let mut r = Replica::default();
    r.receive(vec![entry(
        hlc(1, 0, 1),
        1,
        EntryOp::Create,
        object! { "id" => 1, "title" => "a", "stars" => 5 },
    )]);
    r.receive(vec![create(hlc(2, 0, 2), 1, "b")]);
    let row = r.row(1).expect("row");
    assert_eq!((title(&row), row["stars"].clone()), ("b", Value::Null));
}

#[test]
fn an_entry_that_changes_nothing_produces_no_operation() {
    let mut r = Replica::default();
    r.receive(vec![create(hlc(1, 0, 1), 1, "a")]);
    let out = r.receive(vec![update(hlc(2, 0, 2), 1, object! { "title" => "a" })]);
    assert!(out.operations.is_empty());
    assert_eq!(out.integrated.len(), 1);
}

#[test]
fn a_row_without_a_logged_create_is_never_deleted_by_an_update() {
    let mut r = Replica::default();
    let key = ("note".to_owned(), serde_json_pk(&Pk::from(1)));
    r.known.insert(
        key,
        KnownObject { current: Some(object! { "id" => 1, "title" => "pre-existing", "body" => Value::Null, "stars" => Value::Null }), entries: vec![] },
    );
    r.receive(vec![update(hlc(5, 0, 2), 1, object! { "stars" => 4 })]);
    let row = r.row(1).expect("still there");
    assert_eq!(
        (title(&row), row["stars"].as_int()),
        ("pre-existing", Some(4))
    );
}

#[test]
fn each_object_gets_at_most_one_operation_per_batch() {
    let mut r = Replica::default();
    let out = r.receive(vec![
        create(hlc(1, 0, 1), 1, "a"),
        update(hlc(2, 0, 1), 1, object! { "title" => "b" }),
        update(hlc(3, 0, 2), 1, object! { "body" => "c" }),
    ]);
    assert_eq!(out.operations.len(), 1);
    let Operation::Create { object, .. } = &out.operations[0] else {
        panic!("not a create")
    };
    assert_eq!((title(object), object["body"].as_text()), ("b", Some("c")));
}

#[test]
fn key_fields_are_never_part_of_an_update() {
    let mut r = Replica::default();
    r.receive(vec![create(hlc(1, 0, 1), 1, "a")]);
    let out = r.receive(vec![update(hlc(2, 0, 2), 1, object! { "title" => "b" })]);
    let Operation::UpdateByPk { changes, .. } = &out.operations[0] else {
        panic!("not an update")
    };
    assert_eq!(changes.keys().collect::<Vec<_>>(), vec!["title"]);
}

#[test]
fn an_update_that_would_change_the_key_is_held_whatever_the_order() {
    // Only a faulty or hostile device writes one (local updates cannot change a key). Were it
    // applied, a device receiving it before the create would make the object under key 2,
    // one receiving it after would keep it under key 1.
    let rekey = || update(hlc(2, 0, 9), 1, object! { "id" => 2, "title" => "moved" });
    let same_key = || update(hlc(3, 0, 9), 1, object! { "id" => 1, "stars" => 4 });
    for update_first in [true, false] {
        let mut r = Replica::default();
        let mut held = Vec::new();
        let mut receive = |entries| held.extend(r.receive(entries).held);
        if update_first {
            receive(vec![rekey(), same_key()]);
            receive(vec![create(hlc(1, 0, 1), 1, "a")]);
        } else {
            receive(vec![create(hlc(1, 0, 1), 1, "a")]);
            receive(vec![rekey(), same_key()]);
        }
        assert_eq!(held.len(), 1, "update first: {update_first}");
        assert_eq!(
            held[0].reason,
            HoldReason::InvalidValue {
                field: "id".into(),
                problem: "an update that would change the object's key".into()
            }
        );
        let row = r.row(1).expect("still under its key");
        assert_eq!((title(&row), &row["stars"]), ("a", &Value::Int(4)));
        assert!(r.row(2).is_none());
    }
}

#[test]
fn compound_keys_reconcile_like_single_ones() {
    let registry = registry();
    let e = LogEntry {
        id: Uuid::now_v7(),
        device: device(1),
        hlc: hlc(1, 0, 1),
        collection: "tag".into(),
        pk: Pk(vec![Value::Int(1), Value::from("red")]),
        op: EntryOp::Create,
        fields: object! { "note" => 1, "name" => "red" },
        schema_version: 1,
    };
    let out = reconcile(&registry, &HashMap::new(), vec![e]);
    assert!(
        matches!(&out.operations[..], [Operation::Create { collection, .. }] if collection == "tag")
    );
}

/// `note` at version 2, which added `pinned` with the default its migration gave the rows
/// it found.
fn registry_with_default() -> Registry {
    Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Int)
                .field("title", FieldType::Text)
                .field("pinned", FieldType::Bool)
                .default_value("pinned", false)
                .primary_key(["id"])
                .version(2),
        )
        .build()
        .expect("valid registry")
}

fn known_row(entries: Vec<LogEntry>, row: Object) -> HashMap<ObjectKey, KnownObject> {
    let key = object_key(&entries[0]);
    let known = KnownObject {
        current: Some(row),
        entries,
    };
    HashMap::from([(key, known)])
}

#[test]
fn a_field_a_create_leaves_out_takes_its_default() {
    let registry = registry_with_default();
    let mut old = create(hlc(1, 0, 1), 1, "a");
    old.schema_version = 1;
    let out = reconcile(&registry, &HashMap::new(), vec![old]);
    assert!(out.held.is_empty(), "{:?}", out.held);
    let [Operation::Create { object, .. }] = &out.operations[..] else {
        panic!("one create expected: {:?}", out.operations);
    };
    assert_eq!(object["pinned"], Value::Bool(false));
}

#[test]
fn a_row_created_before_a_field_was_added_keeps_its_default_when_updated() {
    let registry = registry_with_default();
    let mut old = create(hlc(1, 0, 1), 1, "a");
    old.schema_version = 1;
    let migrated =
        object! { "id" => 1, "title" => "a", "pinned" => false, "weight" => Value::Null };
    let known = known_row(vec![old], migrated);
    let out = reconcile(
        &registry,
        &known,
        vec![update(hlc(2, 0, 2), 1, object! { "title" => "b" })],
    );
    let [Operation::UpdateByPk { changes, .. }] = &out.operations[..] else {
        panic!("one update expected: {:?}", out.operations);
    };
    assert_eq!(changes, &object! { "title" => "b" }, "the default is kept");
}
