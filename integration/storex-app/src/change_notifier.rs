//! [`ChangeNotifier`]: a middleware that signals every successful local write to a synced
//! collection, and the commit of an app transaction that wrote.

use std::collections::HashSet;
use std::sync::Arc;

use storex_core::{BoxFuture, Middleware, Next, Operation, Origin, Outcome, Result};
use tokio::sync::Notify;

/// Signals after each write the app makes (not those applied by sync, nor those to the
/// collections it [ignores](ChangeNotifier::ignoring)), so a
/// [`crate::BackgroundSync`] can push soon after. A write in a transaction of the app's
/// ([`storex_core::Storage::begin`]) signals again when that transaction commits: a sync
/// woken by the write itself does not see it yet, and without the second signal the write
/// would wait for the next interval. Add it with
/// `SyncOptions::default().with_middleware(Arc::new(notifier.clone()))`.
#[derive(Clone, Debug, Default)]
pub struct ChangeNotifier {
    signal: Arc<Notify>,
    /// Collections whose writes do not signal (those left out of sync).
    ignored: Arc<HashSet<String>>,
}

impl ChangeNotifier {
    /// A notifier nobody listens to yet.
    pub fn new() -> Self {
        ChangeNotifier::default()
    }

    /// Writes to `collections` (those left out of sync: a cache, UI state) do not signal:
    /// there is nothing to push for them. (The commit of a transaction that wrote only to
    /// them still does.)
    pub fn ignoring<I, S>(mut self, collections: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.ignored = Arc::new(collections.into_iter().map(Into::into).collect());
        self
    }

    /// Whether `op` writes to a collection that is not ignored.
    fn writes_synced(&self, op: &Operation) -> bool {
        writes_outside(op, &self.ignored)
    }

    /// The signal: `notified()` completes after the next local write (or at once if one
    /// happened since the last wait). For one listener: each signal wakes one waiter.
    pub fn signal(&self) -> Arc<Notify> {
        self.signal.clone()
    }
}

/// Whether `op` writes to a collection not in `left_out` (the collections left out of sync).
pub(crate) fn writes_outside(op: &Operation, left_out: &HashSet<String>) -> bool {
    match op {
        Operation::Batch { steps } => steps.iter().any(|s| writes_outside(&s.operation, left_out)),
        op => op.is_write() && op.collection().is_none_or(|c| !left_out.contains(c)),
    }
}

impl Middleware for ChangeNotifier {
    fn process<'a>(&'a self, op: Operation, next: Next<'a>) -> BoxFuture<'a, Result<Outcome>> {
        let local_write = next.origin() == Origin::App && self.writes_synced(&op);
        Box::pin(async move {
            let outcome = next.run(op).await?;
            if local_write {
                self.signal.notify_one();
            }
            Ok(outcome)
        })
    }

    fn app_transaction_committed(&self) {
        self.signal.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use storex_core::{object, CollectionDef, FieldType, MemoryBackend, Registry, Storage};

    use super::*;

    /// Whether `notifier` signalled since the last look.
    async fn signalled(notifier: &ChangeNotifier) -> bool {
        let signal = notifier.signal();
        tokio::time::timeout(Duration::from_millis(20), signal.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn writes_to_ignored_collections_do_not_signal() {
        let collection = |name: &str| {
            CollectionDef::new(name)
                .field("id", FieldType::Int)
                .primary_key(["id"])
        };
        let registry = Registry::builder()
            .collection(collection("note"))
            .collection(collection("cache"))
            .build()
            .expect("registry");
        let notifier = ChangeNotifier::new().ignoring(["cache"]);
        let storage = Storage::builder(registry, MemoryBackend::new())
            .with(notifier.clone())
            .build()
            .await
            .expect("storage");
        storage
            .create("cache", object! { "id" => 1 })
            .await
            .expect("cache write");
        assert!(
            !signalled(&notifier).await,
            "a write to an ignored collection"
        );
        storage
            .create("note", object! { "id" => 1 })
            .await
            .expect("note write");
        assert!(signalled(&notifier).await, "a write to a synced collection");
        storage.find_by_pk("note", 1).await.expect("read");
        assert!(!signalled(&notifier).await, "a read");
    }
}
