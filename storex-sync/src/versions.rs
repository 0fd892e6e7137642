//! The versions index: what a device knows about each object from the changes it applied,
//! one small row per object, in place of a log row (with all its values) per change.
//!
//! Reconciliation needs, for an object, every change applied to it ([`crate::reconcile`]).
//! Its state depends only on the latest delete, the latest create and, per field, the latest
//! write: so that is all a device keeps of the changes it received, the *versions* of the
//! object. The values themselves are in the object's row; they are kept beside the versions
//! only while the object does not exist (a write newer than its delete waits for a create
//! that may still come). The changes this device made are folded into the versions too once
//! pushed: as push settles them, or by compaction for those indexed as log rows before.
//!
//! Before reconciling, the versions of an object are turned back into the changes that
//! would have left them ([`Versions::synthesize`]): a delete, a create, and an update per
//! timestamp, with the values of the row. The state those give is the state the real changes
//! gave, so reconciliation is unchanged. An incoming change the versions already hold
//! exactly (same timestamp: timestamps never tie between changes) is a duplicate.
//!
//! One more row, under [`CLOCK_OBJECT`], keeps the latest timestamp applied, for the clock
//! to restart from.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt, HashSet};
use serde::{Deserialize, Serialize};
use storex_core::uuid::Uuid;
use storex_core::{
    serde_json, BatchStep, CollectionDef, FieldType, Filter, Object, Operation, Pk, Query,
    Registry, Value,
};

use crate::client_log::{Exec, Unread, LOOKUP_CHUNK};
use crate::entry::{EntryOp, LogEntry};
use crate::error::{Error, Result};
use crate::hlc::Hlc;
use crate::key_runs;
use crate::reconcile::ObjectKey;

/// The name of the versions index's collection in the app's database.
pub const VERSIONS_COLLECTION: &str = "storex_sync_versions";

/// The first byte of a row's `state`: the version of its encoding. Format 1 wrote every
/// timestamp in full where it was used; format 2 writes each distinct timestamp once (a
/// create stamps every field with its own), and the rest refer to it.
const FORMAT: u8 = 2;

/// The encoding of format 1, which this version still reads.
const FIRST_FORMAT: u8 = 1;

/// Between the collection and the key in an object's id.
const SEPARATOR: char = '\u{1f}';

/// The id of the row keeping the latest timestamp applied (no collection has this name).
pub(crate) const CLOCK_OBJECT: &str = "\u{1f}clock";

/// The fields of a row of the versions index, in the order [`Versions::from_values`] reads
/// them.
pub(crate) const ROW_FIELDS: [&str; 2] = ["object", "state"];

/// The definition of the versions index's collection.
pub(crate) fn versions_collection() -> CollectionDef {
    CollectionDef::new(VERSIONS_COLLECTION)
        .field("object", FieldType::Text)
        .field("state", FieldType::Blob)
        .primary_key(["object"])
        .clustered()
}

/// The id of an object's row: its collection and its key's text.
pub(crate) fn object_id(key: &ObjectKey) -> String {
    format!("{}{SEPARATOR}{}", key.0, key.1)
}

/// The object an id names (`None` for the clock's row or a malformed id).
pub(crate) fn object_of(id: &str) -> Option<ObjectKey> {
    let (collection, pk) = id.split_once(SEPARATOR)?;
    (!collection.is_empty()).then(|| (collection.to_owned(), pk.to_owned()))
}

/// The latest write of one field: when, and the value while the row cannot give it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct FieldVersion {
    hlc: Hlc,
    value: Option<Value>,
}

/// [`Versions`] as format 2 stores them: each distinct timestamp once, in `stamps`, and
/// the delete, the create and every field's latest write by their index there. `V` is a
/// value: borrowed to write, owned when read.
#[derive(Serialize, Deserialize)]
struct Compact<'a, V> {
    stamps: Vec<Hlc>,
    deleted: Option<usize>,
    created: Option<usize>,
    #[serde(borrow)]
    fields: Vec<(std::borrow::Cow<'a, str>, usize, Option<V>)>,
}

/// What a device knows of one object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Versions {
    /// The latest delete.
    deleted: Option<Hlc>,
    /// The latest create.
    created: Option<Hlc>,
    /// Per field of the collection, the latest create or update that wrote it.
    fields: BTreeMap<String, FieldVersion>,
}

impl Versions {
    /// Takes in one change (creates and updates), keeping the values it wrote if `values`
    /// (an object that exists afterwards has them in its row).
    pub(crate) fn fold(&mut self, def: &CollectionDef, entry: &LogEntry, values: bool) {
        let mut write = |field: &str, value: &Value| match self.fields.get_mut(field) {
            Some(version) if entry.hlc <= version.hlc => {}
            Some(version) => {
                version.hlc = entry.hlc;
                version.value = values.then(|| value.clone());
            }
            None => {
                self.fields.insert(
                    field.to_owned(),
                    FieldVersion {
                        hlc: entry.hlc,
                        value: values.then(|| value.clone()),
                    },
                );
            }
        };
        match entry.op {
            EntryOp::Delete => self.deleted = self.deleted.max(Some(entry.hlc)),
            EntryOp::Create => {
                self.created = self.created.max(Some(entry.hlc));
                // A create writes every field; one it leaves out takes its default.
                for field in def.fields() {
                    let value = entry.fields.get(&field.name);
                    write(
                        &field.name,
                        value.unwrap_or_else(|| def.value_left_out(&field.name)),
                    );
                }
            }
            EntryOp::Update => {
                for (field, value) in &entry.fields {
                    if def.field_def(field).is_some() {
                        write(field, value);
                    }
                }
            }
        }
    }

    /// Drops what the row holds or nothing can need: every value when the object exists;
    /// when it does not, the fields written before its delete (any create that brings it
    /// back is later than the delete, and writes them all).
    pub(crate) fn prune(&mut self, exists: bool) {
        if exists {
            for version in self.fields.values_mut() {
                version.value = None;
            }
        } else if let Some(deleted) = self.deleted {
            self.fields.retain(|_, v| v.hlc > deleted);
        }
    }

    /// The values of the object's fields from `row` (the object as it is now), for sending
    /// the versions to a device that may not hold the same row.
    pub(crate) fn fill(&mut self, row: &Object) {
        for (field, version) in &mut self.fields {
            if version.value.is_none() {
                version.value = Some(row.get(field).cloned().unwrap_or(Value::Null));
            }
        }
    }

    /// Whether it holds `entry` already: the same timestamp as its latest delete, create,
    /// or every field it writes.
    pub(crate) fn covers(&self, entry: &LogEntry) -> bool {
        match entry.op {
            EntryOp::Delete => self.deleted == Some(entry.hlc),
            EntryOp::Create => self.created == Some(entry.hlc),
            EntryOp::Update => {
                let mut known = entry
                    .fields
                    .keys()
                    .filter_map(|f| self.fields.get(f))
                    .peekable();
                known.peek().is_some() && known.all(|v| v.hlc == entry.hlc)
            }
        }
    }

    /// The latest create, if it is later than every delete: the object exists.
    pub(crate) fn live_since(&self) -> Option<Hlc> {
        self.created.filter(|c| self.deleted.is_none_or(|d| *c > d))
    }

    /// Whether it keeps values of its own (only while its object has no row).
    pub(crate) fn keeps_values(&self) -> bool {
        self.fields.values().any(|v| v.value.is_some())
    }

    /// Takes in what `other` knows of the same object, as if its changes had been folded
    /// here too: the later delete, create and write of each field (with its value, if kept).
    pub(crate) fn merge(&mut self, other: Versions) {
        self.deleted = self.deleted.max(other.deleted);
        self.created = self.created.max(other.created);
        for (field, version) in other.fields {
            match self.fields.get_mut(&field) {
                Some(mine) if version.hlc <= mine.hlc => {}
                Some(mine) => *mine = version,
                None => {
                    self.fields.insert(field, version);
                }
            }
        }
    }

    /// The latest create.
    pub(crate) fn created(&self) -> Option<Hlc> {
        self.created
    }

    /// The latest delete.
    pub(crate) fn deleted(&self) -> Option<Hlc> {
        self.deleted
    }

    /// When `field` was last written, if it ever was.
    pub(crate) fn written(&self, field: &str) -> Option<Hlc> {
        self.fields.get(field).map(|v| v.hlc)
    }

    /// The latest timestamp it holds.
    pub(crate) fn latest(&self) -> Option<Hlc> {
        let fields = self.fields.values().map(|v| v.hlc).max();
        self.deleted.max(self.created).max(fields)
    }

    /// Changes that give the state these versions describe, for reconciling: a delete, a
    /// create and an update per timestamp, with the values of `row` (or those kept, while
    /// there is no row). Fields whose value is neither in a row nor kept are left out:
    /// nothing needs them.
    pub(crate) fn synthesize(
        &self,
        key: &ObjectKey,
        pk: &Pk,
        row: Option<&Object>,
        def: &CollectionDef,
    ) -> Vec<LogEntry> {
        let object = object_id(key);
        let entry = |hlc: Hlc, op, fields| LogEntry {
            id: synthetic_id(&object, op, hlc),
            device: hlc.device,
            hlc,
            collection: key.0.clone(),
            pk: pk.clone(),
            op,
            fields,
            schema_version: def.schema_version(),
        };
        let value_of = |field: &str, version: &FieldVersion| match row {
            Some(row) => Some(row.get(field).cloned().unwrap_or(Value::Null)),
            None => version.value.clone(),
        };
        let mut entries = Vec::new();
        if let Some(deleted) = self.deleted {
            entries.push(entry(deleted, EntryOp::Delete, Object::new()));
        }
        let mut by_stamp: BTreeMap<Hlc, Object> = BTreeMap::new();
        for (field, version) in &self.fields {
            if let Some(value) = value_of(field, version) {
                by_stamp
                    .entry(version.hlc)
                    .or_default()
                    .insert(field.clone(), value);
            }
        }
        // The create, unless a delete is later (then it decides nothing). It carries every
        // field's latest value: a later write of a field says the same with its own
        // timestamp, which wins, and a create that names all its fields passes any check.
        // Without a row to give a required field's value (a later local delete, in the log,
        // removed it), it is left out too: that delete decides. A required field with a
        // default and no version (added after the create) needs no value: the create's
        // default is its value.
        let complete = |fields: &BTreeMap<Hlc, Object>| {
            row.is_some()
                || def.fields().iter().filter(|f| !f.optional).all(|f| {
                    def.pk_fields().contains(&f.name)
                        || (def.default_of(&f.name).is_some() && !self.fields.contains_key(&f.name))
                        || fields.values().any(|values| values.contains_key(&f.name))
                })
        };
        if let Some(created) = self.live_since().filter(|_| complete(&by_stamp)) {
            let mut fields: Object = by_stamp
                .values()
                .flatten()
                .map(|(f, v)| (f.clone(), v.clone()))
                .collect();
            // Its key, whatever was kept: a create names its object.
            for (field, value) in def.pk_fields().iter().zip(pk.values()) {
                fields.insert(field.clone(), value.clone());
            }
            by_stamp.remove(&created);
            entries.push(entry(created, EntryOp::Create, fields));
        }
        for (hlc, fields) in by_stamp {
            entries.push(entry(hlc, EntryOp::Update, fields));
        }
        entries
    }

    fn encode(&self) -> Result<Vec<u8>> {
        let mut stamps: Vec<Hlc> = Vec::new();
        let mut stamp = |hlc: Hlc| match stamps.iter().position(|s| *s == hlc) {
            Some(index) => index,
            None => {
                stamps.push(hlc);
                stamps.len() - 1
            }
        };
        let deleted = self.deleted.map(&mut stamp);
        let created = self.created.map(&mut stamp);
        let fields = self
            .fields
            .iter()
            .map(|(name, version)| {
                let name = std::borrow::Cow::Borrowed(name.as_str());
                (name, stamp(version.hlc), version.value.as_ref())
            })
            .collect();
        let compact = Compact {
            stamps,
            deleted,
            created,
            fields,
        };
        // Room for the usual size (a timestamp takes about 30 bytes, a field its name and a
        // few more), so that encoding rarely grows the buffer.
        let mut bytes = Vec::with_capacity(64 + 32 * compact.fields.len());
        bytes.push(FORMAT);
        rmp_serde::encode::write(&mut bytes, &compact).map_err(|e| Error::CorruptEntry {
            id: "versions".into(),
            problem: format!("the versions of an object cannot be encoded: {e}"),
        })?;
        Ok(bytes)
    }

    /// The versions a row of the index holds, or why they cannot be read.
    pub(crate) fn decode(id: &str, bytes: &[u8]) -> Result<Self> {
        match bytes.split_first() {
            Some((&FORMAT, body)) => {
                let compact = Compact::read(id, body)?;
                let stamp = |index: usize| stamp_at(id, &compact.stamps, index);
                let mut fields = BTreeMap::new();
                for (name, index, value) in compact.fields {
                    let hlc = stamp(index)?;
                    fields.insert(name.into_owned(), FieldVersion { hlc, value });
                }
                Ok(Versions {
                    deleted: compact.deleted.map(stamp).transpose()?,
                    created: compact.created.map(stamp).transpose()?,
                    fields,
                })
            }
            Some((&FIRST_FORMAT, body)) => rmp_serde::from_slice(body)
                .map_err(|e| corrupt(id, format!("they do not decode: {e}"))),
            Some((other, _)) => Err(corrupt(
                id,
                format!("format {other}, this version reads {FIRST_FORMAT} and {FORMAT}"),
            )),
            None => Err(corrupt(id, "empty".into())),
        }
    }

    /// The latest timestamp of the versions `bytes` hold for object `id`, checked as
    /// [`Versions::decode`] checks them but without building them (for versions that are
    /// stored as they came).
    pub(crate) fn latest_of(id: &str, bytes: &[u8]) -> Result<Option<Hlc>> {
        let Some((&FORMAT, body)) = bytes.split_first() else {
            return Ok(Self::decode(id, bytes)?.latest());
        };
        let compact = Compact::read(id, body)?;
        let named = compact.deleted.into_iter().chain(compact.created);
        let mut latest = None;
        for index in named.chain(compact.fields.iter().map(|(_, index, _)| *index)) {
            latest = latest.max(Some(stamp_at(id, &compact.stamps, index)?));
        }
        Ok(latest)
    }

    /// The row storing these versions for object `id`.
    pub(crate) fn to_row(&self, id: String) -> Result<Object> {
        let mut row = Object::new();
        row.insert("object".into(), Value::Text(id));
        row.insert("state".into(), Value::Blob(self.encode()?));
        Ok(row)
    }

    /// The id and versions a row of the index holds.
    pub(crate) fn from_row(row: &Object) -> Result<(String, Self)> {
        let (id, bytes) = Self::parts_of(row)?;
        Ok((id.to_owned(), Self::decode(id, bytes)?))
    }

    /// [`Versions::from_row`] of a row read as the values of [`ROW_FIELDS`], in that order.
    pub(crate) fn from_values(values: Vec<Value>) -> Result<(String, Self)> {
        let mut values = values.into_iter();
        let (Some(Value::Text(id)), state) = (values.next(), values.next()) else {
            return Err(without_object());
        };
        let Some(Value::Blob(bytes)) = state else {
            return Err(corrupt(&id, "no state".into()));
        };
        let versions = Self::decode(&id, &bytes)?;
        Ok((id, versions))
    }

    /// The id and the latest timestamp of the versions a row of the index holds, checked
    /// (see [`Versions::latest_of`]).
    pub(crate) fn latest_of_row(row: &Object) -> Result<(&str, Option<Hlc>)> {
        let (id, bytes) = Self::parts_of(row)?;
        Ok((id, Self::latest_of(id, bytes)?))
    }

    /// The id and the encoded versions of a row of the index.
    fn parts_of(row: &Object) -> Result<(&str, &[u8])> {
        let id = row
            .get("object")
            .and_then(Value::as_text)
            .ok_or_else(without_object)?;
        let Some(Value::Blob(bytes)) = row.get("state") else {
            return Err(corrupt(id, "no state".into()));
        };
        Ok((id, bytes))
    }
}

/// The error for a row of the versions index that names no object.
fn without_object() -> Error {
    Error::CorruptEntry {
        id: "versions".into(),
        problem: "a row of the versions index without its object".into(),
    }
}

/// The error for the versions of object `id` that cannot be read.
fn corrupt(id: &str, problem: String) -> Error {
    Error::CorruptEntry {
        id: format!("the versions of {id:?}"),
        problem,
    }
}

impl<'a> Compact<'a, Value> {
    /// Reads the stored form of the versions of object `id`, checked: its fields come in
    /// ascending order of their names, each once, as [`Versions::encode`] writes them (a
    /// field twice would leave it unclear which version holds).
    fn read(id: &str, body: &'a [u8]) -> Result<Self> {
        let compact: Self = rmp_serde::from_slice(body)
            .map_err(|e| corrupt(id, format!("they do not decode: {e}")))?;
        for pair in compact.fields.windows(2) {
            if let [(before, ..), (name, ..)] = pair {
                if name <= before {
                    let problem = format!("field `{name}` after `{before}`: out of order or twice");
                    return Err(corrupt(id, problem));
                }
            }
        }
        Ok(compact)
    }
}

/// The timestamp at `index` of the `stamps` stored for object `id`.
fn stamp_at(id: &str, stamps: &[Hlc], index: usize) -> Result<Hlc> {
    stamps.get(index).copied().ok_or_else(|| {
        corrupt(
            id,
            format!(
                "they name timestamp {index} (from 0), and {} are stored",
                stamps.len()
            ),
        )
    })
}

/// The id of a synthesized change: the same for the same change of the same object, so a
/// receiver that stored one (held, say) recognises it when it comes again.
fn synthetic_id(object: &str, op: EntryOp, hlc: Hlc) -> Uuid {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(format!(
        "{object}\u{0}{op:?}\u{0}{}\u{0}{}",
        hlc.clock_text(),
        hlc.device.0
    ));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid_v8(bytes)
}

/// Whether `id` may be a synthesized change's (version 8; entries made by writes have
/// version 7).
pub(crate) fn is_synthetic(id: Uuid) -> bool {
    id.get_version_num() == 8
}

/// A UUID of version 8 (custom) and the RFC 4122 variant from 16 bytes.
fn uuid_v8(mut bytes: [u8; 16]) -> Uuid {
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

/// The key of an object from its text (as the log and the index store it).
pub(crate) fn pk_from_text(text: &str) -> Result<Pk> {
    serde_json::from_str(text).map_err(|e| Error::CorruptEntry {
        id: text.to_owned(),
        problem: format!("an object key that does not read back: {e}"),
    })
}

/// Whether the versions index holds any object of `collection`.
pub(crate) async fn any_of(exec: Exec<'_>, collection: &str) -> Result<bool> {
    // The ids of its objects, and only those, start with its name and the separator; the
    // character after the separator ends them.
    let after_ids = char::from_u32(SEPARATOR as u32 + 1).unwrap_or(SEPARATOR);
    let filter = Filter::all()
        .gte("object", format!("{collection}{SEPARATOR}"))
        .lt("object", format!("{collection}{after_ids}"));
    let found = exec
        .run(Operation::find_one(VERSIONS_COLLECTION, Query::new(filter)))
        .await?
        .into_found()?;
    Ok(found.is_some())
}

/// What [`load`] found: the versions of objects, and the objects whose row does not read.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// The versions of the objects that have a row that reads.
    pub(crate) versions: HashMap<ObjectKey, Versions>,
    /// The objects whose row does not read: what this device knows of them is not known.
    pub(crate) damaged: Unread,
}

/// The versions of the `objects` that have any; a row that does not read is passed over and
/// its object named in [`Loaded::damaged`].
pub(crate) async fn load(exec: Exec<'_>, objects: &[ObjectKey]) -> Result<Loaded> {
    let mut found = Loaded {
        versions: HashMap::with_capacity(objects.len()),
        ..Loaded::default()
    };
    let mut filters = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for (collection, split) in key_runs::split_by_collection(objects) {
        for (first, last) in split.runs {
            let id = |uuid| object_id(&(collection.to_owned(), key_runs::text_of(uuid)));
            filters.push(
                Filter::all()
                    .gte("object", id(first))
                    .lte("object", id(last)),
            );
        }
        ids.extend(split.rest.into_iter().map(object_id));
    }
    for chunk in ids.chunks(LOOKUP_CHUNK) {
        let ids = chunk.iter().map(|id| Value::from(id.as_str()));
        filters.push(Filter::all().is_in("object", ids));
    }
    let asked: HashSet<&ObjectKey> = objects.iter().collect();
    for filter in filters {
        let query = Query::new(filter);
        for row in exec
            .find_values(VERSIONS_COLLECTION, query, &ROW_FIELDS)
            .await?
        {
            // Found by its id, which therefore reads.
            let Some(key) = row.first().and_then(Value::as_text).and_then(object_of) else {
                continue;
            };
            if !asked.contains(&key) {
                continue;
            }
            match Versions::from_values(row) {
                Ok((_, versions)) => {
                    found.versions.insert(key, versions);
                }
                Err(e) => found.damaged.note(key, e),
            }
        }
    }
    Ok(found)
}

/// The versions of one object to store.
pub(crate) type ToStore = (ObjectKey, Versions);

/// The steps storing the versions of these objects (each replaces the object's row of
/// versions, if it has one), and, with `clock`, the latest timestamp applied, if later than
/// what `before` knows (or `before`'s row does not read: then the later of the two).
pub(crate) fn store_steps(
    versions: Vec<ToStore>,
    clock: Option<Hlc>,
    before: AppliedClock,
) -> Result<Vec<BatchStep>> {
    let mut steps = Vec::with_capacity(versions.len() + 1);
    push_store_steps(versions, clock, before, &mut steps)?;
    Ok(steps)
}

/// [`store_steps`], appending to `steps` (which a caller sizes for the whole batch, so that a
/// batch of thousands of steps is not copied again as it grows).
pub(crate) fn push_store_steps(
    versions: Vec<ToStore>,
    clock: Option<Hlc>,
    before: AppliedClock,
    steps: &mut Vec<BatchStep>,
) -> Result<()> {
    steps.reserve(versions.len() + 1);
    for (key, versions) in versions {
        steps.push(put_step(versions.to_row(object_id(&key))?));
    }
    let latest = if before.replace {
        clock.max(before.latest)
    } else {
        clock.filter(|c| before.latest.is_none_or(|b| *c > b))
    };
    if let Some(latest) = latest {
        let marker = Versions {
            created: Some(latest),
            ..Versions::default()
        };
        steps.push(put_step(marker.to_row(CLOCK_OBJECT.to_owned())?));
    }
    Ok(())
}

/// The step storing a row of the index: a put, which replaces the row of the same object.
pub(crate) fn put_step(row: Object) -> BatchStep {
    BatchStep::new(Operation::put(VERSIONS_COLLECTION, row))
}

/// The latest timestamp applied, as the index keeps it, for a writer of versions to compare
/// with ([`store_steps`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AppliedClock {
    /// The latest timestamp applied.
    pub(crate) latest: Option<Hlc>,
    /// The index's row for it does not read: `latest` is the latest timestamp of the objects'
    /// versions that read, and the next writer replaces the row.
    replace: bool,
}

/// The latest timestamp applied: as the index keeps it, or, if that row does not read, the
/// latest timestamp of the objects' versions that read (the whole index is read then, a
/// page at a time, until a writer replaces the row).
pub(crate) async fn latest_applied(exec: Exec<'_>) -> Result<AppliedClock> {
    if let Ok(latest) = clock_row(exec).await? {
        return Ok(AppliedClock {
            latest,
            replace: false,
        });
    }
    let mut latest = None;
    each_row(exec, |row| {
        if let [Value::Text(id), Value::Blob(bytes)] = row.as_slice() {
            latest = latest.max(Versions::latest_of(id, bytes).ok().flatten());
        }
    })
    .await?;
    Ok(AppliedClock {
        latest,
        replace: true,
    })
}

/// Hands every row of the index (the clock's too), as the values of [`ROW_FIELDS`], to
/// `each`, reading them a page at a time in the order of their ids.
pub(crate) async fn each_row(exec: Exec<'_>, mut each: impl FnMut(Vec<Value>)) -> Result<()> {
    const PAGE: u64 = 5_000;
    let mut after: Option<String> = None;
    loop {
        let mut filter = Filter::all();
        if let Some(after) = &after {
            filter = filter.gt("object", after.as_str());
        }
        let query = Query::new(filter).order_asc("object").limit(PAGE);
        let rows = exec
            .find_values(VERSIONS_COLLECTION, query, &ROW_FIELDS)
            .await?;
        let full = rows.len() as u64 == PAGE;
        after = rows
            .last()
            .and_then(|row| row.first()?.as_text().map(str::to_owned));
        rows.into_iter().for_each(&mut each);
        if !full || after.is_none() {
            return Ok(());
        }
    }
}

/// What the clock's row of the index says: `Err` with why it does not read.
async fn clock_row(exec: Exec<'_>) -> Result<std::result::Result<Option<Hlc>, Error>> {
    let filter = Filter::all().eq("object", CLOCK_OBJECT);
    let rows = exec.find(VERSIONS_COLLECTION, Query::new(filter)).await?;
    Ok(match rows.first() {
        Some(row) => Versions::from_row(row).map(|(_, v)| v.created),
        None => Ok(None),
    })
}

/// Folds `entries` (by object) into the objects' versions as stored (`base`, which gives
/// them up), each first given the values of its row as it was (`rows`: a delete among the
/// entries may remove it) and then pruned for whether its object `exists` after them.
pub(crate) fn fold_objects<'e, S: std::hash::BuildHasher>(
    registry: &Registry,
    base: &mut HashMap<ObjectKey, Versions>,
    rows: &HashMap<ObjectKey, &Object>,
    entries: impl IntoIterator<Item = (ObjectKey, Vec<&'e LogEntry>)>,
    exists: &std::collections::HashSet<ObjectKey, S>,
) -> Vec<ToStore> {
    let entries = entries.into_iter();
    let mut out = Vec::with_capacity(entries.size_hint().0);
    for (key, entries) in entries {
        let Ok(def) = registry.collection(&key.0) else {
            continue;
        };
        let mut versions = base.remove(&key).unwrap_or_default();
        // An object that exists afterwards keeps no values: its row has them.
        let exists = exists.contains(&key);
        if let Some(row) = rows.get(&key).filter(|_| !exists) {
            versions.fill(row);
        }
        for entry in entries {
            versions.fold(def, entry, !exists);
        }
        versions.prune(exists);
        out.push((key, versions));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::{Clock, DeviceId};
    use crate::reconcile::object_state;
    use storex_core::object;

    fn note() -> CollectionDef {
        CollectionDef::new("note")
            .field("id", FieldType::Int)
            .field("title", FieldType::Text)
            .optional_field("body", FieldType::Text)
            .primary_key(["id"])
    }

    fn change(clock: &Clock, op: EntryOp, fields: Object) -> LogEntry {
        at(clock.now(), op, fields)
    }

    fn at(hlc: Hlc, op: EntryOp, fields: Object) -> LogEntry {
        LogEntry {
            id: Uuid::now_v7(),
            device: hlc.device,
            hlc,
            collection: "note".into(),
            pk: Pk::from(1),
            op,
            fields,
            schema_version: 1,
        }
    }

    /// The versions of `entries`, pruned for the state they give, and that state.
    fn versions_of(def: &CollectionDef, entries: &[LogEntry]) -> (Versions, Option<Object>) {
        let mut versions = Versions::default();
        for entry in entries {
            versions.fold(def, entry, true);
        }
        let state = object_state(def, entries.iter());
        versions.prune(state.is_some());
        (versions, state)
    }

    #[test]
    fn the_synthesized_changes_give_the_state_the_real_ones_gave() {
        let def = note();
        let key: ObjectKey = ("note".into(), "[1]".into());
        let (a, b) = (DeviceId::random(), DeviceId::random());
        let stamp = |millis: u64, device| Hlc {
            millis,
            counter: 0,
            device,
        };
        let create = at(
            stamp(1_000, a),
            EntryOp::Create,
            object! { "id" => 1, "title" => "t1" },
        );
        let body = at(stamp(2_000, b), EntryOp::Update, object! { "body" => "b" });
        let title = at(
            stamp(3_000, a),
            EntryOp::Update,
            object! { "title" => "t2" },
        );
        let delete = at(stamp(4_000, b), EntryOp::Delete, Object::new());
        let after_delete = at(
            stamp(6_000, a),
            EntryOp::Update,
            object! { "title" => "t3" },
        );
        let histories = [
            vec![create.clone(), body.clone(), title.clone()],
            vec![create.clone(), body.clone(), delete.clone()],
            vec![create.clone(), delete.clone(), after_delete.clone()],
        ];
        for history in histories {
            let (versions, state) = versions_of(&def, &history);
            let synthetic = versions.synthesize(&key, &Pk::from(1), state.as_ref(), &def);
            assert_eq!(object_state(&def, synthetic.iter()), state, "{history:?}");
            // Each real change is held exactly, or lost to a later one.
            for entry in &history {
                let later = history.iter().any(|e| e.hlc > entry.hlc);
                assert!(versions.covers(entry) || later, "{entry:?}");
            }
        }
        // Deleted, with a rename after the delete: a create that comes later (with an older
        // timestamp than the rename) brings the object back with the kept title.
        let history = [create.clone(), delete.clone(), after_delete.clone()];
        let (versions, state) = versions_of(&def, &history);
        assert_eq!(state, None);
        let recreate = at(
            stamp(5_000, b),
            EntryOp::Create,
            object! { "id" => 1, "title" => "new" },
        );
        let mut known = versions.synthesize(&key, &Pk::from(1), None, &def);
        known.push(recreate.clone());
        let mut real = history.to_vec();
        real.push(recreate);
        let expected = object_state(&def, real.iter());
        assert_eq!(
            expected.as_ref().and_then(|o| o.get("title")),
            Some(&Value::from("t3"))
        );
        assert_eq!(object_state(&def, known.iter()), expected);
    }

    #[test]
    fn rows_round_trip_and_damaged_ones_are_reported_not_panicked_on() {
        let def = note();
        let clock = Clock::new(DeviceId::random());
        let mut versions = Versions::default();
        versions.fold(
            &def,
            &change(
                &clock,
                EntryOp::Create,
                object! { "id" => 1, "title" => "t" },
            ),
            true,
        );
        let row = versions.to_row("note\u{1f}[1]".into()).expect("row");
        let (id, back) = Versions::from_row(&row).expect("read back");
        assert_eq!(
            (object_of(&id), back),
            (Some(("note".into(), "[1]".into())), versions.clone())
        );
        // Read as values: the same.
        let values = ROW_FIELDS.iter().map(|f| row[*f].clone()).collect();
        assert_eq!(
            Versions::from_values(values).expect("read back"),
            (id.clone(), versions)
        );
        assert_eq!(object_of(CLOCK_OBJECT), None);
        for bytes in [
            vec![],
            vec![FORMAT],
            vec![FORMAT, 0xc1, 0xff],
            vec![9, 1, 2],
        ] {
            let mut damaged = row.clone();
            damaged.insert("state".into(), Value::Blob(bytes));
            assert!(Versions::from_row(&damaged).is_err());
            assert!(Versions::latest_of_row(&damaged).is_err());
            let values = ROW_FIELDS.iter().map(|f| damaged[*f].clone()).collect();
            assert!(Versions::from_values(values).is_err());
        }
        assert!(Versions::from_row(&Object::new()).is_err());
        assert!(Versions::latest_of_row(&Object::new()).is_err());
        assert!(Versions::from_values(Vec::new()).is_err());
        assert!(Versions::from_values(vec![Value::from("x")]).is_err());
        assert!(Versions::from_values(vec![Value::Null, Value::Blob(vec![FORMAT])]).is_err());
        // A timestamp named by an index past the ones stored.
        let mut dangling = vec![FORMAT];
        let compact: Compact<'_, Value> = Compact {
            stamps: vec![clock.now()],
            deleted: None,
            created: Some(1),
            fields: Vec::new(),
        };
        rmp_serde::encode::write(&mut dangling, &compact).expect("encoded");
        assert!(Versions::decode("x", &dangling).is_err());
        assert!(Versions::latest_of("x", &dangling).is_err());
        // A field twice (or out of order): which version holds would be unclear.
        for names in [["title", "title"], ["title", "body"]] {
            let mut repeated = vec![FORMAT];
            let compact: Compact<'_, Value> = Compact {
                stamps: vec![clock.now(), clock.now()],
                deleted: None,
                created: Some(0),
                fields: vec![(names[0].into(), 1, None), (names[1].into(), 0, None)],
            };
            rmp_serde::encode::write(&mut repeated, &compact).expect("encoded");
            assert!(Versions::decode("x", &repeated).is_err(), "{names:?}");
            assert!(Versions::latest_of("x", &repeated).is_err(), "{names:?}");
        }
        // A field's timestamp past the ones stored: read by the check too.
        let mut dangling = vec![FORMAT];
        let compact: Compact<'_, Value> = Compact {
            stamps: vec![clock.now()],
            deleted: Some(0),
            created: Some(0),
            fields: vec![("title".into(), 1, None)],
        };
        rmp_serde::encode::write(&mut dangling, &compact).expect("encoded");
        assert!(Versions::decode("x", &dangling).is_err());
        assert!(Versions::latest_of("x", &dangling).is_err());
    }

    #[test]
    fn versions_are_stored_with_each_timestamp_once_and_the_first_format_still_reads() {
        let def = note();
        let clock = Clock::new(DeviceId::random());
        let mut versions = Versions::default();
        let create = change(
            &clock,
            EntryOp::Create,
            object! { "id" => 1, "title" => "t", "body" => "b" },
        );
        versions.fold(&def, &create, false);
        let update = change(&clock, EntryOp::Update, object! { "title" => "t2" });
        versions.fold(&def, &update, true);
        let delete = change(&clock, EntryOp::Delete, Object::new());
        versions.fold(&def, &delete, true);
        let mut first = vec![FIRST_FORMAT];
        rmp_serde::encode::write(&mut first, &versions).expect("encoded");
        let now = versions.encode().expect("encoded");
        assert_eq!(now[0], FORMAT);
        assert_eq!(Versions::decode("x", &first).expect("format 1"), versions);
        assert_eq!(Versions::decode("x", &now).expect("format 2"), versions);
        // The check finds the latest timestamp of either format without building them:
        // the delete's here, and an update's when it is the latest.
        for bytes in [&first, &now] {
            assert_eq!(
                Versions::latest_of("x", bytes).expect("checked"),
                Some(delete.hlc)
            );
        }
        let mut renamed = Versions::default();
        renamed.fold(&def, &create, false);
        renamed.fold(&def, &update, false);
        let bytes = renamed.encode().expect("encoded");
        assert_eq!(
            Versions::latest_of("x", &bytes).expect("checked"),
            Some(update.hlc)
        );
        assert_eq!(renamed.latest(), Some(update.hlc));
        // Three timestamps, stored once each (about 29 bytes a timestamp): the create's
        // stamps the create and two fields.
        assert!(
            now.len() + 50 <= first.len(),
            "{} bytes against {}",
            now.len(),
            first.len()
        );
    }

    #[test]
    fn synthesized_changes_keep_their_ids_and_a_create_without_its_values_is_left_out() {
        let def = note();
        let key: ObjectKey = ("note".into(), "[1]".into());
        let device = DeviceId::random();
        let stamp = |millis: u64| Hlc {
            millis,
            counter: 0,
            device,
        };
        let mut versions = Versions::default();
        versions.fold(
            &def,
            &at(
                stamp(1),
                EntryOp::Create,
                object! { "id" => 1, "title" => "t" },
            ),
            true,
        );
        versions.fold(
            &def,
            &at(stamp(2), EntryOp::Update, object! { "body" => "b" }),
            true,
        );
        let row = object! { "id" => 1, "title" => "t", "body" => "b" };
        let once = versions.synthesize(&key, &Pk::from(1), Some(&row), &def);
        let again = versions.synthesize(&key, &Pk::from(1), Some(&row), &def);
        let ids = |entries: &[LogEntry]| entries.iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(&once), ids(&again));
        assert_eq!(once.len(), 2);
        assert!(once.iter().all(|e| e.id.get_version_num() == 8));
        // The row is gone (a local delete, still in the log, removed it) and the values went
        // with it: no create that could not be applied.
        versions.prune(true);
        let without = versions.synthesize(&key, &Pk::from(1), None, &def);
        assert!(
            without.iter().all(|e| e.op != EntryOp::Create),
            "{without:?}"
        );
    }

    /// Versions sent without a row (a fast-sync merge) of an object created before a
    /// required field with a default was added still give its create, with the default.
    #[test]
    fn a_create_from_before_a_required_field_with_a_default_is_synthesized_with_it() {
        let before = note();
        let after = note()
            .field("pinned", FieldType::Bool)
            .default_value("pinned", false);
        let key: ObjectKey = ("note".into(), "[1]".into());
        let created = Hlc {
            millis: 1,
            counter: 0,
            device: DeviceId::random(),
        };
        let mut versions = Versions::default();
        let create = at(
            created,
            EntryOp::Create,
            object! { "id" => 1, "title" => "t" },
        );
        versions.fold(&before, &create, true);
        let synthesized = versions.synthesize(&key, &Pk::from(1), None, &after);
        assert_eq!(
            object_state(&after, synthesized.iter()),
            Some(object! { "id" => 1, "title" => "t", "body" => Value::Null, "pinned" => false })
        );
        // A required field with a version but no value kept is still not made up.
        let mut pinned = Versions::default();
        pinned.fold(&after, &create, false);
        let synthesized = pinned.synthesize(&key, &Pk::from(1), None, &after);
        assert!(
            synthesized.iter().all(|e| e.op != EntryOp::Create),
            "{synthesized:?}"
        );
    }

    /// A device on MemoryBackend with the `note` collection.
    async fn device_with_notes() -> crate::SyncDevice {
        let registry = Registry::builder()
            .collection(note())
            .build()
            .expect("registry");
        let backend: std::sync::Arc<dyn storex_core::StorageBackend> =
            std::sync::Arc::new(storex_core::MemoryBackend::new());
        crate::SyncDevice::open(
            registry,
            backend,
            Clock::new(DeviceId::random()),
            crate::SyncOptions::default(),
        )
        .await
        .expect("device")
    }

    /// A run of consecutive keys is looked up as a key range: it finds exactly the versions
    /// asked for, none of the stored ones just outside the run, none of another collection.
    #[tokio::test]
    async fn versions_of_a_run_of_keys_are_found_exactly() {
        let device = device_with_notes().await;
        let storage = device.storage();
        let exec = Exec::Storage(storage);
        let clock = Clock::new(DeviceId::random());
        let key = |collection: &str, n: u128| -> ObjectKey {
            (
                collection.to_owned(),
                crate::entry::pk_text(&Pk::from(Uuid::from_u128(n))),
            )
        };
        let stored: Vec<ToStore> = (100..300)
            .map(|n| key("note", n))
            .chain([key("other", 150)])
            .map(|k| {
                let versions = Versions {
                    created: Some(clock.now()),
                    ..Versions::default()
                };
                (k, versions)
            })
            .collect();
        let steps = store_steps(stored, None, AppliedClock::default()).expect("steps");
        exec.run(Operation::Batch { steps }).await.expect("stored");
        // A run inside the stored keys, one reaching past their end, and single keys.
        let asked: Vec<ObjectKey> = (120..220)
            .chain(250..350)
            .chain([90, 299, 400])
            .map(|n| key("note", n))
            .collect();
        let found = load(exec, &asked).await.expect("load");
        assert!(found.damaged.objects.is_empty());
        let mut got: Vec<u128> = found
            .versions
            .keys()
            .map(|(collection, pk)| {
                assert_eq!(collection, "note");
                crate::key_runs::uuid_of_pk_text(pk)
                    .expect("a key")
                    .as_u128()
            })
            .collect();
        got.sort_unstable();
        let want: Vec<u128> = (120..220).chain(250..300).collect();
        assert_eq!(got, want);
    }

    /// Whether the index holds objects of a collection is told by its own ids only: not by
    /// a collection whose name starts with its name (`note` and `notes`), nor by the
    /// clock's row.
    #[tokio::test]
    async fn the_index_knows_which_collections_it_holds_objects_of() {
        let device = device_with_notes().await;
        let exec = Exec::Storage(device.storage());
        let clock = Clock::new(DeviceId::random());
        let keys = [("notes", 1u128), ("not", 2), ("other", 3)];
        let stored: Vec<ToStore> = keys
            .iter()
            .map(|(collection, n)| {
                let key = (
                    (*collection).to_owned(),
                    key_runs::text_of(Uuid::from_u128(*n)),
                );
                let versions = Versions {
                    created: Some(clock.now()),
                    ..Versions::default()
                };
                (key, versions)
            })
            .collect();
        let steps = store_steps(stored, Some(clock.now()), AppliedClock::default()).expect("steps");
        exec.run(Operation::Batch { steps }).await.expect("stored");
        for (collection, held) in [
            ("note", false),
            ("notes", true),
            ("not", true),
            ("no", false),
            ("other", true),
        ] {
            let any = any_of(exec, collection).await.expect("asked");
            assert_eq!(any, held, "{collection:?}");
        }
    }

    /// A peer that never saw an object's create sends what it knows of it as synthesized
    /// changes (a fast-sync merge does); one this device holds (same id) is a duplicate, even
    /// where the object would otherwise be reconciled from its versions alone.
    #[tokio::test]
    async fn a_synthesized_update_this_device_holds_is_a_duplicate() {
        let device = device_with_notes().await;
        let (a, b) = (
            Clock::new(DeviceId::random()),
            Clock::new(DeviceId::random()),
        );
        let create = change(&a, EntryOp::Create, object! { "id" => 1, "title" => "t" });
        let update = change(
            &b,
            EntryOp::Update,
            object! { "title" => "u", "body" => "b" },
        );
        let later = change(&a, EntryOp::Update, object! { "title" => "v" });
        device
            .integrate(vec![create, update.clone(), later])
            .await
            .expect("integrated");
        // The peer knows only `update`: as versions, sent back as a synthesized change.
        let mut theirs = Versions::default();
        theirs.fold(&note(), &update, true);
        let key = crate::reconcile::object_key(&update);
        let sent = theirs.synthesize(&key, &Pk::from(1), None, &note());
        assert_eq!(sent.len(), 1, "{sent:?}");
        let report = device.integrate(sent).await.expect("integrated");
        assert_eq!((report.duplicates, report.integrated), (1, 0), "{report:?}");
    }

    /// Versions that keep values say the object has no row here (a fast sync stored them
    /// before the row came, say): an update then goes the general way, which recreates the
    /// row from the kept values, instead of updating a row that is not there.
    #[tokio::test]
    async fn an_update_for_an_object_whose_versions_keep_values_brings_back_its_row() {
        let device = device_with_notes().await;
        let peer = Clock::new(DeviceId::random());
        let create = change(
            &peer,
            EntryOp::Create,
            object! { "id" => 1, "title" => "t" },
        );
        let mut kept = Versions::default();
        kept.fold(&note(), &create, true);
        kept.prune(false);
        let key = crate::reconcile::object_key(&create);
        let row = kept.to_row(object_id(&key)).expect("row");
        device
            .storage()
            .execute_as(
                Operation::create(VERSIONS_COLLECTION, row),
                storex_core::Origin::Sync,
            )
            .await
            .expect("versions stored");
        let update = change(&peer, EntryOp::Update, object! { "body" => "b" });
        device.integrate(vec![update]).await.expect("integrated");
        let stored = device
            .storage()
            .find_by_pk("note", 1)
            .await
            .expect("read")
            .expect("the row is back");
        assert_eq!(
            (stored.get("title"), stored.get("body")),
            (Some(&Value::from("t")), Some(&Value::from("b")))
        );
    }

    /// One change of a generated history: (millis, op 0 create / 1 update / 2 delete,
    /// title, body).
    type Step = (u64, u8, Option<u8>, Option<Option<u8>>);

    /// The entry a generated step makes, at a timestamp of its own (`counter`: its place).
    fn step_entry(device: DeviceId, counter: u32, (millis, op, title, body): Step) -> LogEntry {
        let hlc = Hlc {
            millis,
            counter,
            device,
        };
        let mut fields = Object::new();
        if let Some(title) = title {
            fields.insert("title".into(), Value::from(format!("t{title}")));
        }
        if let Some(body) = body {
            let body = body.map_or(Value::Null, |b| Value::from(format!("b{b}")));
            fields.insert("body".into(), body);
        }
        match op {
            0 => {
                fields.insert("id".into(), Value::from(1));
                fields
                    .entry("title".into())
                    .or_insert_with(|| Value::from("t"));
                at(hlc, EntryOp::Create, fields)
            }
            1 => at(hlc, EntryOp::Update, fields),
            _ => at(hlc, EntryOp::Delete, Object::new()),
        }
    }

    /// `row` after the updates among `operations` (the only kind an existing object that
    /// receives updates gets).
    fn updated(mut row: Object, operations: &[Operation]) -> Object {
        for operation in operations {
            match operation {
                Operation::UpdateByPk { changes, .. } => row.extend(changes.clone()),
                other => panic!("an update was expected: {other:?}"),
            }
        }
        row
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(4_096))]

        /// Reconciling updates from an object's versions alone gives what reconciling them
        /// with the synthesized changes and the row gives: the same row, conflicts, ignored
        /// fields and held entries.
        #[test]
        fn updates_reconciled_from_versions_alone_match_the_synthesized_changes(
            history in proptest::collection::vec(
                (1u64..40, 0u8..3, proptest::option::of(0u8..3),
                 proptest::option::of(proptest::option::of(0u8..3))),
                1..6,
            ),
            updates in proptest::collection::vec(
                (1u64..50, proptest::option::of(0u8..3),
                 proptest::option::of(proptest::option::of(0u8..3)),
                 proptest::option::of(1i64..3), proptest::bool::ANY, proptest::bool::ANY),
                1..5,
            ),
            body_added_later in proptest::bool::ANY,
        ) {
            // `body` has the default its migration gave the rows it found.
            let def = note().default_value("body", "migrated");
            let registry = Registry::builder()
                .collection(def.clone())
                .build()
                .expect("registry");
            let (a, b) = (DeviceId::random(), DeviceId::random());
            let mut history: Vec<LogEntry> = history
                .into_iter()
                .enumerate()
                .map(|(i, step)| step_entry(a, i as u32, step))
                .collect();
            // Every object that exists was created once at least.
            history.insert(0, step_entry(a, 99, (0, 0, Some(0), None)));
            let key = crate::reconcile::object_key(&history[0]);
            // With `body_added_later`, the creates were folded before the schema had `body`:
            // it has no version, or one older than the create (from an older update).
            let before_body = CollectionDef::new("note")
                .field("id", FieldType::Int)
                .field("title", FieldType::Text)
                .primary_key(["id"]);
            let mut versions = Versions::default();
            for entry in &history {
                let folded_by = match entry.op {
                    EntryOp::Create if body_added_later => &before_body,
                    _ => &def,
                };
                versions.fold(folded_by, entry, true);
            }
            let Some(real) = object_state(&def, history.iter()) else { return Ok(()) };
            versions.prune(true);
            // The row as these versions describe it.
            let synthesized = versions.synthesize(&key, &Pk::from(1), Some(&real), &def);
            let Some(mut row) = object_state(&def, synthesized.iter()) else {
                return Err(proptest::test_runner::TestCaseError::fail("no row"));
            };
            if versions.written("body").is_none() {
                // Created before `body` was added, and not written since: the migration
                // gave the row its default.
                row.insert("body".into(), Value::from("migrated"));
            }
            let incoming: Vec<(ObjectKey, LogEntry)> = updates
                .into_iter()
                .enumerate()
                .map(|(i, (millis, title, body, id, extra, bad))| {
                    let mut entry = step_entry(b, i as u32, (millis, 1, title, body));
                    if let Some(id) = id {
                        entry.fields.insert("id".into(), Value::from(id));
                    }
                    if extra {
                        entry.fields.insert("extra".into(), Value::from(1));
                    }
                    if bad {
                        entry.fields.insert("title".into(), Value::Null);
                    }
                    (crate::reconcile::object_key(&entry), entry)
                })
                .collect();
            let mut known = HashMap::new();
            known.insert(
                key.clone(),
                crate::reconcile::KnownObject {
                    entries: versions.synthesize(&key, &Pk::from(1), Some(&row), &def),
                    current: Some(row.clone()),
                },
            );
            let general = crate::reconcile::reconcile_keyed(
                &registry,
                &known,
                &HashMap::new(),
                incoming.clone(),
                crate::reconcile::Admission::Check,
            )
            .0;
            let summed = HashMap::from_iter([(key, &versions)]);
            let alone = crate::reconcile::reconcile_keyed(
                &registry,
                &HashMap::new(),
                &summed,
                incoming,
                crate::reconcile::Admission::Check,
            )
            .0;
            proptest::prop_assert_eq!(
                updated(row.clone(), &general.operations),
                updated(row, &alone.operations)
            );
            proptest::prop_assert_eq!(general.conflicts, alone.conflicts);
            proptest::prop_assert_eq!(general.existing, alone.existing);
            proptest::prop_assert_eq!(general.integrated, alone.integrated);
            proptest::prop_assert_eq!(general.held, alone.held);
            proptest::prop_assert_eq!(general.ignored_fields, alone.ignored_fields);
        }
    }
}
