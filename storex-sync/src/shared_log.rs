//! [`SharedSyncLog`]: where the devices of a user publish their changes and fetch the others'.
//!
//! Devices register with [`SharedSyncLog::create_device`], [`push`](SharedSyncLog::push)
//! entries and [`pull`](SharedSyncLog::pull) what the others pushed. Positions are cursors
//! the shared log assigns, strictly increasing per user in commit order, never device clocks:
//! a reader that has seen cursor `c` has seen every entry at or below `c`, so nothing uploaded
//! late is skipped. Push is idempotent by entry id, so a retry after a lost reply stores
//! nothing twice. A device never receives its own entries. Once every device of a user has
//! [`ack`](SharedSyncLog::ack)ed a cursor, [`compact`](SharedSyncLog::compact) may drop the
//! entries up to it; a device whose cursor is older than that gets
//! [`SharedLogError::CursorCompacted`] and must run an initial sync. A cursor past the log's
//! end (the log's database was restored from a backup, say) gets
//! [`SharedLogError::CursorAhead`]: continuous sync then pulls again from the compaction
//! mark, so entries pushed since the restore are not skipped (it asks before it pushes too;
//! a log whose end has passed the device's cursor again, through others' pushes, cannot
//! tell).
//!
//! Entries travel as [`SharedEntry`]: routing fields in the clear (id, device, topic) and an
//! opaque payload, which the engine may encrypt; the topic (the collection, or a keyed hash of
//! it) lets a device pull only the collections it subscribes to.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use storex_core::uuid::Uuid;
use storex_core::{BoxError, BoxFuture};

use crate::hlc::DeviceId;

/// An entry as the shared log stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedEntry {
    /// The entry's id; pushing the same id again stores nothing.
    pub id: Uuid,
    /// The device that pushed it.
    pub device: DeviceId,
    /// Routing tag for partial replication: the collection, or a keyed hash of it.
    pub topic: String,
    /// The serialized (possibly encrypted) entry.
    pub payload: Vec<u8>,
}

/// Shows the payload's size, not its bytes: they may be megabytes of the user's data, and
/// errors that carry entries ([`SharedLogError::EntryRefused`]) end up in logs.
impl fmt::Debug for SharedEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedEntry")
            .field("id", &self.id)
            .field("device", &self.device)
            .field("topic", &self.topic)
            .field("payload_bytes", &self.payload.len())
            .finish()
    }
}

/// Cuts `items` into pushes, in order, each of at most `max_items` items and at most
/// `max_bytes` bytes by `size` (an item larger than `max_bytes` travels alone). Shared by the
/// engine, which cuts its pushes by payload size, and by shared-log clients with request
/// limits of their own.
pub fn split_into_pushes<T>(
    items: impl IntoIterator<Item = T>,
    max_items: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut pushes = Vec::new();
    let mut push = Vec::new();
    let mut bytes = 0;
    for item in items {
        let item_bytes = size(&item);
        if !push.is_empty() && (push.len() >= max_items || bytes + item_bytes > max_bytes) {
            pushes.push(std::mem::take(&mut push));
            bytes = 0;
        }
        bytes += item_bytes;
        push.push(item);
    }
    if !push.is_empty() {
        pushes.push(push);
    }
    pushes
}

/// An entry with the position the shared log gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledEntry {
    /// Its cursor.
    pub cursor: u64,
    /// The entry.
    pub entry: SharedEntry,
}

/// An entry the shared log holds but cannot read back: its row or document is damaged (an id
/// or device that is not a UUID, a payload that is not bytes). A pull passes over it, so that
/// it does not stop every later pull, and names it in [`Pull::unreadable`]; continuous sync
/// reports it ([`crate::SyncReport::unreadable`]) and goes on past it, unless most of a page
/// does not read (see [`crate::ContinuousSync::sync_once`]). Nobody can read it, so every
/// device passes over it alike: the change it carried reaches no other device (the device
/// that pushed it keeps it), and once every device has passed it, compaction drops it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadableEntry {
    /// Its position in the log.
    pub cursor: u64,
    /// What does not read (at most [`UnreadableEntry::MAX_PROBLEM_BYTES`] bytes).
    pub problem: String,
}

impl UnreadableEntry {
    /// Longest `problem` kept, in bytes: a damaged value quoted in it is cut there.
    pub const MAX_PROBLEM_BYTES: usize = 300;

    /// The entry at `cursor`, with `problem` cut to [`UnreadableEntry::MAX_PROBLEM_BYTES`].
    pub fn new(cursor: u64, problem: impl Into<String>) -> Self {
        UnreadableEntry {
            cursor,
            problem: crate::text::cut(problem.into(), Self::MAX_PROBLEM_BYTES, "…"),
        }
    }
}

/// One page of a pull.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pull {
    /// Entries of other devices, in cursor order.
    pub entries: Vec<PulledEntry>,
    /// Entries within the page that the log could not read back, passed over (in cursor
    /// order; usually none).
    pub unreadable: Vec<UnreadableEntry>,
    /// Where the next pull starts (past every entry this page looked at, own ones too).
    pub next_cursor: u64,
    /// True when more entries may follow right away.
    pub more: bool,
}

/// A device registered with a shared log, and how far it has acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device.
    pub device: DeviceId,
    /// The last cursor it acknowledged (0: none).
    pub acked: u64,
}

/// What a shared log refuses or fails with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SharedLogError {
    /// The device is not registered (or was revoked).
    #[error("device {device} is not registered with the shared log")]
    UnknownDevice {
        /// The device.
        device: DeviceId,
    },
    /// The cursor is older than the last compaction: entries the device never saw are gone.
    #[error("cursor {cursor} is older than the compaction up to {compacted_through}; run an initial sync")]
    CursorCompacted {
        /// The device's cursor.
        cursor: u64,
        /// Entries up to this cursor were dropped.
        compacted_through: u64,
    },
    /// The cursor is past the end of the log: the log lost entries this device had pulled
    /// (its database restored from a backup, say), and entries pushed from now on get
    /// cursors this device has passed. The device pulls again from `compacted_through`
    /// (everything up to the log's end it had seen already; entries are recognised by id).
    #[error("cursor {cursor} is past the end of the shared log ({log_end}); the log lost entries (restored from a backup?): pull again from {compacted_through}")]
    CursorAhead {
        /// The device's cursor.
        cursor: u64,
        /// The greatest cursor the log has given.
        log_end: u64,
        /// Entries up to this cursor were compacted away (0: none).
        compacted_through: u64,
    },
    /// A device tried to push entries on behalf of another device.
    #[error("device {device} cannot push entries of device {other}")]
    WrongDevice {
        /// The pushing device.
        device: DeviceId,
        /// The device named in an entry.
        other: DeviceId,
    },
    /// The shared log refused the credentials (a wrong, missing or revoked user token).
    #[error("the shared log refused the credentials: {problem}")]
    Unauthorized {
        /// Why.
        problem: String,
    },
    /// This device id cannot be registered: another user's device has it, or it was
    /// revoked. An app registering an id it kept should pick a new one.
    #[error("device {device} cannot be registered: {problem}")]
    DeviceRefused {
        /// The device.
        device: DeviceId,
        /// Why.
        problem: String,
    },
    /// The request was malformed or too large.
    #[error("invalid request: {problem}")]
    Invalid {
        /// What is wrong.
        problem: String,
    },
    /// The log refused one entry of a push, and only that one: too large for a proxy on the
    /// way, say, or for what the link carries in time. The entries of the push not in
    /// `unsent`, other than `id`, were stored. The refused entry may have been stored all
    /// the same (a request that timed out); pushed again, it is recognised by its id while
    /// the log keeps it. The sync engine reports it, leaves the entry unshared (a later sync
    /// tries it again) and goes on with the others, so one entry does not hold back the rest
    /// of a device's changes, or its pulls.
    #[error("the shared log refused entry {id}: {problem}")]
    EntryRefused {
        /// The refused entry.
        id: Uuid,
        /// Why.
        problem: String,
        /// The entries of the push that were not sent (after the refused one), given back.
        unsent: Vec<SharedEntry>,
    },
    /// The shared log could not be reached or failed; retrying later may work.
    #[error("shared log `{log}` is unavailable")]
    Unavailable {
        /// The log's name.
        log: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
}

impl SharedLogError {
    /// True when retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SharedLogError::Unavailable { .. })
    }
}

/// The result of shared-log calls.
pub type SharedResult<T> = std::result::Result<T, SharedLogError>;

/// Where the devices of a user exchange sync entries. Object-safe; see the module docs for
/// the contract every implementation keeps (and `storex_test::shared_log_suite` checks).
pub trait SharedSyncLog: Send + Sync + fmt::Debug + 'static {
    /// Stable short name for errors and logs, e.g. `"memory"` or `"sql-sqlite"`.
    fn name(&self) -> &'static str;

    /// The largest entry payload this log can store, if it has a limit of its own (e.g. a
    /// document size limit). The sync engine refuses (and reports) larger entries before
    /// pushing, so they never fail a whole push. `None` (the default): no limit beyond the
    /// engine's own.
    fn max_entry_bytes(&self) -> Option<usize> {
        None
    }

    /// Credentials the log issued to `device` that the app must keep for later runs (e.g. a
    /// sync server's device token), or `None` when this log has none.
    fn device_credentials(&self, _device: DeviceId) -> Option<String> {
        None
    }

    /// Gives back credentials of `device` kept from an earlier run (see
    /// [`SharedSyncLog::device_credentials`]). Logs without credentials ignore it.
    fn restore_device_credentials(&self, _device: DeviceId, _credentials: &str) {}

    /// Live updates: a future that resolves once the other devices of `device`'s user have
    /// entries above `after` (in `topics`, when set) — `Ok(true)` — or after about `wait` with
    /// nothing new — `Ok(false)`. `None` when this log cannot tell (the default); the engine
    /// then relies on its timer.
    fn live_wait<'a>(
        &'a self,
        _device: DeviceId,
        _after: u64,
        _wait: Duration,
        _topics: Option<&'a [String]>,
    ) -> Option<BoxFuture<'a, SharedResult<bool>>> {
        None
    }

    /// Registers `device`, an id the app chose (and stored) first, as a device of `user`.
    ///
    /// Idempotent: registering the same device of the same user again succeeds and keeps its
    /// position (a log that issues credentials issues new ones, which replace the old). An
    /// app that lost the answer, or stopped before storing what came back, registers the
    /// same id again, instead of leaving behind a device that never acknowledges anything
    /// and so holds back compaction for good. A device of another user, or a revoked one, is
    /// refused with [`SharedLogError::DeviceRefused`]. A device removed from the log (by
    /// `SqlSharedLog::remove_device`, say) comes back, at position 0, if registered again.
    fn register_device<'a>(
        &'a self,
        user: &'a str,
        device: DeviceId,
    ) -> BoxFuture<'a, SharedResult<()>>;

    /// Registers a new device of `user` under a fresh id. If the answer can be lost, prefer
    /// storing an id first and calling [`SharedSyncLog::register_device`].
    fn create_device<'a>(&'a self, user: &'a str) -> BoxFuture<'a, SharedResult<DeviceId>> {
        Box::pin(async move {
            let device = DeviceId::random();
            self.register_device(user, device).await?;
            Ok(device)
        })
    }

    /// The devices of `device`'s user, with their positions.
    fn devices(&self, device: DeviceId) -> BoxFuture<'_, SharedResult<Vec<DeviceInfo>>>;

    /// Stores `entries` of `device` (all must name it), ignoring ids already stored, and
    /// returns the greatest cursor assigned (0 when nothing was new). Ids are remembered
    /// while their entries are kept: an entry pushed again after a compaction dropped it is
    /// stored again. (Continuous sync does so only for an entry refused after a timeout that
    /// the log stored all the same: a compaction needs the pushing device's ack too, and it
    /// acks only what it pulled past, after a push that succeeded or refused single entries.
    /// Stored twice, the entry is downloaded twice, and recognised by the devices.) A log
    /// that cannot store one entry but can store the others may answer
    /// [`SharedLogError::EntryRefused`], giving back what it did not send.
    fn push(&self, device: DeviceId, entries: Vec<SharedEntry>)
        -> BoxFuture<'_, SharedResult<u64>>;

    /// Up to `limit` entries of the other devices of `device`'s user with cursors above
    /// `after`, in cursor order; only the given topics when `topics` is set. A limit of 0
    /// takes nothing: no entries, and `next_cursor` stays `after`. An entry of the page that
    /// the log holds but cannot read back (a damaged row) is named in [`Pull::unreadable`]
    /// instead, and `next_cursor` goes past it like past the others; one whose cursor does
    /// not read fails the pull.
    fn pull<'a>(
        &'a self,
        device: DeviceId,
        after: u64,
        limit: usize,
        topics: Option<&'a [String]>,
    ) -> BoxFuture<'a, SharedResult<Pull>>;

    /// Records that `device` has integrated everything up to `cursor`.
    fn ack(&self, device: DeviceId, cursor: u64) -> BoxFuture<'_, SharedResult<()>>;

    /// Drops the entries of `user` that every one of its devices has acknowledged; returns
    /// how many were dropped.
    fn compact<'a>(&'a self, user: &'a str) -> BoxFuture<'a, SharedResult<u64>>;
}

#[derive(Debug, Default)]
struct UserLog {
    next_cursor: u64,
    compacted_through: u64,
    entries: BTreeMap<u64, SharedEntry>,
    ids: HashSet<Uuid>,
}

#[derive(Debug, Default)]
struct MemoryState {
    users: HashMap<String, UserLog>,
    devices: HashMap<DeviceId, (String, u64)>,
}

/// A [`SharedSyncLog`] in memory, for tests and single-process setups.
#[derive(Debug, Default)]
pub struct MemorySharedLog {
    state: Mutex<MemoryState>,
}

impl MemorySharedLog {
    /// An empty log.
    pub fn new() -> Self {
        MemorySharedLog::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemoryState) -> SharedResult<T>) -> SharedResult<T> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut state)
    }
}

/// Refuses an empty user name, or one holding a NUL character (PostgreSQL cannot store one
/// as text, so every log refuses it alike, as bad input rather than an outage).
pub fn check_user_name(user: &str) -> SharedResult<()> {
    if user.is_empty() {
        return Err(SharedLogError::Invalid {
            problem: "a user name cannot be empty".into(),
        });
    }
    if user.contains('\0') {
        return Err(SharedLogError::Invalid {
            problem: format!("the user name {user:?} holds a NUL character"),
        });
    }
    Ok(())
}

/// Refuses a topic holding a NUL character, of an entry pushed or a pull's topics, as
/// [`check_user_name`] does a user name.
pub fn check_topics<'t>(topics: impl IntoIterator<Item = &'t str>) -> SharedResult<()> {
    match topics.into_iter().find(|topic| topic.contains('\0')) {
        Some(topic) => Err(SharedLogError::Invalid {
            problem: format!("the topic {topic:?} holds a NUL character"),
        }),
        None => Ok(()),
    }
}

/// The error for registering `device`, which another user registered first.
pub fn device_of_another_user(device: DeviceId) -> SharedLogError {
    SharedLogError::DeviceRefused {
        device,
        problem: "another user registered it".into(),
    }
}

fn user_of(state: &MemoryState, device: DeviceId) -> SharedResult<String> {
    state
        .devices
        .get(&device)
        .map(|(user, _)| user.clone())
        .ok_or(SharedLogError::UnknownDevice { device })
}

impl SharedSyncLog for MemorySharedLog {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn register_device<'a>(
        &'a self,
        user: &'a str,
        device: DeviceId,
    ) -> BoxFuture<'a, SharedResult<()>> {
        Box::pin(async move {
            self.with(|state| {
                check_user_name(user)?;
                match state.devices.get(&device) {
                    Some((owner, _)) if owner != user => {
                        return Err(device_of_another_user(device));
                    }
                    Some(_) => {}
                    None => {
                        state.devices.insert(device, (user.to_owned(), 0));
                    }
                }
                state.users.entry(user.to_owned()).or_default();
                Ok(())
            })
        })
    }

    fn devices(&self, device: DeviceId) -> BoxFuture<'_, SharedResult<Vec<DeviceInfo>>> {
        Box::pin(async move {
            self.with(|state| {
                let user = user_of(state, device)?;
                let mut devices: Vec<DeviceInfo> = state
                    .devices
                    .iter()
                    .filter(|(_, (u, _))| *u == user)
                    .map(|(d, (_, acked))| DeviceInfo {
                        device: *d,
                        acked: *acked,
                    })
                    .collect();
                devices.sort_by_key(|d| d.device);
                Ok(devices)
            })
        })
    }

    fn push(
        &self,
        device: DeviceId,
        entries: Vec<SharedEntry>,
    ) -> BoxFuture<'_, SharedResult<u64>> {
        Box::pin(async move {
            self.with(|state| {
                let user = user_of(state, device)?;
                if let Some(other) = entries.iter().find(|e| e.device != device) {
                    return Err(SharedLogError::WrongDevice {
                        device,
                        other: other.device,
                    });
                }
                check_topics(entries.iter().map(|e| e.topic.as_str()))?;
                let log = state.users.entry(user).or_default();
                let mut last = 0;
                for entry in entries {
                    if log.ids.insert(entry.id) {
                        log.next_cursor += 1;
                        last = log.next_cursor;
                        log.entries.insert(last, entry);
                    }
                }
                Ok(last)
            })
        })
    }

    fn pull<'a>(
        &'a self,
        device: DeviceId,
        after: u64,
        limit: usize,
        topics: Option<&'a [String]>,
    ) -> BoxFuture<'a, SharedResult<Pull>> {
        Box::pin(async move {
            self.with(|state| {
                let user = user_of(state, device)?;
                check_topics(topics.into_iter().flatten().map(String::as_str))?;
                let log = state.users.entry(user).or_default();
                if after < log.compacted_through {
                    return Err(SharedLogError::CursorCompacted {
                        cursor: after,
                        compacted_through: log.compacted_through,
                    });
                }
                if after > log.next_cursor {
                    return Err(SharedLogError::CursorAhead {
                        cursor: after,
                        log_end: log.next_cursor,
                        compacted_through: log.compacted_through,
                    });
                }
                let mut pull = Pull {
                    next_cursor: after,
                    ..Pull::default()
                };
                let wanted = |e: &SharedEntry| topics.is_none_or(|t| t.contains(&e.topic));
                for (scanned, (cursor, entry)) in log.entries.range(after + 1..).enumerate() {
                    if scanned == limit {
                        pull.more = true;
                        break;
                    }
                    pull.next_cursor = *cursor;
                    if entry.device != device && wanted(entry) {
                        pull.entries.push(PulledEntry {
                            cursor: *cursor,
                            entry: entry.clone(),
                        });
                    }
                }
                Ok(pull)
            })
        })
    }

    fn ack(&self, device: DeviceId, cursor: u64) -> BoxFuture<'_, SharedResult<()>> {
        Box::pin(async move {
            self.with(|state| {
                let user = user_of(state, device)?;
                // An ack beyond the log's end is kept at the end: it cannot compact entries
                // that are pushed later.
                let end = state.users.get(&user).map_or(0, |log| log.next_cursor);
                if let Some((_, acked)) = state.devices.get_mut(&device) {
                    *acked = (*acked).max(cursor.min(end));
                }
                Ok(())
            })
        })
    }

    fn compact<'a>(&'a self, user: &'a str) -> BoxFuture<'a, SharedResult<u64>> {
        Box::pin(async move {
            self.with(|state| {
                let through = state
                    .devices
                    .values()
                    .filter(|(u, _)| u == user)
                    .map(|(_, acked)| *acked)
                    .min()
                    .unwrap_or(0);
                let Some(log) = state.users.get_mut(user) else {
                    return Ok(0);
                };
                let through = through.min(log.next_cursor);
                let keep = log.entries.split_off(&(through + 1));
                let dropped = std::mem::replace(&mut log.entries, keep);
                for entry in dropped.values() {
                    log.ids.remove(&entry.id);
                }
                log.compacted_through = log.compacted_through.max(through);
                Ok(dropped.len() as u64)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{split_into_pushes, UnreadableEntry};

    #[test]
    fn an_unreadable_entrys_problem_is_cut_at_a_character() {
        let short = UnreadableEntry::new(4, "its id does not read");
        assert_eq!(short.problem, "its id does not read");
        let long = UnreadableEntry::new(4, "é".repeat(1_000));
        assert!(long.problem.len() <= UnreadableEntry::MAX_PROBLEM_BYTES);
        assert!(long.problem.ends_with('…'), "{}", long.problem);
        assert!(long.problem.len() > UnreadableEntry::MAX_PROBLEM_BYTES - 8);
    }

    #[test]
    fn pushes_keep_order_and_both_limits_and_an_oversized_item_goes_alone() {
        let sizes = vec![3, 3, 3, 9, 1, 1, 1, 1];
        let pushes = split_into_pushes(sizes, 3, 6, |s| *s);
        assert_eq!(
            pushes,
            vec![vec![3, 3], vec![3], vec![9], vec![1, 1, 1], vec![1]]
        );
        assert!(split_into_pushes(Vec::<usize>::new(), 3, 6, |s| *s).is_empty());
    }
}
