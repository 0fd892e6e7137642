//! The registry: which collections exist, their fields, keys, indices and relations.
//!
//! A [`Registry`] is built once, validated as a whole (so relations may name collections
//! defined later) and then shared read-only. Every operation is checked against it before it
//! reaches a backend.
//!
//! ```
//! use storex_core::{CollectionDef, FieldType, Registry};
//! let registry = Registry::builder()
//!     .collection(
//!         CollectionDef::new("notebook")
//!             .field("id", FieldType::Uuid)
//!             .field("name", FieldType::Text)
//!             .primary_key(["id"]),
//!     )
//!     .collection(
//!         CollectionDef::new("note")
//!             .field("id", FieldType::Uuid)
//!             .field("notebook_id", FieldType::Uuid)
//!             .optional_field("body", FieldType::Text)
//!             .primary_key(["id"])
//!             .index(["notebook_id"])
//!             .child_of("notebook", "notebook_id"),
//!     )
//!     .build()?;
//! assert_eq!(registry.collection("note")?.schema_version(), 1);
//! # Ok::<(), storex_core::Error>(())
//! ```

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::value::{FieldType, Object, Pk, Value};

/// One field of a collection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDef {
    /// The field's name.
    pub name: String,
    /// Its type.
    pub ty: FieldType,
    /// Whether it may be null or left out.
    pub optional: bool,
}

/// An index over one or more fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDef {
    /// The indexed fields, in order.
    pub fields: Vec<String>,
    /// Whether two objects may not share the same values (nulls never conflict).
    pub unique: bool,
}

/// A child-of relation: `field` of this collection holds the primary key of a `parent` object.
///
/// Relations are metadata: they are not enforced as foreign keys, because synced changes can
/// arrive in any order and a child may land before its parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationDef {
    /// The parent collection.
    pub parent: String,
    /// The field of this collection that holds the parent's key.
    pub field: String,
}

/// The definition of one collection, built with chained calls and checked by [`RegistryBuilder::build`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollectionDef {
    name: String,
    version: u32,
    fields: Vec<FieldDef>,
    primary_key: Vec<String>,
    indices: Vec<IndexDef>,
    relations: Vec<RelationDef>,
    /// See [`CollectionDef::clustered`]; absent from definitions of earlier versions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    clustered: bool,
    /// See [`CollectionDef::int_range`]: field name to its smallest and largest value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    int_ranges: BTreeMap<String, (i64, i64)>,
    /// See [`CollectionDef::default_value`]: field name to the value a create that leaves
    /// the field out gives it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    defaults: BTreeMap<String, Value>,
}

impl CollectionDef {
    /// Starts the definition of collection `name`, at schema version 1.
    pub fn new(name: impl Into<String>) -> Self {
        CollectionDef {
            name: name.into(),
            version: 1,
            fields: Vec::new(),
            primary_key: Vec::new(),
            indices: Vec::new(),
            relations: Vec::new(),
            clustered: false,
            int_ranges: BTreeMap::new(),
            defaults: BTreeMap::new(),
        }
    }

    /// Adds a required field.
    pub fn field(mut self, name: impl Into<String>, ty: FieldType) -> Self {
        self.fields.push(FieldDef {
            name: name.into(),
            ty,
            optional: false,
        });
        self
    }

    /// Adds an optional field (may be null or left out).
    pub fn optional_field(mut self, name: impl Into<String>, ty: FieldType) -> Self {
        self.fields.push(FieldDef {
            name: name.into(),
            ty,
            optional: true,
        });
        self
    }

    /// Sets the primary key: one field, or several for a compound key.
    pub fn primary_key<I, S>(mut self, fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.primary_key = fields.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a plain index.
    pub fn index<I, S>(mut self, fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.indices.push(IndexDef {
            fields: fields.into_iter().map(Into::into).collect(),
            unique: false,
        });
        self
    }

    /// Adds a unique index.
    pub fn unique_index<I, S>(mut self, fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.indices.push(IndexDef {
            fields: fields.into_iter().map(Into::into).collect(),
            unique: true,
        });
        self
    }

    /// Declares that `field` holds the primary key of an object of collection `parent`.
    pub fn child_of(mut self, parent: impl Into<String>, field: impl Into<String>) -> Self {
        self.relations.push(RelationDef {
            parent: parent.into(),
            field: field.into(),
        });
        self
    }

    /// Sets the schema version (from 1); sync entries record the version that wrote them.
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// A storage hint: keep the rows ordered by their primary key in one structure, with
    /// no separate index for the key. On SQLite the table is created `WITHOUT ROWID`, which
    /// saves the key's second copy and a B-tree to update when rows are small and the key
    /// is not one integer (sync's versions index, for one). Rows of more than a few hundred
    /// bytes are better off without it. Backends without such a layout (PostgreSQL,
    /// [`crate::MemoryBackend`]) ignore it, and a table that exists already keeps the layout
    /// it was created with.
    pub fn clustered(mut self) -> Self {
        self.clustered = true;
        self
    }

    /// Limits int field `field` to `min..=max`, for a column narrower than 64 bits (an
    /// `i32` of a SeaORM entity, say): a write outside the range is refused, as is a synced
    /// change carrying one, instead of storing a value the app cannot read back.
    pub fn int_range(mut self, field: impl Into<String>, min: i64, max: i64) -> Self {
        self.int_ranges.insert(field.into(), (min, max));
        self
    }

    /// The range [`CollectionDef::int_range`] set for `field`, as (smallest, largest).
    pub fn int_range_of(&self, field: &str) -> Option<(i64, i64)> {
        self.int_ranges.get(field).copied()
    }

    /// Why `value` does not fit field `field`'s range, if it is an int outside it.
    pub fn out_of_range(&self, field: &str, value: &Value) -> Option<String> {
        let Value::Int(n) = value else { return None };
        let (min, max) = self.int_range_of(field)?;
        (!(min..=max).contains(n)).then(|| format!("holds {n}, outside {min}..={max}"))
    }

    /// Gives field `field` a default: the value of the field in an object whose create (or
    /// put) leaves it out, instead of null. Storage fills it in before the write, and sync
    /// reads a logged create that lacks the field the same way, so declare the default your
    /// schema migration gives existing rows when it adds the column (`ALTER TABLE note ADD
    /// COLUMN pinned BOOLEAN NOT NULL DEFAULT false` goes with
    /// `.default_value("pinned", false)`): creates logged before the column existed then give
    /// every device, old or new, the row the migration gave. A field with a default may be
    /// required, since no create lacks it any more. An explicit null stays null.
    pub fn default_value(mut self, field: impl Into<String>, value: impl Into<Value>) -> Self {
        let mut value = value.into();
        value.normalize();
        self.defaults.insert(field.into(), value);
        self
    }

    /// The default [`CollectionDef::default_value`] set for `field`.
    pub fn default_of(&self, field: &str) -> Option<&Value> {
        self.defaults.get(field)
    }

    /// The value of field `field` in an object whose create leaves it out: its default, or
    /// null.
    pub fn value_left_out(&self, field: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.defaults.get(field).unwrap_or(&NULL)
    }

    /// Fills the fields of `object`, a whole object to create or put, that it leaves out
    /// and that have a default.
    pub fn fill_defaults(&self, object: &mut Object) {
        for (field, value) in &self.defaults {
            if !object.contains_key(field) {
                object.insert(field.clone(), value.clone());
            }
        }
    }

    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its fields, in declaration order.
    pub fn fields(&self) -> &[FieldDef] {
        &self.fields
    }

    /// The field called `name`, if any.
    pub fn field_def(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The primary-key field names, in key order.
    pub fn pk_fields(&self) -> &[String] {
        &self.primary_key
    }

    /// Its indices.
    pub fn indices(&self) -> &[IndexDef] {
        &self.indices
    }

    /// Its child-of relations.
    pub fn relations(&self) -> &[RelationDef] {
        &self.relations
    }

    /// True when [`CollectionDef::clustered`] asked for rows kept in key order.
    pub fn is_clustered(&self) -> bool {
        self.clustered
    }

    /// Its schema version (set with [`CollectionDef::version`]).
    pub fn schema_version(&self) -> u32 {
        self.version
    }

    /// True when the key is one UUID field, which [`crate::UuidPkMiddleware`] fills in.
    pub fn has_uuid_pk(&self) -> bool {
        matches!(self.primary_key.as_slice(), [pk] if self.field_def(pk).map(|f| f.ty) == Some(FieldType::Uuid))
    }

    /// Reads the primary key out of a full object, `None` when a key field is missing or null.
    pub fn pk_of(&self, object: &Object) -> Option<Pk> {
        let mut values = Vec::with_capacity(self.primary_key.len());
        for name in &self.primary_key {
            match object.get(name) {
                None | Some(Value::Null) => return None,
                Some(v) => values.push(v.clone()),
            }
        }
        Some(Pk(values))
    }

    fn check(&self, all: &BTreeMap<String, CollectionDef>) -> Result<()> {
        let fail = |problem: String| {
            Err(Error::InvalidDefinition {
                collection: self.name.clone(),
                problem,
            })
        };
        if !is_identifier(&self.name) {
            return fail(
                "a collection name must be letters, digits and `_`, starting with a letter or `_`"
                    .into(),
            );
        }
        if self.version == 0 {
            return fail("schema versions start at 1".into());
        }
        if self.fields.is_empty() {
            return fail("it has no fields".into());
        }
        // By name ignoring case: SQLite takes `Title` and `title` for one column.
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for field in &self.fields {
            if !is_identifier(&field.name) {
                return fail(format!("field name `{}` must be letters, digits and `_`, starting with a letter or `_`", field.name));
            }
            if let Some(other) = seen.insert(field.name.to_ascii_lowercase(), &field.name) {
                return fail(match other == field.name {
                    true => format!("field `{}` is defined twice", field.name),
                    false => format!(
                        "fields `{other}` and `{}` differ only in case (SQLite, and MySQL \
                         on some systems, take them for one column)",
                        field.name
                    ),
                });
            }
        }
        if self.primary_key.is_empty() {
            return fail("it has no primary key".into());
        }
        let mut pk_seen = HashSet::new();
        for name in &self.primary_key {
            let Some(field) = self.field_def(name) else {
                return fail(format!("primary key names unknown field `{name}`"));
            };
            if field.optional {
                return fail(format!("primary-key field `{name}` cannot be optional"));
            }
            if matches!(field.ty, FieldType::Json | FieldType::Float) {
                return fail(format!(
                    "primary-key field `{name}` cannot be of type {}",
                    field.ty
                ));
            }
            if !pk_seen.insert(name) {
                return fail(format!("primary key names `{name}` twice"));
            }
        }
        for (name, (min, max)) in &self.int_ranges {
            match self.field_def(name) {
                Some(field) if field.ty == FieldType::Int => {}
                Some(field) => {
                    return fail(format!(
                        "an int range on field `{name}`, which is {}",
                        field.ty
                    ))
                }
                None => return fail(format!("an int range on unknown field `{name}`")),
            }
            if min > max {
                return fail(format!(
                    "the int range of `{name}` is empty ({min}..={max})"
                ));
            }
        }
        for (name, value) in &self.defaults {
            let Some(field) = self.field_def(name) else {
                return fail(format!("a default for unknown field `{name}`"));
            };
            if self.primary_key.contains(name) {
                return fail(format!(
                    "a default for primary-key field `{name}` (a create names its key)"
                ));
            }
            let problem = match value.field_type() {
                None => Some("null, which a field left out is without a default".to_owned()),
                Some(ty) if ty != field.ty => Some(format!("{ty}, not {}", field.ty)),
                Some(_) => {
                    crate::validate::value_problem(value).or_else(|| self.out_of_range(name, value))
                }
            };
            if let Some(problem) = problem {
                return fail(format!("the default of field `{name}`: {problem}"));
            }
        }
        for index in &self.indices {
            if index.fields.is_empty() {
                return fail("an index has no fields".into());
            }
            for name in &index.fields {
                if self.field_def(name).is_none() {
                    return fail(format!("index names unknown field `{name}`"));
                }
            }
        }
        for relation in &self.relations {
            let Some(parent) = all.get(&relation.parent) else {
                return fail(format!(
                    "relation to missing collection `{}`",
                    relation.parent
                ));
            };
            let Some(field) = self.field_def(&relation.field) else {
                return fail(format!(
                    "relation to `{}` names unknown field `{}`",
                    relation.parent, relation.field
                ));
            };
            let [parent_pk] = parent.primary_key.as_slice() else {
                return fail(format!("relation to `{}`: a child-of relation needs a parent with a one-field primary key", relation.parent));
            };
            let parent_ty = parent.field_def(parent_pk).map(|f| f.ty);
            if parent_ty != Some(field.ty) {
                return fail(format!(
                    "relation field `{}` is {} but the primary key of `{}` is {}",
                    field.name,
                    field.ty,
                    relation.parent,
                    parent_ty.map_or_else(|| "missing".to_owned(), |t| t.to_string())
                ));
            }
        }
        Ok(())
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

/// The validated set of collections an app stores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    collections: BTreeMap<String, CollectionDef>,
}

impl Registry {
    /// Starts an empty registry.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// The collection called `name`, or [`Error::UnknownCollection`].
    pub fn collection(&self, name: &str) -> Result<&CollectionDef> {
        self.collections
            .get(name)
            .ok_or_else(|| Error::UnknownCollection {
                collection: name.to_owned(),
            })
    }

    /// All collections, by name.
    pub fn collections(&self) -> impl Iterator<Item = &CollectionDef> {
        self.collections.values()
    }

    /// A copy with `def` added, validated like the rest; used to add internal collections
    /// (such as a sync log) to an app's registry.
    pub fn with_collection(&self, def: CollectionDef) -> Result<Registry> {
        let mut builder = RegistryBuilder {
            defs: self.collections.values().cloned().collect(),
        };
        builder.defs.push(def);
        builder.build()
    }
}

/// Collects collection definitions; [`RegistryBuilder::build`] checks them all.
#[derive(Debug, Default)]
pub struct RegistryBuilder {
    defs: Vec<CollectionDef>,
}

impl RegistryBuilder {
    /// Adds a collection.
    pub fn collection(mut self, def: CollectionDef) -> Self {
        self.defs.push(def);
        self
    }

    /// Checks every definition and returns the registry, or the first problem found. Names of
    /// collections, and of the fields of one collection, must differ in more than case.
    pub fn build(self) -> Result<Registry> {
        let mut collections = BTreeMap::new();
        // By name ignoring case: SQLite takes `Note` and `note` for one table.
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        for def in self.defs {
            if collections.contains_key(&def.name) {
                return Err(Error::DuplicateCollection {
                    collection: def.name,
                });
            }
            if let Some(other) = names.insert(def.name.to_ascii_lowercase(), def.name.clone()) {
                return Err(Error::InvalidDefinition {
                    collection: def.name,
                    problem: format!(
                        "its name differs only in case from collection `{other}` (SQLite, and \
                         MySQL on some systems, take them for one table)"
                    ),
                });
            }
            collections.insert(def.name.clone(), def);
        }
        for def in collections.values() {
            def.check(&collections)?;
        }
        Ok(Registry { collections })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note() -> CollectionDef {
        CollectionDef::new("note")
            .field("id", FieldType::Uuid)
            .field("title", FieldType::Text)
            .primary_key(["id"])
    }

    #[test]
    fn the_clustered_hint_travels_with_a_definition_and_defaults_to_off() {
        let plain = serde_json::to_value(note()).expect("encode");
        assert!(plain.get("clustered").is_none(), "{plain}");
        let decoded: CollectionDef = serde_json::from_value(plain).expect("decode");
        assert!(!decoded.is_clustered());
        let clustered = note().clustered();
        let json = serde_json::to_string(&clustered).expect("encode");
        let decoded: CollectionDef = serde_json::from_str(&json).expect("decode");
        assert!(decoded.is_clustered());
        assert_eq!(decoded, clustered);
    }

    fn refused(def: CollectionDef) -> String {
        match Registry::builder().collection(def).build() {
            Err(e) => e.to_string(),
            Ok(_) => panic!("definition was accepted"),
        }
    }

    #[test]
    fn a_collection_without_primary_key_is_refused() {
        let msg = refused(CollectionDef::new("note").field("id", FieldType::Uuid));
        assert_eq!(
            msg,
            "invalid definition of collection `note`: it has no primary key"
        );
    }

    #[test]
    fn an_index_on_an_unknown_field_is_refused() {
        let msg = refused(note().index(["titel"]));
        assert_eq!(
            msg,
            "invalid definition of collection `note`: index names unknown field `titel`"
        );
    }

    #[test]
    fn a_duplicate_collection_is_refused() {
        let err = Registry::builder()
            .collection(note())
            .collection(note())
            .build();
        assert_eq!(
            err.expect_err("duplicate accepted").to_string(),
            "collection `note` is defined twice"
        );
    }

    #[test]
    fn a_relation_to_a_missing_collection_is_refused() {
        let msg = refused(
            note()
                .field("book_id", FieldType::Uuid)
                .child_of("book", "book_id"),
        );
        assert_eq!(
            msg,
            "invalid definition of collection `note`: relation to missing collection `book`"
        );
    }

    #[test]
    fn a_relation_field_of_the_wrong_type_is_refused() {
        let book = CollectionDef::new("book")
            .field("id", FieldType::Uuid)
            .primary_key(["id"]);
        let err = Registry::builder()
            .collection(
                note()
                    .field("book_id", FieldType::Int)
                    .child_of("book", "book_id"),
            )
            .collection(book)
            .build()
            .expect_err("accepted");
        assert_eq!(
            err.to_string(),
            "invalid definition of collection `note`: relation field `book_id` is int but the primary key of `book` is uuid"
        );
    }

    #[test]
    fn a_primary_key_on_an_unknown_field_is_refused() {
        let msg = refused(
            CollectionDef::new("note")
                .field("id", FieldType::Uuid)
                .primary_key(["uid"]),
        );
        assert_eq!(
            msg,
            "invalid definition of collection `note`: primary key names unknown field `uid`"
        );
    }

    #[test]
    fn an_optional_primary_key_field_is_refused() {
        let msg = refused(
            CollectionDef::new("note")
                .optional_field("id", FieldType::Uuid)
                .primary_key(["id"]),
        );
        assert_eq!(
            msg,
            "invalid definition of collection `note`: primary-key field `id` cannot be optional"
        );
    }

    #[test]
    fn a_field_defined_twice_is_refused() {
        let msg = refused(note().field("title", FieldType::Int));
        assert_eq!(
            msg,
            "invalid definition of collection `note`: field `title` is defined twice"
        );
        let msg = refused(note().field("Title", FieldType::Text));
        assert_eq!(
            msg,
            "invalid definition of collection `note`: fields `title` and `Title` differ only \
             in case (SQLite, and MySQL on some systems, take them for one column)"
        );
    }

    #[test]
    fn collections_whose_names_differ_only_in_case_are_refused() {
        let other = CollectionDef::new("Note")
            .field("id", FieldType::Int)
            .primary_key(["id"]);
        let err = Registry::builder()
            .collection(note())
            .collection(other)
            .build();
        assert_eq!(
            err.expect_err("accepted").to_string(),
            "invalid definition of collection `Note`: its name differs only in case from \
             collection `note` (SQLite, and MySQL on some systems, take them for one table)"
        );
    }

    #[test]
    fn a_bad_collection_name_is_refused() {
        let msg = refused(
            CollectionDef::new("my notes")
                .field("id", FieldType::Int)
                .primary_key(["id"]),
        );
        assert!(
            msg.starts_with(
                "invalid definition of collection `my notes`: a collection name must be"
            ),
            "{msg}"
        );
    }

    #[test]
    fn schema_version_zero_is_refused() {
        let msg = refused(note().version(0));
        assert_eq!(
            msg,
            "invalid definition of collection `note`: schema versions start at 1"
        );
    }

    #[test]
    fn relations_may_name_collections_defined_later() {
        let book = CollectionDef::new("book")
            .field("id", FieldType::Uuid)
            .primary_key(["id"]);
        let registry = Registry::builder()
            .collection(
                note()
                    .field("book_id", FieldType::Uuid)
                    .child_of("book", "book_id"),
            )
            .collection(book)
            .build()
            .expect("valid");
        assert_eq!(
            registry.collection("note").expect("note").relations().len(),
            1
        );
    }

    #[test]
    fn compound_keys_are_accepted_and_not_uuid_pks() {
        let def = CollectionDef::new("tag")
            .field("note_id", FieldType::Uuid)
            .field("name", FieldType::Text)
            .primary_key(["note_id", "name"]);
        let registry = Registry::builder().collection(def).build().expect("valid");
        assert!(!registry.collection("tag").expect("tag").has_uuid_pk());
    }
}
