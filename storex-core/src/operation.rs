//! Storage operations and their outcomes, as plain serializable values.
//!
//! Because an [`Operation`] is data, a middleware can inspect it, rewrite it (turn a create
//! into a [`Operation::Batch`]), log it, or send it elsewhere.
//!
//! A batch is a list of writes applied atomically. A step that creates an object can name
//! its key with a `placeholder`; a later step refers to it through a [`Replacement`], so a
//! parent and its children can be created in one batch before the parent's key is known.
//!
//! ```
//! use storex_core::{object, BatchStep, Operation, Replacement};
//! let batch = Operation::Batch {
//!     steps: vec![
//!         BatchStep::new(Operation::create("notebook", object! { "name" => "home" }))
//!             .placeholder("book"),
//!         BatchStep::new(Operation::create("note", object! { "body" => "milk" }))
//!             .replace(Replacement::field("notebook_id", "book")),
//!     ],
//! };
//! assert!(batch.is_write());
//! ```

use serde::{Deserialize, Serialize};

use crate::query::{Filter, Query};
use crate::value::{Object, Pk, Value};

/// One storage operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Operation {
    /// Create one object. Fails with [`crate::Error::DuplicateKey`] if its key exists.
    Create {
        /// The collection.
        collection: String,
        /// The object's fields; optional fields and fields with a default
        /// ([`crate::CollectionDef::default_value`]) may be left out.
        object: Object,
    },
    /// Create one object, or replace the object with its key: every field but the key takes
    /// the given value (a field left out takes its default, or becomes `Null`). The key must be given.
    /// The sync logger records a put as a create, which replaces an object that exists
    /// wherever its timestamp wins (on a device with a newer schema, the fields only that
    /// schema has too). On a SQL backend the table's primary key (or a unique constraint)
    /// must be the collection's key, as in every table storex creates.
    Put {
        /// The collection.
        collection: String,
        /// The object's fields, its key included; optional fields may be left out.
        object: Object,
    },
    /// Change some fields of the object with this key; 0 updated if there is none.
    UpdateByPk {
        /// The collection.
        collection: String,
        /// The key.
        pk: Pk,
        /// The fields to set (not the key's).
        changes: Object,
    },
    /// Change some fields of every object the filter matches.
    UpdateWhere {
        /// The collection.
        collection: String,
        /// Which objects.
        filter: Filter,
        /// The fields to set (not the key's).
        changes: Object,
    },
    /// Delete the object with this key; 0 deleted if there is none.
    DeleteByPk {
        /// The collection.
        collection: String,
        /// The key.
        pk: Pk,
    },
    /// Delete every object the filter matches.
    DeleteWhere {
        /// The collection.
        collection: String,
        /// Which objects.
        filter: Filter,
    },
    /// Like [`Operation::UpdateWhere`], answered with the keys of the objects it changed
    /// ([`Outcome::UpdatedPks`]), found by the same statement that changes them: a sync
    /// logger learns what it has to log without reading the objects first. (A middleware
    /// after the sync logger sees an app's `UpdateWhere` in this form when the logger opened
    /// the transaction: [`Operation::is_where_write`] tells all where-writes.)
    UpdateWhereReturningPks {
        /// The collection.
        collection: String,
        /// Which objects.
        filter: Filter,
        /// The fields to set (not the key's).
        changes: Object,
    },
    /// Like [`Operation::DeleteWhere`], answered with the keys of the objects it deleted
    /// ([`Outcome::DeletedPks`]).
    DeleteWhereReturningPks {
        /// The collection.
        collection: String,
        /// Which objects.
        filter: Filter,
    },
    /// The first object the query finds, if any.
    FindOne {
        /// The collection.
        collection: String,
        /// Filter, order and skip (the limit is 1).
        query: Query,
    },
    /// Every object the query finds.
    FindMany {
        /// The collection.
        collection: String,
        /// Filter, order, skip and limit.
        query: Query,
    },
    /// The values of `fields` of every object the query finds: per object, one value per
    /// field named, in that order (`Null` for an optional field left empty). A reader that
    /// knows which fields it wants gets them without a map of field names per object, as
    /// [`Operation::FindMany`] builds.
    FindValues {
        /// The collection.
        collection: String,
        /// Filter, order, skip and limit.
        query: Query,
        /// The fields read, in the order of each object's values (at least one).
        fields: Vec<String>,
    },
    /// How many objects the filter matches.
    Count {
        /// The collection.
        collection: String,
        /// Which objects.
        filter: Filter,
    },
    /// Writes applied atomically: all of them, or none.
    Batch {
        /// The steps, applied in order.
        steps: Vec<BatchStep>,
    },
}

impl Operation {
    /// A create.
    pub fn create(collection: impl Into<String>, object: Object) -> Self {
        Operation::Create {
            collection: collection.into(),
            object,
        }
    }

    /// A put: create `object`, or replace the object with its key.
    pub fn put(collection: impl Into<String>, object: Object) -> Self {
        Operation::Put {
            collection: collection.into(),
            object,
        }
    }

    /// An update by primary key.
    pub fn update_by_pk(collection: impl Into<String>, pk: impl Into<Pk>, changes: Object) -> Self {
        Operation::UpdateByPk {
            collection: collection.into(),
            pk: pk.into(),
            changes,
        }
    }

    /// An update of every object `filter` matches.
    pub fn update_where(collection: impl Into<String>, filter: Filter, changes: Object) -> Self {
        Operation::UpdateWhere {
            collection: collection.into(),
            filter,
            changes,
        }
    }

    /// A delete by primary key.
    pub fn delete_by_pk(collection: impl Into<String>, pk: impl Into<Pk>) -> Self {
        Operation::DeleteByPk {
            collection: collection.into(),
            pk: pk.into(),
        }
    }

    /// A delete of every object `filter` matches.
    pub fn delete_where(collection: impl Into<String>, filter: Filter) -> Self {
        Operation::DeleteWhere {
            collection: collection.into(),
            filter,
        }
    }

    /// An update of every object `filter` matches that answers with their keys.
    pub fn update_where_returning_pks(
        collection: impl Into<String>,
        filter: Filter,
        changes: Object,
    ) -> Self {
        Operation::UpdateWhereReturningPks {
            collection: collection.into(),
            filter,
            changes,
        }
    }

    /// A delete of every object `filter` matches that answers with their keys.
    pub fn delete_where_returning_pks(collection: impl Into<String>, filter: Filter) -> Self {
        Operation::DeleteWhereReturningPks {
            collection: collection.into(),
            filter,
        }
    }

    /// A find of the first object `query` matches.
    pub fn find_one(collection: impl Into<String>, query: Query) -> Self {
        Operation::FindOne {
            collection: collection.into(),
            query,
        }
    }

    /// A find of every object `query` matches.
    pub fn find_many(collection: impl Into<String>, query: Query) -> Self {
        Operation::FindMany {
            collection: collection.into(),
            query,
        }
    }

    /// A find of the values of `fields` of every object `query` matches (see
    /// [`Operation::FindValues`]).
    pub fn find_values<F: Into<String>>(
        collection: impl Into<String>,
        query: Query,
        fields: impl IntoIterator<Item = F>,
    ) -> Self {
        Operation::FindValues {
            collection: collection.into(),
            query,
            fields: fields.into_iter().map(Into::into).collect(),
        }
    }

    /// A count of the objects `filter` matches.
    pub fn count(collection: impl Into<String>, filter: Filter) -> Self {
        Operation::Count {
            collection: collection.into(),
            filter,
        }
    }

    /// The collection this operation is about; `None` for a batch.
    pub fn collection(&self) -> Option<&str> {
        match self {
            Operation::Create { collection, .. }
            | Operation::Put { collection, .. }
            | Operation::UpdateByPk { collection, .. }
            | Operation::UpdateWhere { collection, .. }
            | Operation::DeleteByPk { collection, .. }
            | Operation::DeleteWhere { collection, .. }
            | Operation::UpdateWhereReturningPks { collection, .. }
            | Operation::DeleteWhereReturningPks { collection, .. }
            | Operation::FindOne { collection, .. }
            | Operation::FindMany { collection, .. }
            | Operation::FindValues { collection, .. }
            | Operation::Count { collection, .. } => Some(collection),
            Operation::Batch { .. } => None,
        }
    }

    /// True for operations that change data (creates, updates, deletes, batches).
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            Operation::FindOne { .. }
                | Operation::FindMany { .. }
                | Operation::FindValues { .. }
                | Operation::Count { .. }
        )
    }

    /// True for the writes that pick their objects with a filter: `UpdateWhere`,
    /// `DeleteWhere` and their `…ReturningPks` forms (a middleware that watches where-writes
    /// should match all four: the sync logger runs an app's where-write as the returning form
    /// when it opens the transaction itself).
    pub fn is_where_write(&self) -> bool {
        matches!(
            self,
            Operation::UpdateWhere { .. }
                | Operation::DeleteWhere { .. }
                | Operation::UpdateWhereReturningPks { .. }
                | Operation::DeleteWhereReturningPks { .. }
        )
    }

    /// The filter of a where-write (see [`Operation::is_where_write`]) or a count.
    pub fn filter(&self) -> Option<&Filter> {
        match self {
            Operation::UpdateWhere { filter, .. }
            | Operation::DeleteWhere { filter, .. }
            | Operation::UpdateWhereReturningPks { filter, .. }
            | Operation::DeleteWhereReturningPks { filter, .. }
            | Operation::Count { filter, .. } => Some(filter),
            _ => None,
        }
    }

    /// A short name for errors and logs, e.g. `"update_where"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Operation::Create { .. } => "create",
            Operation::Put { .. } => "put",
            Operation::UpdateByPk { .. } => "update_by_pk",
            Operation::UpdateWhere { .. } => "update_where",
            Operation::DeleteByPk { .. } => "delete_by_pk",
            Operation::DeleteWhere { .. } => "delete_where",
            Operation::UpdateWhereReturningPks { .. } => "update_where_returning_pks",
            Operation::DeleteWhereReturningPks { .. } => "delete_where_returning_pks",
            Operation::FindOne { .. } => "find_one",
            Operation::FindMany { .. } => "find_many",
            Operation::FindValues { .. } => "find_values",
            Operation::Count { .. } => "count",
            Operation::Batch { .. } => "batch",
        }
    }
}

/// One write of a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchStep {
    /// The write (a create, update or delete; not a read, not a nested batch).
    pub operation: Operation,
    /// For a create: a name later steps use to refer to the key it produces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placeholder: Option<String>,
    /// Values to fill in from earlier steps' keys before this step runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replace: Vec<Replacement>,
}

impl BatchStep {
    /// A step with no placeholder and no replacements.
    pub fn new(operation: Operation) -> Self {
        BatchStep {
            operation,
            placeholder: None,
            replace: Vec::new(),
        }
    }

    /// Names the key this step's create produces.
    pub fn placeholder(mut self, name: impl Into<String>) -> Self {
        self.placeholder = Some(name.into());
        self
    }

    /// Adds a replacement.
    pub fn replace(mut self, replacement: Replacement) -> Self {
        self.replace.push(replacement);
        self
    }
}

/// Fills a value of a step with the one-field key an earlier step's create produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replacement {
    /// Where the value goes.
    pub target: ReplaceTarget,
    /// The earlier step's placeholder.
    pub placeholder: String,
}

impl Replacement {
    /// Sets field `field` of a create's object or an update's changes.
    pub fn field(field: impl Into<String>, placeholder: impl Into<String>) -> Self {
        Replacement {
            target: ReplaceTarget::Field(field.into()),
            placeholder: placeholder.into(),
        }
    }

    /// Sets the key of an update or delete by primary key.
    pub fn pk(placeholder: impl Into<String>) -> Self {
        Replacement {
            target: ReplaceTarget::Pk,
            placeholder: placeholder.into(),
        }
    }

    /// Puts `value` (the placeholder's key) where this replacement points in `op`; false
    /// when `op` has no such place.
    pub fn apply(&self, op: &mut Operation, value: Value) -> bool {
        match (&self.target, op) {
            (
                ReplaceTarget::Pk,
                Operation::UpdateByPk { pk, .. } | Operation::DeleteByPk { pk, .. },
            ) => {
                *pk = Pk(vec![value]);
                true
            }
            (
                ReplaceTarget::Field(field),
                Operation::Create { object: fields, .. } | Operation::Put { object: fields, .. },
            )
            | (
                ReplaceTarget::Field(field),
                Operation::UpdateByPk {
                    changes: fields, ..
                }
                | Operation::UpdateWhere {
                    changes: fields, ..
                }
                | Operation::UpdateWhereReturningPks {
                    changes: fields, ..
                },
            ) => {
                fields.insert(field.clone(), value);
                true
            }
            _ => false,
        }
    }
}

/// Where a [`Replacement`] puts its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplaceTarget {
    /// A field of the object (create) or of the changes (update).
    Field(String),
    /// The key of an update or delete by primary key.
    Pk,
}

/// What an operation produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// The object was created with this key.
    Created {
        /// Its key.
        pk: Pk,
    },
    /// The object with this key was created or replaced (a [`Operation::Put`]).
    Put {
        /// Its key.
        pk: Pk,
    },
    /// This many objects were updated.
    Updated {
        /// How many.
        count: u64,
    },
    /// This many objects were deleted.
    Deleted {
        /// How many.
        count: u64,
    },
    /// The objects with these keys were updated (a [`Operation::UpdateWhereReturningPks`]).
    UpdatedPks {
        /// Their keys, in no particular order.
        pks: Vec<Pk>,
    },
    /// The objects with these keys were deleted (a [`Operation::DeleteWhereReturningPks`]).
    DeletedPks {
        /// Their keys, in no particular order.
        pks: Vec<Pk>,
    },
    /// The object found, if any (every field present; absent optional fields are `Null`).
    Found(Option<Object>),
    /// The objects found.
    FoundMany(Vec<Object>),
    /// The values found by an [`Operation::FindValues`]: per object, one per field asked.
    FoundValues(Vec<Vec<Value>>),
    /// How many objects matched.
    Counted(u64),
    /// One outcome per batch step.
    Batch(Vec<Outcome>),
}

impl Outcome {
    /// The key of a [`Outcome::Created`].
    pub fn created_pk(&self) -> Option<&Pk> {
        match self {
            Outcome::Created { pk } => Some(pk),
            _ => None,
        }
    }

    /// The object of a [`Outcome::Found`].
    pub fn into_found(self) -> crate::Result<Option<Object>> {
        match self {
            Outcome::Found(o) => Ok(o),
            other => Err(other.unexpected("find_one")),
        }
    }

    /// The keys of a [`Outcome::UpdatedPks`] or [`Outcome::DeletedPks`].
    pub fn into_pks(self) -> Option<Vec<Pk>> {
        match self {
            Outcome::UpdatedPks { pks } | Outcome::DeletedPks { pks } => Some(pks),
            _ => None,
        }
    }

    /// The values of a [`Outcome::FoundValues`], one row per object found; any other
    /// outcome is [`crate::Error::UnexpectedOutcome`] (not read as nothing found).
    pub fn into_values(self) -> crate::Result<Vec<Vec<Value>>> {
        match self {
            Outcome::FoundValues(rows) => Ok(rows),
            other => Err(other.unexpected("find_values")),
        }
    }

    /// The error for this outcome given to an `operation` it does not answer.
    pub(crate) fn unexpected(&self, operation: &'static str) -> crate::Error {
        crate::Error::UnexpectedOutcome {
            operation,
            outcome: format!("{self:?}"),
        }
    }

    /// The objects of a [`Outcome::FoundMany`] (or the one of a `Found`); any other
    /// outcome is [`crate::Error::UnexpectedOutcome`] (not read as nothing found).
    pub fn into_objects(self) -> crate::Result<Vec<Object>> {
        match self {
            Outcome::FoundMany(v) => Ok(v),
            Outcome::Found(o) => Ok(o.into_iter().collect()),
            other => Err(other.unexpected("find_many")),
        }
    }

    /// The number of objects updated, deleted or counted; 1 for a create or a put; `None`
    /// otherwise.
    pub fn count(&self) -> Option<u64> {
        match self {
            Outcome::Updated { count } | Outcome::Deleted { count } | Outcome::Counted(count) => {
                Some(*count)
            }
            Outcome::UpdatedPks { pks } | Outcome::DeletedPks { pks } => Some(pks.len() as u64),
            Outcome::Created { .. } | Outcome::Put { .. } => Some(1),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object;

    #[test]
    fn operations_serialize_as_tagged_json() {
        let op = Operation::update_by_pk("note", 7, object! { "title" => "x" });
        let json = serde_json::to_value(&op).expect("serialize");
        assert_eq!(json["op"], "update_by_pk");
        let back: Operation = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, op);
    }

    #[test]
    fn the_four_where_writes_are_told_apart_from_the_rest_and_give_their_filter() {
        let filter = Filter::all().eq("n", 1);
        let changes = object! { "name" => "x" };
        let where_writes = [
            Operation::update_where("item", filter.clone(), changes.clone()),
            Operation::delete_where("item", filter.clone()),
            Operation::update_where_returning_pks("item", filter.clone(), changes.clone()),
            Operation::delete_where_returning_pks("item", filter.clone()),
        ];
        for op in &where_writes {
            assert!(op.is_where_write(), "{}", op.kind());
            assert!(op.is_write(), "{}", op.kind());
            assert_eq!(op.filter(), Some(&filter), "{}", op.kind());
            assert_eq!(op.collection(), Some("item"));
            let json = serde_json::to_value(op).expect("serialize");
            assert_eq!(json["op"], op.kind());
            let back: Operation = serde_json::from_value(json).expect("deserialize");
            assert_eq!(&back, op);
        }
        let others = [
            Operation::update_by_pk("item", 1, changes.clone()),
            Operation::delete_by_pk("item", 1),
            Operation::count("item", filter.clone()),
            Operation::find_many("item", Query::new(filter.clone())),
        ];
        for op in &others {
            assert!(!op.is_where_write(), "{}", op.kind());
        }
        assert_eq!(others[2].filter(), Some(&filter), "a count has one too");
        assert_eq!(others[0].filter(), None);
        let pks = vec![Pk::from(1), Pk::from(2)];
        let outcome = Outcome::UpdatedPks { pks: pks.clone() };
        assert_eq!(outcome.count(), Some(2));
        assert_eq!(outcome.into_pks(), Some(pks));
        assert_eq!(Outcome::Updated { count: 2 }.into_pks(), None);
    }

    #[test]
    fn a_find_of_values_is_a_read_with_its_fields_in_order() {
        let op = Operation::find_values("item", Query::default().limit(2), ["name", "id"]);
        assert!(!op.is_write());
        assert!(!op.is_where_write());
        assert_eq!(op.kind(), "find_values");
        assert_eq!(op.collection(), Some("item"));
        let json = serde_json::to_value(&op).expect("serialize");
        assert_eq!(json["op"], "find_values");
        assert_eq!(json["fields"], serde_json::json!(["name", "id"]));
        let back: Operation = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, op);
        let rows = vec![vec![Value::from("a"), Value::from(1)]];
        assert_eq!(
            Outcome::FoundValues(rows.clone())
                .into_values()
                .expect("values"),
            rows
        );
        assert!(Outcome::FoundMany(Vec::new()).into_values().is_err());
    }
}
