//! storex-sync: the storex sync engine.
//!
//! Every write an app makes through a [`SyncDevice`]'s storage is logged by the
//! [`SyncLoggingMiddleware`] in the same atomic batch, stamped with a hybrid logical clock
//! ([`Clock`], [`Hlc`]): a [journal record](JOURNAL_COLLECTION) that readers of the
//! [`ClientSyncLog`] (a collection in the app's own database) index into entries first.
//! Devices exchange [`LogEntry`] values; [`SyncDevice::integrate`] applies what others wrote
//! through [`reconcile()`], a pure, convergent function: two devices that have seen the same
//! entries, in any order and batching, hold the same data ([`collection_digest`] proves it).
//! What a device keeps of the changes it applied is one small row per object, its
//! [versions](VERSIONS_COLLECTION), not the changes themselves.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> storex_sync::Result<()> {
//! use std::sync::Arc;
//! use storex_core::{object, CollectionDef, FieldType, MemoryBackend, Registry};
//! use storex_sync::{Clock, DeviceId, SyncDevice, SyncOptions};
//!
//! let registry = Registry::builder()
//!     .collection(CollectionDef::new("note").field("id", FieldType::Uuid).field("title", FieldType::Text).primary_key(["id"]))
//!     .build()?;
//! let open = |registry: Registry| async move {
//!     SyncDevice::open(registry, Arc::new(MemoryBackend::new()), Clock::new(DeviceId::random()), SyncOptions::default()).await
//! };
//! let (phone, laptop) = (open(registry.clone()).await?, open(registry).await?);
//! phone.storage().create("note", object! { "title" => "from the phone" }).await?;
//! laptop.integrate(phone.log().unshared(100).await?).await?;
//! assert_eq!(phone.digest("note").await?, laptop.digest("note").await?);
//! # Ok(()) }
//! ```

mod client_log;
mod codec;
mod continuous;
mod device;
mod digest;
mod entry;
mod error;
pub mod fast_sync;
mod hlc;
mod journal;
mod key_runs;
mod logging;
mod reconcile;
mod shared_log;
mod text;
mod versions;
mod write_order;

pub use client_log::{ClientSyncLog, LogRows};
pub use codec::{DecodeError, EntryCodec};
pub use continuous::{ContinuousOptions, ContinuousSync, SyncReport, SyncTurn};
pub use device::{IntegrationReport, SyncDevice, SyncOptions};
pub use digest::collection_digest;
pub use entry::{
    with_sync_log, EntryOp, LogEntry, StoredEntry, INTERNAL_COLLECTIONS, LOG_COLLECTION,
    QUARANTINE_COLLECTION, STATE_COLLECTION, TRANSFER_COLLECTION,
};
pub use error::{Error, Result};
pub use hlc::{Clock, DeviceId, Hlc, ManualClock, SystemClock, WallClock, DEFAULT_MAX_DRIFT};
pub use journal::JOURNAL_COLLECTION;
pub use logging::SyncLoggingMiddleware;
pub use reconcile::{
    object_key, object_state, reconcile, HeldEntry, HoldReason, KnownObject, ObjectKey,
    Reconciliation,
};
pub use shared_log::{
    check_topics, check_user_name, device_of_another_user, split_into_pushes, DeviceInfo,
    MemorySharedLog, Pull, PulledEntry, SharedEntry, SharedLogError, SharedResult, SharedSyncLog,
    UnreadableEntry,
};
pub use versions::VERSIONS_COLLECTION;
