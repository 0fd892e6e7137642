//! The wire format: the JSON bodies the sync server accepts and returns, shared by the server
//! and [`HttpSharedLog`](crate::HttpSharedLog). Entry payloads travel as base64 text.
//!
//! Requests refuse unknown fields, so a typo or a wrong type gets a 4xx with the reason
//! instead of being half understood.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use std::fmt;

use serde::de::{self, Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use storex_core::uuid::Uuid;
use storex_sync::{DeviceId, PulledEntry, SharedEntry, UnreadableEntry};

/// Routes, relative to the server's base URL.
pub mod routes {
    /// `POST` (admin token): create a user, returns [`UserCredentials`](super::UserCredentials).
    pub const USERS: &str = "/v1/users";
    /// `POST` (user token): register a device; `GET` (device token): list the user's devices.
    pub const DEVICES: &str = "/v1/devices";
    /// `DELETE /v1/devices/{device}` (user token): revoke a device.
    pub const DEVICE: &str = "/v1/devices/{device}";
    /// `POST` (device token): push entries.
    pub const PUSH: &str = "/v1/push";
    /// `POST` (device token): pull entries, optionally waiting for new ones (long poll).
    pub const PULL: &str = "/v1/pull";
    /// `POST` (device token): acknowledge a cursor.
    pub const ACK: &str = "/v1/ack";
    /// `POST` (user token): compact the user's log now.
    pub const COMPACT: &str = "/v1/compact";
    /// `GET`: liveness (the database answers) and the last push, JSON.
    pub const HEALTH: &str = "/health";
    /// `GET`: totals and counters in the Prometheus text format.
    pub const METRICS: &str = "/metrics";
}

/// `POST /v1/users`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// The user's name, unique on the server.
    pub name: String,
    /// The user token the client made (at least [`MIN_CLIENT_TOKEN_CHARS`] visible ASCII
    /// characters from a strong random source), so that a retried request whose first
    /// answer was lost gets the same user and token back (200) instead of a conflict. The
    /// server makes one when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A created user and its token (shown once; the server keeps only a hash).
#[derive(Clone, Serialize, Deserialize)]
pub struct UserCredentials {
    /// The user's name.
    pub user: String,
    /// The user token: registers devices, revokes them, compacts.
    pub token: String,
}

/// `POST /v1/devices` (optional body): registers the device under an id the app chose and
/// stored first, so that registering again after a lost answer registers the same device.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// The device id.
    pub device: Uuid,
    /// The device token the client made (at least [`MIN_CLIENT_TOKEN_CHARS`] visible ASCII
    /// characters from a strong random source), so that a retried request, even one the
    /// server finishes after the retry, sets the same token. The server makes one when it is
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The shortest device token a client may choose.
pub const MIN_CLIENT_TOKEN_CHARS: usize = 40;

/// The longest topic an entry may carry, in bytes. Topics are routing fields (a collection's
/// name, or a keyed hash of it), which the server reads back with every page it serves and
/// does not count against a page's byte budget: a push with a longer one is refused (400).
pub const MAX_TOPIC_BYTES: usize = 1_024;

/// Most topics one pull may name (a device subscribes to a few collections' topics).
pub const MAX_PULL_TOPICS: usize = 1_024;

/// What `Debug` shows of a token: that there is one, not the secret (an app may log these
/// values).
const REDACTED: &str = "<redacted>";

impl std::fmt::Debug for NewDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDevice")
            .field("device", &self.device)
            .field("token", &self.token.as_ref().map(|_| REDACTED))
            .finish()
    }
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| REDACTED))
            .finish()
    }
}

impl std::fmt::Debug for UserCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCredentials")
            .field("user", &self.user)
            .field("token", &REDACTED)
            .finish()
    }
}

impl std::fmt::Debug for DeviceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCredentials")
            .field("device", &self.device)
            .field("token", &REDACTED)
            .finish()
    }
}

/// A registered device and its token (shown once; the server keeps only a hash).
#[derive(Clone, Serialize, Deserialize)]
pub struct DeviceCredentials {
    /// The device id.
    pub device: Uuid,
    /// The device token every push, pull and ack carries.
    pub token: String,
}

/// One entry on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireEntry {
    /// The entry id.
    pub id: Uuid,
    /// The device that wrote it.
    pub device: Uuid,
    /// Its routing topic.
    pub topic: String,
    /// The payload, base64 (standard alphabet, padded).
    pub payload: String,
}

impl WireEntry {
    /// The wire form of `entry`.
    pub fn from_entry(entry: &SharedEntry) -> Self {
        WireEntry {
            id: entry.id,
            device: entry.device.0,
            topic: entry.topic.clone(),
            payload: BASE64.encode(&entry.payload),
        }
    }

    /// The entry, or why the payload is not base64.
    pub fn into_entry(self) -> Result<SharedEntry, String> {
        let payload = BASE64
            .decode(self.payload.as_bytes())
            .map_err(|e| format!("entry {}: payload is not base64: {e}", self.id))?;
        Ok(SharedEntry {
            id: self.id,
            device: DeviceId(self.device),
            topic: self.topic,
            payload,
        })
    }
}

/// `POST /v1/push`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// The entries, all of the calling device.
    pub entries: Vec<WireEntry>,
}

/// The answer to a push.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushResponse {
    /// The greatest cursor assigned, 0 when nothing was new.
    pub cursor: u64,
}

/// `POST /v1/pull`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// Entries above this cursor.
    pub after: u64,
    /// At most this many (the server caps it).
    pub limit: usize,
    /// Only these topics, when set (at most [`MAX_PULL_TOPICS`], each at most
    /// [`MAX_TOPIC_BYTES`] long: more, or a longer one, is refused as it is read).
    #[serde(default, deserialize_with = "bounded_topics")]
    pub topics: Option<Vec<String>>,
    /// When nothing is there yet, wait up to this long for new entries (the server caps it).
    #[serde(default)]
    pub wait_ms: u64,
    /// At most this many payload bytes, when set (the first entry comes whatever its size):
    /// a client on a slow link asks for what it can fetch within its timeout. Left out when
    /// not set, so that servers from before it take the request; a server then takes 1 MiB.
    /// A server takes at most three quarters of its body limit (what that carries in base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// Reads a pull's topics, refusing more than [`MAX_PULL_TOPICS`], or one longer than
/// [`MAX_TOPIC_BYTES`], as soon as it is met: a body of many tiny topics (`"",` is three
/// bytes, a `String` twenty-four) would otherwise make the server hold many times its size
/// before the count is checked.
fn bounded_topics<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    struct Topics;

    impl<'de> Visitor<'de> for Topics {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {MAX_PULL_TOPICS} topics")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut topics = Vec::new();
            while let Some(topic) = seq.next_element::<String>()? {
                if topics.len() == MAX_PULL_TOPICS {
                    return Err(A::Error::custom(format!(
                        "more than {MAX_PULL_TOPICS} topics asked for, at most \
                         {MAX_PULL_TOPICS} are taken"
                    )));
                }
                if topic.len() > MAX_TOPIC_BYTES {
                    return Err(A::Error::custom(format!(
                        "a topic of {} bytes asked for, at most {MAX_TOPIC_BYTES} are taken",
                        topic.len()
                    )));
                }
                topics.push(topic);
            }
            Ok(topics)
        }
    }

    struct MaybeTopics;

    impl<'de> Visitor<'de> for MaybeTopics {
        type Value = Option<Vec<String>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "null or a list of at most {MAX_PULL_TOPICS} topics")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_seq(Topics).map(Some)
        }
    }

    deserializer.deserialize_option(MaybeTopics)
}

/// One pulled entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WirePulled {
    /// Its cursor.
    pub cursor: u64,
    /// The entry.
    pub entry: WireEntry,
}

/// An entry the server's log could not read back, passed over
/// ([`storex_sync::UnreadableEntry`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireUnreadable {
    /// Its cursor.
    pub cursor: u64,
    /// What does not read.
    pub problem: String,
}

/// The answer to a pull.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PullResponse {
    /// Entries of the other devices, in cursor order.
    pub entries: Vec<WirePulled>,
    /// Entries within the page the log could not read back, passed over. Left out when
    /// there are none, as servers from before it did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<WireUnreadable>,
    /// Where the next pull starts.
    pub next_cursor: u64,
    /// True when more entries may follow right away.
    pub more: bool,
}

impl PullResponse {
    /// The wire form of a page: its entries, those that did not read, where the next starts
    /// and whether more follow.
    pub fn from_pulled(
        entries: &[PulledEntry],
        unreadable: &[UnreadableEntry],
        next_cursor: u64,
        more: bool,
    ) -> Self {
        PullResponse {
            entries: entries
                .iter()
                .map(|p| WirePulled {
                    cursor: p.cursor,
                    entry: WireEntry::from_entry(&p.entry),
                })
                .collect(),
            unreadable: unreadable
                .iter()
                .map(|u| WireUnreadable {
                    cursor: u.cursor,
                    problem: u.problem.clone(),
                })
                .collect(),
            next_cursor,
            more,
        }
    }
}

/// `POST /v1/ack`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// The device has integrated everything up to here.
    pub cursor: u64,
}

/// One device of the user.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireDevice {
    /// The device.
    pub device: Uuid,
    /// The cursor it acknowledged.
    pub acked: u64,
}

/// `GET /v1/devices`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevicesResponse {
    /// The user's devices.
    pub devices: Vec<WireDevice>,
}

/// The answer to a compaction.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompactResponse {
    /// Entries dropped.
    pub dropped: u64,
}

/// `GET /health`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"` when the database answers (otherwise the answer is a 503 error).
    pub status: String,
    /// When this instance last stored a push.
    pub last_push: Option<DateTime<Utc>>,
}

/// Every error the server returns: `{"error": {"code": …, "message": …}}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A server error: a stable machine-readable code, a message for people, and the numbers
/// some codes carry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code: `unauthorized`, `unknown_device`, `wrong_device`, `cursor_compacted`,
    /// `cursor_ahead`, `invalid_request`, `payload_too_large`, `too_many_entries`,
    /// `not_found`, `method_not_allowed`, `user_exists`, `rate_limited`, `busy`, `unavailable`.
    pub code: String,
    /// What happened, for people.
    pub message: String,
    /// `cursor_compacted`, `cursor_ahead`: the device's cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<u64>,
    /// `cursor_ahead`: the greatest cursor the log has given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_end: Option<u64>,
    /// `cursor_compacted`, `cursor_ahead`: entries up to here are gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted_through: Option<u64>,
    /// `wrong_device`: the device an entry named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other: Option<Uuid>,
}
