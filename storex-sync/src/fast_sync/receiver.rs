//! The receiving side: every batch validated and applied in one transaction with the
//! session's progress, then acknowledged.

use std::collections::BTreeMap;
use std::time::Instant;

use foldhash::{HashSet, HashSetExt};
use serde::{Deserialize, Serialize};
use storex_core::uuid::Uuid;
use storex_core::{
    object, serde_json, BatchStep, CollectionDef, Filter, Object, Operation, Origin, Query,
    Registry, StorageTransaction, Value,
};

use crate::client_log::{known_objects, Exec};
use crate::device::SyncDevice;
use crate::entry::{
    pk_text, raise_reached, LogEntry, StoredEntry, CURSOR_KEY, INTERNAL_COLLECTIONS,
    LOG_COLLECTION, RESTORED_BEHIND_KEY, STATE_COLLECTION, SUBSCRIPTION_KEY, TRANSFER_COLLECTION,
};
use crate::error::Result;
use crate::fast_sync::package::{CollectionInfo, Package};
use crate::fast_sync::shape;
use crate::fast_sync::{
    cancel_here, chain_checksum, drain_until_quiet, end_session, honour_pause,
    next_kept_or_package, next_package, quarantine_info, send_package, state_value, tell_peer,
    FastSyncChannel, FastSyncError, FastSyncOptions, Kept, Progress, TransferReport,
};
use crate::journal::index_journal;
use crate::reconcile::HoldReason;
use crate::reconcile::ObjectKey;
use crate::versions::{self, object_of, pk_from_text, Versions, VERSIONS_COLLECTION};

/// Count and running checksum of one collection, as received so far in a session.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Received {
    objects: u64,
    checksum: String,
}

/// The progress of a session, stored with every applied batch (and, for a copy into a
/// fresh device, as the session begins).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct SessionState {
    last_seq: u64,
    collections: BTreeMap<String, Received>,
    /// The device had data of its own when the session began: the sender's versions (and
    /// log) are reconciled with it instead of copied.
    #[serde(default)]
    merge: bool,
}

impl SessionState {
    /// The batch the session resumes after: the last applied, if any was.
    fn resumes_after(&self) -> Option<u64> {
        Some(self.last_seq).filter(|seq| *seq > 0)
    }
}

async fn run(tx: &StorageTransaction, op: Operation) -> Result<storex_core::Outcome> {
    Ok(tx.execute_as(op, Origin::Sync).await?)
}

/// Runs `op` on `device` on its own, as sync's (unlogged).
async fn run_alone(device: &SyncDevice, op: Operation) -> Result<storex_core::Outcome> {
    Ok(device.storage().execute_as(op, Origin::Sync).await?)
}

async fn load_state(device: &SyncDevice, session: Uuid) -> Result<Option<SessionState>> {
    let row = device
        .storage()
        .find_by_pk(TRANSFER_COLLECTION, session)
        .await?;
    Ok(row.as_ref().and_then(state_of))
}

/// The progress a row of the transfer collection stores (`None` if it does not read).
fn state_of(row: &Object) -> Option<SessionState> {
    let text = row.get("progress").and_then(Value::as_text)?;
    serde_json::from_str(text).ok()
}

/// Whether a copy into `device` (a fast sync into a device that had no data of its own) has
/// begun and not finished: a change applied meanwhile to an object whose row the copy brings
/// later would be passed over by that row (see `ContinuousSync::sync_once`).
pub(crate) async fn unfinished_copy(device: &SyncDevice) -> Result<bool> {
    unfinished_copy_in(Exec::Storage(device.storage())).await
}

/// [`unfinished_copy`], read through `exec` (inside a transaction, say).
pub(crate) async fn unfinished_copy_in(exec: Exec<'_>) -> Result<bool> {
    let rows = exec.find(TRANSFER_COLLECTION, Query::default()).await?;
    Ok(rows
        .iter()
        .any(|row| state_of(row).is_some_and(|state| !state.merge)))
}

/// The last batch of `session` applied on `device`, if any (see
/// [`SyncDevice::transfer_resumes_after`]).
pub(crate) async fn resumes_after(device: &SyncDevice, session: Uuid) -> Result<Option<u64>> {
    let state = load_state(device, session).await?;
    Ok(state.as_ref().and_then(SessionState::resumes_after))
}

/// What a sender offers, read from its `Hello`.
#[derive(Clone, Debug, PartialEq)]
pub struct Offer {
    session: Uuid,
    collections: Vec<CollectionInfo>,
    definitions: Vec<CollectionDef>,
    cursor: u64,
    latest: Option<crate::hlc::Hlc>,
    subscription: Option<i64>,
    quarantined: u64,
    properties: BTreeMap<String, String>,
}

impl Offer {
    /// The sender's session: the same on every channel of one transfer (a receiver that
    /// reconnects resumes it), another once the sender took a new snapshot.
    pub fn session(&self) -> Uuid {
        self.session
    }

    /// The collections coming, with their object counts, in order (the sender's quarantine,
    /// which comes last when this side asks for it, is counted in
    /// [`Offer::quarantined`]).
    pub fn collections(&self) -> &[CollectionInfo] {
        &self.collections
    }

    /// Payloads the sender pulled but could not open, which come after the collections.
    pub fn quarantined(&self) -> u64 {
        self.quarantined
    }

    /// The named values the sender's app handed over with the offer
    /// ([`crate::fast_sync::FastSyncOptions::with_property`]); empty from a sender that set
    /// none. They come from the peer: check them before use.
    pub fn properties(&self) -> &BTreeMap<String, String> {
        &self.properties
    }

    /// The sender's shared-log cursor, which the receiver goes on from once the copy is
    /// complete (when it is further along than its own; 0: none handed over).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// This offer with no shared-log cursor handed over: the receiver keeps its own (a
    /// device that has none pulls from the start, and recognises the changes the copy
    /// brought), and does not ask for the sender's quarantine, which lies behind that cursor
    /// and which it pulls itself. For a receiver that cannot tell whether the sender syncs
    /// with its own account and shared log: a cursor of another log, or of another account's
    /// changes, would make it skip changes of its own.
    pub fn without_cursor(mut self) -> Offer {
        self.cursor = 0;
        self.subscription = None;
        self.quarantined = 0;
        self
    }

    /// The sender's registry of the app collections offered, for a device that has no schema
    /// of its own yet (a fresh migration target).
    pub fn registry(&self) -> storex_core::Result<Registry> {
        self.definitions
            .iter()
            .cloned()
            .fold(Registry::builder(), |builder, def| builder.collection(def))
            .build()
    }
}

/// Waits for a sender's offer on `channel`. If anything but an offer comes, the sender is
/// told why the session ends.
pub async fn read_offer(
    channel: &mut dyn FastSyncChannel,
    options: &FastSyncOptions,
) -> Result<Offer> {
    match read_hello(channel, options).await {
        Ok(offer) => Ok(offer),
        Err(error) => Err(tell_peer(channel, options, "receiving", error).await),
    }
}

/// Declines an offer read with [`read_offer`], before anything is copied: tells the sender
/// `reason` (its side ends with [`FastSyncError::Cancelled`], `by_peer`, and that reason)
/// and returns the error for this side.
pub async fn decline_offer(
    channel: &mut dyn FastSyncChannel,
    options: &FastSyncOptions,
    reason: impl Into<String>,
) -> crate::Error {
    let error = end_session(channel, options, reason.into()).await;
    drain_until_quiet(channel).await;
    error
}

/// [`read_offer`] without telling the sender of a failure.
async fn read_hello(channel: &mut dyn FastSyncChannel, options: &FastSyncOptions) -> Result<Offer> {
    match next_package(channel, options, "receiving").await? {
        Package::Hello {
            session,
            collections,
            definitions,
            cursor,
            latest,
            subscription,
            quarantined,
            properties,
        } => Ok(Offer {
            session,
            collections,
            definitions,
            cursor,
            latest,
            subscription,
            quarantined,
            properties,
        }),
        other => {
            Err(FastSyncError::Protocol(format!("expected Hello, got {}", other.summary())).into())
        }
    }
}

/// Receives a snapshot over `channel` into `device`; resumes a session the same sender
/// started before.
///
/// A copy into a device with no data of its own stores its progress as it begins, and
/// continuous sync applies nothing beside it until it is done. One that fails before its
/// first batch forgets it; one dropped midway (a timeout around it, its task aborted) cannot,
/// so the device waits for the copy until the same sender resumes it or
/// [`SyncDevice::abandon_transfers`] gives it up.
pub async fn receive_snapshot(
    device: &SyncDevice,
    channel: &mut dyn FastSyncChannel,
    options: &FastSyncOptions,
) -> Result<TransferReport> {
    let offer = read_offer(channel, options).await?;
    receive_offer(device, channel, offer, options).await
}

/// Receives what `offer` announced into `device` (see [`receive_snapshot`]). If this side
/// fails (its database refuses a batch, say, or the sender breaks the protocol), the sender
/// is told why before the error is returned.
pub async fn receive_offer(
    device: &SyncDevice,
    channel: &mut dyn FastSyncChannel,
    offer: Offer,
    options: &FastSyncOptions,
) -> Result<TransferReport> {
    let session = offer.session;
    match receive_offered(device, channel, offer, options).await {
        Ok(report) => Ok(report),
        Err(error) => {
            forget_if_nothing_applied(device, session).await;
            Err(tell_peer(channel, options, "receiving", error).await)
        }
    }
}

/// Deletes the progress of `session` if no batch of it was applied: a copy into a fresh
/// device stores it as it begins (so that continuous sync waits), and one that fails before
/// its first batch leaves the device as it was, pulling again. (Best effort: if the row
/// stays, the device waits for the copy as after any other cut.)
async fn forget_if_nothing_applied(device: &SyncDevice, session: Uuid) {
    // One statement: a batch of another attempt at the session, applied meanwhile, stays.
    let unbegun = Filter::all().eq("session", session).eq("last_seq", 0i64);
    let _ = run_alone(
        device,
        Operation::delete_where(TRANSFER_COLLECTION, unbegun),
    )
    .await;
}

/// [`receive_offer`] without telling the sender of a failure.
async fn receive_offered(
    device: &SyncDevice,
    channel: &mut dyn FastSyncChannel,
    offer: Offer,
    options: &FastSyncOptions,
) -> Result<TransferReport> {
    let start = Instant::now();
    let Offer {
        session,
        mut collections,
        definitions,
        cursor,
        latest,
        subscription,
        quarantined,
        ..
    } = offer;
    // The sender's clock first: what the app writes here while the transfer runs is later
    // than everything the sender sends (or the session ends, if it is too far ahead).
    if let Some(latest) = latest {
        device
            .clock()
            .observe(latest)
            .map_err(|e| FastSyncError::Verification {
                collection: String::new(),
                problem: format!("the sender's clock: {e}"),
            })?;
    }
    let registry = device.storage().registry().clone();
    // Each once: a hello naming one many times would otherwise be checked (and its data
    // counted) as many times.
    let mut offered = HashSet::with_capacity(collections.len().min(1_024));
    for info in &collections {
        if !offered.insert(info.name.as_str()) {
            return Err(refused(&info.name, "the sender offers it twice".to_owned()));
        }
        let known = match registry.collection(&info.name) {
            // Sync's own state (cursor, sessions, quarantine) is never the sender's to write;
            // its log and versions are what the receiver learns from. (Its quarantine comes
            // only when asked for, after everything else.)
            Ok(_)
                if info.name != LOG_COLLECTION
                    && info.name != VERSIONS_COLLECTION
                    && INTERNAL_COLLECTIONS.contains(&info.name.as_str()) =>
            {
                Some(format!("`{}` is this device's own sync state", info.name))
            }
            // An older app's objects lack the fields added since: each needs a default
            // here, or its objects cannot be created (checked when the sender tells its
            // definitions; the fields it has that this version dropped are left out below).
            Ok(def) if info.schema_version < def.schema_version() => definitions
                .iter()
                .find(|theirs| theirs.name() == info.name)
                .and_then(|theirs| {
                    def.fields().iter().find(|f| {
                        !f.optional
                            && def.default_of(&f.name).is_none()
                            && theirs.field_def(&f.name).is_none()
                    })
                })
                .map(|field| {
                    format!(
                        "collection `{}` comes from schema version {}, whose objects lack \
                         field `{}`, required here (version {}) without a default: give it a \
                         default, or copy from a device of this version",
                        info.name,
                        info.schema_version,
                        field.name,
                        def.schema_version()
                    )
                }),
            Ok(def) if info.schema_version == def.schema_version() => None,
            Ok(def) => Some(format!(
                "collection `{}` comes from schema version {}, this device knows {}",
                info.name,
                info.schema_version,
                def.schema_version()
            )),
            Err(_) => Some(format!("this device has no collection `{}`", info.name)),
        };
        if let Some(reason) = known {
            return Err(refused(&info.name, reason));
        }
    }
    let stored = load_state(device, session).await?;
    // Whether the session's row of progress exists (the first batch applied creates it, or
    // the start of a copy into a fresh device, below).
    let mut row_stored = stored.is_some();
    let resume_after = stored.as_ref().and_then(SessionState::resumes_after);
    let mut state = match stored {
        Some(state) => state,
        None => {
            let beginning = begin_session(device, session, &collections);
            let (state, started) = device.log().write_order().hold(beginning).await??;
            row_stored = started;
            state
        }
    };
    let mut report = TransferReport {
        resumed_after: resume_after,
        cursor,
        ..TransferReport::default()
    };
    // The sender's quarantine, asked for: it comes last.
    if quarantined > 0 {
        collections.push(quarantine_info(device, quarantined)?);
    }
    let ready = Package::Ready {
        resume_after,
        merge: state.merge,
        quarantine: quarantined > 0,
    };
    send_package(channel, options, ready).await?;
    // Collections whose count and checksum were verified in this run; the sender ends every
    // collection so, also those it skipped on resume.
    let mut verified: HashSet<String> = HashSet::new();
    // What the sender sent while this side paused, in order.
    let mut kept = Kept::default();
    loop {
        match next_kept_or_package(channel, options, "receiving", &mut kept).await? {
            Package::Batch {
                seq,
                collection,
                objects,
            } => {
                if verified.contains(&collection) {
                    return Err(FastSyncError::Protocol(format!(
                        "batch {seq} of `{collection}` after its count and checksum"
                    ))
                    .into());
                }
                if seq != state.last_seq + 1 {
                    return Err(FastSyncError::Protocol(format!(
                        "batch {seq} arrived after batch {}",
                        state.last_seq
                    ))
                    .into());
                }
                let Some(info) = collections.iter().find(|c| c.name == collection) else {
                    return Err(FastSyncError::Protocol(format!(
                        "batch of unannounced collection `{collection}`"
                    ))
                    .into());
                };
                let (bytes, count) = (objects.bytes() as u64, objects.len() as u64);
                let mut next = state.clone();
                next.last_seq = seq;
                let received = next.collections.entry(collection.clone()).or_default();
                received.checksum = chain_checksum(&received.checksum, &objects);
                let decoded = objects.decode();
                drop(objects); // the encodings: not kept beside the objects
                let mut objects = match decoded {
                    Ok(objects) => objects,
                    Err(e) => return Err(refused(&collection, e.to_string())),
                };
                leave_out_dropped_fields(&registry, info, &mut objects);
                received.objects += count;
                let done = received.objects;
                honour_pause(channel, options, "receiving", &mut kept).await?;
                let first = !row_stored;
                // Merged changes this device holds (kept, not applied) are told, not lost.
                let held = if collection == VERSIONS_COLLECTION {
                    apply_versions_batch(device, session, objects, &next, first).await?
                } else if next.merge && collection == LOG_COLLECTION {
                    merge_log_batch(device, session, objects, &next, first).await?
                } else {
                    apply_batch(device, session, &collection, objects, &next, first).await?;
                    Vec::new()
                };
                report.held.extend(held);
                state = next;
                row_stored = true;
                send_package(channel, options, Package::Ack { seq }).await?;
                report.batches += 1;
                report.objects += count;
                report.bytes += bytes;
                if let Some(progress) = &options.progress {
                    progress(&Progress {
                        collection: collection.clone(),
                        objects_done: done,
                        objects_total: info.objects,
                        bytes_done: report.bytes,
                    });
                }
                if options.cancel.is_cancelled() {
                    return Err(cancel_here(channel, options, "receiving").await);
                }
            }
            Package::CollectionDone {
                collection,
                objects,
                checksum,
            } => {
                let received = state
                    .collections
                    .get(&collection)
                    .cloned()
                    .unwrap_or_default();
                let problem = if received.objects != objects {
                    Some(format!(
                        "{objects} objects were sent, {} arrived",
                        received.objects
                    ))
                } else if received.checksum != checksum {
                    Some("the checksum does not match".to_owned())
                } else {
                    None
                };
                if let Some(problem) = problem {
                    return Err(refused(&collection, problem));
                }
                // Fewer than the sender counted at the start (its filter left some out, or
                // its log entries were folded into versions): a bar ends full.
                let counted = collections.iter().find(|c| c.name == collection);
                if let Some(progress) = options
                    .progress
                    .as_ref()
                    .filter(|_| counted.is_some_and(|c| c.objects != objects))
                {
                    progress(&Progress {
                        collection: collection.clone(),
                        objects_done: objects,
                        objects_total: objects,
                        bytes_done: report.bytes,
                    });
                }
                verified.insert(collection);
            }
            Package::Finish => {
                if let Some(missing) = collections.iter().find(|c| !verified.contains(&c.name)) {
                    let problem = "the sender finished without its count and checksum";
                    return Err(refused(&missing.name, problem.to_owned()));
                }
                finish(device, cursor, subscription).await?;
                if quarantined > 0 {
                    // Its continuous sync opens them at its next sync, not only after a
                    // restart.
                    device.note_quarantine_received();
                }
                // The copy is complete and committed: a `Done` that does not reach the sender
                // leaves only the sender unsure, not this side (its progress is gone: a
                // session resumed now would copy everything again, as a merge).
                let _ = send_package(channel, options, Package::Done).await;
                break;
            }
            other => {
                return Err(
                    FastSyncError::Protocol(format!("unexpected {}", other.summary())).into(),
                )
            }
        }
    }
    report.duration = start.elapsed();
    Ok(report)
}

/// The error ending the session because `collection` did not verify (the sender is told
/// why by [`receive_offer`]).
fn refused(collection: &str, problem: String) -> crate::Error {
    FastSyncError::Verification {
        collection: collection.to_owned(),
        problem,
    }
    .into()
}

/// Leaves out of the objects of an app collection from an older schema version the fields
/// this version dropped, as continuous sync does with entries: the app no longer has them.
fn leave_out_dropped_fields(registry: &Registry, info: &CollectionInfo, objects: &mut [Object]) {
    if INTERNAL_COLLECTIONS.contains(&info.name.as_str()) {
        return;
    }
    let Ok(def) = registry.collection(&info.name) else {
        return;
    };
    if info.schema_version < def.schema_version() {
        for object in objects {
            object.retain(|field, _| def.field_def(field).is_some());
        }
    }
}

/// Writes one batch and the session's progress in one transaction: objects the device has
/// are overwritten, the others created; log entries it has are kept.
async fn apply_batch(
    device: &SyncDevice,
    session: Uuid,
    collection: &str,
    objects: Vec<Object>,
    state: &SessionState,
    first: bool,
) -> Result<()> {
    let applying = apply_batch_in_order(device, session, collection, objects, state, first);
    if state.merge {
        // Merging compares with this device's own entries (below): all of them, indexed
        // under the write-order lock.
        device.log().write_order().hold(applying).await?
    } else {
        applying.await
    }
}

/// [`apply_batch`], under the write-order lock when merging.
async fn apply_batch_in_order(
    device: &SyncDevice,
    session: Uuid,
    collection: &str,
    objects: Vec<Object>,
    state: &SessionState,
    first: bool,
) -> Result<()> {
    let storage = device.storage();
    let def = storage.registry().collection(collection)?.clone();
    // Isolated from the app's transactions still open (see `SyncDevice::integrate`).
    let tx = storage.begin_isolated().await?;
    if state.merge {
        index_journal(Exec::Transaction(&tx), storage.registry()).await?;
    }
    let mut steps = Vec::with_capacity(objects.len() + 1);
    let keys: Vec<Value> = objects
        .iter()
        .filter_map(|o| def.pk_of(o).and_then(|pk| pk.single().cloned()))
        .collect();
    let existing: HashSet<String> = match def.pk_fields() {
        [field] if keys.len() == objects.len() => {
            if key_range_is_empty(&tx, collection, field, &keys).await? {
                HashSet::new()
            } else {
                let query = Query::new(Filter::all().is_in(field.clone(), keys));
                Exec::Transaction(&tx)
                    .find_values(collection, query, &[field.as_str()])
                    .await?
                    .iter()
                    .filter_map(|row| row.first())
                    .map(|key| serde_json::to_string(key).unwrap_or_default())
                    .collect()
            }
        }
        _ => HashSet::new(),
    };
    let single_field = def.pk_fields().len() == 1;
    let mut creates = Vec::with_capacity(objects.len());
    for mut object in objects {
        if collection == LOG_COLLECTION {
            // The sender's entries: each must read back, and its timestamp moves this device's
            // clock past it, so that what the app writes here next is later than everything
            // received, as pulling it would. One too far ahead (the sender holds it for that,
            // say) leaves the clock alone and stays held, as a pulled one would: the clock
            // remembers it, and it is tried again once the wall clock comes near.
            let entry = StoredEntry::from_object(&object).map_err(|e| {
                FastSyncError::Protocol(format!("a log entry that does not read back: {e}"))
            })?;
            not_sync_own(&entry.entry)?;
            let _too_far_ahead = device.clock().observe(entry.entry.hlc);
            // Shared already, from this device's point of view; and not applied (the sender
            // sends only the entries it holds back), whatever the row says: one taken for
            // applied would never be, and compaction would fold it in as if it were.
            object.insert("shared".into(), Value::Bool(true));
            object.insert("integrated".into(), Value::Bool(false));
        }
        let pk = def.pk_of(&object).ok_or_else(|| {
            FastSyncError::Protocol(format!("an object of `{collection}` without its key"))
        })?;
        let exists = if single_field {
            pk.single()
                .is_some_and(|k| existing.contains(&serde_json::to_string(k).unwrap_or_default()))
        } else {
            run(
                &tx,
                Operation::count(
                    collection,
                    storex_core::pk_filter(storage.registry(), collection, pk.clone())?,
                ),
            )
            .await?
            .count()
            .unwrap_or(0)
                > 0
        };
        // An object the device has stays as it is: either an earlier batch of this session
        // wrote it, or it is the device's own, and the sender's versions (sent after the
        // rows) are reconciled with it.
        if !exists {
            creates.push((pk, object));
        }
    }
    // A device with data of its own may know an object it does not have: it deleted it.
    // Then what both know of its changes decides (the sender's versions come later), not
    // the sender's row.
    if state.merge && collection != LOG_COLLECTION {
        let keys: Vec<ObjectKey> = creates
            .iter()
            .map(|(pk, _)| (collection.to_owned(), pk_text(pk)))
            .collect();
        let known = known_objects(Exec::Transaction(&tx), &keys).await?;
        creates = creates
            .into_iter()
            .zip(keys)
            .filter(|(_, key)| !known.contains(key))
            .map(|(create, _)| create)
            .collect();
    }
    for (_, object) in creates {
        steps.push(BatchStep::new(Operation::create(collection, object)));
    }
    steps.push(progress_step(session, state, first));
    run(&tx, Operation::Batch { steps }).await?;
    tx.commit().await?;
    Ok(())
}

/// Whether the device holds no object whose key lies between the least and the greatest of
/// `keys`, so none of them can exist: one range count instead of a lookup of every key. A
/// fresh device's batches (sent in key order) land in empty ranges, so the lookup is skipped.
///
/// Only for UUID and integer keys, whose order is the same in Rust and in every database
/// (bytes, numbers); other keys (text may sort by a locale in an adopted table) are looked up.
async fn key_range_is_empty(
    tx: &StorageTransaction,
    collection: &str,
    field: &str,
    keys: &[Value],
) -> Result<bool> {
    fn range<T: Ord + Clone>(values: impl Iterator<Item = Option<T>>) -> Option<(T, T)> {
        let mut bounds: Option<(T, T)> = None;
        for value in values {
            let value = value?;
            bounds = Some(match bounds {
                None => (value.clone(), value),
                Some((low, high)) => (low.min(value.clone()), high.max(value)),
            });
        }
        bounds
    }
    let bounds = match keys.first() {
        Some(Value::Uuid(_)) => range(keys.iter().map(Value::as_uuid))
            .map(|(low, high)| (Value::from(low), Value::from(high))),
        Some(Value::Int(_)) => range(keys.iter().map(Value::as_int))
            .map(|(low, high)| (Value::from(low), Value::from(high))),
        _ => None,
    };
    let Some((low, high)) = bounds else {
        return Ok(false);
    };
    let filter = Filter::all().gte(field, low).lte(field, high);
    let count = run(tx, Operation::count(collection, filter)).await?;
    Ok(count.count() == Some(0))
}

/// The step that stores the session's progress.
fn progress_step(session: Uuid, state: &SessionState, first: bool) -> BatchStep {
    let progress = serde_json::to_string(state).unwrap_or_default();
    let last_seq = i64::try_from(state.last_seq).unwrap_or(i64::MAX);
    BatchStep::new(if first {
        Operation::create(
            TRANSFER_COLLECTION,
            object! { "session" => session, "last_seq" => last_seq, "progress" => progress },
        )
    } else {
        Operation::update_by_pk(
            TRANSFER_COLLECTION,
            session,
            object! { "last_seq" => last_seq, "progress" => progress },
        )
    })
}

/// The state of a session new on this device, for a caller holding its write-order lock;
/// and whether it stored it. It merges with what the device has, if it has data of its own.
/// If not, a copy into a fresh device begins: its progress is stored at once, and from then
/// until the copy is done (or given up) continuous sync applies nothing (`unfinished_copy`),
/// as a change applied to an object before the copy's batch of it would be passed over by
/// the sender's row. Under the lock continuous sync applies by: either what it applied is
/// seen here (and merged with), or the progress stored here is seen there.
async fn begin_session(
    device: &SyncDevice,
    session: Uuid,
    collections: &[CollectionInfo],
) -> Result<(SessionState, bool)> {
    let state = SessionState {
        merge: has_data(device, collections).await?,
        ..SessionState::default()
    };
    if state.merge {
        return Ok((state, false));
    }
    let step = progress_step(session, &state, true);
    run_alone(device, step.operation).await?;
    Ok((state, true))
}

/// Whether the device holds any object of the offered app collections, or any log entry
/// (a device whose objects were all deleted still knows those deletes), for a caller
/// holding its write-order lock.
async fn has_data(device: &SyncDevice, collections: &[CollectionInfo]) -> Result<bool> {
    device.log().index_journal_holding_order().await?;
    if device
        .storage()
        .count(LOG_COLLECTION, Filter::all())
        .await?
        > 0
        || device
            .storage()
            .count(VERSIONS_COLLECTION, Filter::all())
            .await?
            > 0
    {
        return Ok(true);
    }
    for info in collections.iter().filter(|c| c.name != LOG_COLLECTION) {
        if device.storage().count(&info.name, Filter::all()).await? > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A change of the sender's that this device keeps without applying, and why.
type Held = (Uuid, HoldReason);

/// Takes in a batch of the sender's versions (what it knows of the changes it applied to
/// each object): on a device that had no data, stored as they are, without the values its
/// rows (the sender's) hold; on one with data of its own, reconciled as the changes that
/// leave them (returning those it holds). The session's progress lands with them.
async fn apply_versions_batch(
    device: &SyncDevice,
    session: Uuid,
    objects: Vec<Object>,
    state: &SessionState,
    first: bool,
) -> Result<Vec<Held>> {
    let registry = device.storage().registry();
    let bad = |problem: String| {
        FastSyncError::Protocol(format!("versions that do not read back: {problem}"))
    };
    // Merging reconciles them (kept here); otherwise they are stored as they came, once they
    // are known to read back.
    let mut merged = Vec::new();
    // The objects of the rows stored as they came, in order.
    let mut keys = Vec::new();
    let mut seen = HashSet::with_capacity(objects.len());
    let mut newest = None;
    // The versions come in blobs of the peer's: walked before they are decoded (or stored
    // as they came, to be decoded later), as the objects around them were.
    let mut budget = shape::MAX_VALUES;
    for row in &objects {
        if let Some(Value::Blob(state)) = row.get("state") {
            if let Some((_, body)) = state.split_first() {
                shape::check(body, &mut budget).map_err(|e| bad(format!("versions: {e}")))?;
            }
        }
        let checked = |id: &str| {
            let key = object_of(id).ok_or_else(|| bad(format!("no object in {id:?}")))?;
            if seen.contains(&key) {
                return Err(bad(format!("the object {id:?} twice in one batch")));
            }
            Ok(key)
        };
        let (key, latest) = if state.merge {
            let (id, versions) = Versions::from_row(row).map_err(|e| bad(e.to_string()))?;
            let key = checked(&id)?;
            let latest = versions.latest();
            merged.push((key.clone(), versions));
            (key, latest)
        } else {
            let (id, latest) = Versions::latest_of_row(row).map_err(|e| bad(e.to_string()))?;
            let key = checked(id)?;
            // Stored as it came, the key must read back: a copy from this device would
            // otherwise fail on it.
            pk_from_text(&key.1).map_err(|e| bad(e.to_string()))?;
            keys.push(key.clone());
            (key, latest)
        };
        if registry.collection(&key.0).is_err() {
            return Err(bad(format!("an object of unknown collection `{}`", key.0)).into());
        }
        if INTERNAL_COLLECTIONS.contains(&key.0.as_str()) {
            return Err(bad(format!("an object of sync's own collection `{}`", key.0)).into());
        }
        // Like the log's timestamps: the clock moves past them, or the session ends.
        if let Some(latest) = latest {
            device
                .clock()
                .observe(latest)
                .map_err(|e| FastSyncError::Verification {
                    collection: VERSIONS_COLLECTION.to_owned(),
                    problem: format!("the sender's versions: {e}"),
                })?;
        }
        newest = newest.max(latest);
        seen.insert(key);
    }
    if state.merge {
        drop(objects);
        let mut entries = Vec::new();
        for (key, versions) in &merged {
            let def = registry.collection(&key.0)?;
            let pk = pk_from_text(&key.1).map_err(|e| bad(e.to_string()))?;
            entries.extend(versions.synthesize(key, &pk, None, def));
        }
        let integrated = device
            .integrate_with(entries, vec![progress_step(session, state, first)])
            .await?;
        return Ok(integrated.held);
    }
    // Stored as they came (they read back), as the sender pruned them for its rows, which
    // are this device's now: values only for objects that do not exist. A row's `object` is
    // the id read above; any field but it and `state` is dropped.
    let rows: Vec<Object> = objects
        .into_iter()
        .map(|mut row| {
            row.retain(|field, _| field == "object" || field == "state");
            row
        })
        .collect();
    // Under the write-order lock, as integration writes versions: the two never interleave.
    let storing = async {
        let storage = device.storage();
        // Isolated, as integration is: versions are read, then replaced.
        let tx = storage.begin_isolated().await?;
        let clock_before = versions::latest_applied(Exec::Transaction(&tx)).await?;
        // Any of them may have versions here already: the device's own writes during the
        // copy, which its sync folds in as it pushes them. Those are later than the sender's
        // (the clock moved past the sender's first), so they are merged in, not replaced:
        // otherwise a write of the sender's pulled later would pass over them here, and
        // lose to them everywhere else.
        let mut own = versions::load(Exec::Transaction(&tx), &keys)
            .await?
            .versions;
        let mut steps = Vec::with_capacity(rows.len() + 2);
        let mut with_own = Vec::new();
        for (row, key) in rows.into_iter().zip(&keys) {
            match own.remove(key) {
                Some(own) => {
                    let (_, mut theirs) =
                        Versions::from_row(&row).map_err(|e| bad(e.to_string()))?;
                    theirs.merge(own);
                    with_own.push((key.clone(), theirs));
                }
                None => steps.push(versions::put_step(row)),
            }
        }
        versions::push_store_steps(with_own, newest, clock_before, &mut steps)?;
        steps.push(progress_step(session, state, first));
        run(&tx, Operation::Batch { steps }).await?;
        tx.commit().await?;
        Ok::<(), crate::Error>(())
    };
    device.log().write_order().hold(storing).await??;
    Ok(Vec::new())
}

/// Merges a batch of the sender's log entries into a device that has data of its own:
/// reconciled like entries pulled from a shared log, with the session's progress in the
/// same transaction. Returns the entries it holds.
async fn merge_log_batch(
    device: &SyncDevice,
    session: Uuid,
    objects: Vec<Object>,
    state: &SessionState,
    first: bool,
) -> Result<Vec<Held>> {
    let entries = objects
        .iter()
        .map(|row| StoredEntry::from_object(row).map(|stored| stored.entry))
        .collect::<Result<Vec<_>>>()?;
    for entry in &entries {
        not_sync_own(entry)?;
    }
    let integrated = device
        .integrate_with(entries, vec![progress_step(session, state, first)])
        .await?;
    Ok(integrated.held)
}

/// Refuses a log entry of the sender's that changes sync's own collections: no device's
/// entries do, so the sender is broken (or hostile); its state is this device's own.
fn not_sync_own(entry: &LogEntry) -> std::result::Result<(), FastSyncError> {
    if INTERNAL_COLLECTIONS.contains(&entry.collection.as_str()) {
        return Err(FastSyncError::Verification {
            collection: LOG_COLLECTION.to_owned(),
            problem: format!(
                "an entry for sync's own collection `{}`, which no device logs",
                entry.collection
            ),
        });
    }
    Ok(())
}

/// Hands over the shared-log cursor (with the fingerprint of the topics it holds for, when
/// the sender told it), forgets the session (and any abandoned before it) and, when the
/// sender pulls everything and pulled as far, that the database was restored from a backup
/// (`RESTORED_BEHIND_KEY`), in one transaction.
async fn finish(device: &SyncDevice, cursor: u64, subscription: Option<i64>) -> Result<()> {
    let storage = device.storage();
    let tx = storage.begin().await?;
    let own_cursor = state_value(&tx, CURSOR_KEY).await?;
    let own_subscription = state_value(&tx, SUBSCRIPTION_KEY).await?;
    let restored_behind = state_value(&tx, RESTORED_BEHIND_KEY).await?;
    let handed = i64::try_from(cursor).unwrap_or(i64::MAX);
    // The sender's cursor (with the topics it holds for) replaces this device's own only
    // when it is further along and holds for what this device's cursor held for: for every
    // topic, or the same ones, or this device has no subscription yet. Otherwise this device
    // keeps its own, which pulling from goes on from safely (entries are recognised by id),
    // where the sender's could make it start over from the beginning of the shared log.
    let holds = match (subscription, own_subscription) {
        (Some(0) | None, _) | (Some(_), None) => true,
        (Some(theirs), Some(ours)) => theirs == ours,
    };
    let mut steps = Vec::new();
    if handed > own_cursor.unwrap_or(0) && holds {
        steps.push(state_step(CURSOR_KEY, handed));
        steps.push(BatchStep::new(raise_reached(handed)));
        if let Some(subscription) = subscription {
            // The receiver's continuous sync compares it with its own and, if they differ,
            // pulls again from the start.
            steps.push(state_step(SUBSCRIPTION_KEY, subscription));
        }
    } else if own_cursor.is_none() {
        steps.push(state_step(CURSOR_KEY, 0));
    }
    // A database restored from a backup has what the device changed after it now, if the
    // sender pulls every collection and pulled as far as the device had (a copy that leaves
    // a collection out, or filters, hands over cursor 0).
    let pulls_all = subscription == Some(0);
    if pulls_all && restored_behind.is_some_and(|behind| handed >= behind) {
        steps.push(BatchStep::new(Operation::delete_by_pk(
            STATE_COLLECTION,
            RESTORED_BEHIND_KEY,
        )));
    }
    // This session's progress, and that of any abandoned before it: moot now.
    steps.push(BatchStep::new(Operation::delete_where(
        TRANSFER_COLLECTION,
        Filter::all(),
    )));
    run(&tx, Operation::Batch { steps }).await?;
    tx.commit().await?;
    Ok(())
}

/// The step setting sync's state row `key` to `value`, whether the row exists or not (a
/// first continuous sync running meanwhile may create it).
fn state_step(key: &str, value: i64) -> BatchStep {
    let row = object! { "key" => key, "value" => value };
    BatchStep::new(Operation::put(STATE_COLLECTION, row))
}
