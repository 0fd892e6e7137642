//! [`LiveUpdates`]: wakes long-polling pulls of a user when one of its devices pushed.
//!
//! One `watch` channel per user carries the greatest cursor this instance has heard of. A
//! waiting pull subscribes before it reads the log, so a push landing between its read and its
//! wait still wakes it. A channel is only a hint to look again: the pull re-reads the log,
//! which stays the single source of truth. Losing this state (a restart) loses nothing.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;

/// Per-user wake-up channels.
#[derive(Debug, Default)]
pub(crate) struct LiveUpdates {
    users: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl LiveUpdates {
    fn with_sender<T>(&self, user: &str, f: impl FnOnce(&watch::Sender<u64>) -> T) -> T {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = users
            .entry(user.to_owned())
            .or_insert_with(|| watch::channel(0).0);
        f(sender)
    }

    /// A receiver that changes when `user` gets new entries.
    pub(crate) fn subscribe(&self, user: &str) -> watch::Receiver<u64> {
        self.with_sender(user, watch::Sender::subscribe)
    }

    /// `user`'s log now reaches `cursor`: wakes its waiting pulls.
    pub(crate) fn notify(&self, user: &str, cursor: u64) {
        self.with_sender(user, |sender| {
            sender.send_if_modified(|seen| {
                if cursor > *seen {
                    *seen = cursor;
                    true
                } else {
                    false
                }
            })
        });
    }

    /// Wakes every waiting pull (after missed notifications: each re-reads the log).
    pub(crate) fn wake_all(&self) {
        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        for sender in users.values() {
            sender.send_modify(|_| {});
        }
    }

    /// Drops the channels nobody waits on (bounded memory with many users).
    pub(crate) fn forget_idle(&self) {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        users.retain(|_, sender| sender.receiver_count() > 0);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_notification_wakes_only_its_users_waiters() {
        let live = LiveUpdates::default();
        let mut ann = live.subscribe("ann");
        let bob = live.subscribe("bob");
        live.notify("ann", 3);
        tokio::time::timeout(Duration::from_secs(1), ann.changed())
            .await
            .expect("ann woken")
            .unwrap();
        assert_eq!(*ann.borrow(), 3);
        assert!(!bob.has_changed().unwrap());
        // An older cursor wakes nobody.
        live.notify("ann", 2);
        assert!(!ann.has_changed().unwrap());
        drop((ann, bob));
        live.forget_idle();
        assert!(live.users.lock().unwrap().is_empty());
    }
}
