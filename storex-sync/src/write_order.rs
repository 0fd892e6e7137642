//! The device's write-order lock: the app's writes, indexing the journal and applying
//! received changes take it in turn, so that timestamps follow the order changes land in.
//!
//! Whatever holds it runs under a task-local mark. A second attempt from the same task (a
//! middleware or callback that, inside a write or inside sync's own work, reads the log or
//! writes through the synced storage again) would wait for itself forever; it fails at once
//! with an error that says so instead.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Mutex;

tokio::task_local! {
    /// Set while the current task holds a write-order lock.
    static HELD: ();
}

/// The lock; clones share it.
#[derive(Clone, Debug, Default)]
pub(crate) struct WriteOrder(Arc<Mutex<()>>);

impl WriteOrder {
    /// Runs `work` holding the lock. Fails without waiting when the current task holds it
    /// (or another device's) already.
    pub(crate) async fn hold<F: Future>(&self, work: F) -> storex_core::Result<F::Output> {
        if HELD.try_with(|_| ()).is_ok() {
            return Err(storex_core::Error::invalid_operation(
                "",
                "called from inside a sync write: a middleware or callback that runs while \
                 a write is logged or received changes are applied read the sync log or \
                 wrote through the synced storage again, which would wait for itself \
                 forever; do it after the write returns",
            ));
        }
        let _guard = self.0.lock().await;
        Ok(HELD.scope((), work).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holding_twice_in_one_task_fails_at_once_and_other_tasks_wait_their_turn() {
        let order = WriteOrder::default();
        let nested = order
            .hold(async { order.hold(async { 1 }).await })
            .await
            .expect("outer");
        let problem = nested.expect_err("the inner hold must fail").to_string();
        assert!(problem.contains("from inside a sync write"), "{problem}");
        // Another task waits for the lock instead, and gets it once released.
        let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let holder = order.clone();
        let holding = tokio::spawn(async move {
            holder
                .hold(async move {
                    held_tx.send(()).expect("signal");
                    release_rx.await.expect("released");
                })
                .await
        });
        held_rx.await.expect("held");
        let other = order.clone();
        let waiting = tokio::spawn(async move { other.hold(async { 2 }).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "it must wait for the holder");
        release_tx.send(()).expect("release");
        holding.await.expect("holder").expect("held once");
        assert_eq!(waiting.await.expect("task").expect("waited"), 2);
        // And once released, the same task may take it again.
        assert_eq!(order.hold(async { 3 }).await.expect("again"), 3);
    }
}
