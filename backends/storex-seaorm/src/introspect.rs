//! Reading a registry back from an existing SQLite database, for tools that move a database
//! whose app they do not know (`storex migrate`).
//!
//! Declared column types map to field types the way storex and SeaORM declare them: `uuid…`
//! → uuid, `timestamp…`/`datetime…` → datetime, `json…` → json, `…int…` → int, `bool…` →
//! bool, `real`/`double`/`float` → float, `blob`/`…binary…` → blob, anything else → text.
//! storex's own tables (`storex_…`: the client sync log, app settings such as the device id
//! and its token, a shared log) are left out: they belong to the device, and a sync device adds
//! them itself.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use storex_core::{CollectionDef, FieldType, Registry};

use crate::error::{Error, Result};

fn field_type(declared: &str) -> FieldType {
    let t = declared.to_ascii_lowercase();
    if t.contains("uuid") {
        FieldType::Uuid
    } else if t.contains("timestamp") || t.contains("datetime") {
        FieldType::DateTime
    } else if t.contains("json") {
        FieldType::Json
    } else if t.contains("int") {
        FieldType::Int
    } else if t.contains("bool") {
        FieldType::Bool
    } else if t.contains("real") || t.contains("double") || t.contains("float") {
        FieldType::Float
    } else if t.contains("blob") || t.contains("binary") {
        FieldType::Blob
    } else {
        FieldType::Text
    }
}

fn unsupported(table: &str, problem: &str) -> Error {
    Error::Storage(storex_core::Error::InvalidDefinition {
        collection: table.to_owned(),
        problem: problem.to_owned(),
    })
}

/// The registry of every table of a SQLite database (but storex's own, `storex_…`).
pub async fn registry_of_sqlite(db: &DatabaseConnection) -> Result<Registry> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return Err(Error::UnsupportedDatabase {
            backend: format!("{:?}", db.get_database_backend()),
        });
    }
    let backend_err = |e| Error::Storage(storex_core::Error::backend("seaorm-sqlite", e));
    let tables = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND name NOT GLOB 'storex_*' ORDER BY name",
        ))
        .await
        .map_err(backend_err)?;
    let mut builder = Registry::builder();
    for row in tables {
        let table: String = row.try_get("", "name").map_err(backend_err)?;
        let columns = db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "SELECT name, type, \"notnull\", pk FROM pragma_table_info(?) ORDER BY cid",
                [table.clone().into()],
            ))
            .await
            .map_err(backend_err)?;
        let mut def = CollectionDef::new(table.clone());
        let mut pk: Vec<(i64, String)> = Vec::new();
        for column in columns {
            let name: String = column.try_get("", "name").map_err(backend_err)?;
            let declared: String = column.try_get("", "type").map_err(backend_err)?;
            let not_null: i64 = column.try_get("", "notnull").map_err(backend_err)?;
            let pk_position: i64 = column.try_get("", "pk").map_err(backend_err)?;
            let ty = field_type(&declared);
            def = if not_null != 0 || pk_position > 0 {
                def.field(name.clone(), ty)
            } else {
                def.optional_field(name.clone(), ty)
            };
            if pk_position > 0 {
                pk.push((pk_position, name));
            }
        }
        if pk.is_empty() {
            return Err(unsupported(
                &table,
                "it has no primary key, so its rows cannot be told apart",
            ));
        }
        pk.sort();
        builder = builder.collection(def.primary_key(pk.into_iter().map(|(_, name)| name)));
    }
    Ok(builder.build()?)
}
