//! storex-app: what an app wires in to use storex.
//!
//! [`BackgroundSync`] keeps a device in sync from a tokio task, the way a desktop or mobile
//! app wants it: every few minutes, soon after a local write (debounced, signalled by the
//! [`ChangeNotifier`] middleware), at once on [`BackgroundSync::sync_now`] or a live-update
//! signal, with exponential backoff and jitter while the shared log fails. It can be paused,
//! resumed and stopped, reports its [`SyncStatus`], and publishes [`SyncEvent`]s for the UI.
//! Errors are reported in the status and the events, never swallowed.

mod background;
mod change_notifier;

pub use background::{BackgroundOptions, BackgroundSync, SyncEvent, SyncState, SyncStatus};
pub use change_notifier::ChangeNotifier;
