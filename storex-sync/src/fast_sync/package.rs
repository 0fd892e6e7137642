//! The fast-sync protocol's messages and their versioned binary encoding (MessagePack).
//!
//! A session: the sender says `Hello` (protocol version, session id, collections with their
//! object counts, its shared-log cursor); the receiver answers `Ready` with the last batch it
//! applied in this session, if any (so an interrupted session resumes); the sender streams
//! `Batch`es, at most a window of them unacknowledged, each acknowledged with `Ack` once
//! applied; after each collection a `CollectionDone` with its count and checksum; then
//! `Finish`, answered by `Done`. Either side may send `Pause`/`Resume` and `Cancel`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use storex_core::uuid::Uuid;
use storex_core::{CollectionDef, Object};

use crate::fast_sync::channel::ChannelError;
use crate::fast_sync::shape;
use crate::hlc::Hlc;

/// The version of the protocol this build speaks; the first byte of every frame.
pub const PROTOCOL_VERSION: u8 = 5;

/// The most objects one batch may carry: a frame that claims more is refused while it is
/// decoded, before its objects fill memory (a frame of empty objects decodes to far more
/// memory than it takes on the wire).
pub const MAX_BATCH_OBJECTS: usize = 100_000;

/// A batch's objects, each in its canonical encoding (MessagePack, fields in name order).
///
/// The sender encodes each object once: for the frame, for its size and for the checksum.
/// The receiver checks the checksum over the bytes it received and reads the objects back
/// with [`EncodedObjects::decode`]. On the wire, a list of byte strings; decoding refuses
/// more than [`MAX_BATCH_OBJECTS`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EncodedObjects {
    objects: Vec<Vec<u8>>,
    bytes: usize,
}

/// The count and size only: the bytes of a batch of many megabytes, printed as numbers,
/// would make an error message of hundreds.
impl std::fmt::Debug for EncodedObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedObjects")
            .field("objects", &self.objects.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// The longest reason a `Cancel` carries, in bytes; a longer one is cut (on both sides: a
/// peer's reason is not trusted to be short).
pub const MAX_CANCEL_REASON_BYTES: usize = 4096;

/// `text` cut to at most `max` bytes, at a character boundary, marked when cut.
pub(crate) fn bounded(text: String, max: usize) -> String {
    crate::text::cut(text, max, "...")
}

impl EncodedObjects {
    /// No object yet.
    pub fn new() -> Self {
        EncodedObjects::default()
    }

    /// The encodings of `objects`, in order.
    pub fn encode<'a>(objects: impl IntoIterator<Item = &'a Object>) -> Self {
        let mut encoded = EncodedObjects::new();
        for object in objects {
            encoded.push(encode_object(object));
        }
        encoded
    }

    /// Adds an object's encoding (from [`encode_object`]).
    pub fn push(&mut self, encoded: Vec<u8>) {
        self.bytes += encoded.len();
        self.objects.push(encoded);
    }

    /// How many objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// True when there is no object.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The size of the encodings together, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Each object's encoding, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.objects.iter().map(Vec::as_slice)
    }

    /// Reads the objects back; refuses an encoding that is not an object, and objects that
    /// nest more than 64 levels deep or hold more than 4 million values together (a bound
    /// on the memory they take once decoded).
    pub fn decode(&self) -> Result<Vec<Object>, ChannelError> {
        let mut budget = shape::MAX_VALUES;
        self.objects
            .iter()
            .enumerate()
            .map(|(n, bytes)| {
                let malformed = |problem| ChannelError::Malformed {
                    problem: format!("object {} of the batch: {problem}", n + 1),
                };
                shape::check(bytes, &mut budget).map_err(malformed)?;
                rmp_serde::from_slice(bytes).map_err(|e| malformed(e.to_string()))
            })
            .collect()
    }
}

/// The canonical encoding of one object (fields in name order), for frames, sizes and
/// checksums.
pub fn encode_object(object: &Object) -> Vec<u8> {
    // Encoding plain data into a Vec cannot fail.
    rmp_serde::to_vec_named(object).unwrap_or_default()
}

impl Serialize for EncodedObjects {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.objects.len()))?;
        for object in &self.objects {
            seq.serialize_element(&AsBytes(object))?;
        }
        seq.end()
    }
}

/// One object's encoding, written as a byte string.
struct AsBytes<'a>(&'a [u8]);

impl Serialize for AsBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// One object's encoding, read from a byte string.
struct ByteString(Vec<u8>);

impl<'de> Deserialize<'de> for ByteString {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteString;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "an encoded object")
            }

            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<ByteString, E> {
                Ok(ByteString(bytes.to_vec()))
            }

            fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<ByteString, E> {
                Ok(ByteString(bytes))
            }
        }

        deserializer.deserialize_byte_buf(Visitor)
    }
}

impl<'de> Deserialize<'de> for EncodedObjects {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bounded;

        impl<'de> serde::de::Visitor<'de> for Bounded {
            type Value = EncodedObjects;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "at most {MAX_BATCH_OBJECTS} encoded objects")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut objects = EncodedObjects {
                    objects: Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1_024)),
                    bytes: 0,
                };
                while let Some(ByteString(object)) = seq.next_element()? {
                    if objects.len() == MAX_BATCH_OBJECTS {
                        return Err(serde::de::Error::custom(format!(
                            "a batch of more than {MAX_BATCH_OBJECTS} objects"
                        )));
                    }
                    objects.push(object);
                }
                Ok(objects)
            }
        }

        deserializer.deserialize_seq(Bounded)
    }
}

/// A collection the sender will send.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollectionInfo {
    /// Its name.
    pub name: String,
    /// Its schema version on the sender.
    pub schema_version: u32,
    /// How many objects it has (for sync's versions index, at most this many: the sender's
    /// log entries are folded into it, several into one object's row).
    pub objects: u64,
}

/// One fast-sync message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Package {
    /// Sender → receiver: what is coming.
    Hello {
        /// Identifies the session, so a reconnect can resume it.
        session: Uuid,
        /// The collections, in the order they are sent.
        collections: Vec<CollectionInfo>,
        /// The definitions of the app's collections among them, so that a device without
        /// a schema of its own (a fresh migration target) can create them.
        definitions: Vec<CollectionDef>,
        /// The sender's shared-log cursor at the snapshot, where the receiver's continuous
        /// sync goes on from when it holds for what the receiver pulls (0 when the copy
        /// leaves out a synced collection).
        cursor: u64,
        /// The sender's clock when it began: at least every timestamp it sends. The
        /// receiver's clock moves past it first, so that what the app writes there while
        /// the transfer runs is later than everything sent. (Absent from senders from before
        /// it: the receiver's clock then learns the timestamps as they come.)
        #[serde(default)]
        latest: Option<Hlc>,
        /// The fingerprint of the topics the sender's continuous sync pulls, for which its
        /// `cursor` holds (0: all of them): a receiver whose own subscription differs from a
        /// fingerprint other than 0 pulls again from the start. `None` when the sender has
        /// never synced, when the copy leaves out a synced collection (the cursor is 0 then),
        /// or from a sender from before this field.
        #[serde(default)]
        subscription: Option<i64>,
        /// Payloads the sender pulled but could not open (its quarantine), which lie behind
        /// the cursor it hands over: sent after everything else to a receiver that asks for
        /// them in `Ready` (one from before this field does not ask, and gets the rest). 0
        /// when a filter hook leaves objects out or no cursor is handed over.
        #[serde(default)]
        quarantined: u64,
        /// Named values the sender's app hands to the receiver's app with the offer
        /// ([`crate::fast_sync::FastSyncOptions::with_property`]); storex reads none of
        /// them. (Absent from senders from before it, and left out when empty.)
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        properties: BTreeMap<String, String>,
    },
    /// Receiver → sender: ready; `resume_after` is the last batch already applied.
    Ready {
        /// The last batch of this session the receiver applied, if any.
        resume_after: Option<u64>,
        /// The receiver has data of its own and merges: the versions the sender sends carry
        /// the values of the objects' rows, which the receiver may not take as they are.
        #[serde(default)]
        merge: bool,
        /// The receiver takes the sender's quarantine (see `Hello::quarantined`).
        #[serde(default)]
        quarantine: bool,
    },
    /// Sender → receiver: objects of one collection.
    Batch {
        /// Sequence number, from 1.
        seq: u64,
        /// The collection.
        collection: String,
        /// The objects, encoded (at most [`MAX_BATCH_OBJECTS`]).
        objects: EncodedObjects,
    },
    /// Receiver → sender: batch `seq` is applied and durable.
    Ack {
        /// The batch.
        seq: u64,
    },
    /// Sender → receiver: a collection is complete.
    CollectionDone {
        /// The collection.
        collection: String,
        /// How many objects were sent in all.
        objects: u64,
        /// Checksum over the batches (see the receiver).
        checksum: String,
    },
    /// Sender → receiver: everything was sent.
    Finish,
    /// Receiver → sender: everything is applied.
    Done,
    /// Either side: paused; the other waits without timing out.
    Pause,
    /// Either side: resumed after a pause.
    Resume,
    /// Either side: the session ends.
    Cancel {
        /// Why.
        reason: String,
        /// The sender's failure may pass (its database was busy or gone for a moment): the
        /// session can be resumed. (Absent from peers from before it: false.)
        #[serde(default)]
        resumable: bool,
    },
}

impl Package {
    /// A short description for messages: its kind and numbers, never its objects, and names
    /// from the peer cut to a few dozen bytes.
    pub fn summary(&self) -> String {
        let name = |text: &str| bounded(text.to_owned(), 64);
        match self {
            Package::Hello { session, .. } => format!("Hello of session {session}"),
            Package::Ready { resume_after, .. } => format!("Ready after batch {resume_after:?}"),
            Package::Batch {
                seq,
                collection,
                objects,
            } => format!(
                "Batch {seq} of {} ({} objects)",
                name(collection),
                objects.len()
            ),
            Package::Ack { seq } => format!("Ack of batch {seq}"),
            Package::CollectionDone { collection, .. } => {
                format!("CollectionDone of {}", name(collection))
            }
            Package::Finish => "Finish".to_owned(),
            Package::Done => "Done".to_owned(),
            Package::Pause => "Pause".to_owned(),
            Package::Resume => "Resume".to_owned(),
            Package::Cancel { reason, .. } => format!("Cancel ({})", bounded(reason.clone(), 256)),
        }
    }

    /// The frame for this package: the protocol version, then MessagePack.
    pub fn encode(&self) -> Vec<u8> {
        let capacity = match self {
            Package::Batch { objects, .. } => 64 + objects.bytes() + 5 * objects.len(),
            _ => 64,
        };
        let mut frame = Vec::with_capacity(capacity);
        frame.push(PROTOCOL_VERSION);
        // Encoding plain data into a Vec cannot fail; if it did, the frame would not decode.
        let _ = rmp_serde::encode::write_named(&mut frame, self);
        frame
    }

    /// Reads a frame back; refuses other versions, garbage, truncated frames, bytes after the
    /// package, and packages that nest more than 64 levels deep or hold more than 4 million
    /// values, before decoding them.
    pub fn decode(frame: &[u8]) -> Result<Package, ChannelError> {
        let Some((&version, body)) = frame.split_first() else {
            return Err(ChannelError::Malformed {
                problem: "an empty frame".into(),
            });
        };
        if version != PROTOCOL_VERSION {
            return Err(ChannelError::WrongVersion {
                found: version,
                expected: PROTOCOL_VERSION,
            });
        }
        let mut budget = shape::MAX_VALUES;
        shape::check(body, &mut budget).map_err(|problem| ChannelError::Malformed { problem })?;
        rmp_serde::from_slice(body).map_err(|e| ChannelError::Malformed {
            problem: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use storex_core::chrono::{TimeZone, Utc};
    use storex_core::{object, serde_json, Value};

    use super::*;

    #[test]
    fn packages_round_trip_with_every_value_type() {
        let object = object! {
            "t" => "ünï", "i" => i64::MIN, "f" => 0.1, "b" => true, "n" => Value::Null,
            "d" => Utc.timestamp_opt(1_700_000_000, 5_000).single().expect("valid"),
            "j" => serde_json::json!({"a": [1, null, "x"]}), "x" => vec![0u8, 255], "u" => Uuid::now_v7(),
        };
        let package = Package::Batch {
            seq: 7,
            collection: "note".into(),
            objects: EncodedObjects::encode(std::slice::from_ref(&object)),
        };
        let Package::Batch { objects, .. } = Package::decode(&package.encode()).expect("decode")
        else {
            panic!("not a batch")
        };
        assert_eq!(objects.decode().expect("objects"), vec![object]);
    }

    #[test]
    fn a_hello_carries_properties_only_when_it_has_some() {
        let hello = |properties: BTreeMap<String, String>| Package::Hello {
            session: Uuid::nil(),
            collections: Vec::new(),
            definitions: Vec::new(),
            cursor: 0,
            latest: None,
            subscription: None,
            quarantined: 0,
            properties,
        };
        // None: encoded as before the field existed, so an older receiver reads the same.
        let frame = hello(BTreeMap::new()).encode();
        let needle = b"properties";
        assert!(!frame.windows(needle.len()).any(|w| w == needle));
        let some = BTreeMap::from([("sqlite.user_version".to_owned(), "3".to_owned())]);
        let decoded = Package::decode(&hello(some.clone()).encode()).expect("decode");
        assert_eq!(decoded, hello(some));
    }

    #[test]
    fn a_hello_carries_the_clustered_hint_only_where_it_is_set() {
        use storex_core::FieldType;
        let plain = CollectionDef::new("note")
            .field("id", FieldType::Int)
            .primary_key(["id"]);
        let clustered = plain.clone().clustered();
        let hello = |definitions: Vec<CollectionDef>| Package::Hello {
            session: Uuid::nil(),
            collections: Vec::new(),
            definitions,
            cursor: 0,
            latest: None,
            subscription: None,
            quarantined: 0,
            properties: BTreeMap::new(),
        };
        // A definition without the hint is encoded as before it existed (no such key), and
        // decodes with the hint off.
        let frame = hello(vec![plain.clone()]).encode();
        let needle = b"clustered";
        assert!(!frame.windows(needle.len()).any(|w| w == needle));
        assert_eq!(Package::decode(&frame).expect("decode"), hello(vec![plain]));
        let frame = hello(vec![clustered.clone()]).encode();
        assert!(frame.windows(needle.len()).any(|w| w == needle));
        let decoded = Package::decode(&frame).expect("decode");
        assert_eq!(decoded, hello(vec![clustered]));
    }

    #[test]
    fn a_batch_of_too_many_objects_is_refused_while_decoding() {
        let batch = |n: usize| Package::Batch {
            seq: 1,
            collection: "c".into(),
            objects: EncodedObjects::encode(&vec![Object::new(); n]),
        };
        let at_limit = batch(MAX_BATCH_OBJECTS).encode();
        assert!(matches!(
            Package::decode(&at_limit),
            Ok(Package::Batch { objects, .. }) if objects.len() == MAX_BATCH_OBJECTS
        ));
        let over = batch(MAX_BATCH_OBJECTS + 1).encode();
        let Err(ChannelError::Malformed { problem }) = Package::decode(&over) else {
            panic!("accepted {} objects", MAX_BATCH_OBJECTS + 1)
        };
        assert!(problem.contains("more than"), "{problem}");
    }

    #[test]
    fn bad_frames_are_refused_with_a_reason() {
        let frame = Package::Finish.encode();
        assert!(matches!(
            Package::decode(&[]),
            Err(ChannelError::Malformed { .. })
        ));
        assert!(matches!(
            Package::decode(&[9, 1, 2]),
            Err(ChannelError::WrongVersion {
                found: 9,
                expected: PROTOCOL_VERSION
            })
        ));
        assert!(matches!(
            Package::decode(&[PROTOCOL_VERSION, 0xc1, 0xff]),
            Err(ChannelError::Malformed { .. })
        ));
        let batch = Package::Batch {
            seq: 1,
            collection: "c".into(),
            objects: EncodedObjects::encode(&[object! { "a" => "long enough" }]),
        }
        .encode();
        assert!(matches!(
            Package::decode(&batch[..batch.len() - 3]),
            Err(ChannelError::Malformed { .. })
        ));
        assert!(Package::decode(&frame).is_ok());
        let not_an_object = Package::Batch {
            seq: 1,
            collection: "c".into(),
            objects: {
                let mut objects = EncodedObjects::new();
                objects.push(vec![0xc1]);
                objects
            },
        }
        .encode();
        let Ok(Package::Batch { objects, .. }) = Package::decode(&not_an_object) else {
            panic!("the frame itself is well formed")
        };
        assert!(matches!(
            objects.decode(),
            Err(ChannelError::Malformed { problem }) if problem.contains("object 1")
        ));
    }

    #[test]
    fn a_batch_that_would_decode_to_millions_of_values_is_refused_before_it_is_built() {
        // Five million nulls in a JSON field: about 5 MB on the wire, far more decoded.
        let nulls = serde_json::Value::Array(vec![serde_json::Value::Null; 5_000_000]);
        let objects = EncodedObjects::encode(&[object! { "j" => nulls }]);
        let frame = Package::Batch {
            seq: 1,
            collection: "note".into(),
            objects,
        }
        .encode();
        let Ok(Package::Batch { objects, .. }) = Package::decode(&frame) else {
            panic!("the frame itself holds one byte string per object");
        };
        match objects.decode() {
            Err(ChannelError::Malformed { problem }) => {
                assert!(problem.contains("more than 4000000 values"), "{problem}")
            }
            other => panic!("decoded: {}", other.is_ok()),
        }
    }

    #[test]
    fn a_frame_with_bytes_after_its_package_is_refused() {
        let mut frame = Package::Finish.encode();
        frame.push(0xc0);
        assert!(matches!(
            Package::decode(&frame),
            Err(ChannelError::Malformed { problem }) if problem.contains("after the value")
        ));
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]

        /// The frame decoder sees bytes from the network: it may refuse them, never panic.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(Package::Batch { objects, .. }) = Package::decode(&bytes) {
                let _ = objects.decode();
            }
        }

        /// Nor does decoding a valid frame with bytes flipped, cut or appended.
        #[test]
        fn decoding_damaged_frames_never_panics(
            seq in any::<u64>(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
            tail in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut frame = Package::Batch {
                seq,
                collection: "note".into(),
                objects: EncodedObjects::encode(&[storex_core::object! { "t" => "x", "n" => 1 }]),
            }
            .encode();
            for (at, value) in flips {
                let len = frame.len();
                frame[at % len] ^= value;
            }
            frame.truncate(cut % (frame.len() + 1));
            frame.extend(tail);
            if let Ok(Package::Batch { objects, .. }) = Package::decode(&frame) {
                let _ = objects.decode();
            }
        }
    }
}
