//! Fast initial sync: streaming a whole database from one device to another over any
//! [`FastSyncChannel`], in batches, with progress, resumable and verified.
//!
//! The sender reads everything inside one snapshot transaction
//! ([`Storage::begin_snapshot`](storex_core::Storage::begin_snapshot)), so what it sends is
//! consistent while the old device's app goes on writing (on a SQLite file a deferred
//! transaction, which sees the file as it was at its first read; on PostgreSQL a read-only
//! REPEATABLE READ transaction; an in-memory SQLite database has one connection, so its
//! writes wait for the transfer).
//! It streams the app's collections and then the *versions* of their objects (its client
//! sync log folded into its versions index, one row per object), so the receiver knows the
//! timestamp of every value, and hands over its shared-log cursor: the receiver's continuous
//! sync starts there and gets every change made during or after the transfer, and
//! reconciles it like any other device.
//!
//! The receiver validates every object against its registry, applies each batch in one
//! transaction together with its progress (session, last batch, running checksums), and
//! acknowledges it only then. A dropped channel resumes after the last acknowledged batch
//! when the same sender reconnects ([`SnapshotSender::send`] again); a failed batch leaves
//! nothing of itself behind. A receiver that had no data stores the sender's versions as
//! they are (every row must read back, and its timestamps move the receiver's clock past
//! them), and keeps no log row of the sender's changes; one with data or log entries of its
//! own keeps its objects, does not take back objects it deleted, and reconciles the sender's
//! versions (as the changes that give them, with the values of the sender's rows, which it
//! asks for in `Ready`) with its own, as if pulled from a shared log, which is how
//! [`exchange`] merges two devices in one session. Entries the sender holds back (from a
//! newer schema) travel as log rows, and the receiver holds them too. The versions cover only
//! the collections and objects sent, so what a filter leaves out does not travel in them
//! either. Each collection ends with its count and a running SHA-256 over the batches, which
//! the receiver checks.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> storex_sync::Result<()> {
//! use std::sync::Arc;
//! use storex_core::{object, CollectionDef, FieldType, MemoryBackend, Registry};
//! use storex_sync::fast_sync::{memory_channel_pair, receive_snapshot, send_snapshot, FastSyncOptions};
//! use storex_sync::{Clock, DeviceId, SyncDevice, SyncOptions};
//!
//! let registry = Registry::builder()
//!     .collection(CollectionDef::new("note").field("id", FieldType::Uuid).field("title", FieldType::Text).primary_key(["id"]))
//!     .build()?;
//! let open = || SyncDevice::open(registry.clone(), Arc::new(MemoryBackend::new()), Clock::new(DeviceId::random()), SyncOptions::default());
//! let (old, new) = (open().await?, open().await?);
//! old.storage().create("note", object! { "title" => "moving house" }).await?;
//! let (mut a, mut b) = memory_channel_pair(8);
//! let options = FastSyncOptions::default();
//! let (sent, received) = tokio::join!(send_snapshot(&old, &mut a, &options), receive_snapshot(&new, &mut b, &options));
//! assert_eq!(sent?.objects, received?.objects);
//! assert_eq!(old.digest("note").await?, new.digest("note").await?);
//! # Ok(()) }
//! ```

mod channel;
mod package;
pub(crate) mod receiver;
mod sender;
mod sent_versions;
mod shape;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use storex_core::Object;
use tokio::sync::watch;

pub use channel::{memory_channel_pair, Activity, ChannelError, FastSyncChannel, MemoryChannel};
pub use package::{
    encode_object, CollectionInfo, EncodedObjects, Package, MAX_BATCH_OBJECTS,
    MAX_CANCEL_REASON_BYTES, PROTOCOL_VERSION,
};
pub use receiver::{decline_offer, read_offer, receive_offer, receive_snapshot, Offer};
pub use sender::{send_snapshot, SnapshotSender};

/// What a fast-sync session can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FastSyncError {
    /// The channel failed or carried a bad frame.
    #[error("the fast-sync channel failed")]
    Channel(#[from] ChannelError),
    /// The peer sent something the protocol does not allow here.
    #[error("the peer broke the fast-sync protocol: {0}")]
    Protocol(String),
    /// The peer sent nothing, or took nothing this side sent (it stopped reading), for too
    /// long.
    #[error("the peer sent or took nothing for {0:?}")]
    Stalled(Duration),
    /// One side cancelled.
    #[error("the transfer was cancelled{}: {reason}", if *by_peer { " by the peer" } else { "" })]
    Cancelled {
        /// True when the other device cancelled.
        by_peer: bool,
        /// Why.
        reason: String,
        /// The peer ended it over a failure that may pass (its database busy or gone for a
        /// moment): the session can be resumed.
        resumable: bool,
    },
    /// A collection arrived incomplete or changed on the way.
    #[error("collection `{collection}` failed verification: {problem}")]
    Verification {
        /// The collection.
        collection: String,
        /// What did not match.
        problem: String,
    },
}

/// Where a transfer stands, for a progress bar.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The collection being transferred.
    pub collection: String,
    /// Objects of it transferred so far.
    pub objects_done: u64,
    /// Objects it has in all, as counted at the start. Fewer may travel (a filter leaves
    /// some out; the sender's log entries are folded into its objects' versions): then the
    /// collection's last event gives the number that did as both done and total.
    pub objects_total: u64,
    /// Bytes transferred so far by this run of the session: after a resume it counts from
    /// zero again (the objects count on from where the session was).
    pub bytes_done: u64,
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// A pre-send hook: return false to leave an object out (for instance local-only data).
pub type ObjectFilter = Arc<dyn Fn(&str, &Object) -> bool + Send + Sync>;

/// Cancels a transfer from outside (a UI button): the side holding it sends `Cancel`.
#[derive(Clone, Debug)]
pub struct CancelHandle {
    flag: Arc<watch::Sender<bool>>,
}

impl Default for CancelHandle {
    fn default() -> Self {
        CancelHandle {
            flag: Arc::new(watch::channel(false).0),
        }
    }
}

impl CancelHandle {
    /// A handle not cancelled yet.
    pub fn new() -> Self {
        CancelHandle::default()
    }

    /// Asks the transfer to stop.
    pub fn cancel(&self) {
        self.flag.send_replace(true);
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        *self.flag.borrow()
    }
}

/// Pauses and resumes a transfer from outside. The side holding it stops between batches and
/// tells the peer, which then waits without counting the pause as a stall.
#[derive(Clone, Debug)]
pub struct PauseHandle {
    flag: Arc<watch::Sender<bool>>,
}

impl Default for PauseHandle {
    fn default() -> Self {
        PauseHandle {
            flag: Arc::new(watch::channel(false).0),
        }
    }
}

impl PauseHandle {
    /// A handle not paused.
    pub fn new() -> Self {
        PauseHandle::default()
    }

    /// Pauses the transfer at the next batch.
    pub fn pause(&self) {
        self.flag.send_replace(true);
    }

    /// Resumes it.
    pub fn resume(&self) {
        self.flag.send_replace(false);
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        *self.flag.borrow()
    }

    /// Waits until resumed, or until `cancel` is cancelled (then returns false).
    async fn wait_resumed(&self, cancel: &CancelHandle) -> bool {
        let mut paused = self.flag.subscribe();
        let mut cancelled = cancel.flag.subscribe();
        tokio::select! {
            result = paused.wait_for(|p| !*p) => result.is_ok(),
            _ = cancelled.wait_for(|c| *c) => false,
        }
    }
}

/// How a transfer runs.
#[derive(Clone)]
#[non_exhaustive]
pub struct FastSyncOptions {
    /// Bytes per batch, about (a single larger object still travels alone).
    pub batch_bytes: usize,
    /// Batches sent before waiting for acknowledgements.
    pub window: usize,
    /// How long to wait for the peer (to send, or to take what this side sends) before giving
    /// up. On a channel that tells its [`Activity`] (TCP, WebRTC), a package under way is
    /// waited for as long as its bytes move: a large object on a slow link is not a stall.
    /// The wait for the peer's answer after the last byte was handed to the transport still
    /// counts whole: what the transport buffers drains meanwhile (a TCP socket's send buffer,
    /// a WebRTC data channel's, 4 MiB by default), then the peer applies the batch. Keep the
    /// timeout above that buffer's size over the link's rate.
    pub stall_timeout: Duration,
    /// The collections to send (all when `None`).
    pub collections: Option<Vec<String>>,
    /// Objects to leave out.
    pub filter: Option<ObjectFilter>,
    /// Called as objects travel.
    pub progress: Option<ProgressFn>,
    /// Cancels the transfer.
    pub cancel: CancelHandle,
    /// Pauses and resumes the transfer.
    pub pause: PauseHandle,
    /// Named values a sender hands to the receiver with its offer
    /// ([`receiver::Offer::properties`]), for the app on the other side (`storex migrate`
    /// sends the schema version SQLite keeps in `PRAGMA user_version`); storex reads none of
    /// them.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl fmt::Debug for FastSyncOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastSyncOptions")
            .field("batch_bytes", &self.batch_bytes)
            .field("window", &self.window)
            .field("stall_timeout", &self.stall_timeout)
            .field("collections", &self.collections)
            .field("filter", &self.filter.is_some())
            .field("progress", &self.progress.is_some())
            .field("cancel", &self.cancel)
            .field("pause", &self.pause)
            .field("properties", &self.properties)
            .finish()
    }
}

impl Default for FastSyncOptions {
    fn default() -> Self {
        FastSyncOptions {
            batch_bytes: 512 * 1024,
            window: 4,
            stall_timeout: Duration::from_secs(30),
            collections: None,
            filter: None,
            progress: None,
            cancel: CancelHandle::new(),
            pause: PauseHandle::new(),
            properties: std::collections::BTreeMap::new(),
        }
    }
}

impl FastSyncOptions {
    /// Sets the bytes per batch.
    pub fn with_batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes.max(1);
        self
    }

    /// Sets the window of unacknowledged batches.
    pub fn with_window(mut self, batches: usize) -> Self {
        self.window = batches.max(1);
        self
    }

    /// Sets the stall timeout.
    pub fn with_stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// Sends only these collections.
    pub fn with_collections<I, S>(mut self, collections: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.collections = Some(collections.into_iter().map(Into::into).collect());
        self
    }

    /// Leaves out the objects `keep` returns false for. A copy with a filter hands over no
    /// shared-log cursor (as one that leaves out a collection): the receiver's continuous
    /// sync pulls from its own cursor, or from the start, and so gets the changes to what was
    /// left out.
    pub fn with_filter(mut self, keep: ObjectFilter) -> Self {
        self.filter = Some(keep);
        self
    }

    /// Hands the receiver `value` under `name` with the offer (a sender's option; see
    /// [`FastSyncOptions::properties`]).
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// Reports progress to `progress`.
    pub fn with_progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Uses `cancel` to stop the transfer from outside.
    pub fn with_cancel(mut self, cancel: CancelHandle) -> Self {
        self.cancel = cancel;
        self
    }

    /// Uses `pause` to pause and resume the transfer from outside.
    pub fn with_pause(mut self, pause: PauseHandle) -> Self {
        self.pause = pause;
        self
    }
}

/// What a transfer moved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TransferReport {
    /// Objects sent or applied in this run (not counting batches skipped on resume).
    pub objects: u64,
    /// Bytes of batches in this run.
    pub bytes: u64,
    /// Batches in this run.
    pub batches: u64,
    /// The batch this run resumed after, if it resumed.
    pub resumed_after: Option<u64>,
    /// The shared-log cursor the sender offered (the receiver keeps its own when it is as far
    /// along, or when the sender's holds for other collections than it pulled).
    pub cursor: u64,
    /// On the sender: its changes not yet pushed to a shared log when the snapshot was taken.
    /// The receiver takes them in (folded into its versions) as shared, so they reach other
    /// devices only when the sender
    /// syncs: sync it before wiping it. (0 on the receiver.)
    pub unpushed: u64,
    /// On the sender: rows of its log (of applied changes) or of its versions index that do
    /// not read (damaged, or in a newer version's format), one message each naming the row.
    /// They were passed over: their objects' rows were sent, with the history that reads, so
    /// the receiver may take a later write to such an object for a newer one than it is.
    /// (Empty on the receiver.)
    pub damaged: Vec<String>,
    /// On the sender: payloads it pulled but could not open (its quarantine) that did not
    /// travel, because the receiver did not ask for them (a version from before). They lie
    /// behind the cursor handed over, so the receiver does not pull them either: the changes
    /// they carry reach it only through a copy from a device that opened them. (0 on the
    /// receiver. A copy that hands over no cursor, as one that leaves collections or objects
    /// out, leaves nothing behind: the receiver pulls those payloads itself.)
    pub quarantine_left: u64,
    /// On a receiver that merged (it had data of its own): the sender's changes it kept
    /// without applying, and why (a value outside a range its registry sets, a newer schema,
    /// an unknown collection). Like held entries pulled from a shared log, they are tried
    /// again at the next start of continuous sync, or once the app upgrades; until then this
    /// device does not hold the sender's state for those objects. (Empty on the sender.)
    pub held: Vec<(storex_core::uuid::Uuid, crate::HoldReason)>,
    /// How long it took.
    pub duration: Duration,
}

/// Which side of an [`exchange`] sends first (the two devices must choose opposite turns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Send this device's snapshot, then receive the other's.
    SendFirst,
    /// Receive the other's snapshot, then send this device's.
    ReceiveFirst,
}

/// What an [`exchange`] moved each way.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExchangeReport {
    /// What this device sent.
    pub sent: TransferReport,
    /// What it received.
    pub received: TransferReport,
}

/// Both directions in one session, so two devices merge their data: each sends its snapshot
/// and receives the other's. A device that already has data reconciles the other's log with
/// its own (objects both have end with the later writes, field by field), so both end
/// identical.
pub async fn exchange(
    device: &crate::SyncDevice,
    channel: &mut dyn FastSyncChannel,
    options: &FastSyncOptions,
    turn: Turn,
) -> crate::Result<ExchangeReport> {
    Ok(match turn {
        Turn::SendFirst => {
            let sent = send_snapshot(device, channel, options).await?;
            let received = receive_snapshot(device, channel, options).await?;
            ExchangeReport { sent, received }
        }
        Turn::ReceiveFirst => {
            let received = receive_snapshot(device, channel, options).await?;
            let sent = send_snapshot(device, channel, options).await?;
            ExchangeReport { sent, received }
        }
    })
}

/// Waits for the next package, or fails once nothing arrived for `options.stall_timeout` (see
/// [`FastSyncOptions::stall_timeout`] for what counts as arriving). A peer
/// that pauses repeats its `Pause` while paused (see [`honour_pause`]), so a pause is not a
/// stall but a peer that vanished during one is. Cancelling `options.cancel` ends the wait
/// (and tells the peer); the peer's `Cancel` ends the session.
async fn next_package(
    channel: &mut dyn FastSyncChannel,
    options: &FastSyncOptions,
    side: &str,
) -> crate::Result<Package> {
    let timeout = options.stall_timeout;
    let mut cancelled = options.cancel.flag.subscribe();
    loop {
        let cancel = async {
            // Only the outcome matters (the guard it returns must not live across an await).
            let _ = cancelled.wait_for(|c| *c).await;
        };
        let activity = channel.activity();
        let received = tokio::select! {
            received = unless_stalled(channel.recv(), activity, timeout) => Some(received),
            () = cancel => None,
        };
        let Some(received) = received else {
            return Err(cancel_here(channel, options, side).await);
        };
        let received = received.ok_or(FastSyncError::Stalled(timeout))?;
        if let Some(package) = from_peer(received)? {
            return Ok(package);
        }
    }
}

/// The next package: the first of those kept during a pause (see [`honour_pause`]), or else
/// the next the peer sends ([`next_package`]).
async fn next_kept_or_package(
    channel: &mut dyn FastSyncChannel,
    options: &FastSyncOptions,
    side: &str,
    kept: &mut Kept,
) -> crate::Result<Package> {
    match kept.pop_front() {
        Some(package) => Ok(package),
        None => next_package(channel, options, side).await,
    }
}

/// What the peer sent, as the session takes it: `None` for its `Pause` and `Resume` (which
/// only keep the session alive), an error for its `Cancel` or a closed channel.
fn from_peer(received: Result<Option<Package>, ChannelError>) -> crate::Result<Option<Package>> {
    match received {
        Err(e) => Err(FastSyncError::Channel(e).into()),
        Ok(None) => Err(FastSyncError::Channel(ChannelError::Closed).into()),
        Ok(Some(Package::Cancel { reason, resumable })) => Err(FastSyncError::Cancelled {
            by_peer: true,
            reason: package::bounded(reason, MAX_CANCEL_REASON_BYTES),
            resumable,
        }
        .into()),
        Ok(Some(Package::Pause | Package::Resume)) => Ok(None),
        Ok(Some(package)) => Ok(Some(package)),
    }
}

/// Sends `package`, or fails after `options.stall_timeout` if the peer takes nothing in that
/// time (a peer that stopped reading leaves a full channel, which holds the send).
async fn send_package(
    channel: &mut dyn FastSyncChannel,
    options: &FastSyncOptions,
    package: Package,
) -> crate::Result<()> {
    let activity = channel.activity();
    match unless_stalled(channel.send(package), activity, options.stall_timeout).await {
        Some(sent) => sent.map_err(|e| FastSyncError::Channel(e).into()),
        None => Err(FastSyncError::Stalled(options.stall_timeout).into()),
    }
}

/// Runs `work` (a package on its way in or out) to its end, or gives up (`None`) once the
/// channel moved no byte for `timeout`; with no `activity` to tell, once `timeout` passed.
/// The first look comes `timeout` after the start, so time spent before (applying a batch)
/// does not count.
async fn unless_stalled<T>(
    work: impl std::future::Future<Output = T>,
    activity: Option<Activity>,
    timeout: Duration,
) -> Option<T> {
    let Some(activity) = activity else {
        return tokio::time::timeout(timeout, work).await.ok();
    };
    tokio::pin!(work);
    let mut wait = timeout;
    loop {
        // A timeout too long for the clock is none.
        let Some(look_at) = tokio::time::Instant::now().checked_add(wait) else {
            return Some(work.await);
        };
        tokio::select! {
            // Work done by the deadline is done.
            biased;
            done = &mut work => return Some(done),
            () = tokio::time::sleep_until(look_at) => {
                let idle = activity.idle();
                if idle >= timeout {
                    return None;
                }
                wait = timeout - idle;
            }
        }
    }
}

/// Ends the session from this side after a cancel: tells the peer (if it still listens) and
/// returns the error to report.
async fn cancel_here(
    channel: &mut dyn FastSyncChannel,
    options: &FastSyncOptions,
    side: &str,
) -> crate::Error {
    end_session(channel, options, format!("cancelled on the {side} device")).await
}

/// Ends the session from this side for `reason`, which the peer reports: tells the peer (if
/// it still listens) and returns the error to report here.
async fn end_session(
    channel: &mut dyn FastSyncChannel,
    options: &FastSyncOptions,
    reason: String,
) -> crate::Error {
    let reason = package::bounded(reason, MAX_CANCEL_REASON_BYTES);
    let cancel = Package::Cancel {
        reason: reason.clone(),
        resumable: false,
    };
    let _ = send_package(channel, options, cancel).await;
    FastSyncError::Cancelled {
        by_peer: false,
        reason,
        resumable: false,
    }
    .into()
}

/// Ends the session after a failure of this side's own (its database, data of the peer's it
/// refuses, or a package it cannot take): tells the peer why, if it still listens, so that
/// the other device reports the cause rather than a closed channel or a stall; returns
/// `error`. A refusal is told as its problem. Not for failures the peer knows of already or
/// that leave nothing to tell it through: a closed or failed channel, a stall, a cancel.
async fn tell_peer(
    channel: &mut dyn FastSyncChannel,
    options: &FastSyncOptions,
    side: &str,
    error: crate::Error,
) -> crate::Error {
    let reason = match &error {
        // A frame this side cannot take (garbage, too large, another protocol version)
        // leaves a channel the reason can still go through: a peer of another version
        // cannot read it either, and reports the versions.
        crate::Error::FastSync(
            FastSyncError::Channel(ChannelError::Closed | ChannelError::Transport(_))
            | FastSyncError::Stalled(_)
            | FastSyncError::Cancelled { .. },
        ) => return error,
        crate::Error::FastSync(FastSyncError::Verification { problem, .. }) => problem.clone(),
        other => format!(
            "the {side} device failed: {}",
            storex_core::error_chain(other)
        ),
    };
    // A failure that may pass here (a busy database) leaves a session the peer may resume.
    let resumable = error.is_transient();
    let cancel = Package::Cancel {
        reason: package::bounded(reason, MAX_CANCEL_REASON_BYTES),
        resumable,
    };
    if send_package(channel, options, cancel).await.is_ok() {
        drain_until_quiet(channel).await;
    }
    error
}

/// How long [`drain_until_quiet`] waits for the peer's next package before taking it as
/// quiet, and how long it drains at most.
const DRAIN_QUIET: Duration = Duration::from_millis(200);
const DRAIN_MAX: Duration = Duration::from_secs(5);

/// Reads and drops what the peer still sends, until it closes the channel or sends nothing
/// for [`DRAIN_QUIET`] (at most [`DRAIN_MAX`]): a peer blocked sending into a full channel
/// (this side stopped reading when it failed) gets to read the cancel just sent, instead of
/// taking this side for stalled. On a channel that marks its [`Activity`], a package whose
/// bytes still arrive (a large batch on a slow link) is not quiet.
async fn drain_until_quiet(channel: &mut dyn FastSyncChannel) {
    let activity = channel.activity();
    let draining = async {
        loop {
            match tokio::time::timeout(DRAIN_QUIET, channel.recv()).await {
                Ok(Ok(Some(_))) => {}
                // Closed, or failed: nothing more to read.
                Ok(Ok(None) | Err(_)) => return,
                Err(_waited) => {
                    if activity.as_ref().is_none_or(|a| a.idle() >= DRAIN_QUIET) {
                        return;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_MAX, draining).await;
}

/// How often a side that sends nothing for a while (paused, or reading past what it need
/// not send) shows the peer it is still there: every third of its stall timeout, and at
/// least every second, since the peer's own timeout may be the shorter.
pub(crate) fn sign_of_life_interval(options: &FastSyncOptions) -> Duration {
    (options.stall_timeout / 3).min(Duration::from_secs(1))
}

/// Holds the transfer while `options.pause` is set: tells the peer (again at every
/// [`sign_of_life_interval`], so it does not take the pause for a stall), waits, then tells
/// it to go on.
///
/// What the peer sends meanwhile is read and kept in `kept`, in order, for after the pause: a
/// side that stopped reading would leave the peer's send waiting on a full channel, which
/// the peer would take for a stall. (A sender goes on until its window of unacknowledged
/// batches is full, then waits for acknowledgements, where it sees the pause.)
async fn honour_pause(
    channel: &mut dyn FastSyncChannel,
    options: &FastSyncOptions,
    side: &str,
    kept: &mut Kept,
) -> crate::Result<()> {
    if !options.pause.is_paused() {
        return Ok(());
    }
    /// What ended a wait during the pause.
    enum Woken {
        Resumed,
        Cancelled,
        Heartbeat,
        Received(Result<Option<Package>, ChannelError>),
    }
    // Repeated while paused, so the peer tells a pause from a vanished device.
    let heartbeat = sign_of_life_interval(options);
    loop {
        send_package(channel, options, Package::Pause).await?;
        let next_heartbeat = tokio::time::sleep(heartbeat);
        tokio::pin!(next_heartbeat);
        loop {
            let woken = tokio::select! {
                resumed = options.pause.wait_resumed(&options.cancel) => {
                    if resumed { Woken::Resumed } else { Woken::Cancelled }
                }
                () = &mut next_heartbeat => Woken::Heartbeat,
                received = channel.recv() => Woken::Received(received),
            };
            match woken {
                Woken::Resumed => return send_package(channel, options, Package::Resume).await,
                Woken::Cancelled => return Err(cancel_here(channel, options, side).await),
                Woken::Heartbeat => break,
                Woken::Received(received) => {
                    if let Some(package) = from_peer(received)? {
                        kept.push(package)?;
                    }
                }
            }
        }
    }
}

/// Packages a paused side keeps of what its peer sends meanwhile, at most: a sender stops at
/// its window of unacknowledged batches, and a receiver's acknowledgements stop with them.
const MAX_KEPT_PACKAGES: usize = 1_024;

/// Bytes a paused side keeps, at most (every package counted by its encoding).
const MAX_KEPT_BYTES: usize = 256 * 1024 * 1024;

/// What the peer sent during a pause, kept in order for after it, and how many bytes that is.
#[derive(Debug)]
pub(crate) struct Kept {
    /// The packages, each with its size as counted when it was kept.
    packages: std::collections::VecDeque<(Package, usize)>,
    bytes: usize,
    /// The most packages and bytes kept.
    limits: (usize, usize),
}

impl Default for Kept {
    fn default() -> Self {
        Kept::with_limits(MAX_KEPT_PACKAGES, MAX_KEPT_BYTES)
    }
}

impl Kept {
    fn with_limits(packages: usize, bytes: usize) -> Self {
        Kept {
            packages: std::collections::VecDeque::new(),
            bytes: 0,
            limits: (packages, bytes),
        }
    }

    /// The size of `package` as it travelled, about: a batch's objects (already encoded), the
    /// encoding of anything else (small, unless a broken or hostile peer made it large).
    fn size_of(package: &Package) -> usize {
        match package {
            Package::Batch {
                collection,
                objects,
                ..
            } => collection.len() + objects.bytes(),
            other => other.encode().len(),
        }
    }

    /// Keeps `package`; ends the session when the peer sent more during a pause than a peer
    /// that honours the protocol can (so that a broken or hostile one cannot fill this
    /// side's memory).
    fn push(&mut self, package: Package) -> crate::Result<()> {
        let size = Self::size_of(&package);
        self.bytes += size;
        self.packages.push_back((package, size));
        if self.packages.len() > self.limits.0 || self.bytes > self.limits.1 {
            return Err(FastSyncError::Protocol(format!(
                "the peer sent {} packages ({} bytes) during a pause, more than its window \
                 allows",
                self.packages.len(),
                self.bytes
            ))
            .into());
        }
        Ok(())
    }

    /// The first package kept, if any.
    pub(crate) fn pop_front(&mut self) -> Option<Package> {
        let (package, size) = self.packages.pop_front()?;
        self.bytes -= size;
        Some(package)
    }
}

/// How many rows the next page reads: about `budget` bytes of rows of `average` bytes, at
/// least one and at most `most`. Below `most` it is rounded down to a power of two, so that
/// pages of rows of about the same size ask with the same limit: a statement the database
/// has prepared already (on SQLite a limit is part of the statement's text).
fn page_limit(budget: u64, average: u64, most: u64) -> u64 {
    let rows = (budget / average.max(1)).clamp(1, most.max(1));
    if rows == most {
        rows
    } else {
        1 << rows.ilog2()
    }
}

/// Running SHA-256 over a collection's batches: `H' = sha256(H || sha256(batch))`, where a
/// batch hashes the canonical encodings of its objects in order.
fn chain_checksum(previous: &str, encoded: &EncodedObjects) -> String {
    use sha2::{Digest as _, Sha256};
    let mut batch = Sha256::new();
    for object in encoded.iter() {
        batch.update(object);
    }
    let mut hash = Sha256::new();
    hash.update(previous.as_bytes());
    hash.update(batch.finalize());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The quarantine (payloads pulled but not opened) as a collection sent last, with `objects`
/// rows (see `Package::Hello`'s `quarantined`).
fn quarantine_info(device: &crate::SyncDevice, objects: u64) -> crate::Result<CollectionInfo> {
    let name = crate::entry::QUARANTINE_COLLECTION;
    let def = device.storage().registry().collection(name)?;
    Ok(CollectionInfo {
        name: name.to_owned(),
        schema_version: def.schema_version(),
        objects,
    })
}

/// The value of sync's state row `key` (the shared-log cursor, the subscription's
/// fingerprint) as `tx` sees it, if there is one.
pub(crate) async fn state_value(
    tx: &storex_core::StorageTransaction,
    key: &str,
) -> crate::Result<Option<i64>> {
    use storex_core::{Filter, Operation, Origin, Query, Value};
    let query = Query::new(Filter::all().eq("key", key));
    let op = Operation::find_one(crate::entry::STATE_COLLECTION, query);
    Ok(tx
        .execute_as(op, Origin::Sync)
        .await?
        .into_found()?
        .and_then(|row| row.get("value").and_then(Value::as_int)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::future::BoxFuture;
    use tokio::time::Instant;

    use super::{drain_until_quiet, page_limit, Activity, ChannelError, FastSyncChannel, Kept};
    use super::{Package, DRAIN_QUIET};

    /// A channel whose one package arrives slowly: its bytes move (its activity is marked)
    /// the whole time, the package is whole at `whole_at`; then the peer closes.
    #[derive(Debug)]
    struct SlowPackage {
        whole_at: Instant,
        activity: Activity,
        received: usize,
    }

    impl FastSyncChannel for SlowPackage {
        fn send(&mut self, _: Package) -> BoxFuture<'_, Result<(), ChannelError>> {
            Box::pin(async { Ok(()) })
        }

        fn recv(&mut self) -> BoxFuture<'_, Result<Option<Package>, ChannelError>> {
            Box::pin(async move {
                if self.received > 0 {
                    return Ok(None);
                }
                tokio::time::sleep_until(self.whole_at).await;
                self.received += 1;
                Ok(Some(Package::Pause))
            })
        }

        fn activity(&self) -> Option<Activity> {
            Some(self.activity.clone())
        }
    }

    #[tokio::test]
    async fn draining_waits_for_a_package_whose_bytes_still_arrive() {
        let activity = Activity::new();
        let mut channel = SlowPackage {
            whole_at: Instant::now() + DRAIN_QUIET * 3,
            activity: activity.clone(),
            received: 0,
        };
        let marking = tokio::spawn(async move {
            loop {
                activity.mark();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        drain_until_quiet(&mut channel).await;
        marking.abort();
        assert_eq!(channel.received, 1, "the slow package was read to its end");
    }

    #[test]
    fn every_package_kept_during_a_pause_counts_by_its_size() {
        let done = |collection: String| Package::CollectionDone {
            collection,
            objects: 0,
            checksum: String::new(),
        };
        let mut kept = Kept::with_limits(10, 10_000);
        kept.push(done("note".into())).expect("a small package");
        // Not a batch, but large: counted all the same (it once counted as nothing).
        let err = kept
            .push(done("x".repeat(20_000)))
            .expect_err("a package past the byte limit");
        let err = storex_core::error_chain(&err);
        assert!(err.contains("during a pause"), "{err}");
        // A batch of nothing under a long collection name.
        let mut kept = Kept::with_limits(10, 10_000);
        let batch = Package::Batch {
            seq: 1,
            collection: "z".repeat(20_000),
            objects: crate::fast_sync::EncodedObjects::encode(&[]),
        };
        assert!(
            kept.push(batch).is_err(),
            "a batch's collection name counts"
        );
        // What is taken out no longer counts.
        let mut kept = Kept::with_limits(10, 10_000);
        for _ in 0..3 {
            kept.push(done("y".repeat(4_000)))
                .expect("within the limit");
            assert!(kept.pop_front().is_some());
        }
        assert_eq!(kept.bytes, 0);
    }

    #[test]
    fn page_limits_are_powers_of_two_below_the_most() {
        // Small rows: the most.
        assert_eq!(page_limit(8 << 20, 100, 2_000), 2_000);
        // About the same size: the same limit.
        assert_eq!(page_limit(8 << 20, 5_000, 2_000), 1_024);
        assert_eq!(page_limit(8 << 20, 5_200, 2_000), 1_024);
        assert_eq!(page_limit(8 << 20, 9_000, 2_000), 512);
        // Rows bigger than the budget: one at a time; an empty average counts as a byte.
        assert_eq!(page_limit(8 << 20, 64 << 20, 2_000), 1);
        assert_eq!(page_limit(8 << 20, 0, 2_000), 2_000);
    }
}
