//! [`ClientSyncLog`]: the device's own record of changes, a collection in the app's database.
//!
//! It holds the device's changes (unshared until pushed) and the changes received from other
//! devices (integrated once applied, or held). Reconciliation reads it to know every change
//! to an object; compaction drops the entries that no longer decide any value.

use std::collections::{BTreeMap, HashMap};

use storex_core::uuid::Uuid;
use storex_core::{
    object, Filter, Object, Operation, Origin, Outcome, Query, Storage, StorageTransaction, Value,
};

use crate::entry::{EntryOp, LogEntry, StoredEntry, LOG_COLLECTION};
use crate::error::Result;
use crate::hlc::Hlc;
use crate::reconcile::{object_key, ObjectKey};

/// Largest number of values in one `IN (…)` lookup.
pub(crate) const LOOKUP_CHUNK: usize = 1_000;

/// Runs sync's own operations on a storage or inside one of its transactions.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Exec<'a> {
    Storage(&'a Storage),
    Transaction(&'a StorageTransaction),
}

impl Exec<'_> {
    pub(crate) async fn run(self, op: Operation) -> storex_core::Result<Outcome> {
        match self {
            Exec::Storage(s) => s.execute_as(op, Origin::Sync).await,
            Exec::Transaction(t) => t.execute_as(op, Origin::Sync).await,
        }
    }

    pub(crate) async fn find(
        self,
        collection: &str,
        query: Query,
    ) -> storex_core::Result<Vec<Object>> {
        Ok(self
            .run(Operation::find_many(collection, query))
            .await?
            .into_objects())
    }
}

fn read_entries(rows: Vec<Object>) -> Result<Vec<StoredEntry>> {
    rows.iter().map(StoredEntry::from_object).collect()
}

/// The client sync log of one device.
#[derive(Clone, Debug)]
pub struct ClientSyncLog {
    storage: Storage,
}

impl ClientSyncLog {
    /// The log kept in `storage` (whose registry includes the log collection).
    pub fn new(storage: Storage) -> Self {
        ClientSyncLog { storage }
    }

    fn exec(&self) -> Exec<'_> {
        Exec::Storage(&self.storage)
    }

    /// Up to `limit` of this device's changes not yet sent to the shared log, oldest first.
    pub async fn unshared(&self, limit: u64) -> Result<Vec<LogEntry>> {
        let query = Query::new(Filter::all().eq("shared", false))
            .order_asc("hlc")
            .limit(limit);
        let rows = self.exec().find(LOG_COLLECTION, query).await?;
        Ok(read_entries(rows)?.into_iter().map(|s| s.entry).collect())
    }

    /// Marks entries as sent to the shared log.
    pub async fn mark_shared(&self, ids: &[Uuid]) -> Result<u64> {
        let mut marked = 0;
        for chunk in ids.chunks(LOOKUP_CHUNK) {
            let filter = Filter::all().is_in("id", chunk.iter().copied());
            let op = Operation::update_where(LOG_COLLECTION, filter, object! { "shared" => true });
            marked += self.exec().run(op).await?.count().unwrap_or(0);
        }
        Ok(marked)
    }

    /// Every entry, in timestamp order (for inspection and tests).
    pub async fn all(&self) -> Result<Vec<StoredEntry>> {
        let rows = self
            .exec()
            .find(
                LOG_COLLECTION,
                Query::default().order_asc("hlc").order_asc("device"),
            )
            .await?;
        read_entries(rows)
    }

    /// Entries received but held back (unknown collection, newer schema, invalid values).
    pub async fn held(&self) -> Result<Vec<LogEntry>> {
        let query = Query::new(Filter::all().eq("integrated", false))
            .order_asc("hlc")
            .order_asc("device");
        let rows = self.exec().find(LOG_COLLECTION, query).await?;
        Ok(read_entries(rows)?.into_iter().map(|s| s.entry).collect())
    }

    /// How many of this device's changes are not yet sent to the shared log.
    pub async fn unshared_count(&self) -> Result<u64> {
        Ok(self
            .storage
            .count(LOG_COLLECTION, Filter::all().eq("shared", false))
            .await?)
    }

    /// How many entries the log holds.
    pub async fn len(&self) -> Result<u64> {
        Ok(self.storage.count(LOG_COLLECTION, Filter::all()).await?)
    }

    /// True when the log holds no entry.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// The greatest timestamp of the applied entries (the device's own and the received
    /// ones that passed the clock's drift check), to restore the clock after a restart.
    /// Held entries do not count: one held for being too far in the future must not move
    /// the clock there.
    pub async fn max_hlc(&self) -> Result<Option<Hlc>> {
        let query = Query::new(Filter::all().eq("integrated", true))
            .order_desc("hlc")
            .order_desc("device")
            .limit(1);
        let rows = self.exec().find(LOG_COLLECTION, query).await?;
        Ok(read_entries(rows)?.into_iter().next().map(|s| s.entry.hlc))
    }

    /// Drops shared, integrated entries that no longer decide any value: everything older
    /// than an object's latest delete (but that delete), and creates and updates all of whose
    /// fields were overwritten later (but the latest create after the delete, which says the
    /// object exists). Returns how many entries were dropped.
    pub async fn compact(&self) -> Result<u64> {
        let rows = self
            .exec()
            .find(
                LOG_COLLECTION,
                Query::new(Filter::all().eq("integrated", true)),
            )
            .await?;
        let mut by_object: BTreeMap<ObjectKey, Vec<StoredEntry>> = BTreeMap::new();
        for stored in read_entries(rows)? {
            by_object
                .entry(object_key(&stored.entry))
                .or_default()
                .push(stored);
        }
        let mut drop_ids = Vec::new();
        for entries in by_object.values() {
            drop_ids.extend(superseded(entries));
        }
        let mut dropped = 0;
        for chunk in drop_ids.chunks(LOOKUP_CHUNK) {
            let op = Operation::delete_where(
                LOG_COLLECTION,
                Filter::all().is_in("id", chunk.iter().copied()),
            );
            dropped += self.exec().run(op).await?.count().unwrap_or(0);
        }
        Ok(dropped)
    }
}

/// The shared entries of one object that no longer decide its state.
fn superseded(entries: &[StoredEntry]) -> Vec<Uuid> {
    let deleted = entries
        .iter()
        .filter(|s| s.entry.op == EntryOp::Delete)
        .map(|s| s.entry.hlc)
        .max();
    let live = |s: &&StoredEntry| deleted.is_none_or(|d| s.entry.hlc > d);
    let latest_create = entries
        .iter()
        .filter(live)
        .filter(|s| s.entry.op == EntryOp::Create)
        .map(|s| s.entry.hlc)
        .max();
    let mut newest_per_field: HashMap<&str, Hlc> = HashMap::new();
    for s in entries
        .iter()
        .filter(live)
        .filter(|s| s.entry.op != EntryOp::Delete)
    {
        for field in s.entry.fields.keys() {
            let newest = newest_per_field.entry(field).or_insert(s.entry.hlc);
            if s.entry.hlc > *newest {
                *newest = s.entry.hlc;
            }
        }
    }
    entries
        .iter()
        .filter(|s| s.shared)
        .filter(|s| {
            let e = &s.entry;
            let needed = match e.op {
                EntryOp::Delete => Some(e.hlc) == deleted,
                _ if deleted.is_some_and(|d| e.hlc < d) => false,
                EntryOp::Create if Some(e.hlc) == latest_create => true,
                _ => e
                    .fields
                    .keys()
                    .any(|f| newest_per_field.get(f.as_str()) == Some(&e.hlc)),
            };
            !needed
        })
        .map(|s| s.entry.id)
        .collect()
}

/// Loads the integrated entries for the given objects, grouped by object.
pub(crate) async fn entries_for(
    exec: Exec<'_>,
    objects: &[ObjectKey],
) -> Result<HashMap<ObjectKey, Vec<LogEntry>>> {
    let mut by_collection: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (collection, pk) in objects {
        by_collection.entry(collection).or_default().push(pk);
    }
    let mut found: HashMap<ObjectKey, Vec<LogEntry>> = HashMap::new();
    for (collection, pks) in by_collection {
        for chunk in pks.chunks(LOOKUP_CHUNK) {
            let filter = Filter::all()
                .eq("collection", collection)
                .is_in("pk", chunk.iter().map(|pk| Value::from(*pk)))
                .eq("integrated", true);
            for stored in read_entries(exec.find(LOG_COLLECTION, Query::new(filter)).await?)? {
                found
                    .entry(object_key(&stored.entry))
                    .or_default()
                    .push(stored.entry);
            }
        }
    }
    Ok(found)
}

/// Which of `ids` the log already holds.
pub(crate) async fn known_ids(
    exec: Exec<'_>,
    ids: &[Uuid],
) -> Result<std::collections::HashSet<Uuid>> {
    let mut known = std::collections::HashSet::new();
    for chunk in ids.chunks(LOOKUP_CHUNK) {
        let query = Query::new(Filter::all().is_in("id", chunk.iter().copied()));
        for row in exec.find(LOG_COLLECTION, query).await? {
            if let Some(id) = row.get("id").and_then(Value::as_uuid) {
                known.insert(id);
            }
        }
    }
    Ok(known)
}
