//! [`LiveUpdates`]: wakes long-polling pulls of a user when one of its devices pushed.
//!
//! One `watch` channel per user carries the greatest cursor this instance has heard of. A
//! waiting pull subscribes before it reads the log, so a push landing between its read and its
//! wait still wakes it. A channel is only a hint to look again: the pull re-reads the log,
//! which stays the single source of truth. Losing this state (a restart) loses nothing.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use storex_sync::DeviceId;
use tokio::sync::watch;

/// Pulls of one device that may wait for new entries at once.
pub(crate) const WAITING_PER_DEVICE: usize = 4;

/// Per-user wake-up channels, and the waiting pulls of each device.
#[derive(Debug, Default)]
pub(crate) struct LiveUpdates {
    users: Mutex<HashMap<String, watch::Sender<u64>>>,
    waiting: Mutex<HashMap<DeviceId, usize>>,
}

/// A waiting pull of a device, counted until dropped.
#[derive(Debug)]
pub(crate) struct WaitSlot<'a> {
    live: &'a LiveUpdates,
    device: DeviceId,
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        let mut waiting = self
            .live
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = waiting.get_mut(&self.device) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                waiting.remove(&self.device);
            }
        }
    }
}

impl LiveUpdates {
    /// A slot for one more waiting pull of `device`, or `None` when it holds
    /// [`WAITING_PER_DEVICE`] already (that pull then does not wait).
    pub(crate) fn wait_slot(&self, device: DeviceId) -> Option<WaitSlot<'_>> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let count = waiting.entry(device).or_insert(0);
        if *count >= WAITING_PER_DEVICE {
            return None;
        }
        *count += 1;
        Some(WaitSlot { live: self, device })
    }

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

    /// `user`'s log now reaches `cursor`: wakes its waiting pulls, unless a cursor as great
    /// was heard of already (an instance hears its own notifications back from PostgreSQL,
    /// and a lower cursor arriving late reveals nothing the greater one did not).
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
        // The same cursor again, or an older one, wakes nobody.
        live.notify("ann", 3);
        assert!(!ann.has_changed().unwrap());
        live.notify("ann", 2);
        assert!(!ann.has_changed().unwrap());
        drop((ann, bob));
        live.forget_idle();
        assert!(live.users.lock().unwrap().is_empty());
    }

    #[test]
    fn a_device_holds_a_few_waiting_pulls_at_once() {
        let live = LiveUpdates::default();
        let (ann, bob) = (DeviceId::random(), DeviceId::random());
        let slots: Vec<_> = (0..WAITING_PER_DEVICE)
            .map(|_| live.wait_slot(ann).expect("a slot"))
            .collect();
        assert!(live.wait_slot(ann).is_none(), "one too many");
        assert!(live.wait_slot(bob).is_some(), "another device's own");
        drop(slots);
        assert!(live.wait_slot(ann).is_some(), "freed");
        assert!(live.waiting.lock().unwrap().is_empty());
    }
}
