//! Tables for a registry: created when missing (idempotently), adopted when they exist.
//!
//! An existing table, such as one an app's SeaORM entities created, is used as it is; storex
//! only checks that every field of the registry is a column of it, so a mismatch is reported
//! by name at start-up instead of failing later on a write.

use sea_orm::sea_query::{Alias, ColumnDef, Index, Query as SqlQuery, Table};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};
use storex_core::{CollectionDef, Error, FieldType, Registry};

use crate::backend::Dialect;

/// Creates what is missing for every collection of `registry` and checks what exists.
pub(crate) async fn prepare(
    db: &DatabaseConnection,
    dialect: Dialect,
    registry: &Registry,
    backend: &'static str,
) -> Result<(), Error> {
    let db_err = |e: DbErr| Error::backend(backend, e);
    for def in registry.collections() {
        db.execute(&create_table(def, dialect))
            .await
            .map_err(db_err)?;
        for (name, index) in index_names(def) {
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

fn create_table(def: &CollectionDef, dialect: Dialect) -> sea_orm::sea_query::TableCreateStatement {
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
    table
}

/// Index names: `<table>_<fields>_idx` (or `_key` for unique), within PostgreSQL's 63 bytes.
fn index_names(def: &CollectionDef) -> impl Iterator<Item = (String, &storex_core::IndexDef)> {
    def.indices().iter().map(move |index| {
        let suffix = if index.unique { "key" } else { "idx" };
        let mut name = format!("{}_{}", def.name(), index.fields.join("_"));
        name.truncate(63 - suffix.len() - 1);
        (format!("{name}_{suffix}"), index)
    })
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
