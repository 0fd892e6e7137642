//! [`ContinuousSync`]: push this device's changes, pull the others', apply them.
//!
//! [`ContinuousSync::sync_once`] pushes unshared entries in batches bounded by count and bytes
//! and marks them shared once the shared log has stored them; then pulls page by page, and
//! for each page integrates the entries and stores the new cursor in one local transaction.
//! Whatever fails in between, nothing is lost or applied twice: a push whose reply is lost
//! is sent again and the shared log ignores the ids it has; a page whose transaction did not
//! commit is pulled again from the stored cursor, and entries already integrated are
//! recognised by id. An entry too large for a push, one the shared log refuses alone
//! ([`SharedLogError::EntryRefused`]), or a pulled payload that does not decode (wrong key,
//! tampering), is reported and does not block the others; the first two stay unshared for the
//! next sync, the undecodable ones are kept in a quarantine collection.
//!
//! A device that changes its subscription (the collections it pulls) pulls again from the
//! start of the shared log at its next sync, so added collections bring their history (if
//! the shared log was compacted since, that is the usual error asking for an initial sync).
//! The first sync of each [`ContinuousSync`] also retries the held entries, so entries from a
//! newer schema apply after the app's upgrade without the app asking.
//!
//! The writes still in the journal are pushed before they are indexed; a device that
//! compacts ([`ContinuousOptions::compact_per_sync`] above 0) then folds them straight into
//! its versions index, where compaction would have put them, instead of writing log rows.
//! Last, a sync that found nothing to push or pull, or that finds 2,000 pushed entries
//! waiting (entries indexed as log rows before their push), compacts up to
//! [`ContinuousOptions::compact_per_sync`] of them into the versions index, so the client log
//! of a device that syncs in the background does not grow with every write it ever made.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::{HashSet, HashSetExt};
use storex_core::uuid::Uuid;
use storex_core::{object, BatchStep, Filter, Operation, Origin, Query, Value};
use tokio::sync::Mutex;

use crate::client_log::{delete_ids_steps, ids_in, Exec, LogRows, COMPACT_ROUND};
use crate::codec::EntryCodec;
use crate::device::SyncDevice;
use crate::entry::{
    next_page_after, raise_reached, LogEntry, CURSOR_KEY, LOG_COLLECTION, LOG_FIELDS,
    QUARANTINE_COLLECTION, REACHED_KEY, RESTORED_BEHIND_KEY, STATE_COLLECTION, SUBSCRIPTION_KEY,
};
use crate::error::{Error, Result};
use crate::journal::JournalPart;
use crate::shared_log::{split_into_pushes, SharedEntry, SharedLogError, SharedSyncLog};

/// How [`ContinuousSync`] batches its work.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ContinuousOptions {
    /// Entries per push at most (0 counts as 1).
    pub push_batch: usize,
    /// Payload bytes per push at most; a larger entry is reported and left unshared.
    pub max_push_bytes: usize,
    /// Entries per pull page at most (0 counts as 1).
    pub pull_batch: usize,
    /// Collections this device subscribes to (all when `None`): partial replication.
    pub collections: Option<Vec<String>>,
    /// How payloads are encoded (plain, or encrypted with the app's key).
    pub codec: EntryCodec,
    /// Entries of the client log a sync compacts at most, the oldest first, once they are
    /// pushed (see [`crate::ClientSyncLog::compact`]): a device that syncs in the background
    /// keeps its log small without one sync taking on a large backlog at once. A sync
    /// compacts when it found nothing to push or pull, or when 2,000 pushed entries wait.
    /// Above 0, the writes a push takes from the journal go into the versions index when
    /// their part is settled, right after it is pushed (compacted at once, with no limit:
    /// no log row is written for them), and only entries that were indexed as log rows
    /// before their push wait for these rounds.
    /// 0: never; pushed entries stay in the log as shared rows until the app calls
    /// `compact` itself.
    pub compact_per_sync: u64,
}

impl Default for ContinuousOptions {
    fn default() -> Self {
        ContinuousOptions {
            push_batch: 1_000,
            max_push_bytes: 4 * 1024 * 1024,
            pull_batch: 1_000,
            collections: None,
            codec: EntryCodec::plain(),
            compact_per_sync: 10_000,
        }
    }
}

impl ContinuousOptions {
    /// Sets the entries per push and per pull page.
    pub fn with_batch_size(mut self, entries: usize) -> Self {
        self.push_batch = entries.max(1);
        self.pull_batch = entries.max(1);
        self
    }

    /// Sets how many entries of the client log each sync compacts at most (0: never).
    pub fn with_compact_per_sync(mut self, entries: u64) -> Self {
        self.compact_per_sync = entries;
        self
    }

    /// Sets the payload bytes per push.
    pub fn with_max_push_bytes(mut self, bytes: usize) -> Self {
        self.max_push_bytes = bytes;
        self
    }

    /// Pulls only these collections. When the list changes, the next sync pulls again from
    /// the start of the shared log, so added collections bring their history; once the log
    /// was compacted, that fails with [`crate::SharedLogError::CursorCompacted`] until the
    /// device runs an initial sync ([`crate::fast_sync`]) from another device.
    pub fn with_collections<I, S>(mut self, collections: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.collections = Some(collections.into_iter().map(Into::into).collect());
        self
    }

    /// Encrypts payloads end to end with `key`.
    pub fn with_encryption_key(mut self, key: [u8; 32]) -> Self {
        self.codec = EntryCodec::encrypted(key);
        self
    }
}

/// The start of the keys of the state rows naming, one each, the topics the stored
/// subscription fingerprint was taken of (no other key starts so).
const SUBSCRIBED_PREFIX: &str = "subscribed\u{1f}";

/// The state row of the cursor a change of subscription pulled again from the start over,
/// and the row of the fingerprint it held for: going back to that subscription goes on from
/// it (the start may have been compacted away meanwhile).
const REWOUND_CURSOR_KEY: &str = "rewound\u{1f}cursor";
const REWOUND_SUBSCRIPTION_KEY: &str = "rewound\u{1f}subscription";

/// The fingerprint of a subscription to `topics` (`None`: all topics, 0). A topic named
/// twice counts once: the subscription is a set.
fn fingerprint(topics: Option<&[String]>) -> i64 {
    match topics {
        Some(topics) => fingerprint_of_set(&topics.iter().cloned().collect()),
        None => 0,
    }
}

/// The fingerprint of a subscription to the topics of `set`.
fn fingerprint_of_set(set: &BTreeSet<String>) -> i64 {
    use sha2::{Digest as _, Sha256};
    let joined = set
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\n");
    let digest = Sha256::digest(joined.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_le_bytes(first)
}

/// The write storing `cursor` as this device's position in the shared log.
fn cursor_update(cursor: u64) -> Operation {
    Operation::update_by_pk(
        STATE_COLLECTION,
        CURSOR_KEY,
        object! { "value" => i64::try_from(cursor).unwrap_or(i64::MAX) },
    )
}

/// Says in `report` that a fast-sync copy into this device has not finished.
fn waiting_for_copy(report: &mut SyncReport) {
    report.waiting_for_copy = true;
    report.problems.push(
        "a fast-sync copy into this device has not finished: nothing is pulled until it has \
         (or `SyncDevice::abandon_transfers` gives it up)"
            .to_owned(),
    );
}

/// Takes what applying a pulled page did, and the page's own counts, into `report`; true if
/// it gave way to a fast-sync copy into this device that began meanwhile (the page's cursor
/// is not stored, nor is it counted: it is pulled again once the copy is done).
fn gave_way(
    integrated: Result<crate::IntegrationReport>,
    page: PageCounts,
    report: &mut SyncReport,
) -> Result<bool> {
    match integrated {
        Ok(done) => {
            report.pulled += page.pulled;
            report.quarantined += page.set_aside;
            report.unreadable += page.unreadable;
            report.problems.extend(page.problems);
            report.absorb_integration(&done);
            Ok(false)
        }
        Err(Error::CopyUnfinished) => {
            waiting_for_copy(report);
            Ok(true)
        }
        Err(error) => Err(error),
    }
}

/// The problem a sync reports when the shared log ends before the device's cursor.
fn rewind_problem(log_end: u64, cursor: u64, compacted_through: u64) -> String {
    format!(
        "the shared log ends at cursor {log_end}, before this device's cursor {cursor} (was it \
         restored from a backup?): pulling again from cursor {compacted_through}"
    )
}

/// What one [`ContinuousSync::sync_once`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncReport {
    /// Entries pushed.
    pub pushed: u64,
    /// Entries pulled (of other devices).
    pub pulled: u64,
    /// Entries integrated into this device's data.
    pub integrated: u64,
    /// Operations applied to the data.
    pub applied: u64,
    /// Pulled entries whose values lost to a later write.
    pub conflicts: u64,
    /// Pulled entries this device already had.
    pub duplicates: u64,
    /// Pulled entries held back (unknown collection, newer schema, invalid, clock drift, a
    /// log row or the versions of their object that do not read).
    pub held: u64,
    /// Pulled payloads that did not decode, kept in quarantine.
    pub quarantined: u64,
    /// Entries the shared log holds but could not read back (a damaged row or document; see
    /// [`crate::UnreadableEntry`]): passed over, each named in `problems`.
    pub unreadable: u64,
    /// Quarantined payloads that decoded when tried again (the first sync of an engine, say
    /// with the right key now) and left the quarantine, integrated like pulled entries (so
    /// also counted as applied, duplicates or held).
    pub released: u64,
    /// Entries of this device's client log compacted into its versions index at the end of
    /// the sync (see [`ContinuousOptions::compact_per_sync`]).
    pub compacted: u64,
    /// Problems that did not stop the sync (an entry too large, one the shared log refused,
    /// a payload that did not decode, an entry the shared log could not read back, a journal
    /// record, an unshared log row or a held one that does not read).
    pub problems: Vec<String>,
    /// The shared-log cursor after the sync.
    pub cursor: u64,
    /// How long it took.
    pub duration: Duration,
    /// True when this sync pulled nothing (or stopped pulling) because a fast-sync copy into
    /// this device has begun and not finished ([`SyncDevice::unfinished_copy`]). The device
    /// pulls again once the copy finishes, or once it is given up with
    /// [`SyncDevice::abandon_transfers`]; until then other devices' changes do not arrive.
    pub waiting_for_copy: bool,
    /// True when this device's database was restored from a backup older than what the
    /// shared log knows of the device (it acknowledged entries further along than this
    /// database ever pulled): the changes this device made after the backup are on the
    /// other devices, not here, as a shared log never hands a device its own entries. A
    /// fast-sync copy of every collection from a device that pulls every collection and
    /// pulled at least as far brings them (and ends this); until then, or until
    /// [`ContinuousSync::forget_restore`], every sync says so in `problems`. Found by the
    /// first sync of each engine, before it pushes.
    pub restored_from_backup: bool,
}

impl SyncReport {
    /// Counts what integrating one page did.
    fn absorb_integration(&mut self, integrated: &crate::IntegrationReport) {
        self.integrated += integrated.integrated;
        self.applied += integrated.operations;
        self.conflicts += integrated.conflicts;
        self.duplicates += integrated.duplicates;
        self.held += integrated.held.len() as u64;
    }
}

/// The turn of one sync of a device ([`ContinuousSync::turn`]): no other sync of it runs
/// while this is held.
#[derive(Debug)]
pub struct SyncTurn<'a> {
    sync: &'a ContinuousSync,
    _running: tokio::sync::MutexGuard<'a, ()>,
}

impl SyncTurn<'_> {
    /// [`ContinuousSync::sync_once`], in this turn.
    pub async fn sync_once(self) -> Result<SyncReport> {
        self.sync.sync_once_in_turn().await
    }
}

/// Keeps one device in sync with the others through a shared log.
#[derive(Debug)]
pub struct ContinuousSync {
    device: SyncDevice,
    shared: Arc<dyn SharedSyncLog>,
    options: ContinuousOptions,
    running: Mutex<()>,
    /// Set once this instance tried the held entries again without failing (entries held
    /// for clock drift are also retried once the clock caught up with them). Until then
    /// every sync tries: a failure that passes (a busy database) must not leave entries held
    /// for a newer schema until the next start.
    held_retried: AtomicBool,
    /// The same for the quarantine (also retried once a fast-sync copy brought one).
    quarantine_retried: AtomicBool,
    /// The cursor this instance last acknowledged, after making it durable on this device
    /// (0: none yet); a sync that acknowledges it again need not make it durable again. Set
    /// back to 0 before this instance moves the cursor or the subscription: after a rewind
    /// (a log restored from a backup, a wider subscription), the same cursor may come to
    /// stand for other entries, applied since and not yet durable. (A fast-sync copy into
    /// the device moves the cursor only forward, past any this instance acknowledged.)
    acked_durable: AtomicU64,
    /// Set once this instance compared the device's position in the shared log with the
    /// furthest cursor its database stored (a restore from a backup happens while the app
    /// is not running: once per start is enough).
    restore_checked: AtomicBool,
}

impl ContinuousSync {
    /// Syncs `device` (whose id must be registered with `shared`) through `shared`.
    pub fn new(
        device: SyncDevice,
        shared: Arc<dyn SharedSyncLog>,
        options: ContinuousOptions,
    ) -> Self {
        ContinuousSync {
            device,
            shared,
            options,
            running: Mutex::new(()),
            held_retried: AtomicBool::new(false),
            quarantine_retried: AtomicBool::new(false),
            acked_durable: AtomicU64::new(0),
            restore_checked: AtomicBool::new(false),
        }
    }

    /// The device.
    pub fn device(&self) -> &SyncDevice {
        &self.device
    }

    /// The shared log.
    pub fn shared_log(&self) -> &Arc<dyn SharedSyncLog> {
        &self.shared
    }

    /// The stored shared-log cursor (0 before the first pull).
    pub async fn cursor(&self) -> Result<u64> {
        let value = self.state_value(CURSOR_KEY).await?;
        Ok(value.and_then(|v| u64::try_from(v).ok()).unwrap_or(0))
    }

    /// The value of sync's state row `key`, if it exists and reads.
    async fn state_value(&self, key: &str) -> Result<Option<i64>> {
        let storage = self.device.storage();
        let row = storage.find_by_pk(STATE_COLLECTION, key).await?;
        Ok(row.and_then(|r| r.get("value").and_then(Value::as_int)))
    }

    /// Stops reporting that this device was restored from a backup
    /// ([`SyncReport::restored_from_backup`]): for an app whose user chose to go on without
    /// the changes made after the backup (no other device has them, say). The device is not
    /// found restored again for the cursor it was found behind.
    pub async fn forget_restore(&self) -> Result<()> {
        let Some(acked) = self.state_value(RESTORED_BEHIND_KEY).await? else {
            return Ok(());
        };
        let steps = vec![
            BatchStep::new(raise_reached(acked)),
            BatchStep::new(Operation::delete_by_pk(
                STATE_COLLECTION,
                RESTORED_BEHIND_KEY,
            )),
        ];
        let storage = self.device.storage();
        storage
            .execute_as(Operation::Batch { steps }, Origin::Sync)
            .await?;
        Ok(())
    }

    /// Says in `report` whether this device's database was restored from a backup (see
    /// [`SyncReport::restored_from_backup`]), looking once per start (`find_restore`). If
    /// the shared log cannot be asked, the sync fails: a pull would move the furthest cursor
    /// past what the log could have told, and the restore would never be found.
    async fn check_restored(&self, report: &mut SyncReport) -> Result<()> {
        if !self.restore_checked.load(Ordering::SeqCst) {
            self.find_restore().await?;
            self.restore_checked.store(true, Ordering::SeqCst);
        }
        if let Some(acked) = self.state_value(RESTORED_BEHIND_KEY).await? {
            report.restored_from_backup = true;
            report.problems.push(format!(
                "this device's database was restored from a backup: the shared log has it at \
                 cursor {acked}, further than this database ever pulled. What the device changed \
                 after the backup is on the other devices, not here (a shared log does not hand \
                 a device its own changes back): a fast-sync copy from another device brings \
                 it (or `ContinuousSync::forget_restore` goes on without it)"
            ));
        }
        Ok(())
    }

    /// Stores `RESTORED_BEHIND_KEY` if the shared log has this device further along than the
    /// furthest cursor its database stored (`REACHED_KEY`): the database is older than the
    /// device. A database of an earlier version, which stored none, starts it from its
    /// cursor (or the one a wider subscription left, if further), unchecked.
    async fn find_restore(&self) -> Result<()> {
        let storage = self.device.storage();
        if self.state_value(REACHED_KEY).await?.is_none() {
            let cursor = self.state_value(CURSOR_KEY).await?.unwrap_or(0);
            let rewound = self.state_value(REWOUND_CURSOR_KEY).await?.unwrap_or(0);
            let row = object! { "key" => REACHED_KEY, "value" => cursor.max(rewound) };
            let op = Operation::put(STATE_COLLECTION, row);
            storage.execute_as(op, Origin::Sync).await?;
            return Ok(());
        }
        // Asked before `REACHED_KEY` is read: every acknowledgement follows the commit of
        // the cursor it acknowledges.
        let me = self.device.device();
        let devices = self.shared.devices(me).await?;
        let acked = devices
            .iter()
            .find(|d| d.device == me)
            .map_or(0, |d| d.acked);
        let acked = i64::try_from(acked).unwrap_or(i64::MAX);
        // Read and marked in one transaction: a copy that finishes (raising the row, and
        // clearing the mark) commits before or after both.
        let tx = storage.begin().await?;
        let reached = crate::fast_sync::state_value(&tx, REACHED_KEY).await?;
        if acked > reached.unwrap_or(0) {
            let row = object! { "key" => RESTORED_BEHIND_KEY, "value" => acked };
            let op = Operation::put(STATE_COLLECTION, row);
            tx.execute_as(op, Origin::Sync).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The topics this device pulls: its subscribed collections, or all (`None`).
    fn topics(&self) -> Option<Vec<String>> {
        self.options
            .collections
            .as_ref()
            .map(|cs| cs.iter().map(|c| self.options.codec.topic(c)).collect())
    }

    /// Live updates: waits up to about `wait` until the shared log has entries this device has
    /// not pulled yet; `Some(Ok(true))` when there are some. `None` when the shared log cannot
    /// tell (see [`SharedSyncLog::live_wait`]).
    pub async fn wait_for_remote_changes(&self, wait: Duration) -> Option<Result<bool>> {
        let cursor = match self.cursor().await {
            Ok(cursor) => cursor,
            Err(e) => return Some(Err(e)),
        };
        let topics = self.topics();
        let waiting =
            self.shared
                .live_wait(self.device.device(), cursor, wait, topics.as_deref())?;
        Some(match waiting.await {
            // The cursor is past the log's end: a sync pulls again from where it should.
            Err(SharedLogError::CursorAhead { .. }) => Ok(true),
            waited => waited.map_err(Error::from),
        })
    }

    async fn ensure_cursor_row(&self) -> Result<()> {
        let storage = self.device.storage();
        if storage
            .find_by_pk(STATE_COLLECTION, CURSOR_KEY)
            .await?
            .is_none()
        {
            let op = Operation::create(
                STATE_COLLECTION,
                object! { "key" => CURSOR_KEY, "value" => 0i64 },
            );
            // Two syncs of one device never run at once (see `running`), so this cannot race.
            storage.execute_as(op, Origin::Sync).await?;
        }
        Ok(())
    }

    /// A fingerprint of the topics this device pulls (0 for all of them).
    fn subscription(&self) -> i64 {
        fingerprint(self.topics().as_deref())
    }

    /// When the subscription changed since the cursor last moved, pulls again from the
    /// start, so collections added to it bring their history (entries already here are
    /// recognised by id); not when it was all topics before, nor when it only lost topics
    /// (a device whose log was compacted since would otherwise have to copy everything
    /// again). The first time, only records it. (A fast-sync copy hands over the sender's
    /// fingerprint, with its cursor.)
    ///
    /// Beside the fingerprint, one state row per topic names the topics it was taken of,
    /// to tell a narrower subscription from another one; rows that do not make up the
    /// stored fingerprint (a copy replaced it, or an earlier version stored none) count as
    /// unknown, and the change then pulls again.
    ///
    /// Pulling again from the start keeps the cursor it leaves, and the fingerprint that
    /// cursor held for: when the subscription goes back to that one (the start was compacted
    /// away, say, so the wider one cannot be pulled), the device goes on from that cursor
    /// (or its own, if further) instead of failing every sync.
    async fn follow_subscription(&self) -> Result<()> {
        let storage = self.device.storage();
        let topics = self.topics();
        let all = topics.is_none();
        let wanted: BTreeSet<String> = topics.into_iter().flatten().collect();
        let now = if all { 0 } else { fingerprint_of_set(&wanted) };
        let rows = storage
            .find_many(STATE_COLLECTION, Query::new(Filter::all()))
            .await?;
        let mut stored = None;
        let mut recorded = BTreeSet::new();
        let (mut cursor, mut rewound_cursor, mut rewound_subscription) = (0, 0, None);
        for row in &rows {
            let (Some(key), Some(value)) = (
                row.get("key").and_then(Value::as_text),
                row.get("value").and_then(Value::as_int),
            ) else {
                continue;
            };
            match key {
                SUBSCRIPTION_KEY => stored = Some(value),
                CURSOR_KEY => cursor = value,
                REWOUND_CURSOR_KEY => rewound_cursor = value,
                REWOUND_SUBSCRIPTION_KEY => rewound_subscription = Some(value),
                _ => {
                    if let Some(topic) = key.strip_prefix(SUBSCRIBED_PREFIX) {
                        recorded.insert(topic.to_owned());
                    }
                }
            }
        }
        if stored == Some(now) && recorded == wanted {
            return Ok(());
        }
        let recorded_holds = Some(fingerprint_of_set(&recorded)) == stored;
        let rewind = match stored {
            None | Some(0) => false,
            Some(before) if before == now => false,
            // Only topics dropped: everything before the cursor of the others is here.
            Some(_) => now == 0 || !(recorded_holds && wanted.is_subset(&recorded)),
        };
        let mut steps = vec![BatchStep::new(Operation::put(
            STATE_COLLECTION,
            object! { "key" => SUBSCRIPTION_KEY, "value" => now },
        ))];
        for gone in recorded.difference(&wanted) {
            let key = format!("{SUBSCRIBED_PREFIX}{gone}");
            steps.push(BatchStep::new(Operation::delete_by_pk(
                STATE_COLLECTION,
                key,
            )));
        }
        for added in wanted.difference(&recorded) {
            let key = format!("{SUBSCRIBED_PREFIX}{added}");
            steps.push(BatchStep::new(Operation::put(
                STATE_COLLECTION,
                object! { "key" => key, "value" => 1i64 },
            )));
        }
        if rewind {
            steps.push(BatchStep::new(cursor_update(0)));
            if let (true, Some(before)) = (cursor > 0, stored) {
                steps.push(BatchStep::new(Operation::put(
                    STATE_COLLECTION,
                    object! { "key" => REWOUND_CURSOR_KEY, "value" => cursor },
                )));
                steps.push(BatchStep::new(Operation::put(
                    STATE_COLLECTION,
                    object! { "key" => REWOUND_SUBSCRIPTION_KEY, "value" => before },
                )));
            }
        } else if rewound_subscription == Some(now) && rewound_cursor > cursor {
            // Back to the subscription the cursor was left for: everything of it up to that
            // cursor is here.
            steps.push(BatchStep::new(Operation::update_by_pk(
                STATE_COLLECTION,
                CURSOR_KEY,
                object! { "value" => rewound_cursor },
            )));
        }
        self.cursor_moves();
        storage
            .execute_as(Operation::Batch { steps }, Origin::Sync)
            .await?;
        Ok(())
    }

    /// Says the cursor (or the subscription it holds for) is about to move: the cursor last
    /// acknowledged is no longer known to be durable (see `acked_durable`).
    fn cursor_moves(&self) {
        self.acked_durable.store(0, Ordering::SeqCst);
    }

    /// Pushes, pulls and applies until caught up, then compacts the client log (up to
    /// [`ContinuousOptions::compact_per_sync`] entries, when the sync found nothing to push
    /// or pull or 2,000 pushed entries wait); one call at a time per device.
    ///
    /// Entries the shared log cannot read back ([`crate::UnreadableEntry`]) are passed over
    /// and reported. A page in which more entries do not read than do, two or more, is
    /// taken for a failure to read (a format or driver the log does not expect), not damage:
    /// passed over, they would be lost for good, so the sync fails with
    /// [`SharedLogError::Unavailable`] and the page is pulled again by the next one.
    pub async fn sync_once(&self) -> Result<SyncReport> {
        self.turn().await.sync_once().await
    }

    /// Waits until no other sync of this device runs (the app's own call of
    /// [`ContinuousSync::sync_once`], say), and holds that until the [`SyncTurn`] is used or
    /// dropped: a caller that bounds how long a sync takes can leave the wait out.
    pub async fn turn(&self) -> SyncTurn<'_> {
        SyncTurn {
            sync: self,
            _running: self.running.lock().await,
        }
    }

    async fn sync_once_in_turn(&self) -> Result<SyncReport> {
        let start = Instant::now();
        let mut report = SyncReport::default();
        self.ensure_cursor_row().await?;
        // Every sync: a fast-sync copy may have handed over a cursor for other topics since.
        self.follow_subscription().await?;
        self.check_restored(&mut report).await?;
        self.push(&mut report).await?;
        if !self.pull(&mut report).await? {
            // A fast-sync copy into this device is unfinished: nothing is applied beside it.
            report.duration = start.elapsed();
            return Ok(report);
        }
        // Held entries are tried again once per start, by every sync until a try goes through
        // (entries held for a newer schema apply after an app upgrade), and when the clock
        // has caught up with one it refused as too far ahead (without a restart: a desktop
        // app may run for weeks). A refusal come due is first turned into a retry still to
        // go, which only a retry that went through settles: one that fails, or a sync
        // dropped midway (stopped, timed out), leaves it for the next sync.
        if self.device.clock().take_refusal_due() {
            self.held_retried.store(false, Ordering::SeqCst);
        }
        if !self.held_retried.load(Ordering::SeqCst) {
            match self.device.retry_held().await {
                Ok(retried) => {
                    self.held_retried.store(true, Ordering::SeqCst);
                    report.integrated += retried.integrated;
                    report.applied += retried.operations;
                    let unread = retried.damaged.into_iter();
                    report.problems.extend(unread.map(|problem| {
                        format!(
                            "a held row of the client log does not read, and stays held: {problem}"
                        )
                    }));
                }
                Err(e) => report.problems.push(format!("retrying held entries: {e}")),
            }
        }
        // Payloads set aside because they did not decode, with this engine's codec: once per
        // start (by every sync until a try goes through), and after a fast-sync copy brought
        // the sender's (turned into a retry still to go first, as above).
        if self.device.take_quarantine_received() {
            self.quarantine_retried.store(false, Ordering::SeqCst);
        }
        if !self.quarantine_retried.load(Ordering::SeqCst) {
            match self.retry_quarantined(&mut report).await {
                Ok(()) => self.quarantine_retried.store(true, Ordering::SeqCst),
                // Tried again by the next sync (a copy's quarantine included).
                Err(e) => report
                    .problems
                    .push(format!("retrying quarantined payloads: {e}")),
            }
        }
        if self.options.compact_per_sync > 0 {
            match self.compact(&report).await {
                Ok(compacted) => report.compacted = compacted,
                Err(e) => report
                    .problems
                    .push(format!("compacting the client log: {e}")),
            }
        }
        report.duration = start.elapsed();
        Ok(report)
    }

    /// Compacts up to [`ContinuousOptions::compact_per_sync`] entries of the client log, when
    /// the sync found nothing to push or pull (an idle moment) or a full round of them waits;
    /// a sync that carried a few changes leaves them for later, so as not to add a round's
    /// fixed cost to every change's trip. Returns how many were compacted.
    async fn compact(&self, report: &SyncReport) -> Result<u64> {
        let log = self.device.log();
        let limit = self.options.compact_per_sync;
        if report.pushed == 0 && report.pulled == 0 {
            log.compact_up_to(limit).await
        } else if log.compactable_at_least(COMPACT_ROUND).await? {
            // A full round waits: no need to ask again whether anything does.
            log.compact_rounds(limit).await
        } else {
            Ok(0)
        }
    }

    /// Decodes the quarantined payloads again, a page at a time: those that decode now (the
    /// app gave the right key, or reads their format after an upgrade) are integrated and
    /// leave the quarantine in the same transaction; the others stay, and so do those of
    /// collections this device no longer subscribes to.
    async fn retry_quarantined(&self, report: &mut SyncReport) -> Result<()> {
        let limit = self.options.pull_batch.max(1);
        let topics = self.topics();
        let mut after: Option<Uuid> = None;
        loop {
            let mut filter = Filter::all();
            if let Some(after) = after {
                filter = filter.gt("id", after);
            }
            let query = Query::new(filter).order_asc("id").limit(limit as u64);
            let storage = self.device.storage();
            let rows = storage.find_many(QUARANTINE_COLLECTION, query).await?;
            let mut entries = Vec::new();
            let mut released = Vec::new();
            for row in &rows {
                let decoded = quarantined_entry(row)
                    .filter(|shared| topics.as_ref().is_none_or(|t| t.contains(&shared.topic)))
                    .and_then(|shared| self.options.codec.decode(&shared).ok());
                if let Some(entry) = decoded {
                    released.push(entry.id);
                    entries.push(entry);
                }
            }
            if !entries.is_empty() {
                let leave = delete_ids_steps(QUARANTINE_COLLECTION, &released);
                let integrated = self.device.integrate_after_copies(entries, leave).await?;
                report.absorb_integration(&integrated);
                report.released += released.len() as u64;
            }
            after = match rows.last().and_then(|row| row.get("id")?.as_uuid()) {
                Some(last) if rows.len() == limit => Some(last),
                _ => return Ok(()),
            };
        }
    }

    /// Up to `limit` of this device's log entries not yet shared, oldest first, after the
    /// row whose timestamp text is `after`. A row that does not read is reported in the
    /// page's problems and stays unshared; the rows after it are pushed.
    async fn unshared_after(&self, after: Option<&str>, limit: usize) -> Result<UnsharedPage> {
        let mut filter = Filter::all().eq("shared", false);
        if let Some(after) = after {
            // Only this device's entries are unshared, so the clock part orders them.
            filter = filter.gt("hlc", after);
        }
        let query = Query::new(filter).order_asc("hlc").limit(limit as u64);
        let rows = self
            .device
            .storage()
            .find_values(LOG_COLLECTION, query, &LOG_FIELDS)
            .await?;
        let read = LogRows::read(&rows).into_log_entries();
        let unread = read.damaged.into_iter();
        Ok(UnsharedPage {
            entries: read.entries,
            problems: unread
                .map(|e| {
                    format!(
                        "an unshared row of the client log does not read ({e}); it stays unshared"
                    )
                })
                .collect(),
            next_after: next_page_after(&rows, limit as u64),
        })
    }

    /// Pushes what was indexed before (a push that stopped midway, a reader of the log since
    /// the last sync), then the writes waiting in the journal until now, a page at a time,
    /// read from the journal and settled once pushed. Later writes wait for the next sync.
    async fn push(&self, report: &mut SyncReport) -> Result<()> {
        let me = self.device.device();
        let batch = self.options.push_batch.max(1);
        let log = self.device.log();
        let journal_end = log.journal_end().await?;
        let mut page = self.durable_unshared_after(None, batch).await?;
        if !page.entries.is_empty() || journal_end.is_some() {
            // Before this push moves the log's end past a cursor it is behind (see
            // `rewind_if_ahead`).
            self.rewind_if_ahead(report).await?;
        }
        loop {
            report.problems.append(&mut page.problems);
            let pushing = self.push_entries(me, &page.entries, report);
            let Some(after) = page.next_after.as_deref() else {
                pushing.await?;
                break;
            };
            // The next page is read (from the device's database) while this one travels to
            // the shared log: it follows by timestamp, not by the `shared` flag, so it does
            // not wait for this page to be marked.
            let (pushed, next) =
                tokio::join!(pushing, self.durable_unshared_after(Some(after), batch));
            pushed?;
            page = next?;
        }
        if journal_end.is_none() {
            return Ok(());
        }
        // The writes since: read from the journal, pushed, and only then settled (folded
        // into the versions, or log rows already marked shared: one write, not two).
        let mut part = self.durable_journal_part(None, journal_end, batch).await?;
        // Compacting devices fold what they pushed into the versions at once, instead of
        // writing log rows that compaction would read, fold and delete later.
        let fold = self.options.compact_per_sync > 0;
        // The part pushed before this one, and which of its entries were stored remotely.
        let mut before: Option<(JournalPart, HashSet<Uuid>)> = None;
        while !part.is_empty() {
            // Records that do not read stay in the journal; the writes after them go on.
            report
                .problems
                .extend(part.damaged().iter().map(ToString::to_string));
            // While this part travels, the next is read and the one before is settled (a
            // crash in between leaves both in the journal, pushed again under the same ids).
            let settling = async {
                match before.take() {
                    Some((part, pushed)) => log.settle_pushed(part, &pushed, fold).await,
                    None => Ok(()),
                }
            };
            let ((pushed, outcome), next, settled) = tokio::join!(
                self.push_unindexed(me, part.entries(), report),
                self.durable_journal_part(part.last_record(), journal_end, batch),
                settling,
            );
            if let (Ok(()), Ok(()), Ok(_)) = (&outcome, &settled, &next) {
                before = Some((part, pushed));
                part = next?;
                continue;
            }
            // What was stored remotely is settled as shared even if a later push (or the
            // settling of the part before) failed; the rest waits as unshared log rows.
            let current = log.settle_pushed(part, &pushed, fold).await;
            settled?;
            current?;
            outcome?;
            return next.map(drop);
        }
        match before {
            Some((part, pushed)) => log.settle_pushed(part, &pushed, fold).await,
            None => Ok(()),
        }
    }

    /// Makes every write committed to this device's database so far durable
    /// ([`storex_core::StorageBackend::make_durable`]).
    async fn make_durable(&self) -> Result<()> {
        Ok(self.device.storage().backend().make_durable().await?)
    }

    /// [`ContinuousSync::unshared_after`], made durable (if it holds entries) before it is
    /// pushed: once others have its writes, a power cut that undid them here would leave
    /// this device without them for good (it never pulls its own writes back). Per page, not
    /// once per sync: a later page may hold writes committed after the first was read
    /// (indexed meanwhile by another reader of the log). It is read, and made durable, while
    /// the page before travels.
    async fn durable_unshared_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<UnsharedPage> {
        let page = self.unshared_after(after, limit).await?;
        if !page.entries.is_empty() {
            self.make_durable().await?;
        }
        Ok(page)
    }

    /// A part of the journal, made durable as [`ContinuousSync::durable_unshared_after`]
    /// says (a later part may hold a write of an app's transaction that committed after the
    /// first was read).
    async fn durable_journal_part(
        &self,
        after: Option<Uuid>,
        until: Option<Uuid>,
        limit: usize,
    ) -> Result<JournalPart> {
        let part = self
            .device
            .log()
            .read_journal_part(after, until, limit)
            .await?;
        if part.entries().next().is_some() {
            self.make_durable().await?;
        }
        Ok(part)
    }

    /// Pushes `entries` in pushes of bounded size, marking each shared once stored.
    async fn push_entries(
        &self,
        me: crate::hlc::DeviceId,
        entries: &[LogEntry],
        report: &mut SyncReport,
    ) -> Result<()> {
        for chunk in self.push_chunks(entries, report) {
            let (ids, pushed) = self.push_chunk(me, chunk, report).await;
            // Stored remotely (even if a part of the chunk then failed): a crash before this
            // line only means the next push sends them again.
            self.device.log().mark_shared(&ids).await?;
            pushed?;
        }
        Ok(())
    }

    /// Pushes entries not stored in the log yet, in pushes of bounded size; returns the ids
    /// stored remotely (for the caller to store as shared), and how the pushes ended (at
    /// the first that failed).
    async fn push_unindexed(
        &self,
        me: crate::hlc::DeviceId,
        entries: impl Iterator<Item = &LogEntry>,
        report: &mut SyncReport,
    ) -> (HashSet<Uuid>, Result<()>) {
        let mut pushed = HashSet::new();
        for chunk in self.push_chunks(entries, report) {
            let (ids, outcome) = self.push_chunk(me, chunk, report).await;
            pushed.extend(ids);
            if outcome.is_err() {
                return (pushed, outcome);
            }
        }
        (pushed, Ok(()))
    }

    /// Encodes `entries` and splits them into pushes of at most `max_push_bytes`; an entry
    /// larger than the log or the engine allows is reported and left out.
    fn push_chunks<'e>(
        &self,
        entries: impl IntoIterator<Item = &'e LogEntry>,
        report: &mut SyncReport,
    ) -> Vec<Vec<SharedEntry>> {
        // The log's own limit (e.g. a document size) may be below the engine's.
        let entry_limit = self
            .shared
            .max_entry_bytes()
            .map_or(self.options.max_push_bytes, |log| {
                log.min(self.options.max_push_bytes)
            });
        let mut fitting = Vec::new();
        for entry in entries {
            let shared = self.options.codec.encode(entry);
            let size = shared.payload.len();
            if size > entry_limit {
                let problem = Error::EntryTooLarge {
                    id: entry.id,
                    size,
                    limit: entry_limit,
                };
                report.problems.push(problem.to_string());
                continue;
            }
            fitting.push(shared);
        }
        split_into_pushes(fitting, usize::MAX, self.options.max_push_bytes, |e| {
            e.payload.len()
        })
    }

    /// Pushes one chunk; returns the ids stored remotely, and how the push ended. An entry the
    /// log refuses alone ([`SharedLogError::EntryRefused`]) is reported and stays unshared,
    /// for a later sync to try again; the entries the log gave back unsent are pushed on.
    async fn push_chunk(
        &self,
        me: crate::hlc::DeviceId,
        mut chunk: Vec<SharedEntry>,
        report: &mut SyncReport,
    ) -> (Vec<Uuid>, Result<()>) {
        let mut stored = Vec::new();
        let mut outcome = Ok(());
        while !chunk.is_empty() {
            let ids: Vec<_> = chunk.iter().map(|e| e.id).collect();
            match self.shared.push(me, chunk).await {
                Ok(_) => {
                    stored.extend(ids);
                    break;
                }
                Err(SharedLogError::EntryRefused {
                    id,
                    problem,
                    unsent,
                }) => {
                    let given: HashSet<Uuid> = ids.iter().copied().collect();
                    let unsent_ids: HashSet<Uuid> = unsent.iter().map(|e| e.id).collect();
                    // The refused entry is one of the push, and what came back unsent is
                    // others of it, each once (so each round gives back less than it was
                    // given); else it fails the push, as any other error.
                    if !given.contains(&id)
                        || unsent_ids.contains(&id)
                        || unsent_ids.len() != unsent.len()
                        || !unsent_ids.is_subset(&given)
                    {
                        outcome = Err(SharedLogError::Invalid {
                            problem: format!(
                                "the shared log refused entry {id}, which is not one of the \
                                 push's {} (or gave back {} entries unsent that are not the \
                                 others of it): {problem}",
                                ids.len(),
                                unsent.len()
                            ),
                        }
                        .into());
                        break;
                    }
                    stored.extend(
                        ids.into_iter()
                            .filter(|i| *i != id && !unsent_ids.contains(i)),
                    );
                    report.problems.push(format!(
                        "entry {id} was refused by the shared log; it stays unshared, and a \
                         later sync tries it again: {problem}"
                    ));
                    chunk = unsent;
                }
                // What rounds before stored is returned all the same.
                Err(e) => {
                    outcome = Err(e.into());
                    break;
                }
            }
        }
        report.pushed += stored.len() as u64;
        (stored, outcome)
    }

    /// Whether a fast-sync copy into this device has begun and not finished (then it is
    /// said in `report`). A change applied meanwhile to an object whose row the copy brings
    /// later would be passed over by that row: the device would disagree with the others.
    /// It pulls once the copy finished (or was abandoned: `SyncDevice::abandon_transfers`).
    async fn copy_unfinished(&self, report: &mut SyncReport) -> Result<bool> {
        let unfinished = self.device.unfinished_copy().await?;
        if unfinished {
            waiting_for_copy(report);
        }
        Ok(unfinished)
    }

    /// Pulls and applies until caught up; false if a fast-sync copy into this device is
    /// unfinished, before the first page is pulled or after one travelled.
    async fn pull(&self, report: &mut SyncReport) -> Result<bool> {
        if self.copy_unfinished(report).await? {
            return Ok(false);
        }
        let me = self.device.device();
        let topics = self.topics();
        let subscription = self.subscription();
        let mut cursor = self.cursor().await?;
        let mut page = self.pull_page(me, cursor, topics.as_deref()).await?;
        let mut held_back = false;
        loop {
            // A copy may have begun while the page travelled: the page waits until it is done.
            if self.copy_unfinished(report).await? {
                held_back = true;
                break;
            }
            // Counted once applied: a page held back is pulled again.
            let counts = page.take_counts();
            let mut extra = std::mem::take(&mut page.quarantined);
            if page.next_cursor != cursor {
                self.cursor_moves();
                extra.push(BatchStep::new(cursor_update(page.next_cursor)));
                let next = i64::try_from(page.next_cursor).unwrap_or(i64::MAX);
                extra.push(BatchStep::new(raise_reached(next)));
                // With the topics it holds for: a copy that handed over another cursor while
                // this sync pulled is overwritten by both, or overwrites both.
                extra.push(BatchStep::new(Operation::update_by_pk(
                    STATE_COLLECTION,
                    SUBSCRIPTION_KEY,
                    object! { "value" => subscription },
                )));
            }
            let entries = std::mem::take(&mut page.entries);
            // Refused if a copy began since the check above (asked again under the lock the
            // copy begins by): the page waits too.
            let integrating = self.device.integrate_after_copies(entries, extra);
            // The next page is pulled (and decoded) while this one is applied: pulling only
            // reads, so a page applied or not, the next starts at this one's end. If applying
            // fails, the sync ends at once and the read is dropped.
            let next = if page.more {
                let pulling = self.pull_page(me, page.next_cursor, topics.as_deref());
                tokio::pin!(integrating, pulling);
                let mut pulled = None;
                let integrated = loop {
                    tokio::select! {
                        integrated = &mut integrating => break integrated,
                        next = &mut pulling, if pulled.is_none() => pulled = Some(next),
                    }
                };
                if gave_way(integrated, counts, report)? {
                    held_back = true;
                    break;
                }
                Some(match pulled {
                    Some(next) => next,
                    None => pulling.await,
                })
            } else {
                if gave_way(integrating.await, counts, report)? {
                    held_back = true;
                    break;
                }
                None
            };
            cursor = page.next_cursor;
            match next {
                Some(next) => page = next?,
                None => break,
            }
        }
        // Held back, the page in hand was not applied: its cursor may even be one the log
        // told this device to leave (past its end), which the log would take as everything.
        if cursor > 0 && !held_back {
            // The log may drop what every device acknowledged: a power cut that undid this
            // device's applying would leave it a cursor behind a compaction.
            if self.acked_durable.load(Ordering::SeqCst) != cursor {
                self.make_durable().await?;
            }
            self.shared.ack(me, cursor).await?;
            self.acked_durable.store(cursor, Ordering::SeqCst);
        }
        report.cursor = cursor;
        Ok(!held_back)
    }

    /// When this device's cursor is past the shared log's end (its database was restored from
    /// a backup, say), moves it back to the log's compaction mark, so that what was pushed
    /// since is pulled, not skipped. Asked before a push: once the push has moved the log's
    /// end past the cursor, the log could not tell any more. (A pull asks anyway.)
    async fn rewind_if_ahead(&self, report: &mut SyncReport) -> Result<()> {
        let cursor = self.cursor().await?;
        let topics = self.topics();
        let probe = self
            .shared
            .pull(self.device.device(), cursor, 0, topics.as_deref())
            .await;
        match probe {
            Err(SharedLogError::CursorAhead {
                log_end,
                compacted_through,
                ..
            }) if compacted_through < cursor => {
                report
                    .problems
                    .push(rewind_problem(log_end, cursor, compacted_through));
                self.cursor_moves();
                self.device
                    .storage()
                    .execute_as(cursor_update(compacted_through), Origin::Sync)
                    .await?;
                Ok(())
            }
            // Behind a compaction, the device still pushes its changes; the pull after says
            // it must run an initial sync.
            Ok(_) | Err(SharedLogError::CursorCompacted { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// One page of the shared log after `cursor`, decoded: payloads that do not decode are
    /// set aside for the quarantine, with the reason.
    async fn pull_page(
        &self,
        me: crate::hlc::DeviceId,
        cursor: u64,
        topics: Option<&[String]>,
    ) -> Result<PulledPage> {
        let pulled = self
            .shared
            .pull(me, cursor, self.options.pull_batch.max(1), topics)
            .await;
        let page = match pulled {
            Ok(page) => page,
            // The log lost entries this device had pulled (restored from a backup, say):
            // entries pushed since get cursors this device has passed. It pulls again from
            // the compaction mark (it saw everything the log kept up to its end before; what
            // it has is recognised by id), rather than skip them.
            Err(SharedLogError::CursorAhead {
                log_end,
                compacted_through,
                ..
            }) if compacted_through < cursor => {
                return Ok(PulledPage {
                    problems: vec![rewind_problem(log_end, cursor, compacted_through)],
                    next_cursor: compacted_through,
                    more: true,
                    ..PulledPage::default()
                });
            }
            Err(e) => return Err(e.into()),
        };
        // A log that would send this device back, or say more follow without moving on,
        // would make it pull the same entries again, or for ever.
        if page.next_cursor < cursor || (page.more && page.next_cursor == cursor) {
            return Err(SharedLogError::Invalid {
                problem: format!(
                    "the shared log answered a pull after cursor {cursor} with next cursor {} \
                     and more {}",
                    page.next_cursor, page.more
                ),
            }
            .into());
        }
        if page.unreadable.len() > 1 && page.unreadable.len() > page.entries.len() {
            let first = &page.unreadable[0];
            return Err(SharedLogError::Unavailable {
                log: self.shared.name(),
                source: format!(
                    "{} of the {} entries after cursor {cursor} do not read (the first, at \
                     cursor {}: {}): too many to be damage, so none is passed over",
                    page.unreadable.len(),
                    page.unreadable.len() + page.entries.len(),
                    first.cursor,
                    first.problem
                )
                .into(),
            }
            .into());
        }
        let mut decoded = PulledPage {
            entries: Vec::with_capacity(page.entries.len()),
            pulled: page.entries.len() as u64,
            next_cursor: page.next_cursor,
            more: page.more,
            ..PulledPage::default()
        };
        let mut undecodable = Vec::new();
        for pulled in &page.entries {
            match self.options.codec.decode(&pulled.entry) {
                Ok(entry) => decoded.entries.push(entry),
                Err(problem) => {
                    decoded
                        .problems
                        .push(format!("entry {}: {problem}", pulled.entry.id));
                    undecodable.push((pulled, problem));
                }
            }
        }
        decoded.set_aside = undecodable.len() as u64;
        decoded.unreadable = page.unreadable.len() as u64;
        for damaged in &page.unreadable {
            decoded.problems.push(format!(
                "the shared log's entry at cursor {} does not read, passed over: {}",
                damaged.cursor, damaged.problem
            ));
        }
        // A payload pulled again (the subscription changed and pulling started over) is
        // in the quarantine already.
        let ids: Vec<Uuid> = undecodable.iter().map(|(p, _)| p.entry.id).collect();
        let storage = self.device.storage();
        let kept = ids_in(Exec::Storage(storage), QUARANTINE_COLLECTION, &ids).await?;
        for (pulled, problem) in undecodable {
            if kept.contains(&pulled.entry.id) {
                continue;
            }
            decoded.quarantined.push(BatchStep::new(Operation::create(
                QUARANTINE_COLLECTION,
                object! {
                    "id" => pulled.entry.id,
                    "device" => pulled.entry.device.0,
                    "topic" => pulled.entry.topic.clone(),
                    "cursor" => i64::try_from(pulled.cursor).unwrap_or(i64::MAX),
                    "payload" => pulled.entry.payload.clone(),
                    "reason" => problem.to_string(),
                },
            )));
        }
        Ok(decoded)
    }
}

/// The shared-log entry a quarantine row keeps (`None` if the row is damaged).
fn quarantined_entry(row: &storex_core::Object) -> Option<SharedEntry> {
    Some(SharedEntry {
        id: row.get("id")?.as_uuid()?,
        device: crate::hlc::DeviceId(row.get("device")?.as_uuid()?),
        topic: row.get("topic")?.as_text()?.to_owned(),
        payload: match row.get("payload")? {
            Value::Blob(bytes) => bytes.clone(),
            _ => return None,
        },
    })
}

/// A page of the client log's unshared entries, read to be pushed.
#[derive(Debug)]
struct UnsharedPage {
    /// The entries that read.
    entries: Vec<LogEntry>,
    /// Why the others did not (they stay unshared).
    problems: Vec<String>,
    /// Where the next page starts: the timestamp text of a full page's last row.
    next_after: Option<String>,
}

/// A page pulled from the shared log, decoded.
#[derive(Debug, Default)]
struct PulledPage {
    /// The entries that decoded.
    entries: Vec<LogEntry>,
    /// Steps storing those that did not in the quarantine (unless it holds them already).
    quarantined: Vec<BatchStep>,
    /// How many did not decode.
    set_aside: u64,
    /// How many entries of the page the shared log could not read back.
    unreadable: u64,
    /// Why they did not.
    problems: Vec<String>,
    /// How many entries the page had.
    pulled: u64,
    /// Where the next page starts.
    next_cursor: u64,
    /// Whether more may follow right away.
    more: bool,
}

impl PulledPage {
    /// What the page adds to a sync's report once it is applied.
    fn take_counts(&mut self) -> PageCounts {
        PageCounts {
            pulled: self.pulled,
            set_aside: self.set_aside,
            unreadable: self.unreadable,
            problems: std::mem::take(&mut self.problems),
        }
    }
}

/// What a pulled page adds to a sync's report once it is applied ([`PulledPage`]'s fields of
/// the same names).
struct PageCounts {
    pulled: u64,
    set_aside: u64,
    unreadable: u64,
    problems: Vec<String>,
}
