//! The sync journal: one small record per logged write, turned into log entries when sync
//! needs them.
//!
//! An app write lands with **one** journal record instead of one indexed log row per changed
//! object. The record says what the write did, compactly: runs of objects of one collection
//! that the write created, updated with the same values, or deleted, by key, and the first
//! of the consecutive timestamps the write took. It does not repeat what the write stored:
//! a create's values are read back from its row when the record is indexed. So a 1,000-row
//! batch writes its rows plus a few bytes: the UUID key middleware gives one write
//! consecutive keys, and a run of them is its first key and a count (other UUID keys take 16
//! bytes each, as one byte string), where a log row per object doubled what SQLite had to
//! write.
//!
//! Whatever reads the log ([`ClientSyncLog`](crate::ClientSyncLog), reconciling, fast sync)
//! first *indexes* the journal: in one transaction it turns the records into the
//! log's rows and deletes them. Records are read in id order (UUIDv7: the order of the
//! writes). Entry `i` of a record gets the record's first timestamp plus `i`, and the
//! record's id with `i` in its last four bytes as its id, so indexing twice gives the same
//! entries.
//!
//! Reading a create's values at indexing time is sound because, until its record is
//! indexed, only this device's later writes can change the row: applying received changes
//! (and a fast-sync merge) indexes the journal first. A field a later local write changed
//! thus carries that later value, which wins over the create's anyway wherever both are
//! known; a row a later local delete removed yields no entry, as the delete, later, decides
//! the object's state without it. Updates keep their values in the record: the object they
//! name may not exist here. This assumes storex is the row's only writer: a plain SQL write,
//! a trigger or a cascade that changes the row before indexing rides along with the create.
//! A registry that does not define a create's collection cannot tell a deleted row from an
//! unknown table, so its record is passed over and stays, as one that does not read (below):
//! a storage that defines the collection indexes it.
//!
//! Push reads records before it indexes them ([`read_journal_part`], the records and their
//! creates' rows in one snapshot): it sends their entries, then settles them
//! ([`settle_part`]): those it sent go into the versions index on a device that compacts, and
//! are log rows already marked shared on one that does not, so each is written once. A record
//! another reader indexed in between is gone by then, and its entries, log rows already, are
//! marked shared. Read again after a crash, a create carries its row's values of that time:
//! later writes of this device's, whose own entries carry them too.
//!
//! A record that does not read (damaged, or written by a newer version in a format this one
//! does not know) is passed over by indexing and by push and stays in the journal: the
//! writes after it still sync, each push reports it, and a version that reads it indexes it
//! then. Its own writes wait meanwhile; their rows may take received changes in between
//! (which its creates then carry, under their older timestamps: the received ones, later,
//! still win where both are known), and [`SyncDevice::log_existing_rows`](crate::SyncDevice::log_existing_rows)
//! logs a row of one of its creates as a create of its own.
//!
//! Indexing is atomic (one transaction). Two indexers running at once would insert the same
//! entries: in one process the device's write-order lock keeps them apart, and across
//! processes the second notices that it deleted fewer records than it read and fails with a
//! transient error, rolling back.

use std::borrow::Cow;

use foldhash::{HashMap, HashSet, HashSetExt};
use serde::{Deserialize, Serialize};
use storex_core::uuid::Uuid;
use storex_core::{
    BatchStep, CollectionDef, FieldType, Filter, Object, Operation, Pk, Query, Registry, Value,
};

use crate::client_log::{current_rows, entry_object, fold_steps, Exec, LOOKUP_CHUNK};
use crate::entry::{pk_text, EntryOp, EntryRow, LogEntry, LOG_COLLECTION};
use crate::error::{Error, Result};
use crate::hlc::Hlc;

/// The name of the journal's collection in the app's database.
pub const JOURNAL_COLLECTION: &str = "storex_sync_journal";

/// The first byte of a record's `entries`: the version of its encoding. Version 2 added
/// runs of consecutive UUID keys; records of version 1 read the same.
const FORMAT: u8 = 2;

/// The oldest encoding this version still reads (and writes, when a record has no run of
/// consecutive keys).
const OLDEST_FORMAT: u8 = 1;

/// The most changes one write may make, and so a record hold: a damaged record claiming more
/// is reported, not expanded.
const MAX_CHANGES: u32 = 1 << 24;

/// How many records one indexing round reads (a record holds one write's changes).
const RECORDS_PER_ROUND: u64 = 64;

/// The definition of the journal's collection.
pub(crate) fn journal_collection() -> CollectionDef {
    CollectionDef::new(JOURNAL_COLLECTION)
        .field("id", FieldType::Uuid)
        .field("entries", FieldType::Blob)
        .primary_key(["id"])
}

/// What one write did, as its record stores it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Record<'a> {
    /// The timestamp of the first change; the others follow it counter by counter.
    first: Hlc,
    /// The changes, in the order the write made them.
    runs: Vec<Run<'a>>,
}

/// Changes of the same kind to objects of one collection.
#[derive(Debug, Serialize, Deserialize)]
struct Run<'a> {
    collection: Cow<'a, str>,
    op: EntryOp,
    schema_version: u32,
    /// What an update set, the same for every object of the run; empty otherwise.
    values: Cow<'a, Object>,
    keys: Keys<'a>,
}

/// The keys of a run's objects.
#[derive(Debug, Serialize, Deserialize)]
enum Keys<'a> {
    /// Every key is one UUID (the UUID key middleware's): 16 bytes each.
    Uuids(UuidBytes),
    /// Keys of any shape.
    Any(Vec<Cow<'a, Pk>>),
    /// Consecutive UUIDs (the keys the UUID key middleware gives one write): the first, and
    /// how many.
    Consecutive(UuidBytes, u32),
}

impl<'a> Keys<'a> {
    fn of(pk: Cow<'a, Pk>) -> Self {
        let mut keys = Keys::Uuids(UuidBytes(Vec::new()));
        keys.push(pk);
        keys
    }

    fn push(&mut self, pk: Cow<'a, Pk>) {
        let id = pk.single().and_then(Value::as_uuid);
        match (&mut *self, id) {
            // A second key right after the first: a run.
            (Keys::Uuids(bytes), Some(id)) if bytes.0.len() == 16 && bytes.plus(1) == Some(id) => {
                *self = Keys::Consecutive(UuidBytes(std::mem::take(&mut bytes.0)), 2);
            }
            (Keys::Consecutive(first, count), Some(id))
                if *count < u32::MAX && first.plus(*count) == Some(id) =>
            {
                *count += 1;
            }
            (Keys::Consecutive(..), _) => {
                // Not the next one: the run is spelled out key by key from here on.
                let mut bytes = Vec::with_capacity(self.len() * 16 + 16);
                for key in self.pks().unwrap_or_default() {
                    if let Some(id) = key.single().and_then(Value::as_uuid) {
                        bytes.extend_from_slice(id.as_bytes());
                    }
                }
                *self = Keys::Uuids(UuidBytes(bytes));
                self.push(pk);
            }
            (Keys::Uuids(bytes), Some(id)) => bytes.0.extend_from_slice(id.as_bytes()),
            (Keys::Uuids(bytes), None) => {
                let mut all: Vec<Cow<'a, Pk>> = bytes.pks().map(Cow::Owned).collect();
                all.push(pk);
                *self = Keys::Any(all);
            }
            (Keys::Any(all), _) => all.push(pk),
        }
    }

    fn len(&self) -> usize {
        match self {
            Keys::Uuids(bytes) => bytes.0.len() / 16,
            Keys::Any(all) => all.len(),
            Keys::Consecutive(_, count) => *count as usize,
        }
    }

    /// The keys, or `None` when the UUIDs' bytes are not a whole number of UUIDs (or a
    /// run of consecutive ones runs past the last UUID).
    fn pks(&self) -> Option<Vec<Pk>> {
        match self {
            Keys::Uuids(bytes) if bytes.0.len() % 16 == 0 => Some(bytes.pks().collect()),
            Keys::Uuids(_) => None,
            Keys::Any(all) => Some(all.iter().map(|pk| pk.as_ref().clone()).collect()),
            Keys::Consecutive(first, count) => {
                // The last key must exist; every key before it does then.
                first.plus(count.saturating_sub(1))?;
                (0..*count).map(|i| first.plus(i).map(Pk::from)).collect()
            }
        }
    }

    /// The keys, or `None` when they cannot be read (see [`Keys::pks`]).
    fn into_pks(self) -> Option<Vec<Pk>> {
        match self {
            Keys::Any(all) => Some(all.into_iter().map(Cow::into_owned).collect()),
            other => other.pks(),
        }
    }
}

/// UUIDs back to back, serialized as one byte string.
#[derive(Debug)]
struct UuidBytes(Vec<u8>);

impl UuidBytes {
    /// The one UUID held, if it holds exactly one.
    fn first(&self) -> Option<Uuid> {
        Uuid::from_slice(&self.0).ok()
    }

    /// The UUID `n` after the one held (`None` past the last UUID).
    fn plus(&self, n: u32) -> Option<Uuid> {
        let first = self.first()?.as_u128();
        first.checked_add(u128::from(n)).map(Uuid::from_u128)
    }

    /// The keys held (a trailing partial UUID is left out).
    fn pks(&self) -> impl Iterator<Item = Pk> + '_ {
        self.0
            .chunks_exact(16)
            .filter_map(|b| Uuid::from_slice(b).ok())
            .map(Pk::from)
    }
}

impl Serialize for UuidBytes {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for UuidBytes {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = UuidBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string of UUIDs")
            }
            fn visit_bytes<E>(self, bytes: &[u8]) -> std::result::Result<UuidBytes, E> {
                Ok(UuidBytes(bytes.to_vec()))
            }
            fn visit_byte_buf<E>(self, bytes: Vec<u8>) -> std::result::Result<UuidBytes, E> {
                Ok(UuidBytes(bytes))
            }
        }
        deserializer.deserialize_bytes(Bytes)
    }
}

impl Record<'_> {
    /// The timestamp of the record's last change.
    fn last_stamp(&self) -> Hlc {
        let changes: usize = self.runs.iter().map(|run| run.keys.len()).sum();
        let after_first = u32::try_from(changes.saturating_sub(1)).unwrap_or(u32::MAX);
        Hlc {
            counter: self.first.counter.saturating_add(after_first),
            ..self.first
        }
    }
}

/// Collects the changes of one write into a [`Record`].
#[derive(Debug, Default)]
pub(crate) struct RecordBuilder<'a> {
    runs: Vec<Run<'a>>,
    changes: u32,
}

impl<'a> RecordBuilder<'a> {
    /// Adds a change: `values` are what an update set (ignored for creates and deletes).
    pub(crate) fn push(
        &mut self,
        collection: &'a str,
        schema_version: u32,
        op: EntryOp,
        pk: Cow<'a, Pk>,
        values: &'a Object,
    ) {
        static NONE: Object = Object::new();
        let values = if op == EntryOp::Update { values } else { &NONE };
        self.changes = self.changes.saturating_add(1);
        match self.runs.last_mut() {
            Some(run)
                if run.collection == collection
                    && run.op == op
                    && run.schema_version == schema_version
                    && *run.values == *values =>
            {
                run.keys.push(pk);
            }
            _ => self.runs.push(Run {
                collection: Cow::Borrowed(collection),
                op,
                schema_version,
                values: Cow::Borrowed(values),
                keys: Keys::of(pk),
            }),
        }
    }

    /// How many changes it holds.
    pub(crate) fn len(&self) -> u32 {
        self.changes
    }

    /// Whether it holds no change.
    pub(crate) fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Refuses a record of more changes than one write may log.
    pub(crate) fn check_size(&self) -> storex_core::Result<()> {
        if self.changes > MAX_CHANGES {
            return Err(storex_core::Error::InvalidOperation {
                collection: String::new(),
                problem: format!(
                    "a write of {} changes: sync logs at most {MAX_CHANGES} in one write; \
                     split it into smaller batches",
                    self.changes
                ),
            });
        }
        Ok(())
    }

    /// The same changes, owning what they borrowed (from the operations of a write that is
    /// about to run): a run's collection and values are copied once, keys not held as
    /// UUID bytes one by one.
    pub(crate) fn into_owned(self) -> RecordBuilder<'static> {
        let runs = self
            .runs
            .into_iter()
            .map(|run| Run {
                collection: Cow::Owned(run.collection.into_owned()),
                op: run.op,
                schema_version: run.schema_version,
                values: Cow::Owned(run.values.into_owned()),
                keys: match run.keys {
                    Keys::Uuids(bytes) => Keys::Uuids(bytes),
                    Keys::Consecutive(first, count) => Keys::Consecutive(first, count),
                    Keys::Any(all) => Keys::Any(
                        all.into_iter()
                            .map(|pk| Cow::Owned(pk.into_owned()))
                            .collect(),
                    ),
                },
            })
            .collect();
        RecordBuilder {
            runs,
            changes: self.changes,
        }
    }

    /// The step writing the record, its changes stamped from `first` on (none if it is
    /// empty).
    pub(crate) fn into_step(self, first: Hlc) -> storex_core::Result<Option<BatchStep>> {
        if self.runs.is_empty() {
            return Ok(None);
        }
        self.check_size()?;
        // The first format while no run needs the second: an older version reads it.
        let format = if self
            .runs
            .iter()
            .any(|run| matches!(run.keys, Keys::Consecutive(..)))
        {
            FORMAT
        } else {
            OLDEST_FORMAT
        };
        let record = Record {
            first,
            runs: self.runs,
        };
        let mut bytes = vec![format];
        rmp_serde::encode::write(&mut bytes, &record).map_err(|e| {
            storex_core::Error::InvalidOperation {
                collection: String::new(),
                problem: format!("the write's sync journal record cannot be encoded: {e}"),
            }
        })?;
        let mut row = Object::new();
        row.insert("id".into(), Value::from(Uuid::now_v7()));
        row.insert("entries".into(), Value::Blob(bytes));
        Ok(Some(BatchStep::new(Operation::create(
            JOURNAL_COLLECTION,
            row,
        ))))
    }
}

/// The id of the `ordinal`th entry of the record `record`: its id with the ordinal in the
/// last four bytes (still a UUIDv7, ordered like the entries).
fn entry_id(record: Uuid, ordinal: u32) -> Uuid {
    let mut bytes = *record.as_bytes();
    bytes[12..].copy_from_slice(&ordinal.to_be_bytes());
    Uuid::from_bytes(bytes)
}

/// A record's id and what it says, or why it cannot be read.
fn read_record(row: &Object) -> Result<(Uuid, Record<'static>)> {
    let id = row.get("id").and_then(Value::as_uuid);
    let corrupt = |problem: String| Error::CorruptEntry {
        id: id.map_or_else(|| "a journal record".to_owned(), |id| id.to_string()),
        problem,
    };
    let id = id.ok_or_else(|| corrupt("the journal record has no id".into()))?;
    let bytes = match row.get("entries") {
        Some(Value::Blob(bytes)) => bytes,
        _ => return Err(corrupt("the journal record holds no entries".into())),
    };
    match bytes.split_first() {
        Some((&format, body)) if (OLDEST_FORMAT..=FORMAT).contains(&format) => {
            let record = rmp_serde::from_slice(body)
                .map_err(|e| corrupt(format!("the journal record does not decode: {e}")))?;
            Ok((id, record))
        }
        Some((other, _)) => Err(corrupt(format!(
            "the journal record has format {other}, this version reads {OLDEST_FORMAT} to {FORMAT}"
        ))),
        None => Err(corrupt("the journal record is empty".into())),
    }
}

/// The entries of a record, a create's fields still empty (read from its row later).
fn entries_of(id: Uuid, record: Record<'static>) -> Result<Vec<LogEntry>> {
    let changes: usize = record.runs.iter().map(|run| run.keys.len()).sum();
    if changes > MAX_CHANGES as usize {
        return Err(Error::CorruptEntry {
            id: id.to_string(),
            problem: format!(
                "the journal record claims {changes} changes, more than a write makes \
                 ({MAX_CHANGES})"
            ),
        });
    }
    let mut entries = Vec::with_capacity(changes);
    let mut ordinal: u32 = 0;
    for run in record.runs {
        let collection = run.collection.into_owned();
        let values = run.values.into_owned();
        let pks = run.keys.into_pks().ok_or_else(|| Error::CorruptEntry {
            id: id.to_string(),
            problem: "the journal record's keys are cut short".into(),
        })?;
        for pk in pks {
            entries.push(LogEntry {
                id: entry_id(id, ordinal),
                device: record.first.device,
                hlc: Hlc {
                    counter: record.first.counter.saturating_add(ordinal),
                    ..record.first
                },
                collection: collection.clone(),
                pk,
                op: run.op,
                fields: values.clone(),
                schema_version: run.schema_version,
            });
            ordinal = ordinal.saturating_add(1);
        }
    }
    Ok(entries)
}

/// The latest timestamp the journal's records took, to restore the clock without indexing.
/// Records that do not decode are passed over here; indexing reports them.
pub(crate) async fn latest_stamp(exec: Exec<'_>) -> Result<Option<Hlc>> {
    let rows = exec.find(JOURNAL_COLLECTION, Query::default()).await?;
    Ok(rows
        .iter()
        .filter_map(|row| read_record(row).ok())
        .map(|(_, record)| record.last_stamp())
        .max())
}

/// A journal record that does not read: damaged, or written by a newer version in a format
/// this one does not know. Indexing and push pass over it and leave it in the journal, so
/// that the writes after it still sync and a version that reads it indexes it then; each
/// push reports it (the writes it records are not synced meanwhile).
#[derive(Debug)]
pub(crate) struct DamagedRecord {
    /// The record's id.
    pub(crate) id: Uuid,
    /// Why it does not read (naming the record).
    problem: Error,
}

impl std::fmt::Display for DamagedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; the writes it records are not synced, and it stays in the journal for a \
             version that reads it",
            self.problem
        )
    }
}

/// What indexing the journal did.
#[derive(Debug, Default)]
pub(crate) struct Indexed {
    /// How many entries the records made.
    pub(crate) entries: u64,
    /// The records passed over, left in the journal.
    pub(crate) damaged: Vec<DamagedRecord>,
}

/// Turns every journal record into log rows (unshared, integrated) and deletes it, inside
/// the transaction behind `exec`; records that do not read are passed over and stay.
pub(crate) async fn index_journal(exec: Exec<'_>, registry: &Registry) -> Result<Indexed> {
    let mut indexed = Indexed::default();
    let mut after = None;
    while let Some(round) = index_round(exec, registry, after).await? {
        indexed.entries += round.entries.len() as u64;
        indexed.damaged.extend(round.damaged);
        after = Some(round.last);
    }
    Ok(indexed)
}

/// Journal records read but not indexed: what a pusher sends before it settles them
/// ([`settle_part`]), so that they are written once, already shared (or folded).
#[derive(Debug, Default)]
pub(crate) struct JournalPart {
    /// The records read, in order (not those that do not read).
    records: Vec<Uuid>,
    /// Their entries, each with its record, in the order the writes made them.
    entries: Vec<(Uuid, LogEntry)>,
    /// The records that do not read, passed over.
    damaged: Vec<DamagedRecord>,
    /// The last record read, damaged or not.
    last: Option<Uuid>,
}

impl JournalPart {
    /// Whether no record was left to read.
    pub(crate) fn is_empty(&self) -> bool {
        self.last.is_none()
    }

    /// The last record read, after which the next part starts.
    pub(crate) fn last_record(&self) -> Option<Uuid> {
        self.last
    }

    /// The entries read.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &LogEntry> {
        self.entries.iter().map(|(_, entry)| entry)
    }

    /// Whether settling it would change nothing: it holds no record that reads.
    pub(crate) fn settles_nothing(&self) -> bool {
        self.records.is_empty()
    }

    /// The records passed over because they do not read; they stay in the journal.
    pub(crate) fn damaged(&self) -> &[DamagedRecord] {
        &self.damaged
    }
}

/// Reads the records after `after` and up to `until` (all of them if `None`), round after
/// round, until the rounds made at least `enough` entries or no such record is left. Nothing
/// is written: [`settle_part`] stores the entries once they are pushed.
pub(crate) async fn read_journal_part(
    exec: Exec<'_>,
    registry: &Registry,
    after: Option<Uuid>,
    until: Option<Uuid>,
    enough: usize,
) -> Result<JournalPart> {
    let mut part = JournalPart::default();
    while part.entries.len() < enough {
        let wanted = enough - part.entries.len();
        let Some(round) =
            read_round(exec, registry, part.last_record().or(after), until, wanted).await?
        else {
            break;
        };
        part.records.extend(round.ids);
        part.entries.extend(round.entries);
        part.damaged.extend(round.damaged);
        part.last = Some(round.last);
    }
    Ok(part)
}

/// Stores a part's entries inside the transaction behind `exec` and deletes the part's
/// records. With `fold`, those in `pushed` go straight into their objects' versions (what
/// compaction would do with them once shared: they are this device's, so integrated), but
/// those of an object whose versions do not read, which stay log rows marked shared;
/// without, they are log rows marked shared. The others (a push left them out) are log rows,
/// unshared. A record indexed meanwhile by another reader of the log is gone already: its
/// entries are log rows, and those pushed are marked shared (compaction folds them later).
pub(crate) async fn settle_part(
    exec: Exec<'_>,
    registry: &Registry,
    part: &JournalPart,
    pushed: &HashSet<Uuid>,
    fold: bool,
) -> Result<()> {
    let mut present = HashSet::with_capacity(part.records.len());
    for chunk in part.records.chunks(LOOKUP_CHUNK) {
        let filter = Filter::all().is_in("id", chunk.iter().copied());
        let count = Operation::count(JOURNAL_COLLECTION, filter.clone());
        if exec.run(count).await?.count() == Some(chunk.len() as u64) {
            // All there (no other reader got to them): their rows need not be read.
            present.extend(chunk.iter().copied());
            continue;
        }
        for row in exec.find(JOURNAL_COLLECTION, Query::new(filter)).await? {
            if let Some(id) = row.get("id").and_then(Value::as_uuid) {
                present.insert(id);
            }
        }
    }
    let mut steps = Vec::with_capacity(part.entries.len());
    let mut indexed_since = Vec::new();
    let mut folded = Vec::with_capacity(if fold { part.entries.len() } else { 0 });
    for (record, entry) in &part.entries {
        let shared = pushed.contains(&entry.id);
        if present.contains(record) {
            // (Folding skips a collection the registry lacks: its entries stay log rows.)
            if shared && fold && registry.collection(&entry.collection).is_ok() {
                folded.push(entry);
            } else {
                steps.push(EntryRow::of(entry, shared, true).create_step());
            }
        } else if shared {
            indexed_since.push(entry.id);
        }
    }
    if !folded.is_empty() {
        let folding = fold_steps(exec, registry, folded).await?;
        steps.extend(folding.steps);
        // Those of objects whose versions do not read stay log rows, shared.
        let kept = folding.kept.into_iter();
        steps.extend(kept.map(|entry| EntryRow::of(entry, true, true).create_step()));
    }
    let present: Vec<Uuid> = part
        .records
        .iter()
        .filter(|id| present.contains(id))
        .copied()
        .collect();
    delete_records(exec, &present).await?;
    for chunk in indexed_since.chunks(LOOKUP_CHUNK) {
        let filter = Filter::all().is_in("id", chunk.iter().copied());
        steps.push(BatchStep::new(Operation::update_where(
            LOG_COLLECTION,
            filter,
            storex_core::object! { "shared" => true },
        )));
    }
    if !steps.is_empty() {
        exec.run(Operation::Batch { steps }).await?;
    }
    Ok(())
}

/// Deletes the records `ids`, all of which must be there: fewer means another process
/// indexed them at the same time.
async fn delete_records(exec: Exec<'_>, ids: &[Uuid]) -> Result<()> {
    let mut deleted = 0;
    for chunk in ids.chunks(LOOKUP_CHUNK) {
        let filter = Filter::all().is_in("id", chunk.iter().copied());
        let op = Operation::delete_where(JOURNAL_COLLECTION, filter);
        deleted += exec.run(op).await?.count().unwrap_or(0);
    }
    if deleted != ids.len() as u64 {
        return Err(storex_core::Error::Transaction {
            problem: "another process indexed the sync journal at the same time; \
                      try again"
                .into(),
        }
        .into());
    }
    Ok(())
}

/// The id of the latest record, which bounds a [`read_journal_part`] to the writes made
/// before it started.
pub(crate) async fn latest_record(exec: Exec<'_>) -> Result<Option<Uuid>> {
    let query = Query::default().order_desc("id").limit(1);
    let rows = exec.find(JOURNAL_COLLECTION, query).await?;
    // Only its id: a record that does not read still bounds the part (it is passed over).
    rows.first().map(record_id).transpose()
}

/// The id of a journal record's row (its collection's key).
fn record_id(row: &Object) -> Result<Uuid> {
    row.get("id")
        .and_then(Value::as_uuid)
        .ok_or_else(|| Error::CorruptEntry {
            id: "a journal record".into(),
            problem: "the journal record has no id".into(),
        })
}

/// One round: turns up to [`RECORDS_PER_ROUND`] records after `after` into log rows and
/// deletes them (those that do not read stay); returns what it read, or `None` when no
/// record was left.
async fn index_round(
    exec: Exec<'_>,
    registry: &Registry,
    after: Option<Uuid>,
) -> Result<Option<Round>> {
    let Some(round) = read_round(exec, registry, after, None, usize::MAX).await? else {
        return Ok(None);
    };
    let steps = round
        .entries
        .iter()
        .map(|(_, entry)| EntryRow::of(entry, false, true).create_step())
        .collect::<Vec<_>>();
    delete_records(exec, &round.ids).await?;
    if !steps.is_empty() {
        exec.run(Operation::Batch { steps }).await?;
    }
    Ok(Some(round))
}

/// The records one round read.
#[derive(Debug)]
struct Round {
    /// The records that read, in order.
    ids: Vec<Uuid>,
    /// Their entries, each with its record, creates filled from their rows.
    entries: Vec<(Uuid, LogEntry)>,
    /// The records that do not read.
    damaged: Vec<DamagedRecord>,
    /// The last record read, damaged or not: the next round starts after it.
    last: Uuid,
}

/// Reads up to [`RECORDS_PER_ROUND`] records after `after` and up to `until`, stopping at
/// the record that brings the entries to `wanted` (a record is never split); returns them,
/// or `None` when no record was left. Records that do not read are passed over.
async fn read_round(
    exec: Exec<'_>,
    registry: &Registry,
    after: Option<Uuid>,
    until: Option<Uuid>,
    wanted: usize,
) -> Result<Option<Round>> {
    let mut filter = Filter::all();
    if let Some(after) = after {
        filter = filter.gt("id", after);
    }
    if let Some(last) = until {
        filter = filter.lte("id", last);
    }
    // A whole round's records, even when fewer entries are wanted: records that do not read
    // make none (the loop below stops at `wanted` entries, and the next round starts there).
    let query = Query::new(filter).order_asc("id").limit(RECORDS_PER_ROUND);
    let rows = exec.find(JOURNAL_COLLECTION, query).await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut entries = Vec::new();
    let mut damaged = Vec::new();
    let mut last = None;
    for row in &rows {
        if entries.len() >= wanted {
            break;
        }
        // A row without its id is not passed over: the next round could not start after it.
        let id = record_id(row)?;
        last = Some(id);
        // A create's values are read from its row: a storage that does not define the
        // collection (a tool opened on the sync tables only, or an app that dropped the
        // collection) must not take the missing row for a deleted one, nor stop every sync
        // on it. The record stays for a storage that defines the collection.
        let readable = read_record(row)
            .and_then(|(id, record)| entries_of(id, record))
            .and_then(|made| {
                match made.iter().find(|e| {
                    e.op == EntryOp::Create && registry.collection(&e.collection).is_err()
                }) {
                    Some(unknown) => Err(Error::JournalCollectionUnknown {
                        record: id,
                        collection: unknown.collection.clone(),
                    }),
                    None => Ok(made),
                }
            });
        match readable {
            Ok(made) => {
                ids.push(id);
                entries.extend(made.into_iter().map(|entry| (id, entry)));
            }
            Err(problem) => damaged.push(DamagedRecord { id, problem }),
        }
    }
    let Some(last) = last else {
        return Ok(None);
    };
    let creates = || {
        entries
            .iter()
            .map(|(_, e)| e)
            .filter(|e| e.op == EntryOp::Create)
    };
    let stored = current_rows(exec, registry, creates().map(entry_object)).await?;
    Ok(Some(Round {
        ids,
        entries: fill_creates(entries, &stored, registry),
        damaged,
        last,
    }))
}

/// Gives each create the values of its stored row, and the schema version of the app that
/// holds it now if that is newer (the row has its shape); leaves out creates whose row a
/// later delete removed.
fn fill_creates(
    entries: Vec<(Uuid, LogEntry)>,
    stored: &HashMap<(String, String), Object>,
    registry: &Registry,
) -> Vec<(Uuid, LogEntry)> {
    entries
        .into_iter()
        .filter_map(|(record, mut entry)| {
            if entry.op == EntryOp::Create {
                let key = (entry.collection.clone(), pk_text(&entry.pk));
                entry.fields = stored.get(&key)?.clone();
                if let Ok(def) = registry.collection(&entry.collection) {
                    entry.schema_version = entry.schema_version.max(def.schema_version());
                }
            }
            Some((record, entry))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::{Clock, DeviceId};
    use storex_core::object;

    fn row_of(builder: RecordBuilder<'_>, first: Hlc) -> Object {
        match builder
            .into_step(first)
            .expect("encoded")
            .map(|s| s.operation)
        {
            Some(Operation::Create { object, .. }) => object,
            other => panic!("not a create: {other:?}"),
        }
    }

    #[test]
    fn a_record_gives_back_its_changes_with_consecutive_timestamps_and_ids() {
        let clock = Clock::new(DeviceId::random());
        let (a, b, c) = (Pk::from(1), Pk::from(2), Pk::from(3));
        let stars = object! { "stars" => 5 };
        let other = object! { "stars" => 6 };
        let mut builder = RecordBuilder::default();
        builder.push("note", 3, EntryOp::Create, Cow::Borrowed(&a), &stars);
        builder.push("note", 3, EntryOp::Update, Cow::Borrowed(&b), &stars);
        builder.push("note", 3, EntryOp::Update, Cow::Borrowed(&c), &stars);
        builder.push("note", 3, EntryOp::Update, Cow::Borrowed(&a), &other);
        builder.push("tag", 1, EntryOp::Delete, Cow::Owned(Pk::from(4)), &stars);
        assert_eq!(builder.len(), 5);
        let first = clock.now_many(builder.len());
        let row = row_of(builder, first);
        let (id, record) = read_record(&row).expect("read back");
        assert_eq!(record.runs.len(), 4, "the two equal updates share a run");
        let last = record.last_stamp();
        let entries = entries_of(id, record).expect("entries");
        let summary: Vec<_> = entries
            .iter()
            .map(|e| (e.collection.as_str(), e.op, e.pk.clone(), e.fields.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("note", EntryOp::Create, a.clone(), Object::new()),
                ("note", EntryOp::Update, b, stars.clone()),
                ("note", EntryOp::Update, c, stars),
                ("note", EntryOp::Update, a, other),
                ("tag", EntryOp::Delete, Pk::from(4), Object::new()),
            ]
        );
        for (i, entry) in entries.iter().enumerate() {
            assert_eq!(entry.hlc.counter, first.counter + i as u32);
            assert_eq!(entry.hlc.millis, first.millis);
            assert_eq!(entry.device, first.device);
            assert_eq!(entry.schema_version, if i < 4 { 3 } else { 1 });
            assert_eq!(entry.id.get_version_num(), 7);
        }
        assert_eq!(entries.last().map(|e| e.hlc), Some(last));
        let ids: std::collections::HashSet<_> = entries.iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), 5, "distinct ids");
        assert!(entries.windows(2).all(|w| w[0].id < w[1].id), "ordered ids");
        let again = read_record(&row).expect("again").1;
        assert_eq!(entries_of(id, again).expect("entries"), entries);
    }

    #[test]
    fn uuid_keys_take_sixteen_bytes_each_and_other_keys_join_them() {
        let clock = Clock::new(DeviceId::random());
        let ids: Vec<Pk> = (0..3).map(|_| Pk::from(Uuid::now_v7())).collect();
        let none = Object::new();
        let mut builder = RecordBuilder::default();
        for pk in &ids {
            builder.push("note", 1, EntryOp::Create, Cow::Borrowed(pk), &none);
        }
        let first = clock.now_many(3);
        let row = row_of(builder, first);
        let (id, record) = read_record(&row).expect("read back");
        assert!(matches!(&record.runs[0].keys, Keys::Uuids(b) if b.0.len() == 48));
        assert_eq!(record.last_stamp().counter, first.counter + 2);
        let pks: Vec<Pk> = entries_of(id, record)
            .expect("entries")
            .into_iter()
            .map(|e| e.pk)
            .collect();
        assert_eq!(pks, ids);

        let mut mixed = Keys::of(Cow::Borrowed(&ids[0]));
        mixed.push(Cow::Owned(Pk::from("text key")));
        mixed.push(Cow::Borrowed(&ids[1]));
        assert_eq!(
            mixed.into_pks().expect("keys"),
            vec![ids[0].clone(), Pk::from("text key"), ids[1].clone()]
        );
        assert!(Keys::Uuids(UuidBytes(vec![0; 17])).into_pks().is_none());
    }

    #[test]
    fn consecutive_uuid_keys_are_stored_as_the_first_and_a_count() {
        let clock = Clock::new(DeviceId::random());
        let start = Uuid::now_v7().as_u128();
        let run: Vec<Pk> = (0..1000)
            .map(|i| Pk::from(Uuid::from_u128(start + i)))
            .collect();
        let none = Object::new();
        let mut builder = RecordBuilder::default();
        for pk in &run {
            builder.push("note", 1, EntryOp::Create, Cow::Borrowed(pk), &none);
        }
        let row = row_of(builder, clock.now_many(1000));
        let Some(Value::Blob(bytes)) = row.get("entries") else {
            panic!("no entries")
        };
        assert!(
            bytes.len() < 100,
            "{} bytes for a run of 1,000",
            bytes.len()
        );
        let (id, record) = read_record(&row).expect("read back");
        let pks: Vec<Pk> = entries_of(id, record)
            .expect("entries")
            .into_iter()
            .map(|e| e.pk)
            .collect();
        assert_eq!(pks, run);

        // A key out of the run: the run is spelled out, in order.
        let mut keys = Keys::of(Cow::Borrowed(&run[0]));
        keys.push(Cow::Borrowed(&run[1]));
        keys.push(Cow::Borrowed(&run[5]));
        keys.push(Cow::Borrowed(&run[6]));
        assert!(matches!(&keys, Keys::Uuids(b) if b.0.len() == 64));
        assert_eq!(
            keys.into_pks().expect("keys"),
            vec![
                run[0].clone(),
                run[1].clone(),
                run[5].clone(),
                run[6].clone()
            ]
        );
        // A run that would pass the last UUID is damaged, not wrapped around.
        let near_end = UuidBytes(Uuid::from_u128(u128::MAX - 1).as_bytes().to_vec());
        assert!(Keys::Consecutive(near_end, 5).into_pks().is_none());
    }

    #[test]
    fn a_record_is_written_in_the_first_format_unless_it_has_a_run() {
        let clock = Clock::new(DeviceId::random());
        let none = Object::new();
        let start = Uuid::now_v7().as_u128();
        let format_of = |keys: &[u128]| {
            let pks: Vec<Pk> = keys.iter().map(|k| Pk::from(Uuid::from_u128(*k))).collect();
            let mut builder = RecordBuilder::default();
            for pk in &pks {
                builder.push("note", 1, EntryOp::Create, Cow::Owned(pk.clone()), &none);
            }
            match row_of(builder, clock.now_many(keys.len() as u32)).get("entries") {
                Some(Value::Blob(bytes)) => bytes[0],
                other => panic!("no entries: {other:?}"),
            }
        };
        assert_eq!(format_of(&[start]), 1, "one key");
        assert_eq!(format_of(&[start, start + 7]), 1, "keys apart");
        assert_eq!(format_of(&[start, start + 1]), 2, "a run");
    }

    #[test]
    fn a_record_claiming_more_changes_than_a_write_makes_is_reported_not_expanded() {
        let clock = Clock::new(DeviceId::random());
        let first = UuidBytes(Uuid::now_v7().as_bytes().to_vec());
        let record = Record {
            first: clock.now(),
            runs: vec![Run {
                collection: Cow::Borrowed("note"),
                op: EntryOp::Delete,
                schema_version: 1,
                values: Cow::Owned(Object::new()),
                keys: Keys::Consecutive(first, u32::MAX),
            }],
        };
        let mut bytes = vec![FORMAT];
        rmp_serde::encode::write(&mut bytes, &record).expect("encoded");
        let row = object! { "id" => Uuid::now_v7(), "entries" => Value::Blob(bytes) };
        let (id, record) = read_record(&row).expect("it decodes");
        let err = entries_of(id, record).expect_err("expanded");
        assert!(err.to_string().contains("more than a write makes"), "{err}");

        // The writing side refuses such a write with a message that says what to do.
        let too_many = RecordBuilder {
            runs: vec![Run {
                collection: Cow::Borrowed("note"),
                op: EntryOp::Delete,
                schema_version: 1,
                values: Cow::Owned(Object::new()),
                keys: Keys::Any(Vec::new()),
            }],
            changes: MAX_CHANGES + 1,
        };
        let err = too_many.into_step(clock.now()).expect_err("logged");
        assert!(err.to_string().contains("split it"), "{err}");
    }

    #[test]
    fn a_record_without_a_run_reads_in_either_format() {
        let clock = Clock::new(DeviceId::random());
        let (pk, none) = (Pk::from(1), Object::new());
        let mut builder = RecordBuilder::default();
        builder.push("note", 1, EntryOp::Delete, Cow::Borrowed(&pk), &none);
        let mut row = row_of(builder, clock.now());
        for format in [1, 2] {
            if let Some(Value::Blob(bytes)) = row.get_mut("entries") {
                bytes[0] = format;
            }
            let (id, record) = read_record(&row).expect("a record");
            assert_eq!(entries_of(id, record).expect("entries")[0].pk, pk);
        }
    }

    #[test]
    fn a_create_takes_its_rows_values_or_goes_when_the_row_is_gone() {
        let device = DeviceId::random();
        let entry = |pk: i64, op| LogEntry {
            id: Uuid::now_v7(),
            device,
            hlc: Hlc::zero(device),
            collection: "note".into(),
            pk: Pk::from(pk),
            op,
            fields: Object::new(),
            schema_version: 1,
        };
        let row = object! { "id" => 1, "title" => "later title" };
        let registry = Registry::builder()
            .collection(
                CollectionDef::new("note")
                    .field("id", FieldType::Int)
                    .field("title", FieldType::Text)
                    .primary_key(["id"])
                    .version(2),
            )
            .build()
            .expect("registry");
        let stored =
            HashMap::from_iter([(("note".to_owned(), pk_text(&Pk::from(1))), row.clone())]);
        let record = Uuid::now_v7();
        let filled: Vec<LogEntry> = fill_creates(
            vec![
                (record, entry(1, EntryOp::Create)),
                (record, entry(2, EntryOp::Create)),
                (record, entry(2, EntryOp::Delete)),
            ],
            &stored,
            &registry,
        )
        .into_iter()
        .map(|(_, entry)| entry)
        .collect();
        assert_eq!(filled.len(), 2);
        assert_eq!(filled[0].fields, row);
        assert_eq!(
            filled[0].schema_version, 2,
            "the row has the upgraded app's shape"
        );
        assert_eq!(filled[1].schema_version, 1);
        assert_eq!(filled[1].op, EntryOp::Delete);
    }

    #[test]
    fn no_changes_make_no_record() {
        let clock = Clock::new(DeviceId::random());
        assert!(RecordBuilder::default()
            .into_step(clock.now())
            .expect("encoded")
            .is_none());
    }

    #[test]
    fn a_damaged_record_is_reported_not_panicked_on() {
        let clock = Clock::new(DeviceId::random());
        let (pk, none) = (Pk::from(1), Object::new());
        let mut builder = RecordBuilder::default();
        builder.push("note", 1, EntryOp::Delete, Cow::Borrowed(&pk), &none);
        let good = row_of(builder, clock.now());
        let with_entries = |value: Value| {
            let mut row = good.clone();
            row.insert("entries".into(), value);
            row
        };
        let Some(Value::Blob(bytes)) = good.get("entries") else {
            panic!("no entries")
        };
        let cases = [
            (with_entries(Value::Blob(Vec::new())), "is empty"),
            (with_entries(Value::Blob(vec![9, 1, 2])), "has format 9"),
            (
                with_entries(Value::Blob(bytes[..bytes.len() / 2].to_vec())),
                "does not decode",
            ),
            (with_entries(Value::from("text")), "holds no entries"),
        ];
        for (row, expected) in cases {
            let err = read_record(&row).expect_err("accepted");
            assert!(err.to_string().contains(expected), "{err} ({expected})");
        }
    }
}
