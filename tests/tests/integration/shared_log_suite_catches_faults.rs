//! The shared-log suite is only worth something if it fails broken logs. One faulty log here
//! gives out cursors when a push starts and shows the push's entries only when it ends, as a
//! log that takes cursors from a sequence before its transaction commits. A reader pulling
//! meanwhile moves past a push still under way and never sees it. The suite's check of
//! concurrent pushers must name that. Another fails a compaction whenever a push is under
//! way, as a log whose compaction mark keeps losing its race with pushes, and gives up, would:
//! the suite's check of compaction while pushes land must name that.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use storex_core::uuid::Uuid;
use storex_core::BoxFuture;
use storex_sync::{
    DeviceId, DeviceInfo, MemorySharedLog, Pull, PulledEntry, SharedEntry, SharedLogError,
    SharedResult, SharedSyncLog,
};
use storex_test::run_shared_log_suite;

#[derive(Debug, Default)]
struct State {
    /// Each device's user and acknowledged cursor.
    devices: HashMap<DeviceId, (String, u64)>,
    /// The user and entry at each cursor, and whether its push has ended.
    entries: BTreeMap<u64, (String, SharedEntry, bool)>,
    ids: HashSet<(String, Uuid)>,
    last_cursor: u64,
}

/// The faulty log: one cursor sequence for everyone, entries hidden until their push ends.
#[derive(Debug, Default)]
struct CursorsBeforeCommit {
    state: Mutex<State>,
    pushes: AtomicU64,
}

impl CursorsBeforeCommit {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> SharedResult<T>) -> SharedResult<T> {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn user_of(state: &State, device: DeviceId) -> SharedResult<String> {
        state
            .devices
            .get(&device)
            .map(|(user, _)| user.clone())
            .ok_or(SharedLogError::UnknownDevice { device })
    }
}

impl SharedSyncLog for CursorsBeforeCommit {
    fn name(&self) -> &'static str {
        "cursors-before-commit"
    }

    fn register_device<'a>(
        &'a self,
        user: &'a str,
        device: DeviceId,
    ) -> BoxFuture<'a, SharedResult<()>> {
        Box::pin(async move {
            self.with(|state| {
                state
                    .devices
                    .entry(device)
                    .or_insert_with(|| (user.to_owned(), 0));
                Ok(())
            })
        })
    }

    fn devices(&self, device: DeviceId) -> BoxFuture<'_, SharedResult<Vec<DeviceInfo>>> {
        Box::pin(async move {
            self.with(|state| {
                let user = Self::user_of(state, device)?;
                Ok(state
                    .devices
                    .iter()
                    .filter(|(_, (u, _))| *u == user)
                    .map(|(device, (_, acked))| DeviceInfo {
                        device: *device,
                        acked: *acked,
                    })
                    .collect())
            })
        })
    }

    fn push(
        &self,
        device: DeviceId,
        entries: Vec<SharedEntry>,
    ) -> BoxFuture<'_, SharedResult<u64>> {
        Box::pin(async move {
            let cursors = self.with(|state| {
                let user = Self::user_of(state, device)?;
                let mut cursors = Vec::new();
                for entry in entries {
                    if state.ids.insert((user.clone(), entry.id)) {
                        state.last_cursor += 1;
                        cursors.push(state.last_cursor);
                        state
                            .entries
                            .insert(state.last_cursor, (user.clone(), entry, false));
                    }
                }
                Ok(cursors)
            })?;
            // Every other push takes a while to "commit": later pushes show first.
            if self
                .pushes
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(2)
            {
                for _ in 0..20 {
                    tokio::task::yield_now().await;
                }
            }
            self.with(|state| {
                for cursor in &cursors {
                    if let Some((_, _, shown)) = state.entries.get_mut(cursor) {
                        *shown = true;
                    }
                }
                Ok(cursors.last().copied().unwrap_or(0))
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
                let user = Self::user_of(state, device)?;
                let mut pull = Pull {
                    next_cursor: after,
                    ..Pull::default()
                };
                let shown = state
                    .entries
                    .range(after + 1..)
                    .filter(|(_, (u, _, shown))| *u == user && *shown);
                for (scanned, (cursor, (_, entry, _))) in shown.enumerate() {
                    if scanned == limit {
                        pull.more = true;
                        break;
                    }
                    pull.next_cursor = *cursor;
                    if entry.device != device && topics.is_none_or(|t| t.contains(&entry.topic)) {
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
                Self::user_of(state, device)?;
                if let Some((_, acked)) = state.devices.get_mut(&device) {
                    *acked = (*acked).max(cursor);
                }
                Ok(())
            })
        })
    }

    fn compact<'a>(&'a self, _user: &'a str) -> BoxFuture<'a, SharedResult<u64>> {
        Box::pin(async { Ok(0) })
    }
}

/// The faulty log: the memory log, but a compaction fails while a push is under way (and a
/// push takes a few turns of the runtime).
#[derive(Debug, Default)]
struct CompactionGivesWayToPushes {
    log: MemorySharedLog,
    pushing: AtomicU64,
}

impl SharedSyncLog for CompactionGivesWayToPushes {
    fn name(&self) -> &'static str {
        "compaction-gives-way-to-pushes"
    }

    fn register_device<'a>(
        &'a self,
        user: &'a str,
        device: DeviceId,
    ) -> BoxFuture<'a, SharedResult<()>> {
        self.log.register_device(user, device)
    }

    fn devices(&self, device: DeviceId) -> BoxFuture<'_, SharedResult<Vec<DeviceInfo>>> {
        self.log.devices(device)
    }

    fn push(
        &self,
        device: DeviceId,
        entries: Vec<SharedEntry>,
    ) -> BoxFuture<'_, SharedResult<u64>> {
        Box::pin(async move {
            self.pushing.fetch_add(1, Ordering::SeqCst);
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
            let pushed = self.log.push(device, entries).await;
            self.pushing.fetch_sub(1, Ordering::SeqCst);
            pushed
        })
    }

    fn pull<'a>(
        &'a self,
        device: DeviceId,
        after: u64,
        limit: usize,
        topics: Option<&'a [String]>,
    ) -> BoxFuture<'a, SharedResult<Pull>> {
        self.log.pull(device, after, limit, topics)
    }

    fn ack(&self, device: DeviceId, cursor: u64) -> BoxFuture<'_, SharedResult<()>> {
        self.log.ack(device, cursor)
    }

    fn compact<'a>(&'a self, user: &'a str) -> BoxFuture<'a, SharedResult<u64>> {
        if self.pushing.load(Ordering::SeqCst) > 0 {
            return Box::pin(async {
                Err(SharedLogError::Unavailable {
                    log: "compaction-gives-way-to-pushes",
                    source: "a push is under way".into(),
                })
            });
        }
        self.log.compact(user)
    }
}

#[tokio::test]
async fn the_memory_log_passes_every_check() {
    let report = run_shared_log_suite(|| async { MemorySharedLog::new() }).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(
        report.passed.len() >= 25,
        "only {} checks ran",
        report.passed.len()
    );
}

#[tokio::test]
async fn a_log_showing_pushes_out_of_cursor_order_fails_the_concurrency_check() {
    let report = run_shared_log_suite(|| async { CursorsBeforeCommit::default() }).await;
    let failed: Vec<&str> = report.failed.iter().map(|(name, _)| *name).collect();
    assert!(
        failed.contains(&"concurrent_pushers_are_seen_exactly_once_by_every_reader"),
        "{:?}",
        report.failed
    );
}

#[tokio::test]
async fn a_log_whose_compaction_gives_way_to_pushes_fails_the_compaction_check() {
    let report = run_shared_log_suite(|| async { CompactionGivesWayToPushes::default() }).await;
    let failed: Vec<&str> = report.failed.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        failed,
        ["compaction_while_pushes_land_drops_each_entry_once_after_every_ack"],
        "{:?}",
        report.failed
    );
}
