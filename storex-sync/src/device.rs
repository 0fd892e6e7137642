//! [`SyncDevice`]: one device's storage with sync logging, and the integration of changes
//! received from other devices.
//!
//! Integrating a batch is one transaction: find which entries are new, load everything known
//! about the objects they touch, [`reconcile`](crate::reconcile()), then apply the resulting
//! operations together with the received entries (and whatever the caller adds, such as the
//! shared-log cursor). A crash at any point leaves the batch applied fully or not at all.
//! Applied operations carry `Origin::Sync`, so they are not logged again.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use storex_core::{
    BatchStep, BoxFuture, CollectionDef, Filter, Middleware, Object, Operation, Pk, Query,
    Registry, Storage, StorageBackend, UuidPkMiddleware, Value,
};

use crate::client_log::{
    current_rows, entry_object, known_ids, known_objects, logged_for, ClientSyncLog, Exec,
    LOOKUP_CHUNK,
};
use crate::digest::collection_digest;
use crate::entry::{pk_text, with_sync_log, EntryOp, EntryRow, LogEntry, LOG_COLLECTION};
use crate::error::{Error, Result};
use crate::hlc::{Clock, DeviceId};
use crate::journal::index_journal;
use crate::logging::SyncLoggingMiddleware;
use crate::reconcile::{
    admit, object_key, reconcile_keyed, Admission, HeldEntry, HoldReason, KnownObject, ObjectKey,
};
use crate::versions;
use crate::write_order::WriteOrder;

/// What integrating a batch of received entries did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IntegrationReport {
    /// Entries received.
    pub received: u64,
    /// Entries this device already had.
    pub duplicates: u64,
    /// Entries applied.
    pub integrated: u64,
    /// Operations applied to the data.
    pub operations: u64,
    /// Entries whose values (some or all) lost to a later write.
    pub conflicts: u64,
    /// Entries kept but not applied, with the reason.
    pub held: Vec<(storex_core::uuid::Uuid, HoldReason)>,
    /// Fields of known collections that this device's schema lacks: (entry id, field).
    pub ignored_fields: Vec<(storex_core::uuid::Uuid, String)>,
    /// Held rows of the client log that do not read, which [`SyncDevice::retry_held`]
    /// passed over (they stay held): why each does not read.
    pub damaged: Vec<String>,
}

impl IntegrationReport {
    /// Adds the counts of `other`, a report on another part of the same entries.
    fn absorb(&mut self, other: IntegrationReport) {
        self.received += other.received;
        self.duplicates += other.duplicates;
        self.integrated += other.integrated;
        self.operations += other.operations;
        self.conflicts += other.conflicts;
        self.held.extend(other.held);
        self.ignored_fields.extend(other.ignored_fields);
        self.damaged.extend(other.damaged);
    }
}

/// What reconciling a set of entries decided, before it is applied.
struct Planned {
    report: IntegrationReport,
    steps: Vec<BatchStep>,
    /// The entries applied or held by `steps` (duplicates left out).
    entries: Vec<LogEntry>,
}

/// How a part of received entries is applied.
#[derive(Clone, Copy, Debug, Default)]
struct Manner {
    /// The entries are held ones, already in the log: marked integrated, not inserted.
    stored: bool,
    /// They are a part of a batch that failed (so their attempt read after that batch's).
    halved: bool,
    /// They give way to a fast-sync copy into this device that began and has not finished:
    /// refused with [`crate::Error::CopyUnfinished`], as continuous sync's are.
    after_copies: bool,
}

/// How one attempt to apply entries in one transaction ended.
enum Attempt {
    Applied(IntegrationReport),
    /// The database refused the batch; the transaction was rolled back.
    ApplyFailed {
        entries: Vec<LogEntry>,
        duplicates: u64,
        error: crate::Error,
    },
}

/// Options for [`SyncDevice::open`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SyncOptions {
    /// Collections whose writes are not synced (local-only data).
    pub excluded: Vec<String>,
    /// Middleware of the app's, run after the sync logger (for instance a change watcher).
    pub middleware: Vec<Arc<dyn Middleware>>,
}

impl SyncOptions {
    /// Leaves `collection` out of sync. It must be a collection of the registry:
    /// [`SyncDevice::open`] refuses a name it does not define ([`Error::ExcludedUnknown`]).
    pub fn exclude(mut self, collection: impl Into<String>) -> Self {
        self.excluded.push(collection.into());
        self
    }

    /// Adds a middleware after the sync logger. It sees the writes as the logger passes them
    /// on. Outside the app's transactions, a write arrives in a transaction the logger
    /// opened (not committed yet when the middleware sees it): first its data steps (the
    /// operation itself, or a batch of several), then its journal record's create; an
    /// `UpdateWhere` or `DeleteWhere` arrives as its `…ReturningPks` form
    /// ([`Operation::is_where_write`] tells all four). In the app's transaction, a write
    /// arrives with its journal record as one batch.
    pub fn with_middleware(mut self, middleware: Arc<dyn Middleware>) -> Self {
        self.middleware.push(middleware);
        self
    }
}

/// One device: the app's storage with the UUID key and sync-logging middleware, its client
/// sync log and clock.
#[derive(Clone, Debug)]
pub struct SyncDevice {
    storage: Storage,
    log: ClientSyncLog,
    clock: Arc<Clock>,
    excluded: Arc<[String]>,
    /// Taken around each transaction that applies received entries (see the logger).
    write_order: WriteOrder,
    /// Set when a fast-sync copy brought the sender's quarantine: continuous sync opens it at
    /// its next sync.
    quarantine_received: Arc<AtomicBool>,
}

impl SyncDevice {
    /// Opens device `clock.device()` on `backend` for the app's `registry` (the sync log's
    /// collection is added to it), and restores the clock from the log.
    pub async fn open(
        registry: Registry,
        backend: Arc<dyn StorageBackend>,
        clock: Clock,
        options: SyncOptions,
    ) -> Result<Self> {
        let registry = with_sync_log(&registry)?;
        let clock = Arc::new(clock);
        let mut logger = SyncLoggingMiddleware::new(clock.clone());
        let write_order = logger.write_order();
        for collection in &options.excluded {
            if registry.collection(collection).is_err() {
                return Err(Error::ExcludedUnknown {
                    collection: collection.clone(),
                });
            }
            logger = logger.exclude(collection.clone());
        }
        let excluded: Arc<[String]> = options.excluded.into();
        let mut builder = Storage::builder_shared(registry, backend)
            .with(UuidPkMiddleware::new())
            .with(logger);
        for middleware in options.middleware {
            builder = builder.with_arc(middleware);
        }
        let storage = builder.build().await?;
        let log = ClientSyncLog::with_order(storage.clone(), write_order.clone());
        if let Some(hlc) = log.max_hlc().await? {
            clock.restore(hlc);
        }
        Ok(SyncDevice {
            storage,
            log,
            clock,
            excluded,
            write_order,
            quarantine_received: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Notes that a fast-sync copy brought quarantined payloads.
    pub(crate) fn note_quarantine_received(&self) {
        self.quarantine_received.store(true, Ordering::SeqCst);
    }

    /// Whether a fast-sync copy brought quarantined payloads since the last time this said so.
    pub(crate) fn take_quarantine_received(&self) -> bool {
        self.quarantine_received.swap(false, Ordering::SeqCst)
    }

    /// The storage the app reads and writes through.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The client sync log.
    pub fn log(&self) -> &ClientSyncLog {
        &self.log
    }

    /// This device's id.
    pub fn device(&self) -> DeviceId {
        self.clock.device()
    }

    /// The device's clock.
    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    /// Logs, once, the rows that exist without any log entry (data written before sync was
    /// enabled), as creates stamped now, so the other devices receive them. Idempotent: a
    /// row that has an entry is left alone. Returns how many rows were logged.
    pub async fn log_existing_rows(&self) -> Result<u64> {
        self.log_existing_rows_where(|_| true).await
    }

    /// [`SyncDevice::log_existing_rows`] for the collections named in `collections` only
    /// (a collection an app update adds to sync, say, whose table had rows already).
    pub async fn log_existing_rows_in(&self, collections: &[&str]) -> Result<u64> {
        self.log_existing_rows_where(|name| collections.contains(&name))
            .await
    }

    async fn log_existing_rows_where(&self, wanted: impl Fn(&str) -> bool) -> Result<u64> {
        // Under the write-order lock throughout: an app write landing between the lookup of
        // a row's entries and the logging of the row would be in the journal, unseen.
        self.write_order
            .hold(self.log_existing_rows_holding_order(wanted))
            .await?
    }

    /// The names of the collections this device syncs: the registry's, but for those left
    /// out ([`SyncOptions::exclude`]) and sync's own.
    pub fn synced_collections(&self) -> Vec<&str> {
        self.storage
            .registry()
            .collections()
            .map(|def| def.name())
            .filter(|name| {
                !crate::entry::INTERNAL_COLLECTIONS.contains(name)
                    && !self.excluded.iter().any(|c| c == name)
            })
            .collect()
    }

    async fn log_existing_rows_holding_order(&self, wanted: impl Fn(&str) -> bool) -> Result<u64> {
        let registry = self.storage.registry().clone();
        self.log.index_journal_holding_order().await?;
        let mut logged = 0;
        for name in self.synced_collections().into_iter().filter(|n| wanted(n)) {
            let def = registry.collection(name)?;
            // A page of rows at a time, in key order, so a large table is not read into
            // memory at once: each page after the last key of the one before (no row is
            // skipped over again, as paging by position would for every page).
            let mut after: Option<Pk> = None;
            let (mut seen, mut by_position) = (0, false);
            loop {
                let rows = match by_position {
                    false => self.rows_after(def, after.as_ref()).await?,
                    true => {
                        let query = Query::default().skip(seen).limit(EXISTING_ROWS_PAGE);
                        self.storage.find_many(def.name(), query).await?
                    }
                };
                seen += rows.len() as u64;
                logged += self.log_rows_without_changes(def, &rows).await?;
                if (rows.len() as u64) < EXISTING_ROWS_PAGE {
                    break;
                }
                // A full page of rows with a null in their key (which a SQLite table allows,
                // and which are not logged) gives no key to go on from: the rest of the
                // pass goes by position, the pages so far being the first `seen` rows.
                match rows.iter().rev().find_map(|row| def.pk_of(row)) {
                    Some(last) if after.as_ref() != Some(&last) => after = Some(last),
                    _ => by_position = true,
                }
            }
        }
        Ok(logged)
    }

    /// Up to [`EXISTING_ROWS_PAGE`] rows of `def` in key order, after the row whose key is
    /// `after` (from the first with `None`). For a key of fields `k1, …, kn` those are the
    /// rows whose first `i - 1` fields equal the key's and whose `ki` is greater, for `i` from
    /// `n` down to 1: each a range of the key's index.
    async fn rows_after(&self, def: &CollectionDef, after: Option<&Pk>) -> Result<Vec<Object>> {
        let Some(Pk(after)) = after else {
            let query = Query::default().limit(EXISTING_ROWS_PAGE);
            return Ok(self.storage.find_many(def.name(), query).await?);
        };
        let fields = def.pk_fields();
        let mut rows = Vec::new();
        for depth in (0..fields.len().min(after.len())).rev() {
            let mut filter = Filter::all();
            for (field, value) in fields.iter().zip(after).take(depth) {
                filter = filter.eq(field.clone(), value.clone());
            }
            filter = filter.gt(fields[depth].clone(), after[depth].clone());
            let left = EXISTING_ROWS_PAGE - rows.len() as u64;
            let query = Query::new(filter).limit(left);
            rows.extend(self.storage.find_many(def.name(), query).await?);
            if rows.len() as u64 >= EXISTING_ROWS_PAGE {
                break;
            }
        }
        Ok(rows)
    }

    /// Logs a create of each of `rows` (of collection `def`) that has no changes logged or
    /// versions recorded; returns how many it logged.
    async fn log_rows_without_changes(&self, def: &CollectionDef, rows: &[Object]) -> Result<u64> {
        let mut logged = 0;
        for chunk in rows.chunks(LOOKUP_CHUNK) {
            let keys: Vec<ObjectKey> = chunk
                .iter()
                .filter_map(|row| {
                    def.pk_of(row)
                        .map(|pk| (def.name().to_owned(), pk_text(&pk)))
                })
                .collect();
            let known = known_objects(Exec::Storage(&self.storage), &keys).await?;
            let mut steps = Vec::new();
            for row in chunk {
                let Some(pk) = def.pk_of(row) else { continue };
                if known.contains(&(def.name().to_owned(), pk_text(&pk))) {
                    continue;
                }
                let entry = EntryRow::local(
                    &self.clock,
                    def.name(),
                    &pk,
                    EntryOp::Create,
                    row,
                    def.schema_version(),
                );
                steps.push(BatchStep::new(Operation::create(
                    LOG_COLLECTION,
                    entry.to_object(),
                )));
            }
            logged += steps.len() as u64;
            if !steps.is_empty() {
                self.storage
                    .execute_as(Operation::Batch { steps }, storex_core::Origin::Sync)
                    .await?;
            }
        }
        Ok(logged)
    }

    /// Digest of one collection's rows; equal on devices that agree.
    pub async fn digest(&self, collection: &str) -> Result<String> {
        collection_digest(&self.storage, collection).await
    }

    /// Applies entries received from other devices, in one transaction.
    pub async fn integrate(&self, entries: Vec<LogEntry>) -> Result<IntegrationReport> {
        self.integrate_with(entries, Vec::new()).await
    }

    /// Like [`SyncDevice::integrate`], also applying `extra` steps (for instance storing the
    /// shared-log cursor) in the same transaction, unlogged.
    ///
    /// If the database refuses a row of the batch (a unique index two devices both filled,
    /// a foreign key), the entries are applied again in halves, each in its own
    /// transaction, down to the single entry at fault, which is held with
    /// [`HoldReason::ApplyFailed`]; the others are applied and `extra` lands with the last
    /// part (an entry that came alone is tried once more before it is held: a write committed
    /// since the first attempt read may be what refused it). Entries are recognised by id,
    /// so a crash between two parts loses nothing. A
    /// failure that may pass ([`storex_core::Error::is_transient`]: a busy, full or lost
    /// database) holds nothing: it is returned, and nothing of the batch is applied.
    pub async fn integrate_with(
        &self,
        entries: Vec<LogEntry>,
        extra: Vec<BatchStep>,
    ) -> Result<IntegrationReport> {
        self.integrate_parts(entries, extra, Manner::default())
            .await
    }

    /// [`SyncDevice::integrate_with`] for continuous sync: refused with
    /// [`crate::Error::CopyUnfinished`] (nothing of the part refused applied) while a
    /// fast-sync copy into this device is unfinished, which is asked inside the transaction
    /// that applies, under the write-order lock a copy takes to begin.
    pub(crate) async fn integrate_after_copies(
        &self,
        entries: Vec<LogEntry>,
        extra: Vec<BatchStep>,
    ) -> Result<IntegrationReport> {
        let manner = Manner {
            after_copies: true,
            ..Manner::default()
        };
        self.integrate_parts(entries, extra, manner).await
    }

    /// Whether a fast-sync copy into this device (one that had no data of its own) has begun
    /// and not finished. While it has not, continuous sync pushes but pulls nothing
    /// ([`crate::SyncReport::waiting_for_copy`]): a change applied to an object before the
    /// copy's batch of it would be passed over by the sender's row. The copy is
    /// finished by resuming it from the same sender (or by a later copy that completes), or
    /// given up with [`SyncDevice::abandon_transfers`].
    pub async fn unfinished_copy(&self) -> Result<bool> {
        crate::fast_sync::receiver::unfinished_copy(self).await
    }

    /// Where a fast-sync transfer of `session` ([`crate::fast_sync::Offer::session`]) into
    /// this device resumes: after the batch returned, or `None` if no batch of it was applied
    /// here (or it finished). A program that keeps a half-received database to resume later,
    /// as `storex migrate receive` does, tells by it whether a sender's offer continues it.
    pub async fn transfer_resumes_after(
        &self,
        session: storex_core::uuid::Uuid,
    ) -> Result<Option<u64>> {
        crate::fast_sync::receiver::resumes_after(self, session).await
    }

    /// Gives up the fast-sync transfers into this device that did not finish (the sender is
    /// gone for good): their progress is forgotten, so continuous sync pulls again (it does
    /// not while a copy is unfinished), and a transfer started later begins afresh. Returns
    /// how many were given up. What a copy applied stays, as rows without versions, which
    /// reconcile as rows from before sync.
    pub async fn abandon_transfers(&self) -> Result<u64> {
        let outcome = self
            .storage
            .execute_as(
                Operation::delete_where(crate::entry::TRANSFER_COLLECTION, Filter::all()),
                storex_core::Origin::Sync,
            )
            .await?;
        Ok(outcome.count().unwrap_or(0))
    }

    /// Tries the held entries again (after an app upgrade, say); returns what happened. A
    /// held row that does not read is passed over and named in the report's `damaged`.
    ///
    /// They are read and applied a page at a time in timestamp order (which follows
    /// causality), so that a device holding many (an app left on an old version while the
    /// others wrote with a newer schema) does not read them all at once.
    ///
    /// While a fast-sync copy into this device is unfinished it fails with
    /// [`crate::Error::CopyUnfinished`]: the copy would pass over the objects they touch.
    pub async fn retry_held(&self) -> Result<IntegrationReport> {
        self.retry_held_in_pages(RETRY_PAGE).await
    }

    /// [`SyncDevice::retry_held`] in pages of about `page` entries.
    pub(crate) async fn retry_held_in_pages(&self, page: u64) -> Result<IntegrationReport> {
        let mut report = IntegrationReport::default();
        let mut after: Option<String> = None;
        loop {
            let (held, next) = self.log.held_page(after.as_deref(), page).await?;
            let manner = Manner {
                stored: true,
                after_copies: true,
                halved: false,
            };
            let done = self
                .integrate_parts(held.entries, Vec::new(), manner)
                .await?;
            report.absorb(done);
            report.damaged.extend(held.damaged);
            match next {
                Some(next) => after = Some(next),
                None => return Ok(report),
            }
        }
    }

    /// Applies `entries` (with `extra`) in one transaction, or, if applying fails, in halves
    /// (each applied in the same `manner`, but halved).
    fn integrate_parts(
        &self,
        entries: Vec<LogEntry>,
        extra: Vec<BatchStep>,
        manner: Manner,
    ) -> BoxFuture<'_, Result<IntegrationReport>> {
        Box::pin(async move {
            let (mut entries, duplicates, error) =
                match self.attempt(entries, extra.clone(), manner).await? {
                    Attempt::Applied(report) => return Ok(report),
                    Attempt::ApplyFailed {
                        entries,
                        duplicates,
                        error,
                    } => (entries, duplicates, error),
                };
            // Halves in timestamp order, which follows causality: a part applies after the
            // parts holding what it depends on (a parent row its foreign key names).
            entries.sort_by_key(|e| e.hlc);
            let mut report = IntegrationReport {
                received: duplicates,
                duplicates,
                ..IntegrationReport::default()
            };
            let halves = Manner {
                halved: true,
                ..manner
            };
            match entries.len() {
                0 => return Err(error),
                // One entry that came alone: its attempt may have read before a transaction
                // committed what then refused it (on PostgreSQL, the app's own insert of the
                // same key, which the attempt's snapshot did not show, so it was not
                // reconciled with). Once more, as the halves of a larger batch are tried: a
                // fresh attempt sees it.
                1 if !manner.halved => {
                    report.absorb(self.integrate_parts(entries, extra, halves).await?);
                }
                1 => {
                    let entry = entries.remove(0);
                    let stored = manner.stored;
                    report.absorb(self.hold_failed(entry, &error, extra, stored).await?);
                }
                n => {
                    let second = entries.split_off(n / 2);
                    let first = self.integrate_parts(entries, Vec::new(), halves);
                    report.absorb(first.await?);
                    report.absorb(self.integrate_parts(second, extra, halves).await?);
                }
            }
            Ok(report)
        })
    }

    /// One transaction: leaves out the entries the log has (unless they are `stored`),
    /// reconciles the rest and applies the result with `extra`.
    async fn attempt(
        &self,
        entries: Vec<LogEntry>,
        extra: Vec<BatchStep>,
        manner: Manner,
    ) -> Result<Attempt> {
        // Before the transaction: an app write holds this lock while it waits for its own.
        self.write_order
            .hold(self.attempt_holding_order(entries, extra, manner))
            .await?
    }

    async fn attempt_holding_order(
        &self,
        entries: Vec<LogEntry>,
        extra: Vec<BatchStep>,
        manner: Manner,
    ) -> Result<Attempt> {
        let stored = manner.stored;
        // Isolated from the app's transactions still open: a write of one that this
        // transaction cannot see is not overwritten (on PostgreSQL this attempt fails instead,
        // and the entries are tried again on the next sync).
        let tx = self.storage.begin_isolated().await?;
        let exec = Exec::Transaction(&tx);
        // A copy into this device decides, under this lock, whether the device has data of
        // its own; one that decided it had none passes over the rows applied here after.
        if manner.after_copies && crate::fast_sync::receiver::unfinished_copy_in(exec).await? {
            tx.rollback().await?;
            return Err(crate::Error::CopyUnfinished);
        }
        // Reconciling compares with this device's own entries: all of them.
        index_journal(exec, self.storage.registry()).await?;
        let received = entries.len() as u64;
        // Each entry's object, worked out once.
        let keyed: Vec<(ObjectKey, LogEntry)> =
            entries.into_iter().map(|e| (object_key(&e), e)).collect();
        let mut objects: Vec<ObjectKey> = keyed.iter().map(|(key, _)| key.clone()).collect();
        objects.sort();
        objects.dedup();
        // What the log holds for these objects: their integrated entries, and the ids of
        // all (the entries it has already, unless these are its own held ones).
        let logged = logged_for(exec, &objects).await?;
        let mut fresh = Vec::with_capacity(keyed.len());
        let mut held = Vec::new();
        for (key, entry) in keyed {
            if !stored && logged.ids.contains(&entry.id) {
                continue;
            }
            if let Some(problem) = logged.damaged.objects.get(&key) {
                held.push(HeldEntry {
                    entry,
                    reason: HoldReason::DamagedLog {
                        problem: problem.clone(),
                    },
                });
                continue;
            }
            match self.clock.observe(entry.hlc) {
                Ok(()) => fresh.push((key, entry)),
                Err(e) => held.push(HeldEntry {
                    entry,
                    reason: HoldReason::ClockDrift {
                        problem: e.to_string(),
                    },
                }),
            }
        }
        let duplicates = received - fresh.len() as u64 - held.len() as u64;
        let mut planned = self
            .reconcile_in(
                exec,
                Received {
                    fresh,
                    held,
                    objects,
                    logged: logged.integrated,
                    duplicates,
                    received,
                },
                stored,
            )
            .await?;
        let own_steps = planned.steps.len();
        planned.steps.extend(extra);
        if !planned.steps.is_empty() {
            let steps = planned.steps;
            match exec.run(Operation::Batch { steps }).await {
                Ok(_) => {}
                // A step of the entries' own failed and would fail again: the database
                // refuses one of them.
                Err(error @ storex_core::Error::BatchStep { step, .. })
                    if step < own_steps && !error.is_transient() =>
                {
                    tx.rollback().await?;
                    return Ok(Attempt::ApplyFailed {
                        entries: planned.entries,
                        duplicates: planned.report.duplicates,
                        error: error.into(),
                    });
                }
                // The caller's steps, or the database itself (busy, full, gone): not the
                // entries' fault; the next sync tries them again.
                Err(error) => {
                    tx.rollback().await?;
                    return Err(error.into());
                }
            }
        }
        match tx.commit().await {
            Ok(()) => Ok(Attempt::Applied(planned.report)),
            // Refused at commit (a deferred constraint of an adopted table): one of the
            // entries is at fault, as above.
            Err(error) if !error.is_transient() => Ok(Attempt::ApplyFailed {
                entries: planned.entries,
                duplicates: planned.report.duplicates,
                error: error.into(),
            }),
            Err(error) => Err(error.into()),
        }
    }

    /// Sets aside one entry that could not be applied: stored as held (unless it is stored
    /// already), with `extra`, in one transaction.
    async fn hold_failed(
        &self,
        entry: LogEntry,
        error: &crate::Error,
        extra: Vec<BatchStep>,
        stored: bool,
    ) -> Result<IntegrationReport> {
        let mut steps = extra;
        if !stored {
            let exec = Exec::Storage(&self.storage);
            if known_ids(exec, &[entry.id]).await?.contains(&entry.id) {
                // The log holds an entry with its id (under another object): not stored twice.
                if !steps.is_empty() {
                    self.storage
                        .execute_as(Operation::Batch { steps }, storex_core::Origin::Sync)
                        .await?;
                }
                return Ok(IntegrationReport {
                    received: 1,
                    duplicates: 1,
                    ..IntegrationReport::default()
                });
            }
            steps.insert(0, EntryRow::of(&entry, true, false).create_step());
        }
        if !steps.is_empty() {
            self.storage
                .execute_as(Operation::Batch { steps }, storex_core::Origin::Sync)
                .await?;
        }
        Ok(IntegrationReport {
            received: 1,
            held: vec![(
                entry.id,
                HoldReason::ApplyFailed {
                    problem: storex_core::error_chain(error),
                },
            )],
            ..IntegrationReport::default()
        })
    }

    /// Reconciles the `received` entries inside the transaction behind `exec`; returns the
    /// report, the steps that apply it and the entries it covers. `stored` says the entries
    /// are already in the log (held ones being retried), so they are marked integrated
    /// instead of inserted.
    async fn reconcile_in(
        &self,
        exec: Exec<'_>,
        received: Received,
        stored: bool,
    ) -> Result<Planned> {
        let Received {
            fresh,
            mut held,
            objects,
            logged,
            duplicates,
            received,
        } = received;
        let registry = self.storage.registry().clone();
        // Entries the schema refuses are held before their rows or versions are looked up (a
        // key of the wrong type would make the lookup fail; the log's was by text).
        let mut admitted = Vec::with_capacity(fresh.len());
        for (key, entry) in fresh {
            match admit(&registry, &entry) {
                Ok(()) => admitted.push((key, entry)),
                Err(reason) => held.push(HeldEntry { entry, reason }),
            }
        }
        let fresh = admitted;
        // What the versions index holds: as the changes that leave it, and it tells the
        // changes this device applied already.
        let loaded = versions::load(exec, &objects).await?;
        let mut stored_versions = loaded.versions;
        let mut fresh_entries = Vec::with_capacity(fresh.len());
        let mut covered = Vec::new();
        for (key, entry) in fresh {
            // What this device knows of the object is not known: its changes wait.
            if let Some(problem) = loaded.damaged.objects.get(&key) {
                let problem = problem.clone();
                let reason = HoldReason::DamagedLog { problem };
                held.push(HeldEntry { entry, reason });
                continue;
            }
            match stored_versions.get(&key) {
                Some(v) if v.covers(&entry) => covered.push(entry.id),
                _ => fresh_entries.push((key, entry)),
            }
        }
        // Objects whose versions say they exist (and were stored beside their row: they
        // keep no values), with no integrated entry in the log, that receive only updates
        // are reconciled from their versions alone: their rows are not read. Not when an
        // update has a synthesized id (a peer's versions sent as changes): the general path
        // recognises those by id.
        let mut summed: HashMap<ObjectKey, &versions::Versions> = HashMap::new();
        for (key, entry) in &fresh_entries {
            if entry.op == EntryOp::Update && logged.get(key).is_none_or(|l| l.is_empty()) {
                if let Some(v) = stored_versions
                    .get(key)
                    .filter(|v| v.live_since().is_some() && !v.keeps_values())
                {
                    summed.insert(key.clone(), v);
                }
            }
        }
        for (key, entry) in &fresh_entries {
            if entry.op != EntryOp::Update || versions::is_synthetic(entry.id) {
                summed.remove(key);
            }
        }
        let mut known: HashMap<ObjectKey, KnownObject> = HashMap::with_capacity(objects.len());
        for (key, entries) in logged {
            known.entry(key).or_default().entries = entries;
        }
        let unsummed = fresh_entries
            .iter()
            .filter(|(key, _)| !summed.contains_key(key))
            .map(|(_, e)| entry_object(e));
        for (key, row) in current_rows(exec, &registry, unsummed).await? {
            known.entry(key).or_default().current = Some(row);
        }
        // How many of each object's known entries are real (logged here): the synthesized
        // ones after them fold back to what is stored already. (A field the versions lack,
        // one a schema upgrade added, say, used to get a version at the create's timestamp
        // from the synthesized create. Without one it reads as the create's null, as the
        // first reconcile after the upgrade made it anyway.)
        let mut logged_count: HashMap<ObjectKey, usize> = HashMap::new();
        {
            let keys: HashMap<&ObjectKey, &storex_core::Pk> =
                fresh_entries.iter().map(|(key, e)| (key, &e.pk)).collect();
            for (key, v) in &stored_versions {
                let (Ok(def), Some(pk)) = (registry.collection(&key.0), keys.get(key)) else {
                    continue;
                };
                if summed.contains_key(key) {
                    continue;
                }
                let object = known.entry(key.clone()).or_default();
                logged_count.insert(key.clone(), object.entries.len());
                let synthetic = v.synthesize(key, pk, object.current.as_ref(), def);
                object.entries.extend(synthetic);
            }
        }
        let (mut outcome, integrated_objects) =
            reconcile_keyed(&registry, &known, &summed, fresh_entries, Admission::Done);
        held.append(&mut outcome.held);
        let operations = outcome.operations.len() as u64;
        let operations_batched =
            batch_operations(&registry, std::mem::take(&mut outcome.operations));
        // Sized for the whole batch (the writes, a row of versions per object and the clock's,
        // the log's rows of held or applied entries), so that it is not copied as it grows.
        let log_steps = if stored {
            outcome.integrated.len() + covered.len()
        } else {
            held.len()
        };
        let mut steps: Vec<BatchStep> =
            Vec::with_capacity(operations_batched.len() + integrated_objects.len() + 1 + log_steps);
        steps.extend(operations_batched.into_iter().map(BatchStep::new));
        // The applied entries go into the versions of their objects (with what was known of
        // them), not into the log; held ones are kept in the log.
        let empty = KnownObject::default();
        let mut rows = HashMap::new();
        let mut all_entries = Vec::with_capacity(integrated_objects.len());
        let mut next = 0;
        for (key, count) in integrated_objects {
            let new = outcome
                .integrated
                .get(next..next + count)
                .unwrap_or_default();
            next += count;
            debug_assert!(next <= outcome.integrated.len());
            let object = known.get(&key).unwrap_or(&empty);
            if let Some(row) = &object.current {
                rows.insert(key.clone(), row);
            }
            // The entries logged here (the synthetic ones fold to what is stored already)
            // and the new entries.
            let logged = logged_count.get(&key).map_or(object.entries.len(), |n| *n);
            all_entries.push((
                key,
                object.entries[..logged]
                    .iter()
                    .chain(new)
                    .collect::<Vec<_>>(),
            ));
        }
        let latest = outcome.integrated.iter().map(|e| e.hlc).max();
        let folded = versions::fold_objects(
            &registry,
            &mut stored_versions,
            &rows,
            all_entries,
            &outcome.existing,
        );
        let clock_before = match latest {
            Some(_) => versions::latest_applied(exec).await?,
            None => versions::AppliedClock::default(),
        };
        versions::push_store_steps(folded, latest, clock_before, &mut steps)?;
        drop(known);
        if stored {
            // Held entries applied now (or that the versions hold already) live in the
            // versions index.
            let done = outcome
                .integrated
                .iter()
                .map(|e| e.id)
                .chain(covered.iter().copied());
            steps
                .extend(done.map(|id| BatchStep::new(Operation::delete_by_pk(LOG_COLLECTION, id))));
        } else if !held.is_empty() {
            // Received entries were recognised by object above; one the log holds under
            // another object (an id a peer reused) is not stored twice. (One twice in this
            // batch fails the insert, and the halves the batch is retried in tell it.)
            let ids: Vec<_> = held.iter().map(|h| h.entry.id).collect();
            let known = known_ids(exec, &ids).await?;
            held.retain(|h| !known.contains(&h.entry.id));
            covered.extend(known);
            steps.extend(
                held.iter()
                    .map(|h| EntryRow::of(&h.entry, true, false).create_step()),
            );
        }
        let duplicates = duplicates + covered.len() as u64;
        let report = IntegrationReport {
            received,
            duplicates: duplicates + outcome.duplicates,
            integrated: outcome.integrated.len() as u64,
            operations,
            conflicts: outcome.conflicts,
            held: held
                .iter()
                .map(|h| (h.entry.id, h.reason.clone()))
                .collect(),
            ignored_fields: outcome.ignored_fields,
            damaged: Vec::new(),
        };
        let mut entries = outcome.integrated;
        entries.extend(held.into_iter().map(|h| h.entry));
        Ok(Planned {
            report,
            steps,
            entries,
        })
    }
}

/// Held entries [`SyncDevice::retry_held`] reads and applies at a time (about).
const RETRY_PAGE: u64 = 1_000;

/// Rows of a collection [`SyncDevice::log_existing_rows`] reads at a time.
const EXISTING_ROWS_PAGE: u64 = 5_000;

/// The entries of one attempt, sorted out before reconciling.
#[derive(Debug)]
struct Received {
    /// New to this device, with their objects' keys.
    fresh: Vec<(ObjectKey, LogEntry)>,
    /// Held already (their timestamps are too far ahead).
    held: Vec<HeldEntry>,
    /// The objects of all the entries received, sorted, once each (versions are looked up
    /// by text, so also those of entries the schema refuses).
    objects: Vec<ObjectKey>,
    /// The integrated entries the log holds for their objects.
    logged: HashMap<ObjectKey, Vec<LogEntry>>,
    /// How many this device had already.
    duplicates: u64,
    /// How many came in.
    received: u64,
}

/// Updates setting the same values in objects of one collection with a one-field key.
#[derive(Debug)]
struct AlikeUpdates {
    collection: String,
    /// The key field.
    field: String,
    changes: Object,
    keys: Vec<Value>,
}

/// A hash of what an update sets in `collection`: equal updates hash alike (updates that hash
/// alike are compared before they are grouped).
fn hash_update(collection: &str, changes: &Object) -> u64 {
    let mut hasher = foldhash::fast::FixedState::default().build_hasher();
    collection.hash(&mut hasher);
    for (field, value) in changes {
        field.hash(&mut hasher);
        std::mem::discriminant(value).hash(&mut hasher);
        match value {
            Value::Text(text) => text.hash(&mut hasher),
            Value::Int(int) => int.hash(&mut hasher),
            Value::Float(float) => float.to_bits().hash(&mut hasher),
            Value::Bool(flag) => flag.hash(&mut hasher),
            Value::DateTime(at) => at.hash(&mut hasher),
            Value::Blob(bytes) => bytes.hash(&mut hasher),
            Value::Uuid(uuid) => uuid.hash(&mut hasher),
            // Rare in bulk edits: compared when they meet.
            Value::Null | Value::Json(_) => {}
        }
    }
    hasher.finish()
}

/// Turns updates that set the same values in many objects of a collection with a one-field
/// key into one update of all those keys (a bulk sync often changes many objects alike).
/// These grouped updates run after the other operations, which keep their order.
fn batch_operations(registry: &Registry, operations: Vec<Operation>) -> Vec<Operation> {
    let mut out = Vec::with_capacity(operations.len());
    let mut groups: Vec<AlikeUpdates> = Vec::new();
    // Groups by the hash of their update, in the order they started.
    let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::new();
    for op in operations {
        match op {
            Operation::UpdateByPk {
                collection,
                pk,
                changes,
            } => {
                let field =
                    registry
                        .collection(&collection)
                        .ok()
                        .and_then(|def| match def.pk_fields() {
                            [field] => Some(field.clone()),
                            _ => None,
                        });
                match (field, pk.single()) {
                    (Some(field), Some(key)) => {
                        let key = key.clone();
                        let started = by_hash
                            .entry(hash_update(&collection, &changes))
                            .or_default();
                        let group = started.iter().copied().find(|&index| {
                            let group = &groups[index];
                            group.collection == collection && group.changes == changes
                        });
                        match group {
                            Some(index) => groups[index].keys.push(key),
                            None => {
                                started.push(groups.len());
                                groups.push(AlikeUpdates {
                                    collection,
                                    field,
                                    changes,
                                    keys: vec![key],
                                });
                            }
                        }
                    }
                    _ => out.push(Operation::UpdateByPk {
                        collection,
                        pk,
                        changes,
                    }),
                }
            }
            other => out.push(other),
        }
    }
    for AlikeUpdates {
        collection,
        field,
        changes,
        mut keys,
    } in groups
    {
        if let [_] = keys.as_slice() {
            // Alone: the update as it came, moved rather than copied.
            if let Some(key) = keys.pop() {
                out.push(Operation::update_by_pk(collection, key, changes));
            }
            continue;
        }
        for chunk in keys.chunks(LOOKUP_CHUNK) {
            if let [key] = chunk {
                out.push(Operation::update_by_pk(
                    collection.clone(),
                    key.clone(),
                    changes.clone(),
                ));
            } else {
                let filter = Filter::all().is_in(field.clone(), chunk.iter().cloned());
                out.push(Operation::update_where(
                    collection.clone(),
                    filter,
                    changes.clone(),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use storex_core::{object, CollectionDef, FieldType, Pk};

    use super::*;

    fn registry() -> Registry {
        Registry::builder()
            .collection(
                CollectionDef::new("note")
                    .field("id", FieldType::Int)
                    .optional_field("stars", FieldType::Int)
                    .optional_field("title", FieldType::Text)
                    .primary_key(["id"]),
            )
            .collection(
                CollectionDef::new("tag")
                    .field("note", FieldType::Int)
                    .field("name", FieldType::Text)
                    .optional_field("stars", FieldType::Int)
                    .primary_key(["note", "name"]),
            )
            .build()
            .expect("registry")
    }

    #[test]
    fn updates_setting_the_same_values_are_grouped_and_the_others_kept_as_they_came() {
        let stars = |n: i64| object! { "stars" => n };
        let operations = vec![
            Operation::update_by_pk("note", 1, stars(5)),
            Operation::create("note", object! { "id" => 9 }),
            Operation::update_by_pk("note", 2, object! { "title" => "two" }),
            Operation::update_by_pk("note", 3, stars(5)),
            Operation::update_by_pk("tag", Pk(vec![1.into(), "x".into()]), stars(5)),
            Operation::update_by_pk("note", 4, stars(-1)),
            Operation::delete_by_pk("note", 8),
            Operation::update_by_pk("note", 5, stars(5)),
        ];
        let batched = batch_operations(&registry(), operations);
        assert_eq!(
            batched,
            vec![
                // Other operations first, in their order; a compound key's update among them.
                Operation::create("note", object! { "id" => 9 }),
                Operation::update_by_pk("tag", Pk(vec![1.into(), "x".into()]), stars(5),),
                Operation::delete_by_pk("note", 8),
                // Then the groups, in the order they started.
                Operation::update_where("note", Filter::all().is_in("id", [1, 3, 5]), stars(5)),
                Operation::update_by_pk("note", 2, object! { "title" => "two" }),
                Operation::update_by_pk("note", 4, stars(-1)),
            ]
        );
    }
}
