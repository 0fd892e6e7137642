//! The sending side: a consistent snapshot streamed in batches.

use std::collections::VecDeque;
use std::time::Instant;

use foldhash::{HashSet, HashSetExt};
use storex_core::uuid::Uuid;
use storex_core::{Filter, Object, Operation, Origin, Query, Registry, StorageTransaction, Value};

use crate::client_log::Exec;
use crate::device::SyncDevice;
use crate::entry::{
    pk_text, StoredEntry, CURSOR_KEY, INTERNAL_COLLECTIONS, LOG_COLLECTION, QUARANTINE_COLLECTION,
    SUBSCRIPTION_KEY,
};
use crate::error::Result;
use crate::fast_sync::package::{CollectionInfo, Package, MAX_BATCH_OBJECTS};
use crate::fast_sync::sent_versions::VersionsPager;
use crate::fast_sync::shape;
use crate::fast_sync::{
    cancel_here, chain_checksum, encode_object, honour_pause, next_kept_or_package, next_package,
    page_limit, quarantine_info, send_package, sign_of_life_interval, state_value, tell_peer,
    ChannelError, EncodedObjects, FastSyncChannel, FastSyncError, FastSyncOptions, Kept, Progress,
    TransferReport,
};
use crate::journal::JOURNAL_COLLECTION;
use crate::versions::VERSIONS_COLLECTION;

/// Objects read from the snapshot at a time, at most.
const PAGE: u64 = 2_000;
/// Objects in a collection's first page, before their size is known.
const FIRST_PAGE: u64 = 64;
/// About how many bytes of objects a page holds, so that large objects (photos, say) come a
/// few at a time and memory stays bounded.
const PAGE_BYTES: u64 = 8 * 1024 * 1024;

/// A snapshot of a device, held open so that a transfer interrupted by a dropped channel can
/// resume on a new channel with the same data.
#[derive(Debug)]
pub struct SnapshotSender {
    device: SyncDevice,
    tx: StorageTransaction,
    session: Uuid,
    collections: Vec<CollectionInfo>,
    /// The shared-log cursor handed over (0 when the copy leaves out a synced collection or
    /// runs a filter hook).
    cursor: u64,
    /// Whether the copy carries everything behind the cursor: then the entries it holds for
    /// collections its registry does not know (an app of a later version wrote them) go
    /// too, since the receiver will not pull them again.
    whole: bool,
    /// The fingerprint of the topics the cursor holds for (see `Package::Hello`).
    subscription: Option<i64>,
    /// Rows of the quarantine behind the cursor handed over (sent or not).
    quarantine_rows: u64,
    /// This device's log entries not pushed to a shared log at the snapshot.
    unpushed: u64,
    options: FastSyncOptions,
}

/// Refuses an object of `collection` whose encoding holds more values than a receiver
/// decodes in one batch.
fn refuse_oversized(collection: &str, encoded: &[u8]) -> Result<()> {
    let mut budget = shape::MAX_VALUES;
    shape::check(encoded, &mut budget).map_err(|problem| {
        FastSyncError::Verification {
            collection: collection.to_owned(),
            problem: format!("an object cannot be sent: it holds {problem}"),
        }
        .into()
    })
}

/// Sends a snapshot of `device` over `channel` in one go. If taking the snapshot fails, the
/// receiver (waiting for the offer) is told why.
pub async fn send_snapshot(
    device: &SyncDevice,
    channel: &mut dyn FastSyncChannel,
    options: &FastSyncOptions,
) -> Result<TransferReport> {
    let mut sender = SnapshotSender::open_for(device, channel, options.clone()).await?;
    let report = sender.send(channel).await;
    sender.close().await?;
    report
}

/// Whether the journal rows a snapshot holds are only records indexing passed over
/// (`left`, records that do not read): otherwise a write landed between indexing and the
/// snapshot. Compared by id, not by count: another process may have indexed one of them
/// meanwhile (a newer version that reads it) while a new write landed.
fn only_passed_over(rows: &[Object], left: &HashSet<Uuid>) -> bool {
    rows.iter().all(|row| {
        row.get("id")
            .and_then(Value::as_uuid)
            .is_some_and(|id| left.contains(&id))
    })
}

/// A snapshot of `device` whose journal is empty (but for records that do not read, which
/// indexing leaves there): every row it holds has its entries in the log it sends. The
/// journal is indexed under the write-order lock, which the app's writes wait for; a write
/// inside an app's own transaction does not, so the snapshot checks, and is taken again if
/// one landed in between.
async fn snapshot_with_indexed_journal(device: &SyncDevice) -> Result<StorageTransaction> {
    const TRIES: usize = 3;
    let log = device.log();
    for _ in 0..TRIES {
        let attempt = async {
            let indexed = log.index_journal_holding_order().await?;
            let left: HashSet<Uuid> = indexed.damaged.iter().map(|d| d.id).collect();
            // The copy carries this device's writes to another, which will not send them
            // back: a power cut that undid them here afterwards would lose them here for
            // good. (A write that lands before the snapshot is seen below, and this is done
            // again.)
            device.storage().backend().make_durable().await?;
            let tx = device.storage().begin_snapshot().await?;
            // The first read fixes the snapshot: the journal must hold only the records
            // indexing passed over (one more row read is enough to tell a write landed).
            let query = Query::default().limit(left.len() as u64 + 1);
            let waiting = tx
                .execute_as(
                    Operation::find_many(JOURNAL_COLLECTION, query),
                    Origin::Sync,
                )
                .await?
                .into_objects()?;
            if only_passed_over(&waiting, &left) {
                return Ok(Some(tx));
            }
            tx.rollback().await?;
            Ok::<_, crate::Error>(None)
        };
        if let Some(tx) = log.write_order().hold(attempt).await?? {
            return Ok(tx);
        }
    }
    Err(storex_core::Error::Transaction {
        problem: format!(
            "writes kept landing while the snapshot was taken ({TRIES} tries); try again"
        ),
    }
    .into())
}

/// How many rows of `collection` match `filter` in the snapshot.
async fn count(tx: &StorageTransaction, collection: &str, filter: Filter) -> Result<u64> {
    let counted = tx
        .execute_as(Operation::count(collection, filter), Origin::Sync)
        .await?;
    Ok(counted.count().unwrap_or(0))
}

impl SnapshotSender {
    /// [`SnapshotSender::open`] for a receiver already waiting on `channel`: if taking the
    /// snapshot fails, the receiver is told why (as by [`send_snapshot`]).
    pub async fn open_for(
        device: &SyncDevice,
        channel: &mut dyn FastSyncChannel,
        options: FastSyncOptions,
    ) -> Result<Self> {
        match SnapshotSender::open(device, options.clone()).await {
            Ok(sender) => Ok(sender),
            Err(error) => Err(tell_peer(channel, &options, "sending", error).await),
        }
    }

    /// Takes the snapshot: opens a transaction on the device and counts what it will send.
    pub async fn open(device: &SyncDevice, options: FastSyncOptions) -> Result<Self> {
        let storage = device.storage();
        let tx = snapshot_with_indexed_journal(device).await?;
        let wanted = |name: &str| {
            !INTERNAL_COLLECTIONS.contains(&name)
                && options
                    .collections
                    .as_ref()
                    .is_none_or(|c| c.iter().any(|c| c == name))
        };
        let mut collections = Vec::new();
        let mut names: Vec<&str> = storage
            .registry()
            .collections()
            .map(|c| c.name())
            .filter(|n| wanted(n))
            .collect();
        // The cursor says the receiver has every change before it: only when the copy
        // carries every synced collection and no filter hook leaves objects out. Otherwise
        // nothing is handed over (0): a receiver without a cursor of its own pulls from the
        // start (the changes of what was left out included), one with a cursor goes on from
        // it.
        let whole =
            options.filter.is_none() && device.synced_collections().into_iter().all(&wanted);
        // Then what the sender knows of the objects: their versions, its log's applied
        // entries folded in, and the entries it holds back.
        names.push(VERSIONS_COLLECTION);
        names.push(LOG_COLLECTION);
        let app_collections: Vec<String> = names
            .iter()
            .filter(|n| !INTERNAL_COLLECTIONS.contains(n))
            .map(|n| (*n).to_owned())
            .collect();
        for name in names {
            let def = storage.registry().collection(name)?;
            let mut objects = 0;
            for (counted, filter) in counted_for(name, &app_collections) {
                objects += count(&tx, counted, filter).await?;
            }
            if name == LOG_COLLECTION && whole {
                objects += held_of_unknown_collections(&tx, storage.registry()).await?;
            }
            collections.push(CollectionInfo {
                name: name.to_owned(),
                schema_version: def.schema_version(),
                objects,
            });
        }
        // The payloads it pulled but could not open (another key, a newer format) lie behind
        // the cursor it hands over, so they go with it.
        let quarantine_rows = if whole {
            count(&tx, QUARANTINE_COLLECTION, Filter::all()).await?
        } else {
            0
        };
        let (cursor, subscription) = if whole {
            let cursor = state_value(&tx, CURSOR_KEY).await?;
            let subscription = state_value(&tx, SUBSCRIPTION_KEY).await?;
            (
                cursor.and_then(|v| u64::try_from(v).ok()).unwrap_or(0),
                subscription,
            )
        } else {
            (0, None)
        };
        let unpushed = count(&tx, LOG_COLLECTION, Filter::all().eq("shared", false)).await?;
        Ok(SnapshotSender {
            device: device.clone(),
            tx,
            session: Uuid::now_v7(),
            collections,
            cursor,
            whole,
            subscription,
            quarantine_rows,
            unpushed,
            options,
        })
    }

    /// The definitions of the app collections sent (sync's own are known to every device).
    fn definitions(&self) -> Vec<storex_core::CollectionDef> {
        let registry = self.device.storage().registry();
        self.collections
            .iter()
            .filter(|c| !INTERNAL_COLLECTIONS.contains(&c.name.as_str()))
            .filter_map(|c| registry.collection(&c.name).ok().cloned())
            .collect()
    }

    /// The session of this snapshot, which its offers carry ([`super::Offer::session`]).
    pub fn session(&self) -> Uuid {
        self.session
    }

    /// The collections and counts of the snapshot.
    pub fn collections(&self) -> &[CollectionInfo] {
        &self.collections
    }

    /// Ends the snapshot (it only read, so nothing is written).
    pub async fn close(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }

    /// One page of `collection` after `after` (the last key sent), in key order. Of the
    /// log, only the entries held back: the applied ones travel folded into the versions.
    async fn page(
        &self,
        collection: &str,
        after: &Option<Object>,
        skip: u64,
        limit: u64,
    ) -> Result<Vec<Object>> {
        let def = self.device.storage().registry().collection(collection)?;
        let mut query = Query::default().limit(limit);
        if collection == LOG_COLLECTION {
            query.filter = Filter::all().eq("integrated", false);
        }
        match (def.pk_fields(), after) {
            // One-field keys page by key (cheap in any database); compound keys by offset.
            ([field], Some(last)) => {
                let last_key = last.get(field).cloned().unwrap_or(Value::Null);
                query.filter = query.filter.gt(field.clone(), last_key);
            }
            ([_], None) => {}
            (_, _) => query.skip = skip,
        }
        Ok(self
            .tx
            .execute_as(Operation::find_many(collection, query), Origin::Sync)
            .await?
            .into_objects()?)
    }

    /// Streams the snapshot over `channel`. If the channel fails, call again with a new
    /// channel to the same receiver: it resumes after the last batch the receiver applied.
    /// If this side fails (its database, say, or the receiver breaks the protocol), the
    /// receiver is told why before the error is returned.
    pub async fn send(&mut self, channel: &mut dyn FastSyncChannel) -> Result<TransferReport> {
        match self.stream(channel).await {
            Ok(report) => Ok(report),
            Err(error) => Err(tell_peer(channel, &self.options, "sending", error).await),
        }
    }

    /// [`SnapshotSender::send`] without telling the receiver of a failure.
    async fn stream(&mut self, channel: &mut dyn FastSyncChannel) -> Result<TransferReport> {
        let start = Instant::now();
        send_package(
            channel,
            &self.options,
            Package::Hello {
                session: self.session,
                collections: self.collections.clone(),
                definitions: self.definitions(),
                cursor: self.cursor,
                latest: Some(self.device.clock().now()),
                subscription: self.subscription,
                quarantined: self.quarantine_rows,
                properties: self.options.properties.clone(),
            },
        )
        .await?;
        let ready = next_package(channel, &self.options, "sending").await?;
        let (resume_after, merge, quarantine) = match ready {
            Package::Ready {
                resume_after,
                merge,
                quarantine,
            } => (resume_after, merge, quarantine),
            other => {
                return Err(FastSyncError::Protocol(format!(
                    "expected Ready, got {}",
                    other.summary()
                ))
                .into())
            }
        };
        let mut run = Run {
            seq: 0,
            skip_until: resume_after.unwrap_or(0),
            unacked: VecDeque::new(),
            kept: Kept::default(),
            last_sent: Instant::now(),
            report: TransferReport {
                resumed_after: resume_after,
                cursor: self.cursor,
                unpushed: self.unpushed,
                ..TransferReport::default()
            },
        };
        // What the log may carry: entries of the collections sent, but not of objects the
        // pre-send hook left out (their values would travel in the entries).
        let sent: HashSet<String> = self.collections.iter().map(|c| c.name.clone()).collect();
        let registry = self.device.storage().registry();
        let unknown_too = |collection: &str| self.whole && registry.collection(collection).is_err();
        let mut left_out: HashSet<(String, String)> = HashSet::new();
        let app_collections = self
            .collections
            .iter()
            .filter(|c| !INTERNAL_COLLECTIONS.contains(&c.name.as_str()))
            .map(|c| c.name.clone())
            .collect();
        let mut versions = VersionsPager::new(app_collections, merge);
        let mut unread_held = Vec::new();
        let mut streamed = self.collections.clone();
        if quarantine && self.quarantine_rows > 0 {
            streamed.push(quarantine_info(&self.device, self.quarantine_rows)?);
        } else {
            run.report.quarantine_left = self.quarantine_rows;
        }
        for info in streamed {
            let mut collection = CollectionRun::default();
            let mut batch = EncodedObjects::new();
            // The key of the object of the batch that is larger than a batch may be, which
            // goes alone: named if the channel refuses it as a frame too large.
            let mut alone: Option<String> = None;
            let mut after: Option<Object> = None;
            let mut offset = 0u64;
            let mut limit = FIRST_PAGE;
            loop {
                let (page, last_page) = if info.name == VERSIONS_COLLECTION {
                    let exec = Exec::Transaction(&self.tx);
                    versions.next(exec, registry, limit, &left_out).await?
                } else {
                    let page = self.page(&info.name, &after, offset, limit).await?;
                    offset += page.len() as u64;
                    after = page.last().cloned();
                    let last_page = (page.len() as u64) < limit;
                    (page, last_page)
                };
                let (mut page_objects, mut page_bytes) = (0u64, 0u64);
                for object in page {
                    if info.name == LOG_COLLECTION {
                        if let Some(own) = names_sync_own(&object) {
                            // Held here for ever (no device logs sync's own collections),
                            // and the receiver would refuse it, ending every copy: passed
                            // over, and reported.
                            unread_held.push(format!(
                                "an entry held back for sync's own collection `{own}`, not sent"
                            ));
                            continue;
                        }
                        if !entry_is_sent(&object, &sent, &left_out, unknown_too) {
                            continue;
                        }
                        // A held entry that does not read would end the session on the
                        // receiver: passed over, and reported.
                        if let Err(e) = StoredEntry::from_object(&object) {
                            unread_held.push(e.to_string());
                            continue;
                        }
                    }
                    if self
                        .options
                        .filter
                        .as_ref()
                        .is_some_and(|keep| !keep(&info.name, &object))
                    {
                        if let Some(pk) = pk_text_of(&self.device, &info.name, &object) {
                            left_out.insert((info.name.clone(), pk));
                        }
                        continue;
                    }
                    let encoded = encode_object(&object);
                    if encoded.len() as u64 > shape::MAX_VALUES {
                        // Only an object this large can hold more values than a receiver
                        // decodes in one batch: refused here, by name, not there as garbage.
                        refuse_oversized(&info.name, &encoded)?;
                    }
                    // Every value takes a byte at least: a batch within `MAX_VALUES` bytes
                    // holds no more values than the receiver decodes.
                    let batch_bytes = self.options.batch_bytes.min(shape::MAX_VALUES as usize);
                    if !batch.is_empty()
                        && (batch.bytes() + encoded.len() > batch_bytes
                            || batch.len() == MAX_BATCH_OBJECTS)
                    {
                        let full = std::mem::take(&mut batch);
                        self.emit(
                            channel,
                            &info,
                            full,
                            alone.take(),
                            &mut collection,
                            &mut run,
                        )
                        .await?;
                    }
                    if encoded.len() > batch_bytes {
                        alone = registry
                            .collection(&info.name)
                            .ok()
                            .and_then(|def| def.pk_of(&object))
                            .map(|pk| pk.to_string());
                    }
                    page_objects += 1;
                    page_bytes += encoded.len() as u64;
                    batch.push(encoded);
                }
                if last_page {
                    break;
                }
                self.show_life(channel, &mut run).await?;
                if let Some(average) = page_bytes.checked_div(page_objects) {
                    limit = page_limit(PAGE_BYTES, average, PAGE);
                }
            }
            // The snapshot counted an app collection's rows in the same transaction: fewer
            // read page by page means a page passed over some (its key's order as compared
            // is not the order as sorted), and the copy would end short without a word.
            if !INTERNAL_COLLECTIONS.contains(&info.name.as_str()) && offset != info.objects {
                return Err(FastSyncError::Verification {
                    collection: info.name.clone(),
                    problem: format!(
                        "{offset} of its {} rows were read in key order: the database \
                         compares its keys in another order than it sorts them (a key \
                         column without a type holding numbers, say)",
                        info.objects
                    ),
                }
                .into());
            }
            if !batch.is_empty() {
                self.emit(channel, &info, batch, alone, &mut collection, &mut run)
                    .await?;
            }
            let sent = collection.objects;
            send_package(
                channel,
                &self.options,
                Package::CollectionDone {
                    collection: info.name.clone(),
                    objects: sent,
                    checksum: collection.checksum,
                },
            )
            .await?;
            // Fewer than counted at the start (the filter left some out, or log entries
            // were folded into versions): the total is what was sent, so a bar ends full.
            if let Some(progress) = self
                .options
                .progress
                .as_ref()
                .filter(|_| sent != info.objects)
            {
                progress(&Progress {
                    collection: info.name.clone(),
                    objects_done: sent,
                    objects_total: sent,
                    bytes_done: run.report.bytes,
                });
            }
        }
        send_package(channel, &self.options, Package::Finish).await?;
        while !run.unacked.is_empty() {
            self.await_ack(channel, &mut run.unacked, &mut run.kept)
                .await?;
        }
        match next_package(channel, &self.options, "sending").await? {
            Package::Done => {}
            other => {
                return Err(FastSyncError::Protocol(format!(
                    "expected Done, got {}",
                    other.summary()
                ))
                .into())
            }
        }
        run.report.damaged = unread_held;
        run.report.damaged.extend_from_slice(versions.damaged());
        run.report.duration = start.elapsed();
        Ok(run.report)
    }

    /// Accounts for one batch and sends it, unless the receiver applied it before. `alone`
    /// is the key of the batch's one object if it is larger than a batch may be: a frame the
    /// channel refuses as too large names it.
    async fn emit(
        &self,
        channel: &mut dyn FastSyncChannel,
        info: &CollectionInfo,
        objects: EncodedObjects,
        alone: Option<String>,
        collection: &mut CollectionRun,
        run: &mut Run,
    ) -> Result<()> {
        run.seq += 1;
        collection.checksum = chain_checksum(&collection.checksum, &objects);
        collection.objects += objects.len() as u64;
        if run.seq <= run.skip_until {
            // Applied before the interruption: read again for the checksum, not sent.
            return self.show_life(channel, run).await;
        }
        honour_pause(channel, &self.options, "sending", &mut run.kept).await?;
        if self.options.cancel.is_cancelled() {
            return Err(cancel_here(channel, &self.options, "sending").await);
        }
        while run.unacked.len() >= self.options.window {
            self.await_ack(channel, &mut run.unacked, &mut run.kept)
                .await?;
        }
        let (count, bytes) = (objects.len() as u64, objects.bytes() as u64);
        let sent = send_package(
            channel,
            &self.options,
            Package::Batch {
                seq: run.seq,
                collection: info.name.clone(),
                objects,
            },
        )
        .await;
        if let Err(crate::Error::FastSync(FastSyncError::Channel(ChannelError::TooLarge {
            limit,
        }))) = &sent
        {
            let what = match &alone {
                Some(pk) => format!("object {pk} takes {bytes} bytes"),
                None => format!("a batch of {count} objects takes {bytes} bytes"),
            };
            return Err(FastSyncError::Verification {
                collection: info.name.clone(),
                problem: format!(
                    "{what}, more than the {limit} bytes the channel carries in one frame: it \
                     cannot be sent"
                ),
            }
            .into());
        }
        sent?;
        run.unacked.push_back(run.seq);
        run.last_sent = Instant::now();
        run.report.batches += 1;
        run.report.objects += count;
        run.report.bytes += bytes;
        if let Some(progress) = &self.options.progress {
            progress(&Progress {
                collection: info.name.clone(),
                objects_done: collection.objects,
                objects_total: info.objects,
                bytes_done: run.report.bytes,
            });
        }
        Ok(())
    }

    /// Sends the peer a sign of life (a `Resume`, which it takes as nothing more) when this
    /// side has sent nothing for a while: reading again what a resumed session skips, or
    /// objects the filter leaves out, may take longer than the peer waits for a package.
    async fn show_life(&self, channel: &mut dyn FastSyncChannel, run: &mut Run) -> Result<()> {
        if run.last_sent.elapsed() >= sign_of_life_interval(&self.options) {
            send_package(channel, &self.options, Package::Resume).await?;
            run.last_sent = Instant::now();
        }
        Ok(())
    }

    /// Waits for the acknowledgement of the oldest batch sent (it may have come during a
    /// pause: then it is among the `kept` packages).
    async fn await_ack(
        &self,
        channel: &mut dyn FastSyncChannel,
        unacked: &mut VecDeque<u64>,
        kept: &mut Kept,
    ) -> Result<()> {
        match next_kept_or_package(channel, &self.options, "sending", kept).await? {
            Package::Ack { seq } if unacked.front() == Some(&seq) => {
                unacked.pop_front();
                Ok(())
            }
            other => Err(FastSyncError::Protocol(format!(
                "expected the acknowledgement of batch {:?}, got {}",
                unacked.front(),
                other.summary()
            ))
            .into()),
        }
    }
}

/// What a collection's count in `Hello` counts: for the versions, at most as many objects
/// as the index has rows and the log has applied entries of the collections sent (they are
/// folded together); for the log, the entries held back (the others travel in the versions).
fn counted_for<'n>(name: &'n str, sent: &[String]) -> Vec<(&'n str, Filter)> {
    let of_sent = || Filter::all().is_in("collection", sent.iter().map(String::as_str));
    match name {
        VERSIONS_COLLECTION => vec![
            (VERSIONS_COLLECTION, Filter::all()),
            (LOG_COLLECTION, of_sent().eq("integrated", true)),
        ],
        LOG_COLLECTION => vec![(LOG_COLLECTION, of_sent().eq("integrated", false))],
        _ => vec![(name, Filter::all())],
    }
}

/// The key of `object` of `collection` as the log writes it.
fn pk_text_of(device: &SyncDevice, collection: &str, object: &Object) -> Option<String> {
    let def = device.storage().registry().collection(collection).ok()?;
    def.pk_of(object).map(|pk| pk_text(&pk))
}

/// Whether a row of the sender's log goes with the snapshot: its collection is sent and its
/// object was not left out, or `unknown_too` takes its collection (one the sender's
/// registry does not know).
fn entry_is_sent(
    row: &Object,
    sent: &HashSet<String>,
    left_out: &HashSet<(String, String)>,
    unknown_too: impl Fn(&str) -> bool,
) -> bool {
    let (Some(collection), Some(pk)) = (
        row.get("collection").and_then(Value::as_text),
        row.get("pk").and_then(Value::as_text),
    ) else {
        return false;
    };
    if sent.contains(collection) {
        !left_out.contains(&(collection.to_owned(), pk.to_owned()))
    } else {
        unknown_too(collection)
    }
}

/// The collection a row of the log names, when it is one of sync's own (an entry a device
/// wrote by mistake or malice, held back since it arrived).
fn names_sync_own(row: &Object) -> Option<&str> {
    row.get("collection")
        .and_then(Value::as_text)
        .filter(|collection| INTERNAL_COLLECTIONS.contains(collection))
}

/// How many entries the log holds (not applied) for collections `registry` does not know:
/// all held ones, less those of the collections it knows.
async fn held_of_unknown_collections(tx: &StorageTransaction, registry: &Registry) -> Result<u64> {
    let known: Vec<&str> = registry
        .collections()
        .map(|c| c.name())
        .filter(|n| !INTERNAL_COLLECTIONS.contains(n))
        .collect();
    let held = Filter::all().eq("integrated", false);
    let all = count(tx, LOG_COLLECTION, held.clone()).await?;
    let of_known = count(tx, LOG_COLLECTION, held.is_in("collection", known)).await?;
    Ok(all.saturating_sub(of_known))
}

/// The state of one run of [`SnapshotSender::send`].
#[derive(Debug)]
struct Run {
    seq: u64,
    skip_until: u64,
    unacked: VecDeque<u64>,
    /// What the receiver sent while this side paused, in order.
    kept: Kept,
    /// When this side last sent a batch or a sign of life.
    last_sent: Instant,
    report: TransferReport,
}

/// Count and running checksum of the collection being sent.
#[derive(Debug, Default)]
struct CollectionRun {
    objects: u64,
    checksum: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use storex_core::object;

    #[test]
    fn a_snapshot_is_taken_only_when_its_journal_holds_just_the_records_passed_over() {
        let (passed, other) = (Uuid::now_v7(), Uuid::now_v7());
        let row = |id: Uuid| object! { "id" => id };
        let left = HashSet::from_iter([passed]);
        assert!(only_passed_over(&[], &HashSet::new()));
        assert!(only_passed_over(&[row(passed)], &left));
        // As many rows as records passed over, but one is a new write.
        assert!(!only_passed_over(&[row(other)], &left));
        assert!(!only_passed_over(&[row(passed), row(other)], &left));
        assert!(!only_passed_over(&[row(other)], &HashSet::new()));
        assert!(!only_passed_over(&[object! { "entries" => 1i64 }], &left));
    }

    #[test]
    fn an_object_of_more_values_than_a_batch_decodes_is_refused_by_name() {
        let nulls = storex_core::serde_json::Value::Array(vec![
            storex_core::serde_json::Value::Null;
            shape::MAX_VALUES as usize
        ]);
        let encoded = encode_object(&object! { "j" => nulls });
        match refuse_oversized("note", &encoded) {
            Err(crate::Error::FastSync(FastSyncError::Verification {
                collection,
                problem,
            })) => {
                assert_eq!(collection, "note");
                assert!(problem.contains("more than 4000000 values"), "{problem}");
            }
            other => panic!("not refused: {other:?}"),
        }
        let fits = encode_object(&object! { "j" => vec![0u8; 8 * 1024 * 1024] });
        refuse_oversized("note", &fits).expect("a large blob is one value");
    }
}
