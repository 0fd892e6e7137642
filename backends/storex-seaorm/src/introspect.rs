//! Reading a registry back from an existing SQLite database, for tools that move a database
//! whose app they do not know (`storex migrate`).
//!
//! Declared column types map to field types the way storex and SeaORM declare them: `uuid…`
//! → uuid, a timestamp with its time zone (`timestamp_with_timezone_text`, what they declare
//! for a UTC datetime) → datetime, `json…` → json, `…int…` → int, `bool…` → bool,
//! `real`/`double`/`float` → float, `blob`/`…binary…` → blob, anything else → text. A naive
//! `datetime` or `timestamp` column (another program's, holding `2024-01-01 10:00:00` or
//! seconds since 1970) is text: its values travel as they are, where reading them as UTC
//! datetimes would rewrite them in another form on the other devices. (A number SQLite keeps in
//! such a column, or a `numeric` or untyped one, reads as its text, which a receiving column of
//! the same declared type stores as a number again. The type is the declared one, never the
//! data's, so it is the same on every device and every run.)
//! storex's own tables (`storex_…`: the client sync log, app settings such as the device id
//! and its token, a shared log) are left out: they belong to the device, and a sync device adds
//! them itself. So are virtual tables (full-text indexes, say) and their shadow tables, which
//! SQLite builds from the rows of other tables, and, with [`sqlite_tables`], tables without a
//! primary key, whose rows cannot be told apart, and tables whose name or a column's name is
//! not an identifier storex takes: each is named with why.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use storex_core::{CollectionDef, FieldType, Registry};

use crate::error::{Error, Result};

fn field_type(declared: &str) -> FieldType {
    let t = declared.to_ascii_lowercase();
    if t.contains("uuid") {
        FieldType::Uuid
    } else if t.contains("with_timezone")
        || t.contains("with time zone")
        || t.contains("timestamptz")
    {
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

/// The tables of a SQLite database that storex can move and sync, and those it leaves out.
#[derive(Clone, Debug)]
pub struct SqliteTables {
    /// The registry of the tables taken.
    pub registry: Registry,
    /// The tables left out (but storex's own), each with why.
    pub left_out: Vec<(String, String)>,
}

/// The registry of every table of a SQLite database (but storex's own, `storex_…`, and virtual
/// tables with their shadow tables); a table without a primary key is an error (see
/// [`sqlite_tables`] to leave such tables out instead).
pub async fn registry_of_sqlite(db: &DatabaseConnection) -> Result<Registry> {
    let tables = read_tables(db).await?;
    if let Some(Table::Unkeyed(table)) = tables.iter().find(|t| matches!(t, Table::Unkeyed(_))) {
        return Err(unsupported(table, UNKEYED));
    }
    build(tables)
}

/// The tables of a SQLite database storex can take, as [`registry_of_sqlite`] reads them, and
/// those it leaves out (virtual tables, their shadow tables, tables without a primary key, and
/// tables whose name or a column's name storex does not take as an identifier), for a tool to
/// tell its user.
pub async fn sqlite_tables(db: &DatabaseConnection) -> Result<SqliteTables> {
    let tables = read_tables(db).await?;
    let mut left_out = Vec::new();
    let mut taken = Vec::with_capacity(tables.len());
    for table in tables {
        match table {
            Table::Unkeyed(name) => left_out.push((name, UNKEYED.to_owned())),
            Table::Derived(name, kind) => left_out.push((
                name,
                format!("it is a {kind} table, which SQLite builds from other tables"),
            )),
            Table::Keyed(def) => match Registry::builder().collection(def.clone()).build() {
                Ok(_) => taken.push(Table::Keyed(def)),
                // A name storex does not take (`first name`, `größe`): the table is left out
                // with the registry's reason, and the others still move.
                Err(problem) => left_out.push((def.name().to_owned(), problem.to_string())),
            },
        }
    }
    Ok(SqliteTables {
        registry: build(taken)?,
        left_out,
    })
}

const UNKEYED: &str = "it has no primary key, so its rows cannot be told apart";

/// One table as read.
enum Table {
    /// A table with a primary key.
    Keyed(CollectionDef),
    /// A table without one.
    Unkeyed(String),
    /// A virtual table or a shadow table of one, and which.
    Derived(String, String),
}

fn build(tables: Vec<Table>) -> Result<Registry> {
    let mut builder = Registry::builder();
    for table in tables {
        if let Table::Keyed(def) = table {
            builder = builder.collection(def);
        }
    }
    Ok(builder.build()?)
}

async fn read_tables(db: &DatabaseConnection) -> Result<Vec<Table>> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return Err(Error::UnsupportedDatabase {
            backend: format!("{:?}", db.get_database_backend()),
        });
    }
    let backend_err = |e| Error::Storage(storex_core::Error::backend("seaorm-sqlite", e));
    // `type` tells ordinary tables from virtual ones and their shadow tables.
    let tables = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT name, type FROM pragma_table_list WHERE schema = 'main' \
             AND type IN ('table', 'virtual', 'shadow') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
             AND name NOT GLOB 'storex_*' ORDER BY name",
        ))
        .await
        .map_err(backend_err)?;
    let mut read = Vec::with_capacity(tables.len());
    for row in tables {
        let table: String = row.try_get("", "name").map_err(backend_err)?;
        let kind: String = row.try_get("", "type").map_err(backend_err)?;
        if kind != "table" {
            read.push(Table::Derived(table, kind));
            continue;
        }
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
            read.push(Table::Unkeyed(table));
            continue;
        }
        pk.sort();
        read.push(Table::Keyed(
            def.primary_key(pk.into_iter().map(|(_, name)| name)),
        ));
    }
    Ok(read)
}
