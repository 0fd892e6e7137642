//! The fast-sync protocol's messages and their versioned binary encoding (MessagePack).
//!
//! A session: the sender says `Hello` (protocol version, session id, collections with their
//! object counts, its shared-log cursor); the receiver answers `Ready` with the last batch it
//! applied in this session, if any (so an interrupted session resumes); the sender streams
//! `Batch`es, at most a window of them unacknowledged, each acknowledged with `Ack` once
//! applied; after each collection a `CollectionDone` with its count and checksum; then
//! `Finish`, answered by `Done`. Either side may send `Pause`/`Resume` and `Cancel`.

use serde::{Deserialize, Serialize};
use storex_core::uuid::Uuid;
use storex_core::{CollectionDef, Object};

use crate::fast_sync::channel::ChannelError;

/// The version of the protocol this build speaks; the first byte of every frame.
pub const PROTOCOL_VERSION: u8 = 1;

/// The most objects one batch may carry: a frame that claims more is refused while it is
/// decoded, before its objects fill memory (a frame of empty objects decodes to far more
/// memory than it takes on the wire).
pub const MAX_BATCH_OBJECTS: usize = 100_000;

/// Reads a batch's objects, refusing more than [`MAX_BATCH_OBJECTS`].
fn bounded_objects<'de, D>(deserializer: D) -> Result<Vec<Object>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Bounded;

    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<Object>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "at most {MAX_BATCH_OBJECTS} objects")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut objects = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1_024));
            while let Some(object) = seq.next_element()? {
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

/// A collection the sender will send.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollectionInfo {
    /// Its name.
    pub name: String,
    /// Its schema version on the sender.
    pub schema_version: u32,
    /// How many objects it has.
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
        /// sync starts.
        cursor: u64,
    },
    /// Receiver → sender: ready; `resume_after` is the last batch already applied.
    Ready {
        /// The last batch of this session the receiver applied, if any.
        resume_after: Option<u64>,
    },
    /// Sender → receiver: objects of one collection.
    Batch {
        /// Sequence number, from 1.
        seq: u64,
        /// The collection.
        collection: String,
        /// The objects (at most [`MAX_BATCH_OBJECTS`]).
        #[serde(deserialize_with = "bounded_objects")]
        objects: Vec<Object>,
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
    },
}

impl Package {
    /// The frame for this package: the protocol version, then MessagePack.
    pub fn encode(&self) -> Vec<u8> {
        let mut frame = vec![PROTOCOL_VERSION];
        // Encoding plain data into a Vec cannot fail.
        frame.extend(rmp_serde::to_vec_named(self).unwrap_or_default());
        frame
    }

    /// Reads a frame back; refuses other versions, garbage and truncated frames.
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
        let package = Package::Batch {
            seq: 7,
            collection: "note".into(),
            objects: vec![object! {
                "t" => "ünï", "i" => i64::MIN, "f" => 0.1, "b" => true, "n" => Value::Null,
                "d" => Utc.timestamp_opt(1_700_000_000, 5_000).single().expect("valid"),
                "j" => serde_json::json!({"a": [1, null, "x"]}), "x" => vec![0u8, 255], "u" => Uuid::now_v7(),
            }],
        };
        assert_eq!(Package::decode(&package.encode()).expect("decode"), package);
    }

    #[test]
    fn a_batch_of_too_many_objects_is_refused_while_decoding() {
        let batch = |n: usize| Package::Batch {
            seq: 1,
            collection: "c".into(),
            objects: vec![Object::new(); n],
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
                expected: 1
            })
        ));
        assert!(matches!(
            Package::decode(&[PROTOCOL_VERSION, 0xc1, 0xff]),
            Err(ChannelError::Malformed { .. })
        ));
        let batch = Package::Batch {
            seq: 1,
            collection: "c".into(),
            objects: vec![object! { "a" => "long enough" }],
        }
        .encode();
        assert!(matches!(
            Package::decode(&batch[..batch.len() - 3]),
            Err(ChannelError::Malformed { .. })
        ));
        assert!(Package::decode(&frame).is_ok());
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
            let _ = Package::decode(&bytes);
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
                objects: vec![storex_core::object! { "t" => "x", "n" => 1 }],
            }
            .encode();
            for (at, value) in flips {
                let len = frame.len();
                frame[at % len] ^= value;
            }
            frame.truncate(cut % (frame.len() + 1));
            frame.extend(tail);
            let _ = Package::decode(&frame);
        }
    }
}
