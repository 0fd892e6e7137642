//! Reconciliation: a pure function from what a device knows and what it receives to the
//! operations that bring its data to the agreed state.
//!
//! The state of an object is a function of the set of log entries for it, whatever order
//! they came in ([`object_state`]): let `D` be the greatest timestamp of its deletes. The
//! object exists when some create is later than `D`; each field then holds the value of the
//! latest create or update later than `D` that wrote it (last writer wins per field; a create
//! writes every field, those it leaves out as their default, null without one). So a
//! delete wins over every update older than it, a create newer than a delete recreates the
//! object, and updates older than a recreation do not leak into it. Timestamps never tie:
//! they contain the device id.
//!
//! Because the state depends only on the set of entries, any two devices that have seen the
//! same entries hold the same data. [`reconcile`] computes the state of every object an
//! incoming batch touches from all entries known for it, and returns the operations that
//! turn the stored rows into that state.
//!
//! Incoming entries that cannot be applied are never dropped: an entry for an unknown
//! collection, from a newer schema than this device's, or with a value of the wrong type is
//! held (stored, not applied, reported) and does not stop the others. Fields the local schema
//! does not have in an entry of a known schema version are ignored and reported.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;

use storex_core::uuid::Uuid;
use storex_core::{CollectionDef, FieldType, Object, Operation, Pk, Registry, Value};

use crate::entry::{pk_text, EntryOp, LogEntry, INTERNAL_COLLECTIONS};
use crate::hlc::{DeviceId, Hlc};
use crate::versions::Versions;

/// Identifies an object: its collection and the canonical text of its key.
pub type ObjectKey = (String, String);

/// The key of the object `entry` changes.
pub fn object_key(entry: &LogEntry) -> ObjectKey {
    (entry.collection.clone(), pk_text(&entry.pk))
}

/// What a device knows about one object before reconciling.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KnownObject {
    /// The stored row, if the object exists here.
    pub current: Option<Object>,
    /// Every integrated log entry for it (local changes and applied remote ones).
    pub entries: Vec<LogEntry>,
}

/// Why an incoming entry is held back instead of applied.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HoldReason {
    /// This device has no such collection.
    UnknownCollection,
    /// The collection is sync's own bookkeeping (its log, versions, state), which no change
    /// from another device may write.
    SyncCollection,
    /// The entry was written by a newer schema than this device knows; it is applied after
    /// the app upgrades.
    NewerSchema {
        /// The entry's schema version.
        entry: u32,
        /// This device's.
        local: u32,
    },
    /// A value does not fit its field.
    InvalidValue {
        /// The field.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// Its timestamp is further in the future than the clock allows. Continuous sync
    /// tries it again once the wall clock has come within the allowed drift of it.
    ClockDrift {
        /// The clock's message.
        problem: String,
    },
    /// The database refused the change (a unique index another object already fills, say).
    ApplyFailed {
        /// The database's message.
        problem: String,
    },
    /// A row of this device's log for the same object, or the object's row of the versions
    /// index, does not read (damaged, or in the format of a newer version), so what this
    /// device knows of the object is not known; the entry waits for the row to read.
    DamagedLog {
        /// Why the row does not read.
        problem: String,
    },
}

impl std::fmt::Display for HoldReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HoldReason::UnknownCollection => write!(f, "unknown collection"),
            HoldReason::SyncCollection => {
                write!(
                    f,
                    "a collection of sync's own, which other devices do not write"
                )
            }
            HoldReason::NewerSchema { entry, local } => {
                write!(
                    f,
                    "written by schema version {entry}, this device knows {local}"
                )
            }
            HoldReason::InvalidValue { field, problem } => write!(f, "field `{field}`: {problem}"),
            HoldReason::ClockDrift { problem } => write!(f, "{problem}"),
            HoldReason::ApplyFailed { problem } => write!(f, "applying it failed: {problem}"),
            HoldReason::DamagedLog { problem } => {
                write!(
                    f,
                    "what this device recorded of its object does not read: {problem}"
                )
            }
        }
    }
}

/// An entry that is kept but not applied.
#[derive(Clone, Debug, PartialEq)]
pub struct HeldEntry {
    /// The entry.
    pub entry: LogEntry,
    /// Why it is held.
    pub reason: HoldReason,
}

/// What [`reconcile`] decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reconciliation {
    /// Operations that bring the stored rows to the agreed state, at most one per object,
    /// ordered by the incoming changes that caused them (a create by its earliest, an update
    /// or delete by its latest).
    pub operations: Vec<Operation>,
    /// Incoming entries that are now part of the state (to store as integrated).
    pub integrated: Vec<LogEntry>,
    /// Incoming entries kept but not applied.
    pub held: Vec<HeldEntry>,
    /// Fields of known collections that the local schema lacks: (entry id, field).
    pub ignored_fields: Vec<(Uuid, String)>,
    /// Incoming entries whose values (some or all) lost to a later write or delete.
    pub conflicts: u64,
    /// Incoming entries this device already had.
    pub duplicates: u64,
    /// The objects the integrated entries touch that exist once the operations are applied.
    pub existing: HashSet<ObjectKey>,
}

/// Checks an incoming entry against the local schema.
pub(crate) fn admit(registry: &Registry, entry: &LogEntry) -> Result<(), HoldReason> {
    if INTERNAL_COLLECTIONS.contains(&entry.collection.as_str()) {
        return Err(HoldReason::SyncCollection);
    }
    let Ok(def) = registry.collection(&entry.collection) else {
        return Err(HoldReason::UnknownCollection);
    };
    if entry.schema_version > def.schema_version() {
        return Err(HoldReason::NewerSchema {
            entry: entry.schema_version,
            local: def.schema_version(),
        });
    }
    if entry.pk.values().len() != def.pk_fields().len() {
        return Err(HoldReason::InvalidValue {
            field: def.pk_fields().join(", "),
            problem: "the key has the wrong number of fields".into(),
        });
    }
    for (field, value) in def.pk_fields().iter().zip(entry.pk.values()) {
        check_value(def, field, value, false)?;
    }
    for (field, value) in &entry.fields {
        if def.field_def(field).is_some() {
            check_value(def, field, value, true)?;
        }
    }
    if entry.op == EntryOp::Update {
        // A key cannot change (local updates are refused that); applied, such an update
        // would move the object on a device that has not made it yet, and not on the others.
        for (field, value) in def.pk_fields().iter().zip(entry.pk.values()) {
            if entry
                .fields
                .get(field)
                .is_some_and(|written| written != value)
            {
                return Err(HoldReason::InvalidValue {
                    field: field.clone(),
                    problem: "an update that would change the object's key".into(),
                });
            }
        }
    }
    if entry.op == EntryOp::Create {
        // A create defines the whole object: a required field it lacks would be null, unless
        // the field has a default.
        if let Some(field) = def.fields().iter().find(|f| {
            !f.optional && !entry.fields.contains_key(&f.name) && def.default_of(&f.name).is_none()
        }) {
            return Err(HoldReason::InvalidValue {
                field: field.name.clone(),
                problem: "a create without this required field".into(),
            });
        }
        for (field, value) in def.pk_fields().iter().zip(entry.pk.values()) {
            if entry.fields.get(field) != Some(value) {
                return Err(HoldReason::InvalidValue {
                    field: field.clone(),
                    problem: "a create whose values differ from its key".into(),
                });
            }
        }
    }
    Ok(())
}

fn check_value(
    def: &CollectionDef,
    field: &str,
    value: &Value,
    null_ok: bool,
) -> Result<(), HoldReason> {
    let Some(field_def) = def.field_def(field) else {
        return Ok(());
    };
    // What no write may store (a NUL in text, say, from an older version): held on arrival,
    // as every device holds it whatever it received before, rather than refused later by
    // the write that would apply it, which not every order of arrival makes.
    if let Some(problem) = storex_core::value_problem(value) {
        return Err(HoldReason::InvalidValue {
            field: field.to_owned(),
            problem,
        });
    }
    let problem = match value.field_type() {
        Some(FieldType::Int) if field_def.ty == FieldType::Int => {
            match def.out_of_range(field, value) {
                Some(problem) => problem,
                None => return Ok(()),
            }
        }
        None if null_ok && field_def.optional => return Ok(()),
        None => "null in a required field".to_owned(),
        Some(ty) if ty == field_def.ty => return Ok(()),
        Some(ty) => format!("{ty} in a {} field", field_def.ty),
    };
    Err(HoldReason::InvalidValue {
        field: field.to_owned(),
        problem,
    })
}

/// The state of one object of collection `def` given all `entries` for it: `None` when it
/// does not exist. Fields the collection lacks are ignored; a create writes every field, one
/// it leaves out as the field's default ([`CollectionDef::value_left_out`]: null, unless the
/// schema gave one, for a field added after the create was written, say).
pub fn object_state<'e>(
    def: &'e CollectionDef,
    entries: impl IntoIterator<Item = &'e LogEntry> + Clone,
) -> Option<Object> {
    let deleted = entries
        .clone()
        .into_iter()
        .filter(|e| e.op == EntryOp::Delete)
        .map(|e| e.hlc)
        .max();
    let live = |e: &&LogEntry| deleted.is_none_or(|d| e.hlc > d);
    let created = entries
        .clone()
        .into_iter()
        .filter(live)
        .any(|e| e.op == EntryOp::Create);
    if !created {
        return None;
    }
    // The newest value of each field of `def`, by field position.
    let mut best: Vec<Option<(Hlc, &Value)>> = vec![None; def.fields().len()];
    let mut offer = |index: usize, hlc: Hlc, value: &'e Value| {
        if best[index].is_none_or(|(newest, _)| hlc > newest) {
            best[index] = Some((hlc, value));
        }
    };
    for entry in entries.into_iter().filter(live) {
        match entry.op {
            // A create defines the whole object: a field it leaves out takes its default.
            EntryOp::Create => {
                for (index, field) in def.fields().iter().enumerate() {
                    let value = entry.fields.get(&field.name);
                    offer(
                        index,
                        entry.hlc,
                        value.unwrap_or_else(|| def.value_left_out(&field.name)),
                    );
                }
            }
            EntryOp::Update => {
                for (field, value) in &entry.fields {
                    if let Some(index) = def.fields().iter().position(|f| &f.name == field) {
                        offer(index, entry.hlc, value);
                    }
                }
            }
            EntryOp::Delete => {}
        }
    }
    Some(
        def.fields()
            .iter()
            .zip(best)
            .map(|(f, newest)| {
                (
                    f.name.clone(),
                    newest.map_or(Value::Null, |(_, v)| v.clone()),
                )
            })
            .collect(),
    )
}

/// Did `entry` lose (some of) its values in the state computed from `all`?
fn lost<'a>(entry: &LogEntry, all: impl IntoIterator<Item = &'a LogEntry>) -> bool {
    all.into_iter().any(|other| {
        other.hlc > entry.hlc
            && (other.op == EntryOp::Delete
                || (entry.op != EntryOp::Delete
                    && other.fields.keys().any(|f| entry.fields.contains_key(f))))
    })
}

/// A row that exists without any logged create (data from before sync was enabled) counts
/// as created at the beginning of time, so it is never lost.
fn base_create(def: &CollectionDef, pk: &Pk, known: &KnownObject) -> Option<LogEntry> {
    match &known.current {
        Some(row) if !known.entries.iter().any(|e| e.op == EntryOp::Create) => Some(LogEntry {
            id: Uuid::nil(),
            device: DeviceId(Uuid::nil()),
            hlc: Hlc::zero(DeviceId(Uuid::nil())),
            collection: def.name().to_owned(),
            pk: pk.clone(),
            op: EntryOp::Create,
            fields: row.clone(),
            schema_version: def.schema_version(),
        }),
        _ => None,
    }
}

/// The update, and how many of `new` lost values, for an object that exists here (created
/// at `created`, later than any delete) and whose history its `versions` sum up, receiving
/// only the updates `new`.
///
/// The changes [`Versions::synthesize`] would make of the versions give the same result
/// without reading the row: a field takes an update's value when the update is later than
/// the create (which writes every field), than the field's version, and than the other
/// updates writing it. (A field's version can be older than the create: a field the schema
/// added after the create was folded, then written by an older update.) The row is not
/// compared, so a winning value equal to the stored one is written again; the state is the
/// same.
fn updates_over_versions(
    def: &CollectionDef,
    pk: Pk,
    versions: &Versions,
    created: Hlc,
    new: &[LogEntry],
) -> (Option<Operation>, u64) {
    let mut winners: BTreeMap<&str, (Hlc, &Value)> = BTreeMap::new();
    for entry in new {
        for (field, value) in &entry.fields {
            if def.field_def(field).is_none() {
                continue;
            }
            let version = versions.written(field).map_or(created, |w| w.max(created));
            let best = winners.get(field.as_str()).map_or(version, |(w, _)| *w);
            if entry.hlc > best {
                winners.insert(field, (entry.hlc, value));
            }
        }
    }
    // What `lost` finds against the synthesized changes: a later delete; a later write of a
    // field the update writes, by the create (which names the key and every field with a
    // version) or by the update at that field's version; or a later update among `new`.
    let conflicts = new
        .iter()
        .filter(|entry| {
            let u = entry.hlc;
            versions.deleted().is_some_and(|d| d > u)
                || entry.fields.keys().any(|field| {
                    let written = versions.written(field);
                    written.is_some_and(|w| w > u)
                        || ((written.is_some() || def.pk_fields().contains(field)) && created > u)
                })
                || lost(entry, new)
        })
        .count() as u64;
    let changes: Object = winners
        .into_iter()
        .filter(|(field, _)| !def.pk_fields().iter().any(|pk| pk == field))
        .map(|(field, (_, value))| (field.to_owned(), value.clone()))
        .collect();
    let update =
        (!changes.is_empty()).then(|| Operation::update_by_pk(def.name().to_owned(), pk, changes));
    (update, conflicts)
}

/// Decides what to apply for `incoming` entries, given what is `known` about the objects
/// they touch (objects missing from `known` are taken as never seen). Pure: no I/O.
pub fn reconcile(
    registry: &Registry,
    known: &HashMap<ObjectKey, KnownObject>,
    incoming: Vec<LogEntry>,
) -> Reconciliation {
    let keyed = incoming.into_iter().map(|e| (object_key(&e), e)).collect();
    reconcile_keyed(registry, known, &HashMap::new(), keyed, Admission::Check).0
}

/// Whether [`reconcile_keyed`] checks the incoming entries against the schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Check each one ([`admit`]), holding those the schema refuses.
    Check,
    /// The caller admitted them already.
    Done,
}

/// The objects of a reconciliation's integrated entries, in their order: each object's key
/// and how many entries after the previous object's are its.
pub(crate) type IntegratedObjects = Vec<(ObjectKey, usize)>;

/// [`reconcile`] for entries given with their objects' keys, also telling the objects of
/// the integrated entries. The objects in `summed` are known by their versions alone (see
/// [`updates_over_versions`]): each exists, has no change in the log, and receives only
/// updates.
pub(crate) fn reconcile_keyed<S: BuildHasher, T: BuildHasher>(
    registry: &Registry,
    known: &HashMap<ObjectKey, KnownObject, S>,
    summed: &HashMap<ObjectKey, &Versions, T>,
    incoming: Vec<(ObjectKey, LogEntry)>,
    admission: Admission,
) -> (Reconciliation, IntegratedObjects) {
    let mut out = Reconciliation {
        integrated: Vec::with_capacity(incoming.len()),
        existing: HashSet::with_capacity(incoming.len()),
        ..Reconciliation::default()
    };
    let mut objects = IntegratedObjects::with_capacity(incoming.len());
    let mut seen: foldhash::HashSet<Uuid> = known
        .values()
        .flat_map(|k| k.entries.iter().map(|e| e.id))
        .collect();
    seen.reserve(incoming.len());
    let mut by_object: BTreeMap<ObjectKey, Vec<LogEntry>> = BTreeMap::new();
    for (key, entry) in incoming {
        if !seen.insert(entry.id) {
            out.duplicates += 1;
            continue;
        }
        let admitted = match admission {
            Admission::Check => admit(registry, &entry),
            Admission::Done => Ok(()),
        };
        match admitted {
            Ok(()) => by_object.entry(key).or_default().push(entry),
            Err(reason) => out.held.push(HeldEntry { entry, reason }),
        }
    }
    let empty = KnownObject::default();
    let mut caused: Vec<(Hlc, Operation)> = Vec::with_capacity(by_object.len());
    for (key, new) in by_object {
        let collection = &key.0;
        let Ok(def) = registry.collection(collection) else {
            continue; // admit() held these already
        };
        for entry in &new {
            for field in entry.fields.keys().filter(|f| def.field_def(f).is_none()) {
                out.ignored_fields.push((entry.id, field.clone()));
            }
        }
        let pk: Pk = new[0].pk.clone();
        let latest = new.iter().map(|e| e.hlc).max();
        if let Some((versions, created)) = summed
            .get(&key)
            .and_then(|v| v.live_since().map(|created| (v, created)))
        {
            debug_assert!(new.iter().all(|e| e.op == EntryOp::Update));
            let (update, conflicts) = updates_over_versions(def, pk, versions, created, &new);
            out.conflicts += conflicts;
            if let (Some(update), Some(hlc)) = (update, latest) {
                caused.push((hlc, update));
            }
            out.existing.insert(key.clone());
            objects.push((key, new.len()));
            out.integrated.extend(new);
            continue;
        }
        let known_object = known.get(&key).unwrap_or(&empty);
        let base = base_create(def, &pk, known_object);
        let all: Vec<&LogEntry> = known_object
            .entries
            .iter()
            .chain(base.iter())
            .chain(new.iter())
            .collect();
        out.conflicts += new.iter().filter(|e| lost(e, all.iter().copied())).count() as u64;
        let target = object_state(def, all.iter().copied());
        if target.is_some() {
            out.existing.insert(key.clone());
        }
        // Operations go in the order of the changes that caused them (see below): a create
        // at its earliest incoming change, an update or delete at its latest.
        let earliest = new.iter().map(|e| e.hlc).min();
        let (operation, at) = match (target, &known_object.current) {
            (Some(target), None) => (
                Some(Operation::create(collection.clone(), target)),
                earliest,
            ),
            (Some(target), Some(current)) => {
                let changes: Object = target
                    .into_iter()
                    .filter(|(f, v)| !def.pk_fields().contains(f) && current.get(f) != Some(v))
                    .collect();
                let update = (!changes.is_empty())
                    .then(|| Operation::update_by_pk(collection.clone(), pk, changes));
                (update, latest)
            }
            (None, Some(_)) => (
                Some(Operation::delete_by_pk(collection.clone(), pk)),
                latest,
            ),
            (None, None) => (None, None),
        };
        if let (Some(operation), Some(hlc)) = (operation, at) {
            caused.push((hlc, operation));
        }
        objects.push((key, new.len()));
        out.integrated.extend(new);
    }
    // In timestamp order, which mostly follows causality: a parent created before its child
    // is inserted before it, a child deleted before its parent goes first, as a database with
    // immediate foreign keys needs. Not always (one object's operation sums up several
    // changes); where the database still refuses, the entries are applied again in parts in
    // timestamp order. Each operation touches another object, so the order does not change
    // the result.
    caused.sort_by_key(|(hlc, _)| *hlc);
    out.operations = caused.into_iter().map(|(_, op)| op).collect();
    (out, objects)
}
