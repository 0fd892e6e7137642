//! Tables for a registry: created when missing (idempotently), adopted when they exist.
//!
//! An existing table, such as one an app's SeaORM entities created, is used as it is; storex
//! only checks that every field of the registry is a column of it, so a mismatch is reported
//! by name at start-up instead of failing later on a write. On SQLite an index of the
//! registry that the table has already, under any name (the app's own, over the same columns,
//! as unique or not), is not created a second time.

use sea_orm::sea_query::{Alias, ColumnDef, Index, Query as SqlQuery, Table};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};
use std::collections::HashMap;

use storex_core::{CollectionDef, Error, FieldType, IndexDef, Registry};

use crate::backend::Dialect;

/// Creates what is missing for every collection of `registry` and checks what exists.
pub(crate) async fn prepare(
    db: &DatabaseConnection,
    dialect: Dialect,
    registry: &Registry,
    backend: &'static str,
) -> Result<(), Error> {
    let db_err = |e: DbErr| Error::backend(backend, e);
    let names = index_names(registry);
    for def in registry.collections() {
        db.execute(&create_table(def, dialect)?)
            .await
            .map_err(db_err)?;
        // Read only for a collection that has indexes to create (every open runs this).
        let existing = match dialect {
            Dialect::Sqlite if !def.indices().is_empty() => {
                crate::introspect::sqlite_indexes(db, def.name())
                    .await
                    .map_err(db_err)?
            }
            _ => Vec::new(),
        };
        for (position, index) in def.indices().iter().enumerate() {
            if existing.iter().any(|e| e.is(index)) {
                continue;
            }
            let name = names
                .get(&(def.name(), position))
                .cloned()
                .unwrap_or_else(|| plain_index_name(def, index));
            let mut stmt = Index::create();
            stmt.if_not_exists()
                .name(name)
                .table(Alias::new(def.name()));
            for field in &index.fields {
                stmt.col(Alias::new(field));
            }
            if index.unique {
                stmt.unique();
            }
            db.execute(&stmt).await.map_err(db_err)?;
        }
        check_columns(db, def).await?;
    }
    Ok(())
}

fn create_table(
    def: &CollectionDef,
    dialect: Dialect,
) -> Result<sea_orm::sea_query::TableCreateStatement, Error> {
    let mut table = Table::create();
    table.table(Alias::new(def.name())).if_not_exists();
    for field in def.fields() {
        let mut column = ColumnDef::new(Alias::new(&field.name));
        match field.ty {
            FieldType::Text => column.text(),
            FieldType::Int => column.big_integer(),
            FieldType::Float => column.double(),
            FieldType::Bool => column.boolean(),
            FieldType::DateTime => column.timestamp_with_time_zone(),
            FieldType::Json => column.json_binary(),
            FieldType::Blob => column.blob(),
            FieldType::Uuid => column.uuid(),
        };
        if field.optional {
            column.null();
        } else {
            column.not_null();
        }
        // Storex writes every field; the default is for the app's own inserts. Not on SQLite
        // for a UUID or datetime: the DDL's literal would be text, where storex stores a
        // 16-byte blob and RFC 3339 text.
        let literal_fits = dialect == Dialect::Postgres
            || !matches!(field.ty, FieldType::Uuid | FieldType::DateTime);
        if let Some(default) = def.default_of(&field.name).filter(|_| literal_fits) {
            column.default(crate::values::to_sql(
                def.name(),
                &field.name,
                field.ty,
                default.clone(),
            )?);
        }
        if field.ty == FieldType::Text && dialect == Dialect::Postgres {
            // Byte order, as storex compares text everywhere, whatever the database's locale.
            column.extra("COLLATE \"C\"");
        }
        table.col(&mut column);
    }
    let mut pk = Index::create();
    for field in def.pk_fields() {
        pk.col(Alias::new(field));
    }
    table.primary_key(&mut pk);
    if def.is_clustered() && dialect == Dialect::Sqlite {
        table.extra("WITHOUT ROWID");
    }
    Ok(table)
}

/// An index's usual name: `<table>_<fields>_idx` (or `_key` for unique), within
/// PostgreSQL's 63 bytes.
fn plain_index_name(def: &CollectionDef, index: &IndexDef) -> String {
    let suffix = if index.unique { "key" } else { "idx" };
    let mut name = format!("{}_{}", def.name(), index.fields.join("_"));
    name.truncate(63 - suffix.len() - 1);
    format!("{name}_{suffix}")
}

/// The name of every index of `registry`. Names are one namespace per database, and the usual
/// names can coincide (`user` + `org_email` and `user_org` + `email`, or names cut to 63
/// bytes); then `CREATE INDEX IF NOT EXISTS` would silently skip the second index. Those get
/// a hash of their table and fields in the name instead; the others keep the usual name, so
/// existing databases keep their indexes.
///
/// Keyed by table and the index's position among the table's indexes.
fn index_names(registry: &Registry) -> HashMap<(&str, usize), String> {
    let mut by_name: HashMap<String, Vec<(&str, usize, &IndexDef)>> = HashMap::new();
    for def in registry.collections() {
        for (position, index) in def.indices().iter().enumerate() {
            by_name
                .entry(plain_index_name(def, index))
                .or_default()
                .push((def.name(), position, index));
        }
    }
    let mut names = HashMap::new();
    for (plain, owners) in by_name {
        let shared = owners.len() > 1;
        for (table, position, index) in owners {
            let name = if shared {
                hashed_index_name(&plain, table, index)
            } else {
                plain.clone()
            };
            names.insert((table, position), name);
        }
    }
    names
}

fn hashed_index_name(plain: &str, table: &str, index: &IndexDef) -> String {
    use sha2::{Digest as _, Sha256};
    let mut hash = Sha256::new();
    hash.update(table.as_bytes());
    for field in &index.fields {
        hash.update([0]);
        hash.update(field.as_bytes());
    }
    hash.update([u8::from(index.unique)]);
    let digest: String = hash.finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // `<plain without its suffix, cut>_<8 hex>_<suffix>`, within 63 bytes.
    let (stem, suffix) = plain.rsplit_once('_').unwrap_or((plain, "idx"));
    let mut stem = stem.to_owned();
    stem.truncate(63 - suffix.len() - digest.len() - 2);
    format!("{stem}_{digest}_{suffix}")
}

async fn check_columns(db: &DatabaseConnection, def: &CollectionDef) -> Result<(), Error> {
    let mut probe = SqlQuery::select();
    probe
        .columns(def.fields().iter().map(|f| Alias::new(&f.name)))
        .from(Alias::new(def.name()))
        .limit(0);
    db.query_all(&probe)
        .await
        .map_err(|e| Error::InvalidDefinition {
            collection: def.name().to_owned(),
            problem: format!("its existing table lacks a column of the registry ({e})"),
        })?;
    Ok(())
}
