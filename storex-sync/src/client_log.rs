//! [`ClientSyncLog`]: the device's own record of changes, a collection in the app's database.
//!
//! It holds the device's changes (unshared until pushed; a write leaves them in the
//! [journal](crate::journal) first, and readers index it), the changes received from other
//! devices that are held back, and the copies a fast sync of an earlier version brought
//! (fast sync now sends versions). Changes received and
//! applied go into the [versions index](crate::versions) instead. Reconciliation reads both
//! to know every change to an object; compaction folds the shared entries into the versions
//! and drops them.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use storex_core::uuid::Uuid;
use storex_core::{
    object, BatchStep, Filter, Object, Operation, Origin, Outcome, Pk, Query, Registry, Storage,
    StorageTransaction, Value,
};

use crate::entry::{
    log_value, next_page_after, pk_text, LogEntry, StoredEntry, LOG_COLLECTION, LOG_FIELDS,
};
use crate::error::Result;
use crate::hlc::{DeviceId, Hlc};
use crate::journal::{
    index_journal, latest_record, latest_stamp, read_journal_part, settle_part, Indexed,
    JournalPart, JOURNAL_COLLECTION,
};
use crate::key_runs;
use crate::reconcile::{object_key, ObjectKey};
use crate::versions;
use crate::write_order::WriteOrder;

/// Largest number of values in one `IN (…)` lookup.
pub(crate) const LOOKUP_CHUNK: usize = 1_000;

/// Entries a round of compaction folds at most, in one transaction.
pub(crate) const COMPACT_ROUND: u64 = 2_000;

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
        self.run(Operation::find_many(collection, query))
            .await?
            .into_objects()
    }

    /// The values of `fields` of every object `query` finds (see
    /// [`Operation::FindValues`]).
    pub(crate) async fn find_values(
        self,
        collection: &str,
        query: Query,
        fields: &[&str],
    ) -> storex_core::Result<Vec<Vec<Value>>> {
        let op = Operation::find_values(collection, query, fields.iter().copied());
        self.run(op).await?.into_values()
    }
}

/// Commits `tx` when the work done in it succeeded, rolls it back when it failed; returns the
/// work's result.
async fn settle<T>(tx: StorageTransaction, result: Result<T>) -> Result<T> {
    match result {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(e) => {
            tx.rollback().await?;
            Err(e)
        }
    }
}

fn read_entries(rows: Vec<Object>) -> Result<Vec<StoredEntry>> {
    rows.iter().map(StoredEntry::from_object).collect()
}

/// Rows of the client log read for a caller that lists them ([`ClientSyncLog::all`],
/// [`ClientSyncLog::held`]): the entries of the rows that read, and why the others do not.
/// A row that does not read (damaged) is passed over, not a reason to fail the whole read.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRows<T> {
    /// The entries of the rows that read, in timestamp order.
    pub entries: Vec<T>,
    /// One message per row that does not read, naming the row by its id when that reads.
    pub damaged: Vec<String>,
}

impl<T> Default for LogRows<T> {
    fn default() -> Self {
        LogRows {
            entries: Vec::new(),
            damaged: Vec::new(),
        }
    }
}

impl LogRows<StoredEntry> {
    /// Reads `rows` of the log collection (the values of [`LOG_FIELDS`]), passing over those
    /// that do not read.
    pub(crate) fn read(rows: &[Vec<Value>]) -> Self {
        let mut read = LogRows {
            entries: Vec::with_capacity(rows.len()),
            damaged: Vec::new(),
        };
        for row in rows {
            match StoredEntry::read_values(row, true) {
                Ok(stored) => read.entries.push(stored),
                Err(e) => read.damaged.push(e.to_string()),
            }
        }
        read
    }

    /// The changes alone, without their local flags.
    pub(crate) fn into_log_entries(self) -> LogRows<LogEntry> {
        LogRows {
            entries: self.entries.into_iter().map(|s| s.entry).collect(),
            damaged: self.damaged,
        }
    }
}

/// The client sync log of one device.
///
/// Writes leave their entries in the [journal](crate::JOURNAL_COLLECTION); every method that
/// reads this device's own entries indexes the journal first, so it sees all of them.
#[derive(Clone, Debug)]
pub struct ClientSyncLog {
    storage: Storage,
    /// The device's write-order lock, which also keeps two indexings of the journal apart.
    order: WriteOrder,
    /// Whether readers index the journal first.
    indexing: bool,
}

impl ClientSyncLog {
    /// The log kept in `storage`, whose registry must hold sync's collections and the app's
    /// (indexing reads created rows back).
    pub fn new(storage: Storage) -> Self {
        Self::with_order(storage, WriteOrder::default())
    }

    /// A view of the log that never indexes the journal, for a tool opened on sync's tables
    /// alone: its queries show what is indexed, and [`ClientSyncLog::journal_records`]
    /// counts the writes still waiting in the journal.
    pub fn inspect(storage: Storage) -> Self {
        ClientSyncLog {
            indexing: false,
            ..Self::new(storage)
        }
    }

    /// The log kept in `storage`, indexing under the device's write-order lock `order`.
    pub(crate) fn with_order(storage: Storage, order: WriteOrder) -> Self {
        ClientSyncLog {
            storage,
            order,
            indexing: true,
        }
    }

    /// Indexes the journal unless this is an [inspecting](ClientSyncLog::inspect) view.
    async fn index_first(&self) -> Result<()> {
        if self.indexing {
            self.index_journal().await?;
        }
        Ok(())
    }

    /// How many journal records (writes, each of one or more changes) wait to be indexed.
    pub async fn journal_records(&self) -> Result<u64> {
        Ok(self
            .storage
            .count(JOURNAL_COLLECTION, Filter::all())
            .await?)
    }

    fn exec(&self) -> Exec<'_> {
        Exec::Storage(&self.storage)
    }

    /// Turns the journal's records (the entries of the writes made since the last time)
    /// into log entries, in one transaction; returns how many entries that made. Every
    /// reader of the log does it first; an app may call it at a quiet moment. A record that
    /// does not read (damaged, or in a newer version's format) is passed over and stays in
    /// the journal: the writes after it still sync, and each sync's push reports it in
    /// [`SyncReport::problems`](crate::SyncReport::problems).
    ///
    /// It takes the device's write-order lock and opens a write transaction. Called by a
    /// middleware while it handles a write (or sync applies received changes), it fails at
    /// once instead of waiting for that write; do not call it while holding a transaction of
    /// your own on a single-connection database either.
    pub async fn index_journal(&self) -> Result<u64> {
        let indexed = self
            .order
            .hold(self.index_journal_holding_order())
            .await??;
        Ok(indexed.entries)
    }

    /// [`ClientSyncLog::index_journal`] for a caller holding the write-order lock; also
    /// tells the records passed over.
    pub(crate) async fn index_journal_holding_order(&self) -> Result<Indexed> {
        let tx = self.storage.begin().await?;
        let indexed = index_journal(Exec::Transaction(&tx), self.storage.registry()).await;
        settle(tx, indexed).await
    }

    /// The id of the journal's latest record (`None` when the journal is empty): the end of
    /// the writes made until now, for [`ClientSyncLog::read_journal_part`]. Read under the
    /// write-order lock, so a write of this process under way, which holds it until its
    /// transaction commits, is among them: a sync its signal woke (a change watcher after the
    /// logger sees the write before the commit) pushes it rather than leave it for the next.
    pub(crate) async fn journal_end(&self) -> Result<Option<Uuid>> {
        self.order.hold(latest_record(self.exec())).await?
    }

    /// Reads the journal's records after `after` and up to `until` until at least `enough`
    /// entries are made or none is left, without indexing them: a pusher sends them first,
    /// then settles them ([`ClientSyncLog::settle_pushed`]). Until then they
    /// stay records: a crash before only means they are read and pushed again, under the
    /// same ids (a create then with the values its row has by that time, which later entries
    /// of this device's also carry). The records and the rows of their creates are read in
    /// one snapshot, as indexing reads them.
    pub(crate) async fn read_journal_part(
        &self,
        after: Option<Uuid>,
        until: Option<Uuid>,
        enough: usize,
    ) -> Result<JournalPart> {
        let tx = self.storage.begin_snapshot().await?;
        let registry = self.storage.registry();
        let part = read_journal_part(Exec::Transaction(&tx), registry, after, until, enough);
        let part = part.await;
        settle(tx, part).await
    }

    /// Settles a part read by [`ClientSyncLog::read_journal_part`], in one transaction under
    /// the write-order lock: the entries in `pushed` are folded into the versions index with
    /// `fold` (but those of an object whose versions do not read: see [`Folding::kept`]),
    /// stored as shared log rows without. A fold that fails (the database refuses the
    /// versions, say) leaves the part as shared log rows instead, so that push goes on;
    /// compaction tries them again later and reports what fails.
    pub(crate) async fn settle_pushed(
        &self,
        part: JournalPart,
        pushed: &HashSet<Uuid>,
        fold: bool,
    ) -> Result<()> {
        if part.settles_nothing() {
            // Only records that do not read (they stay): no transaction, no lock.
            return Ok(());
        }
        let part = &part;
        let attempt = |fold: bool| async move {
            // Isolated: another process on the same database that folds into the same
            // object's versions meanwhile makes this attempt fail (transient) instead of
            // having its fold overwritten (the write-order lock is per process).
            let tx = self.storage.begin_isolated().await?;
            let registry = self.storage.registry();
            let exec = Exec::Transaction(&tx);
            let settled = settle_part(exec, registry, part, pushed, fold).await;
            settle(tx, settled).await
        };
        let settling = async {
            match attempt(fold).await {
                Err(_) if fold => attempt(false).await,
                settled => settled,
            }
        };
        self.order.hold(settling).await?
    }

    /// The write-order lock, for a caller that must index and then act before any other
    /// write lands (the fast-sync sender starting its snapshot).
    pub(crate) fn write_order(&self) -> &WriteOrder {
        &self.order
    }

    /// Up to `limit` of this device's changes not yet sent to the shared log, oldest first.
    pub async fn unshared(&self, limit: u64) -> Result<Vec<LogEntry>> {
        self.index_first().await?;
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

    /// Every entry, in timestamp order (for inspection and tests), and the rows that do not
    /// read.
    pub async fn all(&self) -> Result<LogRows<StoredEntry>> {
        self.index_first().await?;
        let query = Query::default().order_asc("hlc").order_asc("device");
        let rows = self
            .exec()
            .find_values(LOG_COLLECTION, query, &LOG_FIELDS)
            .await?;
        Ok(LogRows::read(&rows))
    }

    /// Entries received but held back (unknown collection, newer schema, invalid values,
    /// clock drift, a refused write, a log row or the versions of their object that do not
    /// read), and the held rows that do not read themselves (they stay held).
    pub async fn held(&self) -> Result<LogRows<LogEntry>> {
        let query = Query::new(Filter::all().eq("integrated", false))
            .order_asc("hlc")
            .order_asc("device");
        let rows = self
            .exec()
            .find_values(LOG_COLLECTION, query, &LOG_FIELDS)
            .await?;
        Ok(LogRows::read(&rows).into_log_entries())
    }

    /// A page of the held entries in timestamp order, after timestamp `after` (text, as
    /// stored): about `limit` of them, and with the last timestamp's entries all (the
    /// entries of one write share a timestamp, so a page does not end inside them), with the
    /// timestamp to read on after, `None` when none are left.
    pub(crate) async fn held_page(
        &self,
        after: Option<&str>,
        limit: u64,
    ) -> Result<(LogRows<LogEntry>, Option<String>)> {
        let held = || {
            let filter = Filter::all().eq("integrated", false);
            match after {
                Some(after) => filter.gt("hlc", after),
                None => filter,
            }
        };
        let in_order = |query: Query| query.order_asc("hlc").order_asc("device").order_asc("id");
        let limit = limit.max(1);
        let query = in_order(Query::new(held())).limit(limit);
        let mut rows = self
            .exec()
            .find_values(LOG_COLLECTION, query, &LOG_FIELDS)
            .await?;
        let hlc_of = |row: &Vec<Value>| {
            log_value(row, "hlc")
                .and_then(Value::as_text)
                .map(str::to_owned)
        };
        // A full page ends at its last timestamp, read whole; one whose rows hold no
        // timestamp that reads (damaged) is read to the end at once.
        let next = if (rows.len() as u64) < limit {
            None
        } else if let Some(last) = rows.iter().rev().find_map(hlc_of) {
            // (A row whose timestamp does not read stays, to be reported.)
            rows.retain(|row| hlc_of(row).is_none_or(|hlc| hlc < last));
            let query = in_order(Query::new(held().eq("hlc", last.as_str())));
            rows.extend(
                self.exec()
                    .find_values(LOG_COLLECTION, query, &LOG_FIELDS)
                    .await?,
            );
            Some(last)
        } else {
            let rest = in_order(Query::new(held())).skip(limit);
            rows.extend(
                self.exec()
                    .find_values(LOG_COLLECTION, rest, &LOG_FIELDS)
                    .await?,
            );
            None
        };
        Ok((LogRows::read(&rows).into_log_entries(), next))
    }

    /// How many of this device's changes are not yet sent to the shared log.
    pub async fn unshared_count(&self) -> Result<u64> {
        self.index_first().await?;
        Ok(self
            .storage
            .count(LOG_COLLECTION, Filter::all().eq("shared", false))
            .await?)
    }

    /// Whether at least `count` entries wait for compaction (the shared, integrated ones of
    /// the registry's collections), without counting them all. The journal holds none (its
    /// records become unshared entries), so it is not indexed first.
    pub(crate) async fn compactable_at_least(&self, count: u64) -> Result<bool> {
        let Some(skip) = count.checked_sub(1) else {
            return Ok(true);
        };
        // In timestamp order, which the (shared, hlc) index gives without sorting.
        let query = Query::new(compactable(self.storage.registry()))
            .order_asc("hlc")
            .skip(skip)
            .limit(1);
        Ok(!self.exec().find(LOG_COLLECTION, query).await?.is_empty())
    }

    /// How many objects the [versions index](crate::VERSIONS_COLLECTION) describes: those
    /// changes applied from other devices (and this device's, once compacted) touched.
    pub async fn versioned_objects(&self) -> Result<u64> {
        let filter = Filter::all().ne("object", versions::CLOCK_OBJECT);
        Ok(self
            .storage
            .count(versions::VERSIONS_COLLECTION, filter)
            .await?)
    }

    /// The rows of the [versions index](crate::VERSIONS_COLLECTION) that do not read
    /// (damaged, or in the format of a newer version), one message each: the received
    /// changes of their objects are held, and this device's own stay log rows, until they
    /// read. Reads the whole index, in pages (for inspection: `storex status`).
    pub async fn versions_that_do_not_read(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        versions::each_row(self.exec(), |row| {
            if let Err(e) = versions::Versions::from_values(row) {
                problems.push(e.to_string());
            }
        })
        .await?;
        Ok(problems)
    }

    /// How many entries the log holds.
    pub async fn len(&self) -> Result<u64> {
        self.index_first().await?;
        Ok(self.storage.count(LOG_COLLECTION, Filter::all()).await?)
    }

    /// True when the log holds no entry.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// The greatest timestamp of the applied entries (the device's own, in the log or still
    /// in the journal, and the received ones that passed the clock's drift check), to
    /// restore the clock after a restart. Held entries do not count: one held for being too
    /// far in the future must not move the clock there. It does not index the journal, so
    /// opening a device writes nothing. It reads only the rows' timestamps, and passes over a
    /// row whose timestamp does not read: a damaged row must not keep the device from opening.
    pub async fn max_hlc(&self) -> Result<Option<Hlc>> {
        let logged = newest_logged_stamp(self.exec()).await?;
        let applied = versions::latest_applied(self.exec()).await?.latest;
        Ok(logged.max(latest_stamp(self.exec()).await?).max(applied))
    }

    /// Folds the shared, integrated entries (this device's changes once pushed, and those a
    /// fast sync of an earlier version brought) into the [versions index](crate::VERSIONS_COLLECTION), which keeps
    /// what convergence needs of them, and drops them from the log. Unshared and held
    /// entries stay, as do those of collections this storage's registry does not define,
    /// rows that do not read (damaged: what they recorded is not known), and the entries of
    /// an object whose row of versions does not read.
    /// Works in rounds of 2,000 entries, oldest first, each its own transaction, so memory
    /// stays bounded and the app's writes wait for one round at most. Returns how many
    /// entries were dropped.
    pub async fn compact(&self) -> Result<u64> {
        self.compact_up_to(u64::MAX).await
    }

    /// Like [`ClientSyncLog::compact`], but drops at most `limit` entries, the oldest first:
    /// what [`crate::ContinuousSync::sync_once`] does, so that a device that syncs in the
    /// background keeps its log small without one sync doing all of a large backlog at once.
    pub async fn compact_up_to(&self, limit: u64) -> Result<u64> {
        // No transaction (nor the write-order lock) when there is nothing to fold: the usual
        // case for an idle sync. Asked once, not before every round: a read on another of
        // the pool's connections between two rounds costs SQLite its page cache (20% of a
        // large compaction's time).
        if !self.compactable_at_least(1).await? {
            return Ok(0);
        }
        self.compact_rounds(limit).await
    }

    /// [`ClientSyncLog::compact_up_to`] for a caller that knows entries wait: without asking
    /// first.
    pub(crate) async fn compact_rounds(&self, limit: u64) -> Result<u64> {
        let mut dropped = 0u64;
        let mut after: Option<String> = None;
        while dropped < limit {
            let size = (limit - dropped).min(COMPACT_ROUND);
            let round = async {
                // Isolated, as settling a push is (see there).
                let tx = self.storage.begin_isolated().await?;
                let registry = self.storage.registry();
                let exec = Exec::Transaction(&tx);
                let folded = compact_into_versions(exec, registry, size, after.as_deref()).await;
                settle(tx, folded).await
            };
            let round = self.order.hold(round).await??;
            dropped += round.folded;
            match round.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        Ok(dropped)
    }
}

/// The log entries compaction folds: shared, integrated, of a collection of `registry`.
fn compactable(registry: &Registry) -> Filter {
    let collections = registry.collections().map(|def| Value::from(def.name()));
    Filter::all()
        .eq("shared", true)
        .eq("integrated", true)
        .is_in("collection", collections)
}

/// What one round of compaction did.
#[derive(Debug)]
struct CompactRound {
    /// The entries folded into the versions and dropped from the log.
    folded: u64,
    /// Where the next round starts: the timestamp text of a full round's last row. (The
    /// text leaves out the device, so rows of other devices' entries that share it with
    /// that row and did not fit the round wait for the next compaction; this device's
    /// own entries never share one.)
    next_after: Option<String>,
}

/// One round of [`ClientSyncLog::compact`]: folds up to `size` of the shared, integrated
/// entries of the registry's collections, the oldest first after the row whose timestamp
/// text is `after`, inside the transaction behind `exec`. A row that does not read stays in
/// the log (what it recorded is not known) and the rounds go on past it.
async fn compact_into_versions(
    exec: Exec<'_>,
    registry: &Registry,
    size: u64,
    after: Option<&str>,
) -> Result<CompactRound> {
    let mut filter = compactable(registry);
    if let Some(after) = after {
        filter = filter.gt("hlc", after);
    }
    let query = Query::new(filter).order_asc("hlc").limit(size);
    let rows = exec.find_values(LOG_COLLECTION, query, &LOG_FIELDS).await?;
    let next_after = next_page_after(&rows, size);
    let entries: Vec<LogEntry> = rows
        .iter()
        .filter_map(|row| StoredEntry::read_values(row, true).ok())
        .map(|s| s.entry)
        .collect();
    if entries.is_empty() {
        return Ok(CompactRound {
            folded: 0,
            next_after,
        });
    }
    let Folding { mut steps, kept } = fold_steps(exec, registry, entries.iter()).await?;
    let kept: HashSet<Uuid> = kept.iter().map(|e| e.id).collect();
    let ids: Vec<Uuid> = entries
        .iter()
        .map(|e| e.id)
        .filter(|id| !kept.contains(id))
        .collect();
    steps.extend(delete_ids_steps(LOG_COLLECTION, &ids));
    exec.run(Operation::Batch { steps }).await?;
    Ok(CompactRound {
        folded: ids.len() as u64,
        next_after,
    })
}

/// What [`fold_steps`] makes of some entries.
#[derive(Debug)]
pub(crate) struct Folding<'e> {
    /// The steps storing the versions the entries fold into.
    pub(crate) steps: Vec<BatchStep>,
    /// The entries left out: their object's row of versions does not read, so they stay
    /// log rows (what they record is kept, and reconciling reads it there).
    pub(crate) kept: Vec<&'e LogEntry>,
}

/// The steps that fold `entries` (shared and integrated, of collections of `registry`) into
/// their objects' versions, inside the transaction behind `exec`: what compaction does with
/// them, and what a push does with the entries it sent. The entries of an object whose
/// versions do not read are left out ([`Folding::kept`]).
pub(crate) async fn fold_steps<'e>(
    exec: Exec<'_>,
    registry: &Registry,
    entries: impl IntoIterator<Item = &'e LogEntry>,
) -> Result<Folding<'e>> {
    let mut by_object: BTreeMap<ObjectKey, Vec<&LogEntry>> = BTreeMap::new();
    let mut latest = None;
    for entry in entries {
        latest = latest.max(Some(entry.hlc));
        by_object.entry(object_key(entry)).or_default().push(entry);
    }
    let objects: Vec<ObjectKey> = by_object.keys().cloned().collect();
    let loaded = versions::load(exec, &objects).await?;
    let mut kept = Vec::new();
    for key in loaded.damaged.objects.keys() {
        kept.extend(by_object.remove(key).unwrap_or_default());
    }
    let mut base = loaded.versions;
    let each = by_object
        .iter()
        .flat_map(|(key, entries)| Some((key, &entries.first()?.pk)));
    let exists = existing_objects(exec, registry, each).await?;
    // The rows matter only for objects that do not exist: none.
    let folded = versions::fold_objects(registry, &mut base, &HashMap::new(), by_object, &exists);
    let clock_before = versions::latest_applied(exec).await?;
    Ok(Folding {
        steps: versions::store_steps(folded, latest, clock_before)?,
        kept,
    })
}

/// The greatest timestamp of the log's integrated rows, of those whose timestamp reads
/// (see [`ClientSyncLog::max_hlc`]).
async fn newest_logged_stamp(exec: Exec<'_>) -> Result<Option<Hlc>> {
    // One row is read unless the newest ones are damaged.
    const PAGE: u64 = 16;
    let mut skip = 0;
    loop {
        let query = Query::new(Filter::all().eq("integrated", true))
            .order_desc("hlc")
            .order_desc("device")
            .skip(skip)
            .limit(if skip == 0 { 1 } else { PAGE });
        let rows = exec
            .find_values(LOG_COLLECTION, query, &["hlc", "device"])
            .await?;
        let stamp = rows.iter().find_map(|row| match row.as_slice() {
            // (Restoring the clock needs its time, not its device.)
            [Value::Text(text), device] => {
                let device = DeviceId(device.as_uuid().unwrap_or_default());
                Hlc::from_clock_text(text, device).ok()
            }
            _ => None,
        });
        if stamp.is_some() || rows.is_empty() {
            return Ok(stamp);
        }
        skip += rows.len() as u64;
    }
}

/// The objects with a row of sync's own tables that does not read (damaged, or in the
/// format of a newer version), found by a lookup by object ([`logged_for`],
/// [`versions::load`]): what this device recorded of them is not known.
#[derive(Debug, Default)]
pub(crate) struct Unread {
    /// The objects, and why (the first such row's problem).
    pub(crate) objects: HashMap<ObjectKey, String>,
}

impl Unread {
    /// Notes that a row of `key` does not read, for `error`.
    pub(crate) fn note(&mut self, key: ObjectKey, error: crate::error::Error) {
        self.objects.entry(key).or_insert_with(|| error.to_string());
    }
}

/// What the log holds for some objects: see [`logged_for`].
#[derive(Debug, Default)]
pub(crate) struct Logged {
    /// The integrated entries, by object.
    pub(crate) integrated: HashMap<ObjectKey, Vec<LogEntry>>,
    /// The ids of every entry found that reads, integrated or held.
    pub(crate) ids: HashSet<Uuid>,
    /// The objects with a row that does not read (integrated or held): what the log holds
    /// of them is not known. (A row whose collection or key is what does not read is not
    /// found by its object at all.)
    pub(crate) damaged: Unread,
}

/// Loads the log's entries for the given objects: the integrated ones grouped by object,
/// the ids of all (a held entry received again is known by its id), and the objects with a
/// row that does not read (see [`Logged::damaged`]).
pub(crate) async fn logged_for(exec: Exec<'_>, objects: &[ObjectKey]) -> Result<Logged> {
    logged_reading(exec, objects, true).await
}

/// [`logged_for`], reading a create's values only if `create_values` (a row whose values do
/// not read then reads: see [`StoredEntry::read`]).
pub(crate) async fn logged_reading(
    exec: Exec<'_>,
    objects: &[ObjectKey],
    create_values: bool,
) -> Result<Logged> {
    let mut filters = Vec::new();
    // Runs of consecutive keys as key ranges (see `key_runs`), the rest by `IN` lists.
    for (collection, split) in key_runs::split_by_collection(objects) {
        for (first, last) in split.runs {
            let filter = Filter::all()
                .eq("collection", collection)
                .gte("pk", key_runs::text_of(first))
                .lte("pk", key_runs::text_of(last));
            filters.push(filter);
        }
        for chunk in split.rest.chunks(LOOKUP_CHUNK) {
            let filter = Filter::all()
                .eq("collection", collection)
                .is_in("pk", chunk.iter().map(|key| Value::from(key.1.as_str())));
            filters.push(filter);
        }
    }
    let asked: HashSet<(&str, &str)> = objects
        .iter()
        .map(|(collection, pk)| (collection.as_str(), pk.as_str()))
        .collect();
    let mut found = Logged::default();
    for filter in filters {
        let rows = exec
            .find_values(LOG_COLLECTION, Query::new(filter), &LOG_FIELDS)
            .await?;
        for row in rows {
            let stored = match StoredEntry::read_values(&row, create_values) {
                Ok(stored) => stored,
                Err(e) => {
                    // Found by its object's collection and key, which therefore read.
                    let text = |name| log_value(&row, name).and_then(Value::as_text);
                    let (Some(collection), Some(pk)) = (text("collection"), text("pk")) else {
                        return Err(e);
                    };
                    if asked.contains(&(collection, pk)) {
                        found
                            .damaged
                            .note((collection.to_owned(), pk.to_owned()), e);
                    }
                    continue;
                }
            };
            let key = object_key(&stored.entry);
            // An entry of a key asked for, found by a range and by an `IN` list too (a key
            // of another shape between a run's ends), is kept once.
            if !asked.contains(&(key.0.as_str(), key.1.as_str()))
                || !found.ids.insert(stored.entry.id)
            {
                continue;
            }
            if stored.integrated {
                found.integrated.entry(key).or_default().push(stored.entry);
            }
        }
    }
    Ok(found)
}

/// Which of `objects` this device knows changes of: logged here, or described by the
/// versions index (received, or this device's own once compacted).
pub(crate) async fn known_objects(
    exec: Exec<'_>,
    objects: &[ObjectKey],
) -> Result<HashSet<ObjectKey>> {
    // An object with a log row or versions that do not read is known too: this device
    // recorded changes of it. Only the objects count, so a create's values are not read.
    let logged = logged_reading(exec, objects, false).await?;
    let loaded = versions::load(exec, objects).await?;
    Ok(logged
        .integrated
        .into_keys()
        .chain(logged.damaged.objects.into_keys())
        .chain(loaded.versions.into_keys())
        .chain(loaded.damaged.objects.into_keys())
        .collect())
}

/// Which of `ids` the log already holds.
pub(crate) async fn known_ids(exec: Exec<'_>, ids: &[Uuid]) -> Result<HashSet<Uuid>> {
    ids_in(exec, LOG_COLLECTION, ids).await
}

/// Which of `ids` `collection` (one of sync's own, keyed by `id`) holds.
pub(crate) async fn ids_in(
    exec: Exec<'_>,
    collection: &str,
    ids: &[Uuid],
) -> Result<HashSet<Uuid>> {
    let mut known = HashSet::new();
    for chunk in ids.chunks(LOOKUP_CHUNK) {
        let query = Query::new(Filter::all().is_in("id", chunk.iter().copied()));
        for row in exec.find_values(collection, query, &["id"]).await? {
            if let Some(id) = row.first().and_then(Value::as_uuid) {
                known.insert(id);
            }
        }
    }
    Ok(known)
}

/// The steps deleting the rows `ids` from `collection` (one of sync's own, keyed by `id`).
pub(crate) fn delete_ids_steps(collection: &str, ids: &[Uuid]) -> Vec<BatchStep> {
    ids.chunks(LOOKUP_CHUNK)
        .map(|chunk| {
            let filter = Filter::all().is_in("id", chunk.iter().copied());
            BatchStep::new(Operation::delete_where(collection, filter))
        })
        .collect()
}

/// The object `entry` changes, as [`current_rows`] takes it.
pub(crate) fn entry_object(entry: &LogEntry) -> (&str, &Pk) {
    (&entry.collection, &entry.pk)
}

/// Which of `objects` (each key with its object's key) have a row. Counted where that can
/// tell: a run of consecutive UUID keys (see `key_runs`) whose range counts all of them
/// exists whole (the range of a UUID field holds no other value), and so does a list of keys
/// that counts all of them. Only the rows of a run or a list with some missing are read (as
/// are those of a list naming a key twice).
pub(crate) async fn existing_objects<'k>(
    exec: Exec<'_>,
    registry: &Registry,
    objects: impl IntoIterator<Item = (&'k ObjectKey, &'k Pk)>,
) -> Result<HashSet<ObjectKey>> {
    let mut by_collection: HashMap<&str, Vec<(&ObjectKey, &Pk)>> = HashMap::new();
    for (key, pk) in objects {
        by_collection.entry(&key.0).or_default().push((key, pk));
    }
    let asked = by_collection.values().map(Vec::len).sum();
    let mut exists = HashSet::with_capacity(asked);
    let mut unsure: Vec<(&str, &Pk)> = Vec::new();
    for (collection, keys) in by_collection {
        let Ok(def) = registry.collection(collection) else {
            continue;
        };
        let [field] = def.pk_fields() else {
            unsure.extend(keys.into_iter().map(|(_, pk)| (collection, pk)));
            continue;
        };
        let uuid_field = def
            .field_def(field)
            .is_some_and(|f| f.ty == storex_core::FieldType::Uuid);
        let uuid_of = |pk: &Pk| key_runs::uuid_of_pk(pk).filter(|_| uuid_field);
        let split = key_runs::split(keys.clone(), |(_, pk)| uuid_of(pk));
        // The runs (as numbers, in order) that count all their keys, and the others.
        let (mut whole, mut short) = (Vec::new(), Vec::new());
        for (first, last) in split.runs {
            let filter = Filter::all()
                .gte(field.clone(), first)
                .lte(field.clone(), last);
            let count = exec
                .run(Operation::count(collection, filter))
                .await?
                .count();
            let (first, last) = (first.as_u128(), last.as_u128());
            match count == Some(last.abs_diff(first) as u64 + 1) {
                true => whole.push((first, last)),
                false => short.push((first, last)),
            }
        }
        let within = |runs: &[(u128, u128)], n: u128| {
            let next = runs.partition_point(|(first, _)| *first <= n);
            next > 0 && n <= runs[next - 1].1
        };
        for (key, pk) in &keys {
            let Some(n) = uuid_of(pk).map(|u| u.as_u128()) else {
                continue;
            };
            if within(&whole, n) {
                exists.insert((*key).clone());
            } else if within(&short, n) {
                unsure.push((collection, pk));
            }
        }
        for chunk in split.rest.chunks(LOOKUP_CHUNK) {
            let values = chunk.iter().filter_map(|(_, pk)| pk.single().cloned());
            let filter = Filter::all().is_in(field.clone(), values);
            let count = exec
                .run(Operation::count(collection, filter))
                .await?
                .count();
            if count == Some(chunk.len() as u64) {
                exists.extend(chunk.iter().map(|(key, _)| (*key).clone()));
            } else {
                unsure.extend(chunk.iter().map(|(_, pk)| (collection, *pk)));
            }
        }
    }
    if !unsure.is_empty() {
        exists.extend(current_rows(exec, registry, unsure).await?.into_keys());
    }
    Ok(exists)
}

/// The stored rows of `objects` (collection and key), by object.
pub(crate) async fn current_rows<'e>(
    exec: Exec<'_>,
    registry: &Registry,
    objects: impl IntoIterator<Item = (&'e str, &'e Pk)>,
) -> Result<HashMap<ObjectKey, Object>> {
    let mut by_collection: HashMap<&str, Vec<&Pk>> = HashMap::new();
    // (In a block: the iterator is not held across the awaits below.)
    let seen = {
        let objects = objects.into_iter();
        let (fewest, most) = objects.size_hint();
        let mut seen = HashSet::with_capacity(most.unwrap_or(fewest));
        for (collection, pk) in objects {
            if seen.insert((collection, pk_text(pk))) {
                by_collection.entry(collection).or_default().push(pk);
            }
        }
        seen
    };
    let mut rows = HashMap::with_capacity(seen.len());
    for (collection, pks) in by_collection {
        let Ok(def) = registry.collection(collection) else {
            continue;
        };
        let mut found = Vec::new();
        match def.pk_fields() {
            [field] => {
                // Runs of consecutive keys as key ranges (see `key_runs`), the rest by `IN`.
                let split = key_runs::split(pks, |pk| key_runs::uuid_of_pk(pk));
                for (first, last) in split.runs {
                    let filter = Filter::all()
                        .gte(field.clone(), first)
                        .lte(field.clone(), last);
                    found.extend(exec.find(collection, Query::new(filter)).await?);
                }
                let pks = split.rest;
                for chunk in pks.chunks(LOOKUP_CHUNK) {
                    let keys: Vec<Value> =
                        chunk.iter().filter_map(|pk| pk.single().cloned()).collect();
                    found.extend(
                        exec.find(
                            collection,
                            Query::new(Filter::all().is_in(field.clone(), keys)),
                        )
                        .await?,
                    );
                }
            }
            fields => {
                for pk in pks {
                    let filter = fields
                        .iter()
                        .zip(pk.values())
                        .fold(Filter::all(), |f, (field, value)| {
                            f.eq(field.clone(), value.clone())
                        });
                    found.extend(exec.find(collection, Query::new(filter)).await?);
                }
            }
        }
        for row in found {
            if let Some(pk) = def.pk_of(&row) {
                let key = (collection, pk_text(&pk));
                if seen.contains(&key) {
                    rows.insert((collection.to_owned(), key.1), row);
                }
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::{Clock, DeviceId};
    use storex_core::{object, CollectionDef, FieldType};

    /// Which objects exist is counted by key ranges and key lists, and read only where a
    /// count says some are missing: the answer is the same either way.
    #[tokio::test]
    async fn existing_objects_are_told_by_counts_and_by_rows_where_some_are_missing() {
        let registry = Registry::builder()
            .collection(
                CollectionDef::new("item")
                    .field("id", FieldType::Uuid)
                    .primary_key(["id"]),
            )
            .collection(
                CollectionDef::new("tag")
                    .field("name", FieldType::Text)
                    .primary_key(["name"]),
            )
            .collection(
                CollectionDef::new("pair")
                    .field("a", FieldType::Int)
                    .field("b", FieldType::Int)
                    .primary_key(["a", "b"]),
            )
            .build()
            .expect("registry");
        let backend: std::sync::Arc<dyn storex_core::StorageBackend> =
            std::sync::Arc::new(storex_core::MemoryBackend::new());
        let device = crate::SyncDevice::open(
            registry.clone(),
            backend,
            Clock::new(DeviceId::random()),
            crate::SyncOptions::default(),
        )
        .await
        .expect("device");
        let storage = device.storage();
        // Two runs of 100 consecutive keys, the second missing one; scattered keys, one
        // missing; text keys, one missing; composite keys, one missing.
        let full: Vec<Uuid> = (1_000..1_100).map(Uuid::from_u128).collect();
        let holed: Vec<Uuid> = (5_000..5_100).map(Uuid::from_u128).collect();
        let scattered: Vec<Uuid> = [10u128, 20, 30].map(Uuid::from_u128).to_vec();
        let mut steps = Vec::new();
        for id in full.iter().chain(&holed).chain(&scattered) {
            if *id != holed[42] && *id != scattered[1] {
                steps.push(BatchStep::new(Operation::create(
                    "item",
                    object! { "id" => *id },
                )));
            }
        }
        steps.push(BatchStep::new(Operation::create(
            "tag",
            object! { "name" => "x" },
        )));
        steps.push(BatchStep::new(Operation::create(
            "pair",
            object! { "a" => 1, "b" => 2 },
        )));
        storage.batch(steps).await.expect("rows");
        let mut asked: Vec<(String, Pk)> = full
            .iter()
            .chain(&holed)
            .chain(&scattered)
            .map(|id| ("item".to_owned(), Pk::from(*id)))
            .collect();
        asked.push(("item".into(), Pk::from(full[0]))); // twice
        asked.extend([("tag", "x"), ("tag", "y")].map(|(c, n)| (c.to_owned(), Pk::from(n))));
        for (a, b) in [(1i64, 2i64), (1, 3)] {
            asked.push(("pair".into(), Pk(vec![a.into(), b.into()])));
        }
        asked.push(("gone".into(), Pk::from(1))); // a collection the registry lacks
        let keys: Vec<ObjectKey> = asked
            .iter()
            .map(|(c, pk)| (c.clone(), pk_text(pk)))
            .collect();
        let exists = existing_objects(
            Exec::Storage(storage),
            &registry,
            keys.iter().zip(asked.iter().map(|(_, pk)| pk)),
        )
        .await
        .expect("asked");
        let expected: HashSet<ObjectKey> = asked
            .iter()
            .filter(|(c, pk)| {
                let missing = [
                    Pk::from(holed[42]),
                    Pk::from(scattered[1]),
                    Pk::from("y"),
                    Pk(vec![1i64.into(), 3i64.into()]),
                ];
                c != "gone" && !missing.contains(pk)
            })
            .map(|(c, pk)| (c.clone(), pk_text(pk)))
            .collect();
        assert_eq!(exists.len(), 100 + 99 + 2 + 1 + 1);
        assert_eq!(exists, expected);
        // Lists whose keys all exist are counted whole (no row read to tell).
        let present = [
            Pk::from(scattered[0]),
            Pk::from(scattered[2]),
            Pk::from("x"),
        ];
        let keys: Vec<ObjectKey> = present
            .iter()
            .zip(["item", "item", "tag"])
            .map(|(pk, c)| (c.to_owned(), pk_text(pk)))
            .collect();
        let exists = existing_objects(Exec::Storage(storage), &registry, keys.iter().zip(&present))
            .await
            .expect("asked");
        let expected: HashSet<ObjectKey> = [("item", &present[0]), ("item", &present[1])]
            .into_iter()
            .chain([("tag", &present[2])])
            .map(|(c, pk)| (c.to_owned(), pk_text(pk)))
            .collect();
        assert_eq!(exists, expected);
    }
}
