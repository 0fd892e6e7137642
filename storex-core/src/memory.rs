//! [`MemoryBackend`]: a complete in-memory backend, the reference the others are held to.
//!
//! Objects live in ordered maps keyed by primary key. Every write records what it replaced
//! in an undo log, so a failing batch, a failing where-clause write or a rolled-back
//! transaction restores exactly what was there. A transaction holds the store's lock until
//! it ends, which makes transactions serializable. Unique indices are checked by scanning
//! the collection: this backend is for tests and small data, not for speed on large sets.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex as StdMutex, PoisonError, RwLock};

use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::backend::{BackendFeatures, BoxFuture, StorageBackend, Transaction};
use crate::batch::BatchResolver;
use crate::error::{Error, Result};
use crate::middleware::field_values;
use crate::operation::{BatchStep, Operation, Outcome};
use crate::query::{Filter, Predicate, Query};
use crate::registry::{CollectionDef, Registry};
use crate::value::{Object, Pk, PkKey, Value};

const NAME: &str = "memory";

type Table = BTreeMap<PkKey, Object>;

#[derive(Debug, Default)]
struct State {
    tables: HashMap<String, Table>,
}

/// What one write replaced: the object under `key` before (`None`: there was none).
#[derive(Debug)]
struct Undo {
    collection: String,
    key: PkKey,
    before: Option<Object>,
}

/// An in-memory [`StorageBackend`] with transactions, batches and where-clause writes.
/// Clones share the same data.
#[derive(Clone, Debug, Default)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
    registry: Arc<RwLock<Arc<Registry>>>,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        MemoryBackend::default()
    }

    fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl StorageBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn features(&self) -> BackendFeatures {
        BackendFeatures::all()
    }

    fn prepare<'a>(&'a self, registry: &'a Arc<Registry>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            for def in registry.collections() {
                let table = state.tables.entry(def.name().to_owned()).or_default();
                // Objects stored before a field was added get it, as the rows of a table get
                // a new column: its default, or null.
                for object in table.values_mut() {
                    for field in def.fields() {
                        if !object.contains_key(&field.name) {
                            let value = def.value_left_out(&field.name).clone();
                            object.insert(field.name.clone(), value);
                        }
                    }
                }
            }
            *self
                .registry
                .write()
                .unwrap_or_else(PoisonError::into_inner) = registry.clone();
            Ok(())
        })
    }

    fn execute(&self, op: Operation) -> BoxFuture<'_, Result<Outcome>> {
        Box::pin(async move {
            let registry = self.registry();
            let mut state = self.state.lock().await;
            let mut undo = Vec::new();
            let result = apply(&mut state, &registry, op, &mut undo);
            if result.is_err() {
                roll_back(&mut state, &mut undo, 0);
            }
            result
        })
    }

    fn begin(&self) -> BoxFuture<'_, Result<Box<dyn Transaction>>> {
        Box::pin(async move {
            let guard = self.state.clone().lock_owned().await;
            let tx: Box<dyn Transaction> = Box::new(MemoryTransaction {
                inner: StdMutex::new(TxState {
                    guard,
                    undo: Vec::new(),
                    registry: self.registry(),
                }),
            });
            Ok(tx)
        })
    }
}

#[derive(Debug)]
struct TxState {
    guard: OwnedMutexGuard<State>,
    undo: Vec<Undo>,
    registry: Arc<Registry>,
}

impl Drop for TxState {
    fn drop(&mut self) {
        // Not committed: undo everything (commit empties the log first).
        roll_back(&mut self.guard, &mut self.undo, 0);
    }
}

#[derive(Debug)]
struct MemoryTransaction {
    inner: StdMutex<TxState>,
}

impl Transaction for MemoryTransaction {
    fn execute(&self, op: Operation) -> BoxFuture<'_, Result<Outcome>> {
        Box::pin(async move {
            let mut guard = self.inner.lock().map_err(|_| Error::Transaction {
                problem: "an earlier operation of this transaction panicked".into(),
            })?;
            let tx = &mut *guard;
            let mark = tx.undo.len();
            let result = apply(&mut tx.guard, &tx.registry, op, &mut tx.undo);
            if result.is_err() {
                // A failed operation leaves no trace; the transaction stays usable.
                roll_back(&mut tx.guard, &mut tx.undo, mark);
            }
            result
        })
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let mut tx = self.inner.into_inner().map_err(|_| Error::Transaction {
                problem: "an operation of this transaction panicked; it was rolled back".into(),
            })?;
            tx.undo.clear();
            Ok(())
        })
    }

    fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        // Dropping the state applies the undo log.
        Box::pin(async move {
            drop(self);
            Ok(())
        })
    }
}

fn roll_back(state: &mut State, undo: &mut Vec<Undo>, mark: usize) {
    while undo.len() > mark {
        let Some(entry) = undo.pop() else { break };
        let table = state.tables.entry(entry.collection).or_default();
        match entry.before {
            Some(object) => table.insert(entry.key, object),
            None => table.remove(&entry.key),
        };
    }
}

fn table<'s>(state: &'s mut State, collection: &str) -> &'s mut Table {
    state.tables.entry(collection.to_owned()).or_default()
}

fn apply(
    state: &mut State,
    registry: &Registry,
    op: Operation,
    undo: &mut Vec<Undo>,
) -> Result<Outcome> {
    match op {
        Operation::Create { collection, object } => {
            let def = registry.collection(&collection)?;
            create(state, def, object, undo)
        }
        Operation::Put { collection, object } => {
            let def = registry.collection(&collection)?;
            put(state, def, object, undo)
        }
        Operation::UpdateByPk {
            collection,
            pk,
            changes,
        } => {
            let def = registry.collection(&collection)?;
            let count = update(state, def, vec![PkKey(pk)], &changes, undo)?;
            Ok(Outcome::Updated { count })
        }
        Operation::UpdateWhere {
            collection,
            filter,
            changes,
        } => {
            let def = registry.collection(&collection)?;
            let keys = matching_keys(state, def, &filter);
            let count = update(state, def, keys, &changes, undo)?;
            Ok(Outcome::Updated { count })
        }
        Operation::UpdateWhereReturningPks {
            collection,
            filter,
            changes,
        } => {
            let def = registry.collection(&collection)?;
            let keys = matching_keys(state, def, &filter);
            let pks = keys.iter().map(|key| key.0.clone()).collect();
            update(state, def, keys, &changes, undo)?;
            Ok(Outcome::UpdatedPks { pks })
        }
        Operation::DeleteWhereReturningPks { collection, filter } => {
            let def = registry.collection(&collection)?;
            let keys = matching_keys(state, def, &filter);
            let pks = keys.iter().map(|key| key.0.clone()).collect();
            delete(state, &collection, keys, undo);
            Ok(Outcome::DeletedPks { pks })
        }
        Operation::DeleteByPk { collection, pk } => {
            registry.collection(&collection)?;
            let count = delete(state, &collection, vec![PkKey(pk)], undo);
            Ok(Outcome::Deleted { count })
        }
        Operation::DeleteWhere { collection, filter } => {
            let def = registry.collection(&collection)?;
            let keys = matching_keys(state, def, &filter);
            let count = delete(state, &collection, keys, undo);
            Ok(Outcome::Deleted { count })
        }
        Operation::FindOne { collection, query } => {
            let def = registry.collection(&collection)?;
            let query = Query {
                limit: Some(1),
                ..query
            };
            let found = query.apply(
                def,
                candidates(table(state, &collection), def, &query.filter),
            );
            Ok(Outcome::Found(found.into_iter().next().cloned()))
        }
        Operation::FindMany { collection, query } => {
            let def = registry.collection(&collection)?;
            let found = query.apply(
                def,
                candidates(table(state, &collection), def, &query.filter),
            );
            Ok(Outcome::FoundMany(found.into_iter().cloned().collect()))
        }
        Operation::FindValues {
            collection,
            query,
            fields,
        } => {
            let def = registry.collection(&collection)?;
            let found = query.apply(
                def,
                candidates(table(state, &collection), def, &query.filter),
            );
            let rows = found
                .into_iter()
                .map(|object| field_values(object, &fields))
                .collect();
            Ok(Outcome::FoundValues(rows))
        }
        Operation::Count { collection, filter } => {
            let def = registry.collection(&collection)?;
            let count = candidates(table(state, &collection), def, &filter)
                .filter(|o| filter.matches(o))
                .count();
            Ok(Outcome::Counted(count as u64))
        }
        Operation::Batch { steps } => batch(state, registry, steps, undo),
    }
}

fn batch(
    state: &mut State,
    registry: &Registry,
    steps: Vec<BatchStep>,
    undo: &mut Vec<Undo>,
) -> Result<Outcome> {
    let mark = undo.len();
    let mut resolver = BatchResolver::new();
    let mut outcomes = Vec::with_capacity(steps.len());
    for (index, step) in steps.into_iter().enumerate() {
        let result = resolver
            .resolve(registry, step)
            .and_then(|(op, placeholder)| {
                let outcome = apply(state, registry, op, undo)?;
                resolver.record(placeholder, &outcome)?;
                Ok(outcome)
            });
        match result {
            Ok(outcome) => outcomes.push(outcome),
            Err(source) => {
                roll_back(state, undo, mark);
                return Err(Error::BatchStep {
                    step: index,
                    source: Box::new(source),
                });
            }
        }
    }
    Ok(Outcome::Batch(outcomes))
}

fn matching_keys(state: &mut State, def: &CollectionDef, filter: &Filter) -> Vec<PkKey> {
    candidates(table(state, def.name()), def, filter)
        .filter(|o| filter.matches(o))
        .filter_map(|o| def.pk_of(o).map(PkKey))
        .collect()
}

/// The objects `filter` can match: the one object its key names when it pins every key
/// field with `eq`, else the whole table. Callers still apply the filter.
fn candidates<'t>(
    table: &'t Table,
    def: &CollectionDef,
    filter: &Filter,
) -> Box<dyn Iterator<Item = &'t Object> + 't> {
    let pinned: Option<Vec<Value>> = def
        .pk_fields()
        .iter()
        .map(|field| {
            filter.conditions.iter().find_map(|c| match &c.predicate {
                Predicate::Eq(v) if &c.field == field && !v.is_null() => Some(v.clone()),
                _ => None,
            })
        })
        .collect();
    match pinned {
        Some(values) => Box::new(table.get(&PkKey(Pk(values))).into_iter()),
        None => Box::new(table.values()),
    }
}

/// `object` with every field of `def` (absent ones `Null`), and its key.
fn complete(def: &CollectionDef, mut object: Object) -> Result<(Object, Pk)> {
    for field in def.fields() {
        object.entry(field.name.clone()).or_insert(Value::Null);
    }
    let pk = def.pk_of(&object).ok_or_else(|| Error::MissingField {
        collection: def.name().to_owned(),
        field: def.pk_fields().join(", "),
    })?;
    Ok((object, pk))
}

fn create(
    state: &mut State,
    def: &CollectionDef,
    object: Object,
    undo: &mut Vec<Undo>,
) -> Result<Outcome> {
    let (object, pk) = complete(def, object)?;
    let key = PkKey(pk.clone());
    let table = table(state, def.name());
    if table.contains_key(&key) {
        return Err(Error::DuplicateKey {
            collection: def.name().to_owned(),
            detail: format!("an object with key {pk} exists"),
        });
    }
    check_unique(def, table, &object, None)?;
    table.insert(key.clone(), object);
    undo.push(Undo {
        collection: def.name().to_owned(),
        key,
        before: None,
    });
    Ok(Outcome::Created { pk })
}

fn update(
    state: &mut State,
    def: &CollectionDef,
    keys: Vec<PkKey>,
    changes: &Object,
    undo: &mut Vec<Undo>,
) -> Result<u64> {
    let touches_unique = def
        .indices()
        .iter()
        .any(|i| i.unique && i.fields.iter().any(|f| changes.contains_key(f)));
    let table = table(state, def.name());
    let mut count = 0;
    for key in keys {
        let Some(before) = table.get(&key) else {
            continue;
        };
        let mut after = before.clone();
        for (field, value) in changes {
            after.insert(field.clone(), value.clone());
        }
        if touches_unique {
            check_unique(def, table, &after, Some(&key))?;
        }
        let before = table.insert(key.clone(), after);
        undo.push(Undo {
            collection: def.name().to_owned(),
            key,
            before,
        });
        count += 1;
    }
    Ok(count)
}

fn delete(state: &mut State, collection: &str, keys: Vec<PkKey>, undo: &mut Vec<Undo>) -> u64 {
    let table = table(state, collection);
    let mut count = 0;
    for key in keys {
        if let Some(before) = table.remove(&key) {
            undo.push(Undo {
                collection: collection.to_owned(),
                key,
                before: Some(before),
            });
            count += 1;
        }
    }
    count
}

/// Creates `object`, or replaces the object with its key (every field; absent ones `Null`).
fn put(
    state: &mut State,
    def: &CollectionDef,
    object: Object,
    undo: &mut Vec<Undo>,
) -> Result<Outcome> {
    let (object, pk) = complete(def, object)?;
    let key = PkKey(pk.clone());
    let table = table(state, def.name());
    check_unique(def, table, &object, Some(&key))?;
    let before = table.insert(key.clone(), object);
    undo.push(Undo {
        collection: def.name().to_owned(),
        key,
        before,
    });
    Ok(Outcome::Put { pk })
}

/// Refuses `object` if a unique index of `def` already holds its values (nulls never clash).
fn check_unique(
    def: &CollectionDef,
    table: &Table,
    object: &Object,
    own_key: Option<&PkKey>,
) -> Result<()> {
    for index in def.indices().iter().filter(|i| i.unique) {
        let values: Vec<&Value> = index
            .fields
            .iter()
            .map(|f| object.get(f).unwrap_or(&Value::Null))
            .collect();
        if values.iter().any(|v| v.is_null()) {
            continue;
        }
        let clash = table.iter().any(|(key, other)| {
            Some(key) != own_key
                && index
                    .fields
                    .iter()
                    .zip(&values)
                    .all(|(f, v)| other.get(f).is_some_and(|o| o.total_cmp(v).is_eq()))
        });
        if clash {
            return Err(Error::DuplicateKey {
                collection: def.name().to_owned(),
                detail: format!(
                    "unique index ({}) already holds these values",
                    index.fields.join(", ")
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{object, FieldType, Storage};

    #[tokio::test]
    async fn objects_stored_before_a_field_was_added_hold_its_default_or_null() {
        let note = || {
            CollectionDef::new("note")
                .field("id", FieldType::Int)
                .primary_key(["id"])
        };
        let backend = MemoryBackend::new();
        let before = Registry::builder()
            .collection(note())
            .build()
            .expect("registry");
        let storage = Storage::builder(before, backend.clone())
            .build()
            .await
            .expect("storage");
        storage
            .create("note", object! { "id" => 1 })
            .await
            .expect("create");
        let after = Registry::builder()
            .collection(
                note()
                    .optional_field("pinned", FieldType::Bool)
                    .default_value("pinned", false)
                    .optional_field("body", FieldType::Text),
            )
            .build()
            .expect("registry");
        let storage = Storage::builder(after, backend)
            .build()
            .await
            .expect("storage");
        let found = storage
            .find_by_pk("note", 1)
            .await
            .expect("find")
            .expect("the note");
        assert_eq!(found.get("pinned"), Some(&Value::Bool(false)), "{found:?}");
        assert_eq!(found.get("body"), Some(&Value::Null), "{found:?}");
    }
}
