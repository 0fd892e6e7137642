//! Field values, field types, objects and primary keys: the data every operation carries.
//!
//! A [`Value`] is one of the eight field types of a [`crate::Registry`] or `Null`. Values of
//! one type are totally ordered ([`Value::total_cmp`]) so that every backend sorts and filters
//! alike: text by bytes, floats by IEEE total order, `Null` before everything.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The type a field is declared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// UTF-8 text.
    Text,
    /// A signed 64-bit integer.
    Int,
    /// A finite 64-bit float.
    Float,
    /// A boolean.
    Bool,
    /// A point in time (UTC, microsecond precision).
    DateTime,
    /// Any JSON document.
    Json,
    /// Raw bytes.
    Blob,
    /// A UUID.
    Uuid,
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            FieldType::Text => "text",
            FieldType::Int => "int",
            FieldType::Float => "float",
            FieldType::Bool => "bool",
            FieldType::DateTime => "datetime",
            FieldType::Json => "json",
            FieldType::Blob => "blob",
            FieldType::Uuid => "uuid",
        };
        f.write_str(name)
    }
}

/// One field value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    /// No value; only optional fields may hold it.
    Null,
    /// Text.
    Text(String),
    /// A 64-bit integer.
    Int(i64),
    /// A finite float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A UTC timestamp; storex keeps microseconds and drops finer digits on the way in.
    DateTime(DateTime<Utc>),
    /// A JSON document.
    Json(serde_json::Value),
    /// Bytes (a byte string in binary formats such as MessagePack; an array of numbers in
    /// JSON, as before).
    Blob(#[serde(with = "blob_bytes")] Vec<u8>),
    /// A UUID.
    Uuid(Uuid),
}

impl Value {
    /// The field type this value belongs to, `None` for [`Value::Null`].
    pub fn field_type(&self) -> Option<FieldType> {
        Some(match self {
            Value::Null => return None,
            Value::Text(_) => FieldType::Text,
            Value::Int(_) => FieldType::Int,
            Value::Float(_) => FieldType::Float,
            Value::Bool(_) => FieldType::Bool,
            Value::DateTime(_) => FieldType::DateTime,
            Value::Json(_) => FieldType::Json,
            Value::Blob(_) => FieldType::Blob,
            Value::Uuid(_) => FieldType::Uuid,
        })
    }

    /// A short description for error messages: the type name, or `null`.
    pub fn describe(&self) -> String {
        match self.field_type() {
            None => "null".to_owned(),
            Some(ty) => ty.to_string(),
        }
    }

    /// True for [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The text, if this is a text value.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an int value.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The UUID, if this is a uuid value.
    pub fn as_uuid(&self) -> Option<Uuid> {
        match self {
            Value::Uuid(u) => Some(*u),
            _ => None,
        }
    }

    /// A total order over values: `Null` first, then values grouped by type in declaration
    /// order; within a type text compares by bytes, floats by IEEE total order, JSON by its
    /// serialized text. Backends must filter and sort by this order.
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Text(a), Value::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::DateTime(a), Value::DateTime(b)) => a.cmp(b),
            (Value::Json(a), Value::Json(b)) => a.to_string().cmp(&b.to_string()),
            (Value::Blob(a), Value::Blob(b)) => a.cmp(b),
            (Value::Uuid(a), Value::Uuid(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Text(_) => 1,
            Value::Int(_) => 2,
            Value::Float(_) => 3,
            Value::Bool(_) => 4,
            Value::DateTime(_) => 5,
            Value::Json(_) => 6,
            Value::Blob(_) => 7,
            Value::Uuid(_) => 8,
        }
    }

    /// Brings a value to the form storex keeps: datetimes to whole microseconds, and -0.0 to
    /// 0.0 (SQL compares them equal; the total order would not).
    pub(crate) fn normalize(&mut self) {
        match self {
            Value::DateTime(dt) => *dt = dt.trunc_subsecs(6),
            Value::Float(f) if *f == 0.0 => *f = 0.0,
            _ => {}
        }
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<DateTime<Utc>> for Value {
    fn from(v: DateTime<Utc>) -> Self {
        Value::DateTime(v)
    }
}
impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Self {
        Value::Json(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}
impl From<Uuid> for Value {
    fn from(v: Uuid) -> Self {
        Value::Uuid(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// An object: field name to value. Ordered by name, so two equal objects serialize alike.
pub type Object = BTreeMap<String, Value>;

/// Builds an [`Object`] from `name => value` pairs; values go through `Value::from`.
///
/// ```
/// use storex_core::{object, Value};
/// let note = object! { "title" => "groceries", "pinned" => true };
/// assert_eq!(note["pinned"], Value::Bool(true));
/// ```
#[macro_export]
macro_rules! object {
    () => { $crate::Object::new() };
    ($($name:expr => $value:expr),+ $(,)?) => {{
        let mut object = $crate::Object::new();
        $( object.insert(::std::string::String::from($name), $crate::Value::from($value)); )+
        object
    }};
}

/// A primary key: the values of a collection's primary-key fields, in declaration order.
///
/// Most collections have a one-field key, built with `Pk::from(value)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pk(pub Vec<Value>);

impl Pk {
    /// The values, in primary-key field order.
    pub fn values(&self) -> &[Value] {
        &self.0
    }

    /// The single value of a one-field key, `None` for a compound key.
    pub fn single(&self) -> Option<&Value> {
        match self.0.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Compares two keys by [`Value::total_cmp`], field by field.
    pub fn total_cmp(&self, other: &Pk) -> Ordering {
        for (a, b) in self.0.iter().zip(&other.0) {
            let ord = a.total_cmp(b);
            if ord != Ordering::Equal {
                return ord;
            }
        }
        self.0.len().cmp(&other.0.len())
    }
}

impl<T: Into<Value>> From<T> for Pk {
    fn from(v: T) -> Self {
        Pk(vec![v.into()])
    }
}

impl fmt::Display for Pk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|v| match v {
                Value::Text(s) => format!("{s:?}"),
                Value::Int(i) => i.to_string(),
                Value::Uuid(u) => u.to_string(),
                other => other.describe(),
            })
            .collect();
        write!(f, "({})", parts.join(", "))
    }
}

/// A [`Pk`] usable as a map key: ordered by [`Pk::total_cmp`].
#[derive(Clone, Debug)]
pub struct PkKey(pub Pk);

impl PartialEq for PkKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0) == Ordering::Equal
    }
}
impl Eq for PkKey {}
impl PartialOrd for PkKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for PkKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// `Value::Blob` as a byte string: formats with one (MessagePack) store the bytes as they are
/// instead of one number each; it reads back from a byte string or a sequence of numbers (JSON,
/// and what earlier versions wrote).
mod blob_bytes {
    use std::fmt;

    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        struct Bytes;

        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }

            fn visit_bytes<E>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
                Ok(bytes.to_vec())
            }

            fn visit_byte_buf<E>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(bytes)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(byte) = seq.next_element::<u8>()? {
                    bytes.push(byte);
                }
                Ok(bytes)
            }
        }

        deserializer.deserialize_bytes(Bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_stay_arrays_of_numbers_in_json() {
        let blob = Value::Blob(vec![0, 255, 7]);
        let json = serde_json::to_string(&blob).expect("encode");
        assert_eq!(json, r#"{"blob":[0,255,7]}"#);
        assert_eq!(serde_json::from_str::<Value>(&json).expect("decode"), blob);
        let wrong = serde_json::from_str::<Value>(r#"{"blob":[0,256]}"#);
        assert!(wrong.is_err(), "a number past a byte is refused");
    }

    #[test]
    fn null_sorts_before_every_value() {
        assert_eq!(Value::Null.total_cmp(&Value::Int(i64::MIN)), Ordering::Less);
        assert_eq!(Value::Null.total_cmp(&Value::from("")), Ordering::Less);
    }

    #[test]
    fn text_compares_by_bytes_not_case_folded() {
        assert_eq!(
            Value::from("B").total_cmp(&Value::from("a")),
            Ordering::Less
        );
    }

    #[test]
    fn datetimes_normalize_to_microseconds() {
        let dt = DateTime::from_timestamp(1, 123_456_789).expect("valid");
        let mut v = Value::from(dt);
        v.normalize();
        let Value::DateTime(n) = v else {
            panic!("not a datetime")
        };
        assert_eq!(n.timestamp_subsec_nanos(), 123_456_000);
    }

    #[test]
    fn values_round_trip_through_json() {
        let obj = object! {
            "t" => "ünï", "i" => i64::MIN, "f" => 1.5, "b" => true,
            "u" => Uuid::nil(), "j" => serde_json::json!({"a": [1, 2]}), "x" => vec![0u8, 255],
            "n" => Value::Null,
        };
        let text = serde_json::to_string(&obj).expect("serialize");
        let back: Object = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, obj);
    }
}
