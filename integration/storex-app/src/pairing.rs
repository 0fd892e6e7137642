//! Device pairing for an initial sync: the device that has the data shows an offer code, the
//! new device accepts it and shows an answer code back; then the whole database moves over a
//! WebRTC data channel (fast sync) and the new device continues with continuous sync from the
//! sender's shared-log cursor, so nothing written meanwhile is lost.
//!
//! The codes are base64 text (QR-code ready). The channel is peer to peer with host
//! candidates only (no STUN server, no relay): both devices must reach each other directly,
//! e.g. on the same network. Each code carries the one local address its device offers:
//! 127.0.0.1 by default, which pairs two apps on one machine only; between devices, give
//! each its address on the network they share ([`SyncedStorage::offer_pairing_with`],
//! [`SyncedStorage::accept_pairing_with`], [`WebRtcOptions::with_bind`]). The app's
//! settings (the device id and its credentials) never leave the sender; other local-only
//! collections travel (it is a move of the whole database) unless the options' collection
//! list leaves them out.
//!
//! ```no_run
//! # async fn demo(old: storex_app::SyncedStorage, new: storex_app::SyncedStorage) -> storex_app::Result<()> {
//! use storex_app::SyncedStorage;
//! use storex_sync::fast_sync::FastSyncOptions;
//!
//! let options = FastSyncOptions::default();
//! // Old device: show the offer code.
//! let offer = old.offer_pairing().await?;
//! println!("{}", offer.code());
//! // New device: accept it and show the answer code.
//! let answer = SyncedStorage::accept_pairing(offer.code()).await?;
//! let answer_code = answer.code().to_owned();
//! // Then, each on its own device: the old one sends, the new one receives.
//! let (sent, received) = tokio::join!(
//!     old.send_to_paired(offer, &answer_code, &options),
//!     new.receive_from_paired(answer, &options),
//! );
//! println!("sent {} objects, received {}", sent?.objects, received?.objects);
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use storex_channel_webrtc::{PendingAnswer, PendingOffer, WebRtcChannel, WebRtcOptions};
use storex_core::uuid::Uuid;
use storex_sync::fast_sync::{
    decline_offer, read_offer, receive_offer, send_snapshot, FastSyncChannel, FastSyncOptions,
    Offer, TransferReport,
};
use storex_sync::DeviceId;

use crate::error::{Error, Result};
use crate::synced::{SyncedStorage, SETTINGS_COLLECTION};

/// The offer's property naming the sending device, which the new device looks for among its
/// account's devices on its shared log.
const SENDER_PROPERTY: &str = "storex.pairing.device";

/// How long the new device waits for its shared log to list its account's devices (at most
/// half the options' stall timeout, which the sender waits for an answer within).
const ACCOUNT_CHECK_WAIT: Duration = Duration::from_secs(10);

/// Why the new device declines a sender that is not one of its account's devices.
const ANOTHER_ACCOUNT: &str = "the sending device is not a device of the receiving device's \
    account on its shared log (another account, another shared log, or a device removed from \
    it): pair two devices that sync with the same account";

/// The offer of the device that sends its data: show [`PairingOffer::code`] to the new
/// device, then pass the answer to [`SyncedStorage::send_to_paired`].
pub struct PairingOffer {
    pending: PendingOffer,
    code: String,
}

impl fmt::Debug for PairingOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingOffer")
            .field("code_len", &self.code.len())
            .finish_non_exhaustive()
    }
}

impl PairingOffer {
    /// The offer code to show (base64).
    pub fn code(&self) -> &str {
        &self.code
    }

    /// Whether `answer_code` reads as an answer code, without taking the offer: check it
    /// before [`SyncedStorage::send_to_paired`], which ends the offer also when the code is
    /// mistyped, so that the person can type it again instead of pairing from the start.
    pub fn check_answer(&self, answer_code: &str) -> Result<()> {
        Ok(self.pending.check_answer(answer_code.trim())?)
    }
}

/// The answer of the new device: show [`PairingAnswer::code`] to the sending device, then
/// call [`SyncedStorage::receive_from_paired`].
pub struct PairingAnswer {
    pending: PendingAnswer,
    code: String,
}

impl fmt::Debug for PairingAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingAnswer")
            .field("code_len", &self.code.len())
            .finish_non_exhaustive()
    }
}

impl PairingAnswer {
    /// The answer code to show (base64).
    pub fn code(&self) -> &str {
        &self.code
    }
}

/// How long [`SyncedStorage::send_to_paired`] tries to sync before it sends the snapshot.
pub const SYNC_BEFORE_PAIRING: std::time::Duration = std::time::Duration::from_secs(15);

impl SyncedStorage {
    /// On the device that has the data: starts a pairing and returns the offer to show. It
    /// offers 127.0.0.1 (two apps on one machine); see [`SyncedStorage::offer_pairing_with`].
    pub async fn offer_pairing(&self) -> Result<PairingOffer> {
        self.offer_pairing_with(&WebRtcOptions::default()).await
    }

    /// [`SyncedStorage::offer_pairing`] with `options`: the local address to offer (this
    /// device's address on the network it shares with the new one), how long to wait for the
    /// new device to connect.
    pub async fn offer_pairing_with(&self, options: &WebRtcOptions) -> Result<PairingOffer> {
        let (pending, code) = WebRtcChannel::offer_with(options).await?;
        Ok(PairingOffer { pending, code })
    }

    /// On the new device: accepts an offer code and returns the answer to show back. It
    /// answers with 127.0.0.1; see [`SyncedStorage::accept_pairing_with`].
    pub async fn accept_pairing(offer_code: &str) -> Result<PairingAnswer> {
        Self::accept_pairing_with(offer_code, &WebRtcOptions::default()).await
    }

    /// [`SyncedStorage::accept_pairing`] with `options`: the local address to answer with,
    /// how long to wait for the sender to connect.
    pub async fn accept_pairing_with(
        offer_code: &str,
        options: &WebRtcOptions,
    ) -> Result<PairingAnswer> {
        let (pending, code) = WebRtcChannel::accept_with(offer_code.trim(), options).await?;
        Ok(PairingAnswer { pending, code })
    }

    /// On the device that has the data: connects with the new device's answer and sends a
    /// snapshot of every synced collection, with the shared-log cursor for the handoff.
    ///
    /// Once connected, it syncs once (for at most [`SYNC_BEFORE_PAIRING`], or half the
    /// options' stall timeout if that is shorter), so that changes this device has not pushed
    /// yet reach the shared log: the new device receives them as already shared, and the
    /// other devices must not depend on this one staying around (it is often wiped next).
    /// When that sync fails (offline, say), the transfer goes ahead and the report's
    /// `unpushed` counts the changes that reach the other devices only when this device next
    /// syncs: tell the user to sync it before wiping it. (The sync comes after the channel
    /// opens: the new device waits for the channel only its connect timeout, and then for
    /// the offer the stall timeout, which the sync fits in. A mistyped answer code fails at
    /// once.)
    pub async fn send_to_paired(
        &self,
        offer: PairingOffer,
        answer_code: &str,
        options: &FastSyncOptions,
    ) -> Result<TransferReport> {
        let mut channel = offer.pending.connect(answer_code.trim()).await?;
        let before = SYNC_BEFORE_PAIRING.min(options.stall_timeout / 2);
        let _ = tokio::time::timeout(before, self.sync_once()).await;
        let report =
            send_snapshot(self.device(), &mut channel, &self.pairing_options(options)).await?;
        channel.close().await;
        Ok(report)
    }

    /// `options` limited to what a paired device may receive: never this device's settings
    /// (its id and credentials belong to it alone).
    fn pairing_options(&self, options: &FastSyncOptions) -> FastSyncOptions {
        let storage = self.device().storage();
        let shareable: Vec<String> = storage
            .registry()
            .collections()
            .map(|c| c.name().to_owned())
            .filter(|name| name != SETTINGS_COLLECTION)
            .filter(|name| {
                options
                    .collections
                    .as_ref()
                    .is_none_or(|wanted| wanted.contains(name))
            })
            .collect();
        let mut options = options
            .clone()
            .with_property(SENDER_PROPERTY, self.device_id().to_string());
        options.collections = Some(shareable);
        options
    }

    /// On the new device: waits for the sender and applies what it sends; afterwards this
    /// device's continuous sync starts from the sender's cursor.
    ///
    /// From the moment the copy begins until it finishes, this device's syncs pull nothing
    /// (`SyncReport::waiting_for_copy`). If it fails midway (the channel dropped), or the app
    /// is killed or drops this future, the device stays so: pair again with a device that
    /// has the data (that copy completes and the device pulls again), or give the copy up
    /// with `self.device().abandon_transfers()`. `self.device().unfinished_copy()` tells
    /// whether one is pending, say when the app starts.
    ///
    /// The sender must sync with this device's account and shared log: one this device's log
    /// does not list among the account's devices, although it has synced (it hands over a
    /// cursor), is declined before anything is copied, and both sides fail with the reason.
    /// A device not registered yet (its first start was offline) is registered first. When
    /// the log still cannot tell (this device is offline, or the sender is of a version that
    /// does not say which device it is), the copy goes ahead without the sender's cursor:
    /// this device then pulls the shared log from the start, and recognises what the copy
    /// brought. If the log was compacted since the account's first changes, that pull fails
    /// with `CursorCompacted` and the device needs a new copy, made while it can reach the
    /// log.
    pub async fn receive_from_paired(
        &self,
        answer: PairingAnswer,
        options: &FastSyncOptions,
    ) -> Result<TransferReport> {
        let mut channel = answer.pending.open().await?;
        let report = self.receive_checked(&mut channel, options).await;
        // The last acknowledgement must reach the sender even if the app exits next.
        channel.close().await;
        report
    }

    /// Reads the sender's offer on `channel`, checks the sender's account and receives.
    async fn receive_checked(
        &self,
        channel: &mut dyn FastSyncChannel,
        options: &FastSyncOptions,
    ) -> Result<TransferReport> {
        let offer = read_offer(channel, options).await?;
        let account = match self.sender_of_this_account(&offer, options).await {
            Ok(account) => account,
            // The copy would go ahead, but no sync after it could: say so now, and to the
            // sender too.
            Err(refusal) => {
                let reason = format!(
                    "the receiving device's shared log refused it: {}",
                    storex_core::error_chain(&refusal)
                );
                let _ = decline_offer(channel, options, reason).await;
                return Err(refusal);
            }
        };
        let offer = match account {
            Some(true) => offer,
            Some(false) if offer.cursor() > 0 => {
                return Err(decline_offer(channel, options, ANOTHER_ACCOUNT)
                    .await
                    .into());
            }
            // A sender that never synced hands over nothing, and may not be registered yet.
            Some(false) | None => offer.without_cursor(),
        };
        Ok(receive_offer(self.device(), channel, offer, options).await?)
    }

    /// Whether the sender of `offer` is one of this device's account's devices on its
    /// shared log; `None` when that cannot be told: the offer does not name the sender, or
    /// the log cannot be reached in time to register this device (its first start was
    /// offline) or list the account's devices. The log's refusal (of this device, of its
    /// credentials) is an error.
    async fn sender_of_this_account(
        &self,
        offer: &Offer,
        options: &FastSyncOptions,
    ) -> Result<Option<bool>> {
        let Some(sender) = offer
            .properties()
            .get(SENDER_PROPERTY)
            .and_then(|sender| Uuid::parse_str(sender).ok())
        else {
            return Ok(None);
        };
        let wait = ACCOUNT_CHECK_WAIT.min(options.stall_timeout / 2);
        // A device not registered yet is registered now, as its next sync would: without it
        // the log lists nothing, and the copy would go without the sender's cursor.
        let listing = async {
            match self.registration.ensure().await {
                Ok(()) => {}
                Err(Error::SharedLog(e)) if !e.is_transient() => return Err(Error::SharedLog(e)),
                Err(_) => return Ok(None),
            }
            match self
                .continuous()
                .shared_log()
                .devices(self.device_id())
                .await
            {
                Ok(devices) => Ok(Some(devices)),
                Err(e) if !e.is_transient() => Err(Error::SharedLog(e)),
                Err(_) => Ok(None),
            }
        };
        let Ok(listed) = tokio::time::timeout(wait, listing).await else {
            return Ok(None);
        };
        Ok(listed?.map(|devices| devices.iter().any(|info| info.device == DeviceId(sender))))
    }
}
