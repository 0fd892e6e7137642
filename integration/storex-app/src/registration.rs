//! Registering this database's device with the shared log: at its first open, or, when the
//! log could not be reached then (the app's first start was offline), before its first sync.
//! Until then the storage works locally, its writes logged under the device's id.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use storex_core::{BatchStep, Operation, Storage};
use storex_sync::{DeviceId, SharedLogError, SharedSyncLog};

use crate::error::Result;
use crate::synced::{setting_step, CREDENTIALS_KEY, SETTINGS_COLLECTION, UNREGISTERED_KEY};

/// How long the first open waits for the shared log to register the device before it opens
/// without (a network that drops packets would otherwise hold the app's start for minutes of
/// retries); the first sync that reaches the log registers it then.
pub const FIRST_REGISTRATION_WAIT: Duration = Duration::from_secs(5);

/// Registers `device` of `user`, as [`SharedSyncLog::register_device`]: `true` once it is,
/// `false` when the log cannot be reached (offline, a server down) or does not answer within
/// [`FIRST_REGISTRATION_WAIT`] (the request may still have reached it: registering again
/// later is idempotent); the error of a log that answered and refused.
pub(crate) async fn register_within_wait(
    log: &dyn SharedSyncLog,
    user: &str,
    device: DeviceId,
) -> Result<bool, SharedLogError> {
    match tokio::time::timeout(FIRST_REGISTRATION_WAIT, log.register_device(user, device)).await {
        Ok(Ok(())) => Ok(true),
        Ok(Err(SharedLogError::Unavailable { .. })) | Err(_) => Ok(false),
        Ok(Err(refused)) => Err(refused),
    }
}

/// A device's registration: done, or waiting for the shared log to answer.
pub(crate) struct Registration {
    log: Arc<dyn SharedSyncLog>,
    pending: tokio::sync::Mutex<Option<Pending>>,
    /// Set once the device is registered: read without waiting for a registration under way.
    registered: AtomicBool,
}

/// What a registration still to be made needs.
struct Pending {
    settings: Storage,
    user: String,
    device: DeviceId,
}

impl Registration {
    /// A device registered already.
    pub(crate) fn done(log: Arc<dyn SharedSyncLog>) -> Self {
        Registration {
            log,
            pending: tokio::sync::Mutex::new(None),
            registered: AtomicBool::new(true),
        }
    }

    /// `device` of `user`, to be registered before its first sync; `settings` keeps what the
    /// log issues for it.
    pub(crate) fn pending(
        log: Arc<dyn SharedSyncLog>,
        settings: Storage,
        user: String,
        device: DeviceId,
    ) -> Self {
        Registration {
            log,
            pending: tokio::sync::Mutex::new(Some(Pending {
                settings,
                user,
                device,
            })),
            registered: AtomicBool::new(false),
        }
    }

    /// Whether the device is registered (at once, also while a registration is under way).
    pub(crate) fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Acquire)
    }

    /// Registers the device if it still waits (one caller at a time); the error of a log that
    /// cannot be reached, or refuses, is returned and the next call tries again.
    pub(crate) async fn ensure(&self) -> Result<()> {
        if self.is_registered() {
            return Ok(());
        }
        let mut pending = self.pending.lock().await;
        if let Some(waiting) = pending.as_ref() {
            complete(
                self.log.as_ref(),
                &waiting.settings,
                &waiting.user,
                waiting.device,
            )
            .await?;
            *pending = None;
            self.registered.store(true, Ordering::Release);
        }
        Ok(())
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The user is a secret (a sync server's user token): not shown.
        f.debug_struct("Registration")
            .field("log", &self.log.name())
            .finish_non_exhaustive()
    }
}

/// Registers `device` of `user` whose id is in use already (it was opened offline), then
/// stores the credentials the log issued and removes the mark of a registration to make, in
/// one batch. (Registration is idempotent: if this batch is lost, the next try registers
/// again and gets the same device.)
async fn complete(
    log: &dyn SharedSyncLog,
    settings: &Storage,
    user: &str,
    device: DeviceId,
) -> Result<()> {
    log.register_device(user, device).await?;
    let mut steps = Vec::with_capacity(2);
    if let Some(credentials) = log.device_credentials(device) {
        steps.push(setting_step(settings, CREDENTIALS_KEY, &credentials).await?);
    }
    steps.push(BatchStep::new(Operation::delete_by_pk(
        SETTINGS_COLLECTION,
        UNREGISTERED_KEY,
    )));
    settings.batch(steps).await?;
    Ok(())
}
