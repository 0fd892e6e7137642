//! storex-app: what an app wires in to use storex.
//!
//! [`BackgroundSync`] keeps a device in sync from a tokio task, the way a desktop or mobile
//! app wants it: every few minutes, soon after a local write (debounced, signalled by the
//! [`ChangeNotifier`] middleware), at once on [`BackgroundSync::sync_now`] or a live-update
//! signal (the sync server's long poll), with exponential backoff and jitter while the shared log fails. It can be paused,
//! resumed and stopped, reports its [`SyncStatus`], and publishes [`SyncEvent`]s for the UI.
//! Errors are reported in the status and the events, never swallowed.
//!
//! [`SyncedStorage`] is the one-stop setup for an app with a SeaORM data layer: its
//! connection and entities in, a storage with UUID keys and sync logging out, a device id
//! registered once and kept, rows that existed before sync logged once, and continuous sync
//! through the chosen shared log (optionally end-to-end encrypted). Device pairing
//! ([`SyncedStorage::offer_pairing`], [`SyncedStorage::accept_pairing`]) moves a whole database
//! to a new device over WebRTC by an offer code and an answer code, then hands over to
//! continuous sync.

mod background;
mod change_notifier;
mod device_lock;
mod error;
mod live;
mod pairing;
mod registration;
mod synced;

pub use background::{
    BackgroundOptions, BackgroundSync, SyncEvent, SyncState, SyncStatus, MAX_WAIT, MIN_WAIT,
};
pub use change_notifier::ChangeNotifier;
pub use device_lock::DEVICE_LOCK_WAIT;
pub use error::{Error, Result};
pub use pairing::{PairingAnswer, PairingOffer, SYNC_BEFORE_PAIRING};
pub use registration::FIRST_REGISTRATION_WAIT;
pub use storex_channel_webrtc::WebRtcOptions;
pub use synced::{SyncedStorage, SyncedStorageBuilder, SETTINGS_COLLECTION};
