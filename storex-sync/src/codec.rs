//! Turning log entries into shared-log payloads and back, optionally end-to-end encrypted.
//!
//! Without a key, a payload is the entry encoded (format 2: a byte `2`, then the entry as
//! MessagePack with field names; format 1, the entry as JSON, still decodes) and its topic is
//! the collection's name. With a key (32 bytes, provided by the app and never sent anywhere),
//! the payload is the encoded entry sealed with XChaCha20-Poly1305, and the topic a keyed
//! hash of the collection, so the shared log sees only routing fields: entry id, device, an
//! opaque topic and the cursor it assigns. The routing fields are bound to the ciphertext as
//! associated data, so a payload moved to another id or device fails to open. The nonce is
//! the entry's unique id followed by 8 bytes of a keyed hash of the encoded entry, which
//! lead the payload: an entry is always sealed the same way, and two different plaintexts
//! never share a nonce, even under one id (an entry pushed again by a version that encodes
//! it otherwise). Payloads of earlier versions, sealed under the id alone, still open.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest as _, Sha256};
use storex_core::serde_json;

use crate::entry::LogEntry;
use crate::shared_log::SharedEntry;

/// How many bytes of an encrypted payload's nonce come from its plaintext (the other 16 are
/// the entry id); they lead the payload.
const NONCE_TAIL: usize = 8;

/// The first byte of a payload in the current format (MessagePack). A payload of format 1
/// (JSON, written by earlier versions) starts with `{`.
const PAYLOAD_FORMAT: u8 = 2;

/// An entry in the current payload format.
fn encode_entry(entry: &LogEntry) -> Vec<u8> {
    // Room for the usual size (the names and routing fields take about 150 bytes), so that
    // encoding rarely grows the buffer.
    let mut bytes = Vec::with_capacity(192 + 48 * entry.fields.len());
    bytes.push(PAYLOAD_FORMAT);
    // Encoding plain data into a Vec cannot fail.
    let _ = rmp_serde::encode::write_named(&mut bytes, entry);
    bytes
}

/// An entry from a payload of either format.
fn decode_entry(bytes: &[u8]) -> Result<LogEntry, DecodeError> {
    let malformed = |e: String| DecodeError::Malformed(e);
    match bytes.split_first() {
        Some((&PAYLOAD_FORMAT, body)) => {
            let mut reader = std::io::Cursor::new(body);
            let entry = rmp_serde::from_read(&mut reader).map_err(|e| malformed(e.to_string()))?;
            if reader.position() != body.len() as u64 {
                return Err(malformed("bytes follow the entry".into()));
            }
            Ok(entry)
        }
        Some((b'{', _)) => serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string())),
        Some((other, _)) => Err(malformed(format!(
            "format {other}, this version reads 1 (JSON) and {PAYLOAD_FORMAT}"
        ))),
        None => Err(malformed("the payload is empty".into())),
    }
}

/// Encodes entries for a shared log, encrypting them when given a key.
#[derive(Clone, Default)]
pub struct EntryCodec {
    key: Option<[u8; 32]>,
}

impl fmt::Debug for EntryCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntryCodec")
            .field("encrypted", &self.key.is_some())
            .finish()
    }
}

/// Why a pulled payload could not be turned back into an entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Decryption failed: a wrong key, or a payload that was changed or moved.
    #[error("the payload does not decrypt with this device's key")]
    Decrypt,
    /// The payload is not a serialized entry.
    #[error("the payload is not a sync entry: {0}")]
    Malformed(String),
    /// The entry inside names another id, device or topic than its routing fields.
    #[error("the entry does not match its routing fields")]
    Mismatch,
}

impl EntryCodec {
    /// Payloads in the clear.
    pub fn plain() -> Self {
        EntryCodec { key: None }
    }

    /// Payloads sealed with `key`.
    pub fn encrypted(key: [u8; 32]) -> Self {
        EntryCodec { key: Some(key) }
    }

    /// True when payloads are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.key.is_some()
    }

    /// The topic entries of `collection` are filed under.
    pub fn topic(&self, collection: &str) -> String {
        match &self.key {
            None => collection.to_owned(),
            Some(key) => keyed_hash(b"storex-topic\0", key, collection.as_bytes())[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        }
    }

    fn aad(entry: &SharedEntry) -> Vec<u8> {
        let mut aad = Vec::with_capacity(32);
        aad.extend_from_slice(entry.id.as_bytes());
        aad.extend_from_slice(entry.device.0.as_bytes());
        aad
    }

    /// The nonce of `entry`'s payload: its id, then `tail` (all zeros in payloads of earlier
    /// versions).
    fn nonce(entry: &SharedEntry, tail: &[u8; NONCE_TAIL]) -> XNonce {
        let mut nonce = [0u8; 24];
        nonce[..16].copy_from_slice(entry.id.as_bytes());
        nonce[16..].copy_from_slice(tail);
        XNonce::from(nonce)
    }

    /// The part of the nonce taken from the plaintext: a hash of it keyed with `key`, so
    /// that it tells nothing of the plaintext without the key.
    fn nonce_tail(key: &[u8; 32], encoded: &[u8]) -> [u8; NONCE_TAIL] {
        let mut tail = [0u8; NONCE_TAIL];
        tail.copy_from_slice(&keyed_hash(b"storex-nonce\0", key, encoded)[..NONCE_TAIL]);
        tail
    }

    /// The shared-log form of `entry`.
    pub fn encode(&self, entry: &LogEntry) -> SharedEntry {
        let encoded = encode_entry(entry);
        let mut shared = SharedEntry {
            id: entry.id,
            device: entry.device,
            topic: self.topic(&entry.collection),
            payload: Vec::new(),
        };
        shared.payload = match &self.key {
            None => encoded,
            Some(key) => {
                let cipher = XChaCha20Poly1305::new(key.into());
                let aad = Self::aad(&shared);
                let tail = Self::nonce_tail(key, &encoded);
                let sealed = cipher
                    .encrypt(
                        &Self::nonce(&shared, &tail),
                        Payload {
                            msg: &encoded,
                            aad: &aad,
                        },
                    )
                    .unwrap_or_default();
                let mut payload = Vec::with_capacity(NONCE_TAIL + sealed.len());
                payload.extend_from_slice(&tail);
                payload.extend_from_slice(&sealed);
                payload
            }
        };
        shared
    }

    /// The entry inside a pulled payload.
    pub fn decode(&self, shared: &SharedEntry) -> Result<LogEntry, DecodeError> {
        let opened;
        let encoded = match &self.key {
            None => &shared.payload,
            Some(key) => {
                let cipher = XChaCha20Poly1305::new(key.into());
                let aad = Self::aad(shared);
                let open = |tail: &[u8; NONCE_TAIL], msg: &[u8]| {
                    cipher.decrypt(&Self::nonce(shared, tail), Payload { msg, aad: &aad })
                };
                // This version's form (the nonce's tail first), else an earlier version's
                // (the id alone): only the right one passes the authentication tag.
                let current = shared
                    .payload
                    .split_first_chunk::<NONCE_TAIL>()
                    .and_then(|(tail, sealed)| open(tail, sealed).ok());
                opened = match current {
                    Some(opened) => opened,
                    None => {
                        open(&[0; NONCE_TAIL], &shared.payload).map_err(|_| DecodeError::Decrypt)?
                    }
                };
                &opened
            }
        };
        let entry = decode_entry(encoded)?;
        // The routing fields must be the entry's own: a log that re-filed a payload under
        // another topic (or device) would route it to devices that did not subscribe to it.
        if entry.id != shared.id
            || entry.device != shared.device
            || entry.hlc.device != shared.device
            || self.topic(&entry.collection) != shared.topic
        {
            return Err(DecodeError::Mismatch);
        }
        Ok(entry)
    }
}

/// SHA-256 of `data` keyed with `key`, under `label` (one label a use, so that no two uses
/// hash alike).
fn keyed_hash(label: &[u8], key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(label);
    hash.update(key);
    hash.update(data);
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use storex_core::uuid::Uuid;
    use storex_core::{object, Pk, Value};

    use super::*;
    use crate::entry::EntryOp;
    use crate::hlc::{DeviceId, Hlc};

    fn entry() -> LogEntry {
        let device = DeviceId::random();
        LogEntry {
            id: Uuid::now_v7(),
            device,
            hlc: Hlc {
                millis: 1,
                counter: 2,
                device,
            },
            collection: "diary".into(),
            pk: Pk::from(7),
            op: EntryOp::Create,
            fields: object! { "id" => 7, "text" => "a secret" },
            schema_version: 1,
        }
    }

    #[test]
    fn plain_payloads_round_trip_and_name_their_collection() {
        let codec = EntryCodec::plain();
        let e = entry();
        let shared = codec.encode(&e);
        assert_eq!(shared.topic, "diary");
        assert_eq!(shared.payload[0], PAYLOAD_FORMAT);
        assert_eq!(codec.decode(&shared), Ok(e));
    }

    #[test]
    fn every_kind_of_value_round_trips_exactly() {
        let codec = EntryCodec::plain();
        let mut e = entry();
        e.pk = Pk::from(Uuid::now_v7());
        e.fields = object! {
            "null" => Value::Null,
            "text" => "a \"quoted\" text",
            "int" => i64::MIN,
            "float" => 0.1f64 + 0.2,
            "bool" => true,
            "when" => Value::DateTime(storex_core::chrono::Utc::now()),
            "json" => Value::Json(storex_core::serde_json::json!({"a": [1, 2.5, null]})),
            "blob" => Value::Blob(vec![0, 255, 7]),
            "uuid" => Uuid::now_v7(),
        };
        assert_eq!(codec.decode(&codec.encode(&e)), Ok(e.clone()));
        let sealed = EntryCodec::encrypted([3; 32]);
        assert_eq!(sealed.decode(&sealed.encode(&e)), Ok(e));
    }

    #[test]
    fn blobs_travel_as_byte_strings_and_arrays_of_numbers_still_read() {
        let blob = Value::Blob(vec![200; 100]);
        let packed = rmp_serde::to_vec_named(&blob).expect("encode");
        assert!(packed.len() < 110, "{} bytes", packed.len());
        // As earlier versions wrote it: a number a byte (two bytes each past 127).
        #[derive(serde::Serialize)]
        #[serde(rename_all = "snake_case")]
        enum Earlier {
            Blob(Vec<u8>),
        }
        let earlier = rmp_serde::to_vec_named(&Earlier::Blob(vec![200; 100])).expect("encode");
        assert!(earlier.len() > 200, "{} bytes", earlier.len());
        assert_eq!(
            rmp_serde::from_slice::<Value>(&earlier).expect("decode"),
            blob
        );
    }

    #[test]
    fn payloads_of_the_first_format_still_decode_and_are_larger() {
        let codec = EntryCodec::plain();
        let e = entry();
        let mut first = codec.encode(&e);
        first.payload = serde_json::to_vec(&e).expect("json");
        assert_eq!(codec.decode(&first), Ok(e.clone()));
        let current = codec.encode(&e);
        assert!(
            current.payload.len() < first.payload.len(),
            "{} bytes against {} as JSON",
            current.payload.len(),
            first.payload.len()
        );
    }

    #[test]
    fn encrypted_payloads_hide_the_entry_and_its_collection() {
        let codec = EntryCodec::encrypted([7; 32]);
        let e = entry();
        let shared = codec.encode(&e);
        let visible = String::from_utf8_lossy(&shared.payload);
        assert!(!visible.contains("secret") && !visible.contains("diary"));
        assert_ne!(shared.topic, "diary");
        assert_eq!(
            shared.topic,
            codec.topic("diary"),
            "topics are stable for subscriptions"
        );
        assert_eq!(codec.decode(&shared), Ok(e));
    }

    #[test]
    fn two_plaintexts_under_one_id_never_share_a_nonce_and_one_entry_seals_alike() {
        let codec = EntryCodec::encrypted([7; 32]);
        let e = entry();
        let shared = codec.encode(&e);
        assert_eq!(codec.encode(&e), shared, "sealed the same way every time");
        // The same id, another plaintext (as a version that encodes the entry otherwise
        // would push it again).
        let mut other = e.clone();
        other.fields = object! { "id" => 7, "text" => "another secret" };
        let again = codec.encode(&other);
        assert_eq!(again.id, shared.id);
        assert_ne!(
            again.payload[..NONCE_TAIL],
            shared.payload[..NONCE_TAIL],
            "the nonces differ"
        );
        assert_eq!(codec.decode(&again), Ok(other));
    }

    #[test]
    fn payloads_sealed_under_the_id_alone_still_open() {
        let key = [7; 32];
        let e = entry();
        let mut earlier = EntryCodec::plain().encode(&e);
        earlier.topic = EntryCodec::encrypted(key).topic(&e.collection);
        let plaintext = std::mem::take(&mut earlier.payload);
        let cipher = XChaCha20Poly1305::new((&key).into());
        let aad = EntryCodec::aad(&earlier);
        earlier.payload = cipher
            .encrypt(
                &EntryCodec::nonce(&earlier, &[0; NONCE_TAIL]),
                Payload {
                    msg: &plaintext,
                    aad: &aad,
                },
            )
            .expect("seal");
        assert_eq!(EntryCodec::encrypted(key).decode(&earlier), Ok(e));
    }

    #[test]
    fn a_wrong_key_or_a_moved_payload_does_not_open() {
        let e = entry();
        let shared = EntryCodec::encrypted([7; 32]).encode(&e);
        assert_eq!(
            EntryCodec::encrypted([8; 32]).decode(&shared),
            Err(DecodeError::Decrypt)
        );
        let mut moved = shared.clone();
        moved.id = Uuid::now_v7();
        assert_eq!(
            EntryCodec::encrypted([7; 32]).decode(&moved),
            Err(DecodeError::Decrypt)
        );
        let mut tampered = shared;
        tampered.payload[0] ^= 1;
        assert_eq!(
            EntryCodec::encrypted([7; 32]).decode(&tampered),
            Err(DecodeError::Decrypt)
        );
    }

    #[test]
    fn garbage_is_reported_not_panicked_on() {
        let codec = EntryCodec::plain();
        let mut shared = codec.encode(&entry());
        for garbage in [
            b"\xff\x00 not json".to_vec(),
            b"\x02\xc1 not msgpack".to_vec(),
            [codec.encode(&entry()).payload, b"more".to_vec()].concat(),
            b"{ not json".to_vec(),
            Vec::new(),
        ] {
            shared.payload = garbage;
            assert!(matches!(
                codec.decode(&shared),
                Err(DecodeError::Malformed(_))
            ));
        }
        let mut other = codec.encode(&entry());
        other.device = DeviceId::random();
        assert_eq!(codec.decode(&other), Err(DecodeError::Mismatch));
    }

    #[test]
    fn a_payload_filed_under_another_topic_is_refused() {
        for codec in [EntryCodec::plain(), EntryCodec::encrypted([7; 32])] {
            let mut refiled = codec.encode(&entry());
            assert!(codec.decode(&refiled).is_ok());
            refiled.topic = codec.topic("another");
            assert_eq!(codec.decode(&refiled), Err(DecodeError::Mismatch));
        }
    }
}
