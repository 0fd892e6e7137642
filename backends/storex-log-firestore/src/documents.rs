//! The documents [`FirestoreSharedLog`](crate::FirestoreSharedLog) stores, how names become
//! document ids, and how big a document gets (docs/firestore.md has the whole layout).

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use storex_sync::{SharedLogError, SharedResult};

/// Firestore's limit on one document: 1 MiB, names and fields included.
pub(crate) const MAX_DOCUMENT_BYTES: usize = 1_048_576;
/// Firestore's limit on a document id.
const MAX_ID_BYTES: usize = 1_500;
/// Longest topic: an indexed string longer than 1,500 bytes is truncated in Firestore's
/// indexes, so a topic filter could no longer be exact.
pub(crate) const MAX_TOPIC_BYTES: usize = 1_500;
/// Room kept in every entry document for its name and routing fields: the document name is
/// at most ~3.2 KB (prefix, user key, entry id), the fields' names and values ~1.6 KB.
const ENTRY_OVERHEAD_BYTES: usize = 8 * 1024;
/// Largest payload an entry may carry.
pub(crate) const MAX_PAYLOAD_BYTES: usize = MAX_DOCUMENT_BYTES - ENTRY_OVERHEAD_BYTES;

/// Field names, shared by the documents and the queries.
pub(crate) mod field {
    pub(crate) const CURSOR: &str = "cursor";
    pub(crate) const TOPIC: &str = "topic";
    pub(crate) const USER: &str = "user";
    pub(crate) const NEXT_CURSOR: &str = "next_cursor";
    pub(crate) const COMPACTED_THROUGH: &str = "compacted_through";
    pub(crate) const ACKED: &str = "acked";
}

/// `{prefix}users/{user key}`: a user's cursor counter and compaction mark.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct UserDoc {
    /// The user's name as given (the document id is its escaped form).
    pub(crate) user: String,
    /// The greatest cursor handed out so far.
    pub(crate) next_cursor: i64,
    /// Entries up to this cursor were dropped by compaction.
    pub(crate) compacted_through: i64,
}

/// `{prefix}devices/{device id}`: a registered device.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DeviceDoc {
    /// The user's name.
    pub(crate) user: String,
    /// The greatest cursor the device acknowledged.
    pub(crate) acked: i64,
}

/// `{prefix}users/{user key}/entries/{entry id}`: one pushed entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct EntryDoc {
    /// Set from the document id when read; never written as a field.
    #[serde(alias = "_firestore_id", default, skip_serializing)]
    pub(crate) id: Option<String>,
    /// Its position in the user's log.
    pub(crate) cursor: i64,
    /// The pushing device.
    pub(crate) device: String,
    /// Routing tag for partial replication.
    pub(crate) topic: String,
    /// The opaque (possibly encrypted) entry, stored as a Firestore bytes value.
    pub(crate) payload: Payload,
}

/// The cursor of an entry document, read alone when its other fields do not read.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct CursorDoc {
    /// Its position in the user's log.
    pub(crate) cursor: i64,
}

/// The routing fields of an entry document, read alone when its other fields do not read.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct RoutingDoc {
    /// The pushing device.
    pub(crate) device: String,
    /// Routing tag for partial replication.
    pub(crate) topic: String,
}

/// Bytes that serialize as one Firestore bytes value rather than an array of numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Payload(pub(crate) Vec<u8>);

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Payload;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a bytes value")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Payload, E> {
                Ok(Payload(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
                Ok(Payload(v))
            }
        }
        deserializer.deserialize_bytes(BytesVisitor)
    }
}

/// The document id of a user: the name with every byte outside `[A-Za-z0-9@+-]` written as
/// `%XX`, so that no name can contain a `/`, be `.` or `..`, or look like a reserved
/// `__id__`, and two names never share an id.
pub(crate) fn user_key(user: &str) -> SharedResult<String> {
    storex_sync::check_user_name(user)?;
    let mut key = String::with_capacity(user.len());
    for byte in user.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'@' | b'+' | b'-') {
            key.push(char::from(byte));
        } else {
            key.push_str(&format!("%{byte:02X}"));
        }
    }
    if key.len() > MAX_ID_BYTES {
        return Err(SharedLogError::Invalid {
            problem: format!(
                "user name of {} bytes is too long for a Firestore document id",
                user.len()
            ),
        });
    }
    Ok(key)
}

/// Checks a collection prefix: letters, digits, `_` and `-`, at most 100 bytes.
pub(crate) fn check_prefix(prefix: &str) -> SharedResult<()> {
    if prefix.is_empty() {
        // `users` and `devices` at the top of the database: Firebase apps often have both,
        // keyed by the same user ids, and the log would read and write the app's documents.
        return Err(SharedLogError::Invalid {
            problem: "the collection prefix cannot be empty: the log's `users` and `devices` \
                      collections would mix with the app's own (use `storex_`, say)"
                .into(),
        });
    }
    let valid = prefix.len() <= 100
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(SharedLogError::Invalid {
            problem: format!(
                "collection prefix {prefix:?} must be at most 100 letters, digits, `_` or `-`"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_escape_everything_that_could_break_a_path() {
        assert_eq!(user_key("ann").ok().as_deref(), Some("ann"));
        assert_eq!(
            user_key("ann@example.com").ok().as_deref(),
            Some("ann@example%2Ecom")
        );
        assert_eq!(user_key("a/b").ok().as_deref(), Some("a%2Fb"));
        assert_eq!(user_key("..").ok().as_deref(), Some("%2E%2E"));
        assert_eq!(user_key("__x__").ok().as_deref(), Some("%5F%5Fx%5F%5F"));
        assert_eq!(user_key("ü").ok().as_deref(), Some("%C3%BC"));
        assert_ne!(user_key("a%2Fb").ok(), user_key("a/b").ok());
    }

    #[test]
    fn empty_and_overlong_user_names_are_refused() {
        assert!(matches!(user_key(""), Err(SharedLogError::Invalid { .. })));
        assert!(user_key(&"a".repeat(1_500)).is_ok());
        assert!(matches!(
            user_key(&"a".repeat(1_501)),
            Err(SharedLogError::Invalid { .. })
        ));
        assert!(matches!(
            user_key(&".".repeat(501)),
            Err(SharedLogError::Invalid { .. })
        ));
    }

    #[test]
    fn prefixes_are_plain_names() {
        assert!(check_prefix("").is_err(), "the app's own `users`");
        assert!(check_prefix("storex_").is_ok());
        assert!(check_prefix("a/b").is_err());
        assert!(check_prefix("..").is_err());
        assert!(check_prefix(&"p".repeat(101)).is_err());
    }
}
