//! The live-update watcher of a [`crate::BackgroundSync`]: waits on the shared log's live
//! signal (`ContinuousSync::wait_for_remote_changes`, a long poll on the sync server) and
//! triggers a sync as soon as other devices pushed, instead of waiting for the timer.
//!
//! It ends by itself when the shared log cannot tell (memory, SQL and Firestore logs), and on
//! stop; while the background sync is paused it does not watch. When the sync it triggered
//! failed, it waits out the sync task's backoff before watching again, so live signals never
//! cut a backoff short, unless a sync succeeds meanwhile (one the app asked for). When that
//! sync pulled nothing although the log said there was something (a fast-sync copy into the
//! device has not finished, so nothing is pulled; or a log whose signal does not settle), it
//! waits before watching again (1 s doubling to [`LIVE_WAIT`]), so the signal cannot make it
//! sync in a loop; so it does when the log says at once that nothing is new, instead of
//! holding the wait. While the log is unreachable
//! it backs off (1 s doubling to 30 s); the sync task's own backoff reports the failure, so the
//! watcher stays quiet about it. A panic of the watcher is reported in the status and the
//! watcher starts again ([`watch_supervised`]).

use std::sync::Arc;
use std::time::Duration;

use storex_sync::ContinuousSync;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;

use crate::background::{until_true, Shared};
use crate::SyncEvent;

/// How long one long poll waits (the server caps it at its own maximum).
const LIVE_WAIT: Duration = Duration::from_secs(25);
/// Longest wait for the sync a signal triggered to finish before watching again.
const SYNC_WAIT: Duration = Duration::from_secs(60);
/// The first wait after a signal that brought nothing, and after the log was unreachable.
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// An answer of "nothing new" sooner than this did not hold the wait (a log that cannot, a
/// server holding enough waits of this device).
const QUICK: Duration = Duration::from_secs(1);
/// The longest wait after the log was unreachable.
const UNREACHABLE_WAIT: Duration = Duration::from_secs(30);

/// How the sync a signal triggered ended.
enum Triggered {
    /// It pulled something (or the watcher could not tell).
    Pulled,
    /// It pulled nothing.
    Nothing,
    /// It failed; the sync task retries after this long.
    Failed(Duration),
}

/// The wait `backoff` holds now; it doubles, up to `longest`, for the next time.
fn next_wait(backoff: &mut Duration, longest: Duration) -> Duration {
    let wait = *backoff;
    *backoff = (wait * 2).min(longest);
    wait
}

/// Runs the watcher; if it panics (a bug, in storex or in a shared log), says so in the
/// status's `last_error` and starts it again after a wait (1 s doubling to
/// [`UNREACHABLE_WAIT`] for panics in a row, back to 1 s after a watcher that ran longer than
/// that), so live updates do not end silently while timer syncs go on.
pub(crate) async fn watch_supervised(
    sync: Arc<ContinuousSync>,
    shared: Arc<Shared>,
    paused: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut restart = FIRST_WAIT;
    loop {
        let started = tokio::time::Instant::now();
        // Aborted with this task (the handle's stop), not left to end on the stop flag.
        let mut running = AbortOnDrop(tokio::spawn(watch(
            sync.clone(),
            shared.clone(),
            paused.clone(),
            stop.clone(),
        )));
        match (&mut running.0).await {
            Err(failure) if failure.is_panic() => {
                // A watcher that ran well for longer than the longest wait starts over from
                // the first wait: only panics in a row wait longer.
                if started.elapsed() > UNREACHABLE_WAIT {
                    restart = FIRST_WAIT;
                }
                let wait = next_wait(&mut restart, UNREACHABLE_WAIT);
                shared.update(|s| {
                    s.last_error = Some(format!(
                        "live updates stopped on a bug ({failure}); they start again in {} s",
                        wait.as_secs()
                    ));
                });
                tokio::select! {
                    _ = until_true(&mut stop) => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            // Ended (stopped, or the log has no live signal), or cancelled.
            _ => return,
        }
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn watch(
    sync: Arc<ContinuousSync>,
    shared: Arc<Shared>,
    mut paused: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut unreachable = FIRST_WAIT;
    let mut quiet = FIRST_WAIT;
    loop {
        // Paused: no long poll either (a metered connection, say) until resumed.
        tokio::select! {
            biased;
            _ = until_true(&mut stop) => return,
            _ = paused.wait_for(|p| !*p) => {}
        }
        let asked = tokio::time::Instant::now();
        let waited = tokio::select! {
            _ = until_true(&mut stop) => return,
            waited = sync.wait_for_remote_changes(LIVE_WAIT) => waited,
        };
        // Set when the pause is the sync task's backoff after a failure: a sync that succeeds
        // meanwhile (one the app asked for, say) ends it.
        let mut backoff = None;
        let pause = match waited {
            None => return, // this shared log has no live signal
            // Nothing new after a wait the log held: watch again at once (a healthy log).
            Some(Ok(false)) if asked.elapsed() >= QUICK => {
                quiet = FIRST_WAIT;
                unreachable = FIRST_WAIT;
                Duration::ZERO
            }
            // Nothing new, said at once (a log that does not hold the wait, a server that
            // holds enough waits of this device already): not at once again.
            Some(Ok(false)) => next_wait(&mut quiet, LIVE_WAIT),
            Some(Ok(true)) => {
                unreachable = FIRST_WAIT;
                // Subscribe first, so the end of the sync we trigger is not missed.
                let mut events = shared.events.subscribe();
                shared.remote.notify_one();
                let finished = async {
                    loop {
                        match events.recv().await {
                            Ok(SyncEvent::Finished(report)) if report.pulled == 0 => {
                                return Triggered::Nothing
                            }
                            Ok(SyncEvent::Finished(_)) => return Triggered::Pulled,
                            // The sync task backs off; so does the watcher, or its signals
                            // would cut the backoff short.
                            Ok(SyncEvent::Failed { retry_in, .. }) => {
                                return Triggered::Failed(retry_in)
                            }
                            Ok(_) | Err(RecvError::Lagged(_)) => {}
                            Err(RecvError::Closed) => return Triggered::Pulled,
                        }
                    }
                };
                let triggered = tokio::select! {
                    _ = until_true(&mut stop) => return,
                    triggered = tokio::time::timeout(SYNC_WAIT, finished) => {
                        triggered.unwrap_or(Triggered::Pulled)
                    }
                };
                match triggered {
                    Triggered::Pulled => {
                        quiet = FIRST_WAIT;
                        Duration::ZERO
                    }
                    Triggered::Nothing => next_wait(&mut quiet, LIVE_WAIT),
                    Triggered::Failed(retry_in) => {
                        backoff = Some(shared.events.subscribe());
                        retry_in
                    }
                }
            }
            Some(Err(_)) => next_wait(&mut unreachable, UNREACHABLE_WAIT),
        };
        if !pause.is_zero() {
            tokio::select! {
                _ = until_true(&mut stop) => return,
                _ = tokio::time::sleep(pause) => {}
                _ = succeeded(backoff.as_mut()) => {}
            }
        }
    }
}

/// Waits for a sync to succeed on `events`; never, without them (or once they end).
async fn succeeded(events: Option<&mut broadcast::Receiver<SyncEvent>>) {
    let Some(events) = events else {
        return std::future::pending().await;
    };
    loop {
        match events.recv().await {
            Ok(SyncEvent::Finished(_)) => return,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return std::future::pending().await,
        }
    }
}
