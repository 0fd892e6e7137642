//! [`ChangeNotifier`]: a middleware that signals every successful local write, and the
//! commit of an app transaction that wrote.

use std::sync::Arc;

use storex_core::{BoxFuture, Middleware, Next, Operation, Origin, Outcome, Result};
use tokio::sync::Notify;

/// Signals after each write the app makes (not those applied by sync), so a
/// [`crate::BackgroundSync`] can push soon after. A write in a transaction of the app's
/// ([`storex_core::Storage::begin`]) signals again when that transaction commits: a sync
/// woken by the write itself does not see it yet, and without the second signal the write
/// would wait for the next interval. Add it with
/// `SyncOptions::default().with_middleware(Arc::new(notifier.clone()))`.
#[derive(Clone, Debug, Default)]
pub struct ChangeNotifier {
    signal: Arc<Notify>,
}

impl ChangeNotifier {
    /// A notifier nobody listens to yet.
    pub fn new() -> Self {
        ChangeNotifier::default()
    }

    /// The signal: `notified()` completes after the next local write (or at once if one
    /// happened since the last wait).
    pub fn signal(&self) -> Arc<Notify> {
        self.signal.clone()
    }
}

impl Middleware for ChangeNotifier {
    fn process<'a>(&'a self, op: Operation, next: Next<'a>) -> BoxFuture<'a, Result<Outcome>> {
        let local_write = op.is_write() && next.origin() == Origin::App;
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
