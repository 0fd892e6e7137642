//! [`BackgroundSync`]: a tokio task that keeps one device in sync.
//!
//! The task waits for the first of: the sync interval, a local write (then lets writes settle
//! for the debounce time), a live-update signal, [`BackgroundSync::sync_now`], or stop. Then
//! it runs `ContinuousSync::sync_once`. After a failure the next wait is the next step of an
//! exponential backoff with jitter instead of the interval, until a sync succeeds; local
//! writes and live signals do not cut it short (only `sync_now` does). While paused nothing
//! runs; a trigger that came meanwhile runs on resume. Dropping the handle stops the task.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::registration::Registration;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::FutureExt;
use storex_sync::{ContinuousSync, SyncReport};
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;

/// Timing of a [`BackgroundSync`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BackgroundOptions {
    /// Sync at least this often (kept within [`MIN_WAIT`] and [`MAX_WAIT`]).
    pub interval: Duration,
    /// After a local write, wait this long for more before syncing (from the first write not
    /// yet synced; at least [`MIN_WAIT`]). [`MAX_WAIT`] or more: local writes do not trigger
    /// syncs.
    pub debounce: Duration,
    /// First retry delay after a failure (kept within [`MIN_WAIT`] and [`MAX_WAIT`]).
    pub min_backoff: Duration,
    /// Longest retry delay, before jitter (which adds up to as much again; kept within
    /// [`MIN_WAIT`] and [`MAX_WAIT`]).
    pub max_backoff: Duration,
    /// Sync at once when the shared log says other devices pushed (for logs that can tell,
    /// like the sync server's long poll; see `SharedSyncLog::live_wait`). Default on.
    pub live_updates: bool,
    /// Longest one sync may take (default 10 minutes): a sync still running then is
    /// abandoned and counts as failed (retried with backoff). A shared log that never
    /// answers (a connection left half-open when a laptop slept) would otherwise hold the
    /// task, and [`BackgroundSync::stop`], for ever. Abandoning is safe: a sync resumes where
    /// the last one left off, like after a crash. The wait for another sync of the device to
    /// end first (one the app runs itself) does not count: it has this timeout of its own, and
    /// a sync that never started counts as failed too.
    pub sync_timeout: Duration,
    /// How long [`BackgroundSync::stop`] (or dropping the handle) lets a sync under way go
    /// on before abandoning it (default 5 s): an app that quits, or a phone's app sent to
    /// the background, has seconds, not `sync_timeout`. A sync that ends within it is kept;
    /// one abandoned resumes where it left off at the next start, like after a crash.
    pub stop_grace: Duration,
}

/// The shortest interval and retry delay the task keeps, whatever the options say (a zero
/// would make it spin).
pub const MIN_WAIT: Duration = Duration::from_millis(10);

/// The longest interval, debounce, retry delay and sync timeout the task keeps, whatever the
/// options say: a year (`Duration::MAX`, say, for "no timer", would overflow the clock).
pub const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// `wait` within [`MIN_WAIT`] and [`MAX_WAIT`].
fn bounded(wait: Duration) -> Duration {
    wait.clamp(MIN_WAIT, MAX_WAIT)
}

impl Default for BackgroundOptions {
    fn default() -> Self {
        BackgroundOptions {
            interval: Duration::from_secs(5 * 60),
            debounce: Duration::from_secs(2),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5 * 60),
            live_updates: true,
            sync_timeout: Duration::from_secs(10 * 60),
            stop_grace: Duration::from_secs(5),
        }
    }
}

impl BackgroundOptions {
    /// Sets the interval.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets the debounce after local writes.
    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// Turns live updates on or off.
    pub fn with_live_updates(mut self, on: bool) -> Self {
        self.live_updates = on;
        self
    }

    /// Sets the longest one sync may take (kept within [`MIN_WAIT`] and [`MAX_WAIT`]).
    pub fn with_sync_timeout(mut self, timeout: Duration) -> Self {
        self.sync_timeout = timeout;
        self
    }

    /// Sets how long a stop lets a sync under way go on (kept within zero and
    /// [`MAX_WAIT`]).
    pub fn with_stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// Sets the backoff range after failures.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }
}

/// What the task is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncState {
    /// Waiting for the next trigger.
    #[default]
    Idle,
    /// Running a sync.
    Syncing,
    /// Waiting to retry after a failure.
    Backoff,
    /// Paused by the app.
    Paused,
    /// Stopped; it will not sync again.
    Stopped,
}

/// The state of a [`BackgroundSync`], for the app's UI.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncStatus {
    /// What the task is doing.
    pub state: SyncState,
    /// When the last sync succeeded.
    pub last_success: Option<chrono::DateTime<chrono::Utc>>,
    /// What the last successful sync did (its problems include a failed count of
    /// `pending_entries`).
    pub last_report: Option<SyncReport>,
    /// The last failure's message (cleared by a success).
    pub last_error: Option<String>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// This device's changes not yet pushed, as of the last sync whose count read.
    pub pending_entries: u64,
}

impl SyncStatus {
    /// True when the last sync pulled nothing because a fast-sync copy into this device (a
    /// pairing, say) has begun and not finished: other devices' changes do not arrive until
    /// it is resumed and finishes, or is given up (`SyncDevice::abandon_transfers`; see
    /// [`crate::SyncedStorage::receive_from_paired`]).
    pub fn waiting_for_copy(&self) -> bool {
        self.last_report
            .as_ref()
            .is_some_and(|report| report.waiting_for_copy)
    }

    /// True when the last sync found this device's database restored from a backup older
    /// than what the shared log knows of the device ([`SyncReport::restored_from_backup`]):
    /// the changes it made after the backup are on the other devices only, until a copy from
    /// one of them that pulls everything and pulled at least as far
    /// ([`crate::SyncedStorage::receive_from_paired`]) brings them.
    pub fn restored_from_backup(&self) -> bool {
        self.last_report
            .as_ref()
            .is_some_and(|report| report.restored_from_backup)
    }
}

/// What happened, for subscribers.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SyncEvent {
    /// A sync started.
    Started,
    /// A sync finished.
    Finished(SyncReport),
    /// A sync failed; the next try waits `retry_in`.
    Failed {
        /// The error's message, with its causes.
        error: String,
        /// When the next try comes.
        retry_in: Duration,
    },
    /// Paused by the app.
    Paused,
    /// Resumed.
    Resumed,
    /// Stopped for good.
    Stopped,
}

#[derive(Debug)]
pub(crate) struct Shared {
    status: Mutex<SyncStatus>,
    /// `sync_now`: syncs at once, also during a backoff.
    pub(crate) now: Notify,
    /// The live watcher saw entries of other devices: syncs soon, but not before a backoff
    /// ends.
    pub(crate) remote: Notify,
    pub(crate) events: broadcast::Sender<SyncEvent>,
}

impl Shared {
    pub(crate) fn update(&self, f: impl FnOnce(&mut SyncStatus)) {
        f(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn emit(&self, event: SyncEvent) {
        // No subscriber is fine: the status holds the same facts.
        let _ = self.events.send(event);
    }
}

/// Keeps a device in sync from a background task; see the module docs.
#[derive(Debug)]
pub struct BackgroundSync {
    shared: Arc<Shared>,
    paused: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    /// The live watcher's supervisor; `stop` aborts it and waits for it to end (kept until
    /// it has, like `task`).
    live: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl BackgroundSync {
    /// Starts syncing `sync` in the background. (For a [`crate::SyncedStorage`], use its
    /// `start_background`, which also registers a device whose first open was offline; `sync`
    /// given here must be registered.) `local_writes` is the signal of a
    /// [`crate::ChangeNotifier`] installed on the device's storage (or any signal of changes).
    /// The task must be its only listener: a [`Notify`] wakes one waiter per signal, so
    /// another task waiting on it (to refresh a view, say) would take some of the writes'
    /// wake-ups, and those writes would wait for the interval.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (it spawns the task there): call it from inside one, as from
    /// `Handle::enter` in a GUI framework's setup hook.
    pub fn start(
        sync: Arc<ContinuousSync>,
        local_writes: Arc<Notify>,
        options: BackgroundOptions,
    ) -> Self {
        Self::start_registering(sync, local_writes, options, None)
    }

    /// [`BackgroundSync::start`], each sync first making `registration` if it still waits.
    pub(crate) fn start_registering(
        sync: Arc<ContinuousSync>,
        local_writes: Arc<Notify>,
        options: BackgroundOptions,
        registration: Option<Arc<Registration>>,
    ) -> Self {
        let (events, _) = broadcast::channel(64);
        let shared = Arc::new(Shared {
            status: Mutex::new(SyncStatus::default()),
            now: Notify::new(),
            remote: Notify::new(),
            events,
        });
        let (paused, paused_rx) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let live = options.live_updates.then(|| {
            tokio::spawn(crate::live::watch_supervised(
                sync.clone(),
                shared.clone(),
                paused_rx.clone(),
                stop_rx.clone(),
            ))
        });
        let task = tokio::spawn(supervise(
            shared.clone(),
            stop.clone(),
            run(
                Syncing { sync, registration },
                shared.clone(),
                local_writes,
                options,
                paused_rx,
                stop_rx,
            ),
        ));
        BackgroundSync {
            shared,
            paused,
            stop,
            task: tokio::sync::Mutex::new(Some(task)),
            live: tokio::sync::Mutex::new(live),
        }
    }

    /// Syncs as soon as possible, also during a backoff after a failure (a live-update
    /// signal triggers a sync too, but waits out a backoff).
    pub fn sync_now(&self) {
        self.shared.now.notify_one();
    }

    /// Stops syncing until [`BackgroundSync::resume`]; a sync under way finishes. The state
    /// shows [`SyncState::Paused`] at once (or once that sync is done). The live-update
    /// watcher stops asking the shared log too (a long poll under way ends on its own).
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Syncs again after a pause.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Stops the task and waits until it has ended: a sync under way may finish within
    /// [`BackgroundOptions::stop_grace`], and is abandoned after it (nothing is lost: what
    /// it had not committed is done by the next sync).
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let mut live = self.live.lock().await;
        if let Some(supervisor) = live.as_mut() {
            // The watcher holds nothing that needs finishing: a pending long poll just ends.
            // Its supervisor is waited for; the watcher it runs is aborted as it ends.
            supervisor.abort();
            let _ = supervisor.await;
            *live = None;
        }
        drop(live);
        let mut task = self.task.lock().await;
        if let Some(running) = task.as_mut() {
            // It ends by itself (a panic of the sync is caught and reported in it). Kept
            // until it has ended, so that a later `stop` still waits if this one is dropped.
            let _ = running.await;
            *task = None;
        }
    }

    /// The current status.
    pub fn status(&self) -> SyncStatus {
        self.shared
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Subscribes to the events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SyncEvent> {
        self.shared.events.subscribe()
    }
}

/// Dropping the handle stops the background sync (a sync under way is given
/// [`BackgroundOptions::stop_grace`] to finish, as by [`BackgroundSync::stop`], while the
/// runtime keeps running: one that shuts down, as when `main` returns, ends the task at
/// once; call [`BackgroundSync::stop`] before). Keep the handle for as long as the app should
/// sync. (A sync ended midway loses nothing: the next one resumes where it left off.)
impl Drop for BackgroundSync {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(supervisor) = self.live.get_mut() {
            supervisor.abort();
        }
    }
}

/// Waits until `flag` is true, or its sender is gone (the handle was dropped: stop too).
pub(crate) async fn until_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}

/// Whether the task should end: stopped, or its handle dropped.
fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// After the pause flag changed while the task waited: holds the task if it is paused now,
/// then shows it `waiting` again; false when it was stopped meanwhile.
async fn on_pause_change(
    shared: &Shared,
    paused: &mut watch::Receiver<bool>,
    stop: &mut watch::Receiver<bool>,
    waiting: SyncState,
) -> bool {
    if !*paused.borrow_and_update() {
        return true;
    }
    if !hold_while_paused(shared, paused, stop).await {
        return false;
    }
    shared.update(|s| s.state = waiting);
    true
}

/// Holds the task while paused, telling the app (state and events); false when it was
/// stopped meanwhile.
async fn hold_while_paused(
    shared: &Shared,
    paused: &mut watch::Receiver<bool>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    shared.update(|s| s.state = SyncState::Paused);
    shared.emit(SyncEvent::Paused);
    tokio::select! {
        biased;
        _ = until_true(stop) => return false,
        _ = paused.wait_for(|p| !*p) => {}
    }
    if stopped(stop) {
        return false;
    }
    shared.emit(SyncEvent::Resumed);
    true
}

/// Runs the task `running`; if it panics (a bug), the status says so and shows the task
/// stopped, instead of a sync that never ends, and the live watcher is stopped too.
async fn supervise(
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    running: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(failure) = tokio::spawn(running).await {
        if failure.is_panic() {
            stop.send_replace(true);
            shared.update(|s| {
                s.state = SyncState::Stopped;
                s.last_error = Some(format!("the background sync stopped on a bug: {failure}"));
            });
            shared.emit(SyncEvent::Stopped);
        }
    }
}

/// What the task syncs: the device, registered first if it is not yet.
struct Syncing {
    sync: Arc<ContinuousSync>,
    registration: Option<Arc<Registration>>,
}

impl Syncing {
    /// Waits for the device's turn (another sync of it may run: the app's own), then, within
    /// `limit` (`None` once it passed), registers the device if it still waits and syncs
    /// once; a failure as its message. The wait has a `limit` of its own: another sync that
    /// hangs is reported as such, not waited for silently.
    ///
    /// A sync that panics (a bug: in storex, a shared-log client, a database driver) fails
    /// like any other and is tried again after a backoff, rather than end the background
    /// sync for good: what it left undone is rolled back or done again, as after a sync
    /// abandoned for its timeout.
    async fn once_within(&self, limit: Duration) -> Option<Result<SyncReport, String>> {
        let Ok(turn) = tokio::time::timeout(limit, self.sync.turn()).await else {
            return Some(Err(format!(
                "another sync of this device (one the app ran itself) did not end within \
                 {limit:?}; this one did not start"
            )));
        };
        let once = AssertUnwindSafe(self.once(turn)).catch_unwind();
        match tokio::time::timeout(limit, once).await.ok()? {
            Ok(result) => Some(result),
            Err(panic) => Some(Err(format!(
                "the sync stopped on a bug (a panic: {}); it is tried again",
                panic_message(panic.as_ref())
            ))),
        }
    }

    /// Registers the device if it still waits, then syncs once in `turn`; a failure as its
    /// message.
    async fn once(&self, turn: storex_sync::SyncTurn<'_>) -> Result<SyncReport, String> {
        if let Some(registration) = &self.registration {
            registration
                .ensure()
                .await
                .map_err(|e| storex_core::error_chain(&e))?;
        }
        turn.sync_once()
            .await
            .map_err(|e| storex_core::error_chain(&e))
    }
}

/// The message a panic carried, if it is text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    match panic.downcast_ref::<&str>() {
        Some(text) => text,
        None => panic
            .downcast_ref::<String>()
            .map_or("no message", String::as_str),
    }
}

/// Ends `grace` after the task was told to stop (or its handle dropped); never before.
async fn stop_after_grace(stop: &mut watch::Receiver<bool>, grace: Duration) {
    until_true(stop).await;
    tokio::time::sleep(grace).await;
}

async fn run(
    syncing: Syncing,
    shared: Arc<Shared>,
    local_writes: Arc<Notify>,
    options: BackgroundOptions,
    mut paused: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let interval = bounded(options.interval);
    let sync_timeout = bounded(options.sync_timeout);
    let stop_grace = options.stop_grace.min(MAX_WAIT);
    // A debounce of `MAX_WAIT` or more is "never": local writes do not trigger syncs.
    let debounce = (options.debounce < MAX_WAIT).then_some(options.debounce.max(MIN_WAIT));
    // As `with_backoff` keeps them: the fields are public, and backon would clamp every
    // delay after the first down to a maximum below the minimum.
    let max_backoff = bounded(options.max_backoff.max(options.min_backoff));
    let backoff_builder = ExponentialBuilder::default()
        .with_min_delay(bounded(options.min_backoff))
        .with_max_delay(max_backoff)
        .with_jitter()
        .without_max_times();
    let mut backoff = backoff_builder.build();
    // When the timer next triggers a sync: pausing and resuming do not move it, so a sync
    // that came due during a pause runs on resume.
    let mut next_at = tokio::time::Instant::now(); // sync once right away

    // After a failure: local writes and live signals do not cut the backoff short.
    let mut not_before: Option<tokio::time::Instant> = None;
    // When local writes trigger a sync: the debounce after the first write not yet synced.
    // Waiting for it is one more trigger, so a sync asked for, the timer, a live signal or
    // a pause are heard meanwhile.
    let mut write_due: Option<tokio::time::Instant> = None;
    loop {
        let waiting = match not_before {
            Some(_) => SyncState::Backoff,
            None => SyncState::Idle,
        };
        // `biased`: a stop wins over a trigger that is ready at the same time.
        let woken = tokio::select! {
            biased;
            _ = until_true(&mut stop) => break,
            // A pause shows at once (its state and event), not at the next trigger.
            _ = paused.changed() => None,
            _ = tokio::time::sleep_until(next_at) => Some(false),
            _ = shared.now.notified() => Some(true),
            _ = shared.remote.notified() => Some(false),
            _ = tokio::time::sleep_until(write_due.unwrap_or(next_at)), if write_due.is_some() => {
                Some(false)
            }
            _ = local_writes.notified() => {
                if let (None, Some(debounce)) = (write_due, debounce) {
                    write_due = tokio::time::Instant::now().checked_add(debounce);
                }
                continue;
            }
        };
        let Some(asked) = woken else {
            if !on_pause_change(&shared, &mut paused, &mut stop, waiting).await {
                break;
            }
            continue;
        };
        if let Some(deadline) = not_before.filter(|_| !asked) {
            let pause_changed = tokio::select! {
                biased;
                _ = until_true(&mut stop) => break,
                _ = paused.changed() => true,
                _ = tokio::time::sleep_until(deadline) => false,
                _ = shared.now.notified() => false,
            };
            if pause_changed {
                // The timer triggers at the end of the backoff anyway.
                if !on_pause_change(&shared, &mut paused, &mut stop, waiting).await {
                    break;
                }
                continue;
            }
        }
        if stopped(&stop) {
            break;
        }
        if *paused.borrow_and_update() && !hold_while_paused(&shared, &mut paused, &mut stop).await
        {
            break;
        }
        // The sync takes every write made so far; one made while it runs signals again.
        write_due = None;
        shared.update(|s| s.state = SyncState::Syncing);
        shared.emit(SyncEvent::Started);
        let (result, abandoned) = tokio::select! {
            // A sync that is done wins over a grace that ran out at the same time.
            biased;
            outcome = syncing.once_within(sync_timeout) => match outcome {
                Some(result) => (result, false),
                None => (Err(format!(
                    "the sync took longer than {sync_timeout:?} and was abandoned (the next \
                     one resumes where it left off)"
                )), true),
            },
            // Dropping the sync's future is what the timeout does too: its transaction
            // rolls back, and what it pushed without marking is pushed again (same ids).
            () = stop_after_grace(&mut stop, stop_grace) => (Err(format!(
                "stopped: the sync under way was abandoned after {stop_grace:?} (the next \
                 one resumes where it left off)"
            )), true),
        };
        // If the count cannot be read, the last one stands (not a made-up 0). Not read after
        // an abandoned sync (the database may be what held it up: the count writes, it
        // indexes the journal first), nor once a stop was asked for, nor past a stop's grace.
        // Like the sync, it is caught if it panics and given up after the sync's timeout: it
        // does not end or hold the task. Why it failed is a problem of the sync's report.
        let pending = match abandoned || stopped(&stop) {
            true => None,
            false => {
                let count = syncing.sync.device().log().unshared_count();
                let counting =
                    tokio::time::timeout(sync_timeout, AssertUnwindSafe(count).catch_unwind());
                tokio::select! {
                    biased;
                    counted = counting => Some(match counted {
                        Ok(Ok(Ok(count))) => Ok(count),
                        Ok(Ok(Err(e))) => Err(format!(
                            "the entries still to push were not counted: {}",
                            storex_core::error_chain(&e)
                        )),
                        Ok(Err(_)) => Err(
                            "counting the entries still to push panicked (a bug); the count \
                             shown is the last one read"
                                .to_owned(),
                        ),
                        Err(_) => Err(format!(
                            "counting the entries still to push took longer than \
                             {sync_timeout:?}; the count shown is the last one read"
                        )),
                    }),
                    () = stop_after_grace(&mut stop, stop_grace) => None,
                }
            }
        };
        let (pending, uncounted) = match pending {
            Some(Ok(count)) => (Some(count), None),
            Some(Err(why)) => (None, Some(why)),
            None => (None, None),
        };
        match result {
            Ok(mut report) => {
                report.problems.extend(uncounted);
                backoff = backoff_builder.build();
                next_at = tokio::time::Instant::now() + interval;
                not_before = None;
                shared.update(|s| {
                    s.state = SyncState::Idle;
                    s.last_success = Some(chrono::Utc::now());
                    s.last_report = Some(report.clone());
                    s.last_error = None;
                    s.consecutive_failures = 0;
                    s.pending_entries = pending.unwrap_or(s.pending_entries);
                });
                shared.emit(SyncEvent::Finished(report));
            }
            Err(message) => {
                let wait = backoff.next().unwrap_or(max_backoff);
                next_at = tokio::time::Instant::now() + wait;
                not_before = Some(next_at);
                shared.update(|s| {
                    s.state = SyncState::Backoff;
                    s.last_error = Some(message.clone());
                    s.consecutive_failures += 1;
                    s.pending_entries = pending.unwrap_or(s.pending_entries);
                });
                shared.emit(SyncEvent::Failed {
                    error: message,
                    retry_in: wait,
                });
            }
        }
    }
    shared.update(|s| s.state = SyncState::Stopped);
    shared.emit(SyncEvent::Stopped);
}
