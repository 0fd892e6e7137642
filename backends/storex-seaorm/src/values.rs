//! Converting storex values to SQL parameters and reading them back from result rows.
//!
//! Values are bound through sea-query exactly as SeaORM binds its own models, so rows that
//! storex writes read back with plain SeaORM and the other way round: on SQLite a UUID is a
//! 16-byte BLOB, JSON and datetimes are TEXT (RFC 3339, which sorts in time order for UTC),
//! booleans are 0/1; on PostgreSQL each type has its native column type.

use sea_orm::sea_query::Value as SqlValue;
use sea_orm::{DbErr, QueryResult};
use storex_core::chrono::{DateTime, Utc};
use storex_core::uuid::Uuid;
use storex_core::{serde_json, CollectionDef, Error, FieldDef, FieldType, Object, Pk, Value};

/// The SQL parameter for `value` stored in a field of type `ty` (a typed NULL for `Null`).
pub(crate) fn to_sql(
    collection: &str,
    field: &str,
    ty: FieldType,
    value: Value,
) -> Result<SqlValue, Error> {
    Ok(match (ty, value) {
        (FieldType::Text, Value::Text(v)) => SqlValue::String(Some(v)),
        (FieldType::Int, Value::Int(v)) => SqlValue::BigInt(Some(v)),
        (FieldType::Float, Value::Float(v)) => SqlValue::Double(Some(v)),
        (FieldType::Bool, Value::Bool(v)) => SqlValue::Bool(Some(v)),
        (FieldType::DateTime, Value::DateTime(v)) => SqlValue::ChronoDateTimeUtc(Some(v)),
        (FieldType::Json, Value::Json(v)) => SqlValue::Json(Some(Box::new(v))),
        (FieldType::Blob, Value::Blob(v)) => SqlValue::Bytes(Some(v)),
        (FieldType::Uuid, Value::Uuid(v)) => SqlValue::Uuid(Some(v)),
        (ty, Value::Null) => null_of(ty),
        (ty, other) => {
            return Err(Error::TypeMismatch {
                collection: collection.to_owned(),
                field: field.to_owned(),
                expected: ty,
                found: other.describe(),
            })
        }
    })
}

fn null_of(ty: FieldType) -> SqlValue {
    match ty {
        FieldType::Text => SqlValue::String(None),
        FieldType::Int => SqlValue::BigInt(None),
        FieldType::Float => SqlValue::Double(None),
        FieldType::Bool => SqlValue::Bool(None),
        FieldType::DateTime => SqlValue::ChronoDateTimeUtc(None),
        FieldType::Json => SqlValue::Json(None),
        FieldType::Blob => SqlValue::Bytes(None),
        FieldType::Uuid => SqlValue::Uuid(None),
    }
}

/// Reads column `index` of a row (which holds field `field`) as the field's type.
fn read_field(row: &QueryResult, index: usize, field: &FieldDef) -> Result<Value, DbErr> {
    let value = match field.ty {
        FieldType::Text => read_text(row, index)?.map(Value::Text),
        FieldType::Int => read_int(row, index)?.map(Value::Int),
        FieldType::Float => read_float(row, index)?.map(Value::Float),
        FieldType::Bool => row
            .try_get_by_index::<Option<bool>>(index)?
            .map(Value::Bool),
        FieldType::DateTime => row
            .try_get_by_index::<Option<DateTime<Utc>>>(index)?
            .map(Value::DateTime),
        FieldType::Json => read_json(row, index)?.map(Value::Json),
        FieldType::Blob => row
            .try_get_by_index::<Option<Vec<u8>>>(index)?
            .map(Value::Blob),
        FieldType::Uuid => row
            .try_get_by_index::<Option<Uuid>>(index)?
            .map(Value::Uuid),
    };
    Ok(value.unwrap_or(Value::Null))
}

/// PostgreSQL decodes only the exact width: an adopted table may use `integer` or `smallint`.
fn read_int(row: &QueryResult, index: usize) -> Result<Option<i64>, DbErr> {
    match row.try_get_by_index::<Option<i64>>(index) {
        Ok(v) => Ok(v),
        Err(first) => match row.try_get_by_index::<Option<i32>>(index) {
            Ok(v) => Ok(v.map(i64::from)),
            Err(_) => match row.try_get_by_index::<Option<i16>>(index) {
                Ok(v) => Ok(v.map(i64::from)),
                Err(_) => Err(first),
            },
        },
    }
}

/// A text field; on SQLite a number kept in a column without text affinity (another
/// program's `datetime`, `numeric` or untyped column, which SQLite stores numbers in as
/// numbers) reads as its text.
fn read_text(row: &QueryResult, index: usize) -> Result<Option<String>, DbErr> {
    match row.try_get_by_index::<Option<String>>(index) {
        Ok(v) => Ok(v),
        Err(first) => match row.try_get_by_index::<Option<i64>>(index) {
            Ok(v) => Ok(v.map(|i| i.to_string())),
            Err(_) => match row.try_get_by_index::<Option<f64>>(index) {
                Ok(v) => Ok(v.map(|f| f.to_string())),
                Err(_) => Err(first),
            },
        },
    }
}

/// A JSON field; on SQLite a document that is a number, in a column declared plainly `JSON`
/// (numeric affinity: SQLite stores the text `42` written there as the number 42), reads
/// as that number. As SQLite stored it: `1.0` reads as `1`, and an integer beyond 64 bits as
/// a float.
fn read_json(row: &QueryResult, index: usize) -> Result<Option<serde_json::Value>, DbErr> {
    match row.try_get_by_index::<Option<serde_json::Value>>(index) {
        Ok(v) => Ok(v),
        Err(first) => match row.try_get_by_index::<Option<i64>>(index) {
            Ok(v) => Ok(v.map(serde_json::Value::from)),
            Err(_) => match row.try_get_by_index::<Option<f64>>(index) {
                Ok(Some(f)) => serde_json::Number::from_f64(f)
                    .map(|n| Some(serde_json::Value::Number(n)))
                    .ok_or(first),
                Ok(None) => Ok(None),
                Err(_) => Err(first),
            },
        },
    }
}

/// Likewise for `real` (f32) columns of adopted tables, and for the integers SQLite keeps in
/// a `numeric` column (it stores `1.0` written there as `1`).
fn read_float(row: &QueryResult, index: usize) -> Result<Option<f64>, DbErr> {
    match row.try_get_by_index::<Option<f64>>(index) {
        Ok(v) => Ok(v),
        Err(first) => match row.try_get_by_index::<Option<f32>>(index) {
            Ok(v) => Ok(v.map(f64::from)),
            Err(_) => match row.try_get_by_index::<Option<i64>>(index) {
                // As SQLite itself turns it back into a real (exact up to 2^53).
                #[allow(clippy::cast_precision_loss)]
                Ok(v) => Ok(v.map(|i| i as f64)),
                Err(_) => Err(first),
            },
        },
    }
}

/// Reads a whole object of collection `def` from a row selecting every field in the order of
/// `def.fields()` (as [`crate::sql::select`] does).
pub(crate) fn read_object(row: &QueryResult, def: &CollectionDef) -> Result<Object, DbErr> {
    def.fields()
        .iter()
        .enumerate()
        .map(|(index, field)| Ok((field.name.clone(), read_field(row, index, field)?)))
        .collect()
}

/// Reads the values of `fields` from a row selecting them in that order (as
/// [`crate::sql::select_fields`] does).
pub(crate) fn read_values(row: &QueryResult, fields: &[&FieldDef]) -> Result<Vec<Value>, DbErr> {
    fields
        .iter()
        .enumerate()
        .map(|(index, field)| read_field(row, index, field))
        .collect()
}

/// Reads the key of an object of collection `def` from a row selecting its key fields in key
/// order (as [`crate::sql::returning_pk`] does).
pub(crate) fn read_pk(row: &QueryResult, def: &CollectionDef) -> Result<Pk, DbErr> {
    def.pk_fields()
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let field = def.field_def(name).ok_or_else(|| {
                DbErr::Custom(format!("`{}` has no key field `{name}`", def.name()))
            })?;
            read_field(row, index, field)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Pk)
}

/// The keys [`crate::sql::uuid_keys_at_once`] reads: the hex text of each UUID, separated by
/// commas (no row or a null: none); `None` if the table has triggers.
pub(crate) fn uuid_keys(row: Option<&QueryResult>) -> Result<Option<Vec<Pk>>, DbErr> {
    let Some(row) = row else {
        return Ok(Some(Vec::new()));
    };
    if row.try_get_by_index::<i64>(1)? > 0 {
        return Ok(None);
    }
    let text = row.try_get_by_index::<Option<String>>(0)?;
    parse_uuid_keys(text.as_deref()).map(Some)
}

/// [`uuid_keys`] of the text read; a part that is not a UUID is an error.
fn parse_uuid_keys(text: Option<&str>) -> Result<Vec<Pk>, DbErr> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(|hex| {
            let uuid = Uuid::try_parse(hex)
                .map_err(|e| DbErr::Custom(format!("a key that is not a UUID ({hex:?}): {e}")))?;
            Ok(Pk::from(uuid))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_keys_read_as_one_text_are_checked_not_trusted() {
        assert!(parse_uuid_keys(None).expect("none").is_empty());
        let (a, b) = (Uuid::now_v7(), Uuid::new_v4());
        let text = format!("{},{}", a.simple(), b.simple()).to_uppercase();
        let keys = parse_uuid_keys(Some(&text)).expect("keys");
        assert_eq!(keys, vec![Pk::from(a), Pk::from(b)]);
        for bad in ["", "zz", "0123", &format!("{},", a.simple())] {
            assert!(parse_uuid_keys(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
