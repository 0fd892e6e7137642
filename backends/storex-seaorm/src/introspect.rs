//! Reading a registry back from an existing SQLite database, for tools that move a database
//! whose app they do not know (`storex migrate`).
//!
//! Declared column types map to field types the way storex and SeaORM declare them: `uuid…`
//! → uuid, a timestamp with its time zone (`timestamp_with_timezone_text`, what they declare
//! for a UTC datetime) → datetime, `json…` → json, `…int…` → int, `bool…` → bool,
//! `real`/`double`/`float` → float, `blob`/`…binary…` → blob, anything else → text. A naive
//! `datetime` or `timestamp` column (another program's, holding `2024-01-01 10:00:00` or
//! seconds since 1970) is not a datetime: its values travel as they are, where reading them as
//! UTC datetimes would rewrite them in another form on the other devices. SQLite keeps numbers
//! as numbers in such a column (and in `numeric`, `decimal` or untyped ones), so those are
//! taken by what they hold: text when their values are text (or none), int when they are
//! integers, float when there are reals, blob when blobs. One that holds both text and numbers
//! is refused by name: a storex field holds one type.
//! storex's own tables (`storex_…`: the client sync log, app settings such as the device id
//! and its token, a shared log) are left out: they belong to the device, and a sync device adds
//! them itself. So are virtual tables (full-text indexes, say) and their shadow tables, which
//! SQLite builds from the rows of other tables, and, with [`sqlite_tables`], tables without a
//! primary key, whose rows cannot be told apart, and tables with a column of mixed kinds:
//! each is named with why.

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

/// Whether SQLite turns numbers into text in a column declared `declared` (its rule for TEXT
/// affinity): such a column holds only text (or blobs).
fn text_affinity(declared: &str) -> bool {
    let t = declared.to_ascii_lowercase();
    ["char", "clob", "text"].iter().any(|k| t.contains(k))
}

/// The field type of column `column` of `table` (one without TEXT affinity, taken for text
/// by its declared type) by the storage classes its values have, or why it has none.
async fn held_type(
    db: &DatabaseConnection,
    table: &str,
    column: &str,
) -> Result<std::result::Result<FieldType, String>> {
    let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let classes = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            format!(
                "SELECT DISTINCT typeof({}) AS class FROM {}",
                quote(column),
                quote(table)
            ),
        ))
        .await
        .map_err(|e| Error::Storage(storex_core::Error::backend("seaorm-sqlite", e)))?;
    let mut held = Vec::with_capacity(classes.len());
    for row in classes {
        let class: String = row
            .try_get("", "class")
            .map_err(|e| Error::Storage(storex_core::Error::backend("seaorm-sqlite", e)))?;
        if class != "null" {
            held.push(class);
        }
    }
    held.sort();
    let held: Vec<&str> = held.iter().map(String::as_str).collect();
    Ok(match held.as_slice() {
        [] | ["text"] => Ok(FieldType::Text),
        ["integer"] => Ok(FieldType::Int),
        ["real"] | ["integer", "real"] => Ok(FieldType::Float),
        ["blob"] => Ok(FieldType::Blob),
        mixed => Err(format!(
            "its column `{column}` holds values of several kinds ({}), and a field holds one",
            mixed.join(", ")
        )),
    })
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
    for table in &tables {
        match table {
            Table::Unkeyed(table) => return Err(unsupported(table, UNKEYED)),
            Table::Refused(table, why) => return Err(unsupported(table, why)),
            Table::Keyed(_) | Table::Derived(..) => {}
        }
    }
    build(tables)
}

/// The tables of a SQLite database storex can take, as [`registry_of_sqlite`] reads them, and
/// those it leaves out (virtual tables, their shadow tables, tables without a primary key,
/// and tables with a column holding both text and numbers), for a tool to tell its user.
pub async fn sqlite_tables(db: &DatabaseConnection) -> Result<SqliteTables> {
    let tables = read_tables(db).await?;
    let mut left_out = Vec::new();
    let mut taken = Vec::with_capacity(tables.len());
    for table in tables {
        match table {
            Table::Unkeyed(name) => left_out.push((name, UNKEYED.to_owned())),
            Table::Refused(name, why) => left_out.push((name, why)),
            Table::Derived(name, kind) => left_out.push((
                name,
                format!("it is a {kind} table, which SQLite builds from other tables"),
            )),
            keyed @ Table::Keyed(_) => taken.push(keyed),
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
    /// A table storex cannot take as it is, and why.
    Refused(String, String),
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
        let mut refused = None;
        for column in columns {
            let name: String = column.try_get("", "name").map_err(backend_err)?;
            let declared: String = column.try_get("", "type").map_err(backend_err)?;
            let not_null: i64 = column.try_get("", "notnull").map_err(backend_err)?;
            let pk_position: i64 = column.try_get("", "pk").map_err(backend_err)?;
            let mut ty = field_type(&declared);
            if ty == FieldType::Text && !text_affinity(&declared) {
                match held_type(db, &table, &name).await? {
                    Ok(held) => ty = held,
                    Err(why) => {
                        refused = Some(why);
                        break;
                    }
                }
            }
            def = if not_null != 0 || pk_position > 0 {
                def.field(name.clone(), ty)
            } else {
                def.optional_field(name.clone(), ty)
            };
            if pk_position > 0 {
                pk.push((pk_position, name));
            }
        }
        if let Some(why) = refused {
            read.push(Table::Refused(table, why));
            continue;
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
