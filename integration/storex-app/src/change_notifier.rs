//! [`ChangeNotifier`]: a middleware that signals every successful local write.

use std::sync::Arc;

use storex_core::{BoxFuture, Middleware, Next, Operation, Origin, Outcome, Result};
use tokio::sync::Notify;

/// Signals after each write the app makes (not those applied by sync), so a
/// [`crate::BackgroundSync`] can push soon after. Add it with
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
}
