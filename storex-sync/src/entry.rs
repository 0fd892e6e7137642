//! One change to one object, as the sync log records and devices exchange it.

use serde::{Deserialize, Serialize};
use storex_core::uuid::Uuid;
use storex_core::{
    object, serde_json, BatchStep, CollectionDef, FieldType, Filter, Object, Operation, Pk, Value,
};

use crate::error::{Error, Result};
use crate::hlc::{Clock, DeviceId, Hlc};
use crate::journal::{journal_collection, JOURNAL_COLLECTION};
use crate::versions::{versions_collection, VERSIONS_COLLECTION};

/// What a change did to its object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryOp {
    /// Created the object; `fields` holds all of it.
    Create,
    /// Set some fields; `fields` holds them.
    Update,
    /// Deleted the object; `fields` is empty.
    Delete,
}

impl EntryOp {
    fn as_str(self) -> &'static str {
        match self {
            EntryOp::Create => "create",
            EntryOp::Update => "update",
            EntryOp::Delete => "delete",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "create" => Some(EntryOp::Create),
            "update" => Some(EntryOp::Update),
            "delete" => Some(EntryOp::Delete),
            _ => None,
        }
    }
}

/// One change to one object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Unique id (UUIDv7); sending an entry twice is recognised by it.
    pub id: Uuid,
    /// The device that made the change.
    pub device: DeviceId,
    /// When, in hybrid logical time; orders changes to the same field.
    pub hlc: Hlc,
    /// The collection of the changed object.
    pub collection: String,
    /// The changed object's key.
    pub pk: Pk,
    /// What the change did.
    pub op: EntryOp,
    /// The values written (all fields for a create).
    pub fields: Object,
    /// The collection's schema version on the device that made the change.
    pub schema_version: u32,
}

/// A [`LogEntry`] as this device stores it, with its local flags.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEntry {
    /// The change.
    pub entry: LogEntry,
    /// Sent to (or received from) the shared log.
    pub shared: bool,
    /// Applied to this device's data (false for a remote change that is held back).
    pub integrated: bool,
}

/// The name of the sync log's collection in the app's database.
pub const LOG_COLLECTION: &str = "storex_sync_log";

/// The definition of the sync log's collection.
pub(crate) fn log_collection() -> CollectionDef {
    CollectionDef::new(LOG_COLLECTION)
        .field("id", FieldType::Uuid)
        .field("device", FieldType::Uuid)
        .field("hlc", FieldType::Text)
        .field("collection", FieldType::Text)
        .field("pk", FieldType::Text)
        .field("op", FieldType::Text)
        .field("fields", FieldType::Text)
        .field("schema_version", FieldType::Int)
        .field("shared", FieldType::Bool)
        .field("integrated", FieldType::Bool)
        .primary_key(["id"])
        .index(["collection", "pk"])
        .index(["shared", "hlc"])
}

/// The name of the collection holding sync state (the shared-log cursor).
pub const STATE_COLLECTION: &str = "storex_sync_state";

/// The state row holding the shared-log cursor: how far this device pulled.
pub(crate) const CURSOR_KEY: &str = "shared_log_cursor";

/// The state row holding a fingerprint of the topics the cursor was advanced for (0: all).
pub(crate) const SUBSCRIPTION_KEY: &str = "subscription";

/// The state row holding the furthest cursor this device stored. The cursor goes back when
/// the subscription widens or the shared log was restored from a backup; this one does not,
/// so every cursor the device acknowledged is at most it, unless the device's own database
/// was restored from a backup (see `RESTORED_BEHIND_KEY`).
pub(crate) const REACHED_KEY: &str = "shared_log_reached";

/// The state row a sync stores when the shared log has this device further along than
/// `REACHED_KEY` (the database was restored from a backup): the acknowledged cursor it
/// found. Reported by every sync until a whole fast-sync copy from a device that pulls every
/// collection and pulled at least as far finishes here (it brings this device's own changes
/// made after the backup, which the shared log does not hand back) or the app forgets it
/// (`ContinuousSync::forget_restore`).
pub(crate) const RESTORED_BEHIND_KEY: &str = "restored_behind";

/// The write raising the state row `REACHED_KEY` to `cursor`, if it is lower: in the
/// statement itself, so that writers that read it at different times never lower it. (No
/// row, no write: the first sync of a device stores it.)
pub(crate) fn raise_reached(cursor: i64) -> Operation {
    Operation::update_where(
        STATE_COLLECTION,
        Filter::all().eq("key", REACHED_KEY).lt("value", cursor),
        object! { "value" => cursor },
    )
}

/// The name of the collection keeping pulled payloads that could not be decoded.
pub const QUARANTINE_COLLECTION: &str = "storex_sync_quarantine";

/// The name of the collection where a receiving device keeps the progress of a fast sync.
pub const TRANSFER_COLLECTION: &str = "storex_sync_transfer";

/// The collections sync keeps in the app's database; never logged themselves.
pub const INTERNAL_COLLECTIONS: [&str; 6] = [
    LOG_COLLECTION,
    JOURNAL_COLLECTION,
    VERSIONS_COLLECTION,
    STATE_COLLECTION,
    QUARANTINE_COLLECTION,
    TRANSFER_COLLECTION,
];

fn transfer_collection() -> CollectionDef {
    CollectionDef::new(TRANSFER_COLLECTION)
        .field("session", FieldType::Uuid)
        .field("last_seq", FieldType::Int)
        .field("progress", FieldType::Text)
        .primary_key(["session"])
}

fn state_collection() -> CollectionDef {
    CollectionDef::new(STATE_COLLECTION)
        .field("key", FieldType::Text)
        .field("value", FieldType::Int)
        .primary_key(["key"])
}

fn quarantine_collection() -> CollectionDef {
    CollectionDef::new(QUARANTINE_COLLECTION)
        .field("id", FieldType::Uuid)
        .field("device", FieldType::Uuid)
        .field("topic", FieldType::Text)
        .field("cursor", FieldType::Int)
        .field("payload", FieldType::Blob)
        .field("reason", FieldType::Text)
        .primary_key(["id"])
}

/// The app's `registry` with sync's own collections added (the log, its journal, the
/// versions index, sync state, the quarantine and fast-sync progress), for assembling a
/// storage by hand (a [`crate::SyncDevice`] does it itself).
pub fn with_sync_log(
    registry: &storex_core::Registry,
) -> storex_core::Result<storex_core::Registry> {
    registry
        .with_collection(log_collection())?
        .with_collection(journal_collection())?
        .with_collection(versions_collection())?
        .with_collection(state_collection())?
        .with_collection(quarantine_collection())?
        .with_collection(transfer_collection())
}

/// The key's canonical text, as stored in the log's `pk` column (equal keys, equal text).
pub(crate) fn pk_text(pk: &Pk) -> String {
    match pk.values() {
        // The most common key, written directly: the same text JSON gives it.
        [Value::Uuid(uuid)] => {
            const OPEN: &str = "[{\"uuid\":\"";
            const CLOSE: &str = "\"}]";
            let mut text = String::with_capacity(OPEN.len() + 36 + CLOSE.len());
            text.push_str(OPEN);
            text.push_str(uuid.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
            text.push_str(CLOSE);
            text
        }
        _ => serde_json::to_string(pk).unwrap_or_default(),
    }
}

/// A log entry's parts, borrowed, for writing its row without copying the values first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EntryRow<'a> {
    pub(crate) id: Uuid,
    pub(crate) device: DeviceId,
    pub(crate) hlc: Hlc,
    pub(crate) collection: &'a str,
    pub(crate) pk: &'a Pk,
    pub(crate) op: EntryOp,
    pub(crate) fields: &'a Object,
    pub(crate) schema_version: u32,
    pub(crate) shared: bool,
    pub(crate) integrated: bool,
}

impl<'a> EntryRow<'a> {
    /// The row for `entry` with the given flags.
    pub(crate) fn of(entry: &'a LogEntry, shared: bool, integrated: bool) -> Self {
        EntryRow {
            id: entry.id,
            device: entry.device,
            hlc: entry.hlc,
            collection: &entry.collection,
            pk: &entry.pk,
            op: entry.op,
            fields: &entry.fields,
            schema_version: entry.schema_version,
            shared,
            integrated,
        }
    }

    /// A new change of this device, stamped now by `clock`: not yet shared, integrated.
    pub(crate) fn local(
        clock: &Clock,
        collection: &'a str,
        pk: &'a Pk,
        op: EntryOp,
        fields: &'a Object,
        schema_version: u32,
    ) -> Self {
        EntryRow {
            id: Uuid::now_v7(),
            device: clock.device(),
            hlc: clock.now(),
            collection,
            pk,
            op,
            fields,
            schema_version,
            shared: false,
            integrated: true,
        }
    }

    /// The row of the log collection holding this entry.
    pub(crate) fn to_object(self) -> Object {
        object! {
            "id" => self.id,
            "device" => self.device.0,
            "hlc" => self.hlc.clock_text(),
            "collection" => self.collection,
            "pk" => pk_text(self.pk),
            "op" => self.op.as_str(),
            "fields" => serde_json::to_string(self.fields).unwrap_or_default(),
            "schema_version" => i64::from(self.schema_version),
            "shared" => self.shared,
            "integrated" => self.integrated,
        }
    }

    /// The batch step storing this entry as a row of the log collection.
    pub(crate) fn create_step(self) -> BatchStep {
        BatchStep::new(Operation::create(LOG_COLLECTION, self.to_object()))
    }
}

/// Every field of a log row, in the order [`StoredEntry::read_values`] reads them.
pub(crate) const LOG_FIELDS: [&str; 10] = [
    "id",
    "device",
    "hlc",
    "collection",
    "pk",
    "op",
    "fields",
    "schema_version",
    "shared",
    "integrated",
];

/// A row of the log as read: a whole object, or the values of [`LOG_FIELDS`].
trait LogRow {
    /// The value of field `name`, if the row has it.
    fn get(&self, name: &str) -> Option<&Value>;
}

impl LogRow for Object {
    fn get(&self, name: &str) -> Option<&Value> {
        Object::get(self, name)
    }
}

/// The values of [`LOG_FIELDS`], in that order.
struct LogValues<'v>(&'v [Value]);

impl LogRow for LogValues<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        log_value(self.0, name)
    }
}

/// The value of field `name` in a log row read as the values of [`LOG_FIELDS`].
pub(crate) fn log_value<'v>(values: &'v [Value], name: &str) -> Option<&'v Value> {
    let index = LOG_FIELDS.iter().position(|field| *field == name)?;
    values.get(index)
}

/// Where the page after `rows` starts, for rows of the log read in timestamp order as the
/// values of [`LOG_FIELDS`]: the timestamp text of a full page's last row (`limit` rows),
/// whether that row reads or not, so that a row that does not read is passed. `None` when
/// the page is not full, or its last row has no timestamp text (it sorts first: the pages
/// stop there).
pub(crate) fn next_page_after(rows: &[Vec<Value>], limit: u64) -> Option<String> {
    if (rows.len() as u64) < limit {
        return None;
    }
    let last = rows.last()?;
    log_value(last, "hlc")
        .and_then(Value::as_text)
        .map(str::to_owned)
}

impl StoredEntry {
    /// The row of the log collection holding this entry (writers use [`EntryRow`], which
    /// borrows; this is for the round-trip tests).
    #[cfg(test)]
    pub(crate) fn to_object(&self) -> Object {
        EntryRow::of(&self.entry, self.shared, self.integrated).to_object()
    }

    /// Reads a row of the log collection back.
    pub(crate) fn from_object(row: &Object) -> Result<Self> {
        Self::read(row, true)
    }

    /// Reads a row of the log collection back, a create's values only if `create_values`
    /// (left empty otherwise: a reader that needs only what a create stamps).
    pub(crate) fn read(row: &Object, create_values: bool) -> Result<Self> {
        Self::read_row(row, create_values)
    }

    /// [`StoredEntry::read`] of a row read as the values of [`LOG_FIELDS`], in that order.
    pub(crate) fn read_values(values: &[Value], create_values: bool) -> Result<Self> {
        Self::read_row(&LogValues(values), create_values)
    }

    fn read_row(row: &impl LogRow, create_values: bool) -> Result<Self> {
        let corrupt = |problem: &str| Error::CorruptEntry {
            id: row
                .get("id")
                .and_then(Value::as_uuid)
                .map(|u| u.to_string())
                .unwrap_or_default(),
            problem: problem.to_owned(),
        };
        let text = |name: &str| {
            row.get(name)
                .and_then(Value::as_text)
                .ok_or_else(|| corrupt(name))
        };
        let flag = |name: &str| match row.get(name) {
            Some(Value::Bool(b)) => Ok(*b),
            _ => Err(corrupt(name)),
        };
        let id = row
            .get("id")
            .and_then(Value::as_uuid)
            .ok_or_else(|| corrupt("id"))?;
        let device = DeviceId(
            row.get("device")
                .and_then(Value::as_uuid)
                .ok_or_else(|| corrupt("device"))?,
        );
        let hlc = Hlc::from_clock_text(text("hlc")?, device).map_err(|_| corrupt("hlc"))?;
        let pk: Pk = serde_json::from_str(text("pk")?).map_err(|_| corrupt("pk"))?;
        let op = EntryOp::parse(text("op")?).ok_or_else(|| corrupt("op"))?;
        let fields = if op == EntryOp::Create && !create_values {
            Object::new()
        } else {
            serde_json::from_str(text("fields")?).map_err(|_| corrupt("fields"))?
        };
        let schema_version = row
            .get("schema_version")
            .and_then(Value::as_int)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| corrupt("schema_version"))?;
        Ok(StoredEntry {
            entry: LogEntry {
                id,
                device,
                hlc,
                collection: text("collection")?.to_owned(),
                pk,
                op,
                fields,
                schema_version,
            },
            shared: flag("shared")?,
            integrated: flag("integrated")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uuid_key_has_the_text_json_gives_it() {
        let keys = [
            Uuid::nil(),
            Uuid::max(),
            Uuid::now_v7(),
            Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
        ];
        for uuid in keys {
            let pk = Pk::from(uuid);
            let json = serde_json::to_string(&pk).expect("json");
            assert_eq!(pk_text(&pk), json);
        }
        // Other keys go through JSON.
        let pk = Pk(vec![Value::Uuid(Uuid::nil()), 1i64.into()]);
        assert_eq!(pk_text(&pk), serde_json::to_string(&pk).expect("json"));
    }

    #[test]
    fn entries_round_trip_through_their_row() {
        let device = DeviceId::random();
        let stored = StoredEntry {
            entry: LogEntry {
                id: Uuid::now_v7(),
                device,
                hlc: Hlc {
                    millis: 42,
                    counter: 7,
                    device,
                },
                collection: "note".into(),
                pk: Pk::from(Uuid::now_v7()),
                op: EntryOp::Update,
                fields: object! { "title" => "x", "n" => Value::Null, "blob" => vec![1u8, 2] },
                schema_version: 3,
            },
            shared: false,
            integrated: true,
        };
        let back = StoredEntry::from_object(&stored.to_object()).expect("read back");
        assert_eq!(back, stored);
        // Read as the values of the log's fields, in their order: the same.
        let row = stored.to_object();
        let values: Vec<Value> = LOG_FIELDS.iter().map(|f| row[*f].clone()).collect();
        assert_eq!(
            StoredEntry::read_values(&values, true).expect("read"),
            stored
        );
        assert!(StoredEntry::read_values(&values[..9], true).is_err());
    }

    #[test]
    fn the_log_fields_are_the_log_collections() {
        let def = log_collection();
        let names: Vec<&str> = def.fields().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, LOG_FIELDS);
    }

    #[test]
    fn a_corrupt_row_is_reported_not_panicked_on() {
        let mut row = StoredEntry {
            entry: LogEntry {
                id: Uuid::nil(),
                device: DeviceId::random(),
                hlc: Hlc::zero(DeviceId::random()),
                collection: "note".into(),
                pk: Pk::from(1),
                op: EntryOp::Delete,
                fields: Object::new(),
                schema_version: 1,
            },
            shared: true,
            integrated: true,
        }
        .to_object();
        row.insert("op".into(), Value::from("explode"));
        let err = StoredEntry::from_object(&row).expect_err("accepted");
        assert_eq!(
            err.to_string(),
            format!("sync log entry {} is corrupt: op", Uuid::nil())
        );
    }
}
