//! The error type of storex-sync.

use crate::hlc::Hlc;

/// Everything that can go wrong while logging, reconciling and applying changes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A storage operation failed.
    #[error("storage operation failed")]
    Storage(#[from] storex_core::Error),
    /// A timestamp from another device is further in the future than the allowed drift.
    #[error("timestamp {remote} is {ahead_ms} ms ahead of this device's clock, more than the allowed {max_drift_ms} ms")]
    ClockDrift {
        /// The timestamp that was refused.
        remote: Hlc,
        /// How far ahead of the local wall clock it is.
        ahead_ms: u64,
        /// The allowed drift.
        max_drift_ms: u64,
    },
    /// A stored sync-log entry cannot be read back.
    #[error("sync log entry {id} is corrupt: {problem}")]
    CorruptEntry {
        /// The entry's id (or its position when the id itself is unreadable).
        id: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The shared log refused or failed a call.
    #[error("shared log call failed")]
    SharedLog(#[from] crate::shared_log::SharedLogError),
    /// A fast-sync session failed.
    #[error("fast sync failed")]
    FastSync(#[from] crate::fast_sync::FastSyncError),
    /// An entry is larger than one push may carry; it stays unshared and is reported.
    #[error("entry {id} is {size} bytes, more than the {limit} bytes one push may carry")]
    EntryTooLarge {
        /// The entry.
        id: storex_core::uuid::Uuid,
        /// Its encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A sync journal record holds a create in a collection the storage reading it does not
    /// define, so the create's values cannot be read back. The record is passed over and
    /// stays in the journal (reported among a sync's problems) until a storage that defines
    /// the collection indexes it.
    #[error("sync journal record {record} holds a create in `{collection}`, which this storage's registry does not define, so its values cannot be read")]
    JournalCollectionUnknown {
        /// The record's id.
        record: storex_core::uuid::Uuid,
        /// The collection.
        collection: String,
    },
    /// A collection excluded from sync that the registry does not define (a typo would
    /// otherwise leave the collection meant to stay local synced).
    #[error("collection `{collection}` is excluded from sync, but the registry does not define it (a misspelt name?)")]
    ExcludedUnknown {
        /// The name excluded.
        collection: String,
    },
    /// A fast-sync copy into this device began and has not finished: received changes are
    /// not applied beside it (the copy would pass over the objects they touch). Continuous
    /// sync waits for it ([`crate::SyncReport::waiting_for_copy`]); the copy finishes when
    /// resumed, or is given up with [`crate::SyncDevice::abandon_transfers`].
    #[error("a fast-sync copy into this device has not finished: received changes wait for it (resume it, or give it up with `SyncDevice::abandon_transfers`)")]
    CopyUnfinished,
    /// A timestamp's text form cannot be parsed.
    #[error("`{text}` is not a hybrid logical clock timestamp")]
    BadTimestamp {
        /// The text.
        text: String,
    },
}

impl Error {
    /// True when retrying later may succeed: storage and shared-log failures of the transient
    /// kind, and a fast-sync session whose channel closed, failed or stalled, or that the
    /// peer ended over a failure of the kind (it resumes where it broke off:
    /// `SnapshotSender::send` again, on a new channel).
    pub fn is_transient(&self) -> bool {
        use crate::fast_sync::{ChannelError, FastSyncError};
        match self {
            Error::Storage(e) => e.is_transient(),
            Error::SharedLog(e) => e.is_transient(),
            Error::FastSync(
                FastSyncError::Channel(ChannelError::Closed | ChannelError::Transport(_))
                | FastSyncError::Stalled(_)
                | FastSyncError::Cancelled {
                    resumable: true, ..
                },
            ) => true,
            _ => false,
        }
    }
}

/// The result type of storex-sync.
pub type Result<T, E = Error> = std::result::Result<T, E>;
