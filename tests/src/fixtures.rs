//! The registry the conformance suite stores its data in.

use storex_core::{CollectionDef, FieldType, Registry};

/// Collections covering every field type, unique indices, a compound key and a relation:
///
/// - `item`: integer key `id`, required `name`, optional `n`, `score`, `flag`, `at`, `doc`,
///   `data`, `ref_id` (one optional field per type) and `body` (unindexed text: PostgreSQL
///   refuses index entries over 8 KiB), index on `name`.
/// - `account`: UUID key, required unique `email`, optional unique `nick`.
/// - `membership`: compound key (`group`, `member`), required `role`.
/// - `notebook` / `note`: UUID keys; `note.notebook_id` is a child-of relation.
pub fn fixture_registry() -> Registry {
    let item = CollectionDef::new("item")
        .field("id", FieldType::Int)
        .field("name", FieldType::Text)
        .optional_field("n", FieldType::Int)
        .optional_field("score", FieldType::Float)
        .optional_field("flag", FieldType::Bool)
        .optional_field("at", FieldType::DateTime)
        .optional_field("doc", FieldType::Json)
        .optional_field("data", FieldType::Blob)
        .optional_field("ref_id", FieldType::Uuid)
        .optional_field("body", FieldType::Text)
        .primary_key(["id"])
        .index(["name"]);
    let account = CollectionDef::new("account")
        .field("id", FieldType::Uuid)
        .field("email", FieldType::Text)
        .optional_field("nick", FieldType::Text)
        .primary_key(["id"])
        .unique_index(["email"])
        .unique_index(["nick"]);
    let membership = CollectionDef::new("membership")
        .field("group", FieldType::Text)
        .field("member", FieldType::Int)
        .field("role", FieldType::Text)
        .primary_key(["group", "member"]);
    let notebook = CollectionDef::new("notebook")
        .field("id", FieldType::Uuid)
        .field("name", FieldType::Text)
        .primary_key(["id"]);
    let note = CollectionDef::new("note")
        .field("id", FieldType::Uuid)
        .field("notebook_id", FieldType::Uuid)
        .optional_field("body", FieldType::Text)
        .primary_key(["id"])
        .index(["notebook_id"])
        .child_of("notebook", "notebook_id");
    // Every field is in the key: a put of an existing object has nothing to replace.
    let tagging = CollectionDef::new("tagging")
        .field("tag", FieldType::Text)
        .field("item_id", FieldType::Int)
        .primary_key(["tag", "item_id"]);
    Registry::builder()
        .collection(item)
        .collection(account)
        .collection(membership)
        .collection(tagging)
        .collection(notebook)
        .collection(note)
        .build()
        .expect("the fixture registry is valid")
}
