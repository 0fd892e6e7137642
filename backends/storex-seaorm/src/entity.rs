//! Deriving storex collection definitions from an app's existing SeaORM entities.
//!
//! An app that already has a SeaORM data layer registers its entities, not a second schema:
//! columns, their types, nullability and the primary key come from the entity.
//!
//! | SeaORM column type | storex field type |
//! |---|---|
//! | `Char`, `String`, `Text` | text |
//! | `TinyInteger` … `BigInteger`, `TinyUnsigned` … `Unsigned` | int (in the Rust type's range, see [`CollectionDef::int_range`]) |
//! | `Float`, `Double` | float |
//! | `Boolean` | bool |
//! | `TimestampWithTimeZone` (`DateTimeUtc`) | datetime |
//! | `Json`, `JsonBinary` | json |
//! | `Blob`, `Binary`, `VarBinary` (`Vec<u8>`) | blob |
//! | `Uuid` | uuid |
//!
//! Anything else (naive datetimes, decimals, enums, arrays, `u64`) is refused with a hint, and
//! so is an entity whose table is in a schema of its own (`schema_name`).
//!
//! A column's literal `default_value` (`#[sea_orm(default_value = false)]`) on a text,
//! integer, float or bool column that is not part of the key becomes the field's default
//! ([`CollectionDef::default_value`]), which sync gives the field in changes logged before
//! the column existed; a default that is an SQL expression (`default_expr`) is computed by
//! the database per row and is not one.

use sea_orm::sea_query::{Expr, Value as SqlValue};
use sea_orm::{ColumnTrait, ColumnType, EntityTrait, IdenStatic, Iterable, PrimaryKeyToColumn};
use storex_core::{CollectionDef, FieldType, Value};

use crate::error::{Error, Result};

/// The collection definition of SeaORM entity `E`, at schema version 1 (set another with
/// [`CollectionDef::version`]; add indices and relations the same way).
pub fn collection_from_entity<E: EntityTrait>(entity: E) -> Result<CollectionDef> {
    let table = entity.table_name().to_owned();
    if let Some(schema) = entity.schema_name() {
        return Err(Error::UnsupportedSchema {
            table,
            schema: schema.to_owned(),
        });
    }
    let pk: Vec<String> = E::PrimaryKey::iter()
        .map(|key| key.into_column().as_str().to_owned())
        .collect();
    let mut def = CollectionDef::new(table.clone());
    for column in E::Column::iter() {
        let column_def = column.def();
        let name = column.as_str().to_owned();
        let column_type = column_def.get_column_type();
        let ty = field_type(&table, &name, column_type)?;
        let range = int_range(column_type);
        def = if column_def.is_null() {
            def.optional_field(name.clone(), ty)
        } else {
            def.field(name.clone(), ty)
        };
        if let Some(default) = column_def
            .get_column_default()
            .filter(|_| !pk.contains(&name))
            .and_then(|expr| literal_default(ty, expr))
        {
            def = def.default_value(name.clone(), default);
        }
        if let Some((min, max)) = range {
            def = def.int_range(name, min, max);
        }
    }
    Ok(def.primary_key(pk))
}

/// The values an integer column declared narrower than 64 bits holds (those of the Rust type
/// SeaORM gives it), as (smallest, largest): storex refuses to write others, which the app
/// could not read back.
fn int_range(ty: &ColumnType) -> Option<(i64, i64)> {
    Some(match ty {
        ColumnType::TinyInteger => (i8::MIN.into(), i8::MAX.into()),
        ColumnType::SmallInteger => (i16::MIN.into(), i16::MAX.into()),
        ColumnType::Integer => (i32::MIN.into(), i32::MAX.into()),
        ColumnType::TinyUnsigned => (0, u8::MAX.into()),
        ColumnType::SmallUnsigned => (0, u16::MAX.into()),
        ColumnType::Unsigned => (0, u32::MAX.into()),
        _ => return None,
    })
}

/// The value of a column default that is a literal of the field's type (`default_value =
/// false`, `0`, `1.5`, `"draft"`), as a field of type `ty` holds it. Other defaults (of a
/// UUID, datetime, JSON or blob column, or a literal of another type) are not carried: such a
/// field has no default in the registry.
fn literal_default(ty: FieldType, expr: &Expr) -> Option<Value> {
    let Expr::Value(value) = expr else {
        return None;
    };
    let int = match value {
        SqlValue::TinyInt(v) => v.map(i64::from),
        SqlValue::SmallInt(v) => v.map(i64::from),
        SqlValue::Int(v) => v.map(i64::from),
        SqlValue::BigInt(v) => *v,
        SqlValue::TinyUnsigned(v) => v.map(i64::from),
        SqlValue::SmallUnsigned(v) => v.map(i64::from),
        SqlValue::Unsigned(v) => v.map(i64::from),
        _ => None,
    };
    match (ty, value) {
        (FieldType::Int, _) => int.map(Value::Int),
        (FieldType::Float, SqlValue::Double(Some(v))) => Some(Value::Float(*v)),
        // As the migration's `DEFAULT 0.1` stores it: the literal's digits, not the f32.
        (FieldType::Float, SqlValue::Float(Some(v))) => {
            v.to_string().parse().ok().map(Value::Float)
        }
        // SQL stores an integer default of a REAL column as a float.
        (FieldType::Float, _) => int.map(|n| Value::Float(n as f64)),
        (FieldType::Bool, SqlValue::Bool(Some(v))) => Some(Value::Bool(*v)),
        // SQLite's booleans are 0 and 1.
        (FieldType::Bool, _) => match int {
            Some(0) => Some(Value::Bool(false)),
            Some(1) => Some(Value::Bool(true)),
            _ => None,
        },
        (FieldType::Text, SqlValue::String(Some(v))) => Some(Value::Text(v.clone())),
        _ => None,
    }
}

fn field_type(table: &str, column: &str, ty: &ColumnType) -> Result<FieldType> {
    let unsupported = |hint: &'static str| Error::UnsupportedColumn {
        table: table.to_owned(),
        column: column.to_owned(),
        column_type: format!("{ty:?}"),
        hint,
    };
    Ok(match ty {
        ColumnType::Char(_) | ColumnType::String(_) | ColumnType::Text => FieldType::Text,
        ColumnType::TinyInteger
        | ColumnType::SmallInteger
        | ColumnType::Integer
        | ColumnType::BigInteger
        | ColumnType::TinyUnsigned
        | ColumnType::SmallUnsigned
        | ColumnType::Unsigned => FieldType::Int,
        ColumnType::BigUnsigned => {
            return Err(unsupported("use i64: a u64 does not fit storex's int"))
        }
        ColumnType::Float | ColumnType::Double => FieldType::Float,
        ColumnType::Boolean => FieldType::Bool,
        ColumnType::TimestampWithTimeZone => FieldType::DateTime,
        ColumnType::DateTime | ColumnType::Timestamp => {
            return Err(unsupported(
                "use DateTimeUtc: storex keeps datetimes with their time zone",
            ))
        }
        ColumnType::Json | ColumnType::JsonBinary => FieldType::Json,
        ColumnType::Blob | ColumnType::Binary(_) | ColumnType::VarBinary(_) => FieldType::Blob,
        ColumnType::Uuid => FieldType::Uuid,
        _ => {
            return Err(unsupported(
                "use text, an integer, f64, bool, DateTimeUtc, Json, Vec<u8> or Uuid",
            ))
        }
    })
}
