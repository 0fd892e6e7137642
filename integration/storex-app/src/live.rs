//! The live-update watcher of a [`crate::BackgroundSync`]: waits on the shared log's live
//! signal (`ContinuousSync::wait_for_remote_changes`, a long poll on the sync server) and
//! triggers a sync as soon as other devices pushed, instead of waiting for the timer.
//!
//! It ends by itself when the shared log cannot tell (memory, SQL and Firestore logs), and on
//! stop. When the sync it triggered failed, it waits out the sync task's backoff before
//! watching again, so live signals never cut a backoff short. While the log is unreachable it backs off (1 s doubling to 30 s); the sync task's own
//! backoff reports the failure, so the watcher stays quiet about it.

use std::sync::Arc;
use std::time::Duration;

use storex_sync::ContinuousSync;
use tokio::sync::watch;

use crate::background::{until_true, Shared};
use crate::SyncEvent;

/// How long one long poll waits (the server caps it at its own maximum).
const LIVE_WAIT: Duration = Duration::from_secs(25);
/// Longest wait for the sync a signal triggered to finish before watching again.
const SYNC_WAIT: Duration = Duration::from_secs(60);

pub(crate) async fn watch(
    sync: Arc<ContinuousSync>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let waited = tokio::select! {
            _ = until_true(&mut stop) => return,
            waited = sync.wait_for_remote_changes(LIVE_WAIT) => waited,
        };
        match waited {
            None => return, // this shared log has no live signal
            Some(Ok(false)) => {}
            Some(Ok(true)) => {
                backoff = Duration::from_secs(1);
                // Subscribe first, so the end of the sync we trigger is not missed.
                let mut events = shared.events.subscribe();
                shared.remote.notify_one();
                let finished = async {
                    while let Ok(event) = events.recv().await {
                        match event {
                            SyncEvent::Finished(_) => return Duration::ZERO,
                            // The sync task backs off; so does the watcher, or its signals
                            // would cut the backoff short.
                            SyncEvent::Failed { retry_in, .. } => return retry_in,
                            _ => {}
                        }
                    }
                    Duration::ZERO
                };
                let pause = tokio::select! {
                    _ = until_true(&mut stop) => return,
                    waited = tokio::time::timeout(SYNC_WAIT, finished) => waited.unwrap_or(Duration::ZERO),
                };
                if !pause.is_zero() {
                    tokio::select! {
                        _ = until_true(&mut stop) => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
            Some(Err(_)) => {
                tokio::select! {
                    _ = until_true(&mut stop) => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
