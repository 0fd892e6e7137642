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
//!
//! A table's indexes over plain columns (made by `CREATE INDEX` or a `UNIQUE` constraint) are
//! read into its definition, so a database created from the registry has them too. What a
//! registry cannot hold (partial indexes and indexes on expressions, foreign keys, defaults,
//! `CHECK` constraints, generated columns, `AUTOINCREMENT`, collations, triggers and views) is
//! listed by [`sqlite_tables`] in [`SqliteTables::not_carried`], for a tool that copies the
//! database to tell its user; the schema version an app keeps in `PRAGMA user_version` is
//! [`SqliteTables::user_version`], for it to carry.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use storex_core::{CollectionDef, FieldType, Registry};

use crate::error::{Error, Result};
use crate::sql::quoted;

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
    /// What the schema of the tables taken has that the registry does not hold, so a
    /// database created from it lacks (a foreign key, a trigger, a partial index, say): one
    /// description each, naming the table and what it is.
    pub not_carried: Vec<String>,
    /// The schema version the app keeps in `PRAGMA user_version` (0 if it keeps none).
    pub user_version: i32,
}

/// The registry of every table of a SQLite database (but storex's own, `storex_…`, and virtual
/// tables with their shadow tables); a table without a primary key is an error (see
/// [`sqlite_tables`] to leave such tables out instead).
pub async fn registry_of_sqlite(db: &DatabaseConnection) -> Result<Registry> {
    let (tables, _) = read_tables(db, false).await?;
    for table in &tables {
        match table {
            Table::Unkeyed(name) => return Err(unsupported(name, UNKEYED)),
            Table::KeyUnordered(name, column) => {
                return Err(unsupported(name, &key_unordered(column)))
            }
            Table::Keyed(_) | Table::Derived(..) => {}
        }
    }
    build(tables)
}

/// The tables of a SQLite database storex can take, as [`registry_of_sqlite`] reads them, and
/// those it leaves out (virtual tables, their shadow tables, tables without a primary key, and
/// tables whose name or a column's name storex does not take as an identifier), for a tool to
/// tell its user.
pub async fn sqlite_tables(db: &DatabaseConnection) -> Result<SqliteTables> {
    let (tables, mut not_carried) = read_tables(db, true).await?;
    let user_version = user_version(db)
        .await
        .map_err(|e| Error::Storage(storex_core::Error::backend("seaorm-sqlite", e)))?;
    let mut left_out = Vec::new();
    let mut taken = Vec::with_capacity(tables.len());
    for table in tables {
        match table {
            Table::Unkeyed(name) => left_out.push((name, UNKEYED.to_owned())),
            Table::KeyUnordered(name, column) => left_out.push((name, key_unordered(&column))),
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
    // What belongs to a table left out is not worth a line of its own.
    not_carried.retain(|note| match &note.table {
        Some(table) => !left_out.iter().any(|(name, _)| name == table),
        None => true,
    });
    Ok(SqliteTables {
        registry: build(taken)?,
        left_out,
        not_carried: not_carried.into_iter().map(|note| note.text).collect(),
        user_version,
    })
}

/// Something of the schema a registry does not hold, and the table it belongs to, if one.
struct NotCarried {
    table: Option<String>,
    text: String,
}

impl NotCarried {
    fn of(table: &str, text: String) -> Self {
        NotCarried {
            table: Some(table.to_owned()),
            text,
        }
    }
}

const UNKEYED: &str = "it has no primary key, so its rows cannot be told apart";

/// Why a table whose key column `column` has no type, and holds values other than text, is
/// not taken.
fn key_unordered(column: &str) -> String {
    format!(
        "its key column `{column}` has no declared type and holds values other than text: \
         storex reads such a column as text, and SQLite orders the values as they are stored \
         (numbers before text), so reading the table in key order would miss rows; give the \
         column a type (INTEGER or TEXT, say) to take it"
    )
}

/// One table as read.
enum Table {
    /// A table with a primary key.
    Keyed(CollectionDef),
    /// A table without one.
    Unkeyed(String),
    /// A table whose key column (named second) has no type (no affinity: it is read as
    /// text) and holds values other than text, which SQLite orders apart from text.
    KeyUnordered(String, String),
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

/// The tables of `db`, and what of their schema a registry does not hold. Only with `extras`
/// is the schema asked for what no registry holds (foreign keys, defaults, triggers and the
/// like: a few queries a table); without, the notes name indexes not carried only.
async fn read_tables(
    db: &DatabaseConnection,
    extras: bool,
) -> Result<(Vec<Table>, Vec<NotCarried>)> {
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
            "SELECT name, type, strict FROM pragma_table_list WHERE schema = 'main' \
             AND type IN ('table', 'virtual', 'shadow') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
             AND name NOT GLOB 'storex_*' ORDER BY name",
        ))
        .await
        .map_err(backend_err)?;
    let mut read = Vec::with_capacity(tables.len());
    let mut not_carried = Vec::new();
    for row in tables {
        let table: String = row.try_get("", "name").map_err(backend_err)?;
        let kind: String = row.try_get("", "type").map_err(backend_err)?;
        let strict: i64 = row.try_get("", "strict").map_err(backend_err)?;
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
        let mut untyped_keys = Vec::new();
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
                if no_affinity(&declared, strict != 0) {
                    untyped_keys.push(name.clone());
                }
                pk.push((pk_position, name));
            }
        }
        if pk.is_empty() {
            read.push(Table::Unkeyed(table));
            continue;
        }
        if let Some(column) = first_not_all_text(db, &table, &untyped_keys)
            .await
            .map_err(backend_err)?
        {
            read.push(Table::KeyUnordered(table, column));
            continue;
        }
        pk.sort();
        let mut def = def.primary_key(pk.into_iter().map(|(_, name)| name));
        for index in sqlite_indexes(db, &table).await.map_err(backend_err)? {
            def = carry_index(def, index, &mut not_carried);
        }
        if extras {
            not_carried.extend(
                table_extras(db, &table)
                    .await
                    .map_err(backend_err)?
                    .into_iter()
                    .map(|text| NotCarried::of(&table, text)),
            );
        }
        read.push(Table::Keyed(def));
    }
    if extras {
        not_carried.extend(
            database_extras(db)
                .await
                .map_err(backend_err)?
                .into_iter()
                .map(|text| NotCarried { table: None, text }),
        );
    }
    Ok((read, not_carried))
}

/// Whether a column declared `declared` has no type affinity: SQLite stores its values as
/// they come and compares them without converting (a column declared without a type, or
/// `ANY` in a `STRICT` table).
fn no_affinity(declared: &str, strict: bool) -> bool {
    let declared = declared.trim();
    declared.is_empty() || (strict && declared.eq_ignore_ascii_case("any"))
}

/// The first of `columns` of `table` holding a value other than text (or null), if one does.
async fn first_not_all_text(
    db: &DatabaseConnection,
    table: &str,
    columns: &[String],
) -> std::result::Result<Option<String>, DbErr> {
    for column in columns {
        let sql = format!(
            "SELECT 1 AS found FROM {} WHERE typeof({}) NOT IN ('text', 'null') LIMIT 1",
            quoted(table),
            quoted(column)
        );
        let found = db
            .query_one_raw(Statement::from_string(DbBackend::Sqlite, sql))
            .await?;
        if found.is_some() {
            return Ok(Some(column.clone()));
        }
    }
    Ok(None)
}

/// One index of a SQLite table, as `pragma_index_list` and `pragma_index_xinfo` tell it.
#[derive(Debug)]
pub(crate) struct SqliteIndex {
    /// Its name.
    pub(crate) name: String,
    /// Whether it is unique.
    pub(crate) unique: bool,
    /// Where it comes from: `c` (`CREATE INDEX`), `u` (a `UNIQUE` constraint) or `pk`.
    pub(crate) origin: String,
    /// Whether it has a `WHERE` clause.
    pub(crate) partial: bool,
    /// Its key columns in order; `None` for an expression (or the rowid).
    pub(crate) columns: Vec<Option<String>>,
    /// Whether a key column is in descending order or compared with a collation other than
    /// `BINARY`.
    pub(crate) ordered_or_collated: bool,
}

impl SqliteIndex {
    /// Whether it is the registry's `index`: not partial, as unique, over exactly its fields
    /// as plain columns (then it need not be created again, nor carried twice).
    pub(crate) fn is(&self, index: &storex_core::IndexDef) -> bool {
        !self.partial
            && self.unique == index.unique
            && self
                .columns
                .iter()
                .map(Option::as_ref)
                .eq(index.fields.iter().map(Some))
    }

    /// Its key columns, if every one is a plain column.
    pub(crate) fn plain_columns(&self) -> Option<Vec<String>> {
        self.columns.iter().cloned().collect()
    }
}

/// The indexes of SQLite table `table`.
pub(crate) async fn sqlite_indexes<C: ConnectionTrait>(
    db: &C,
    table: &str,
) -> std::result::Result<Vec<SqliteIndex>, DbErr> {
    let list = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "SELECT name, \"unique\", origin, partial FROM pragma_index_list(?) ORDER BY name",
            [table.into()],
        ))
        .await?;
    let mut indexes = Vec::with_capacity(list.len());
    for row in list {
        let name: String = row.try_get("", "name")?;
        let unique: i64 = row.try_get("", "unique")?;
        let origin: String = row.try_get("", "origin")?;
        let partial: i64 = row.try_get("", "partial")?;
        let keys = db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "SELECT cid, name, \"desc\", coll FROM pragma_index_xinfo(?) WHERE key = 1 \
                 ORDER BY seqno",
                [name.clone().into()],
            ))
            .await?;
        let mut columns = Vec::with_capacity(keys.len());
        let mut ordered_or_collated = false;
        for key in keys {
            let cid: i64 = key.try_get("", "cid")?;
            let column: Option<String> = key.try_get("", "name")?;
            let desc: i64 = key.try_get("", "desc")?;
            let collation: Option<String> = key.try_get("", "coll")?;
            columns.push(column.filter(|_| cid >= 0));
            ordered_or_collated |=
                desc != 0 || collation.is_some_and(|c| !c.eq_ignore_ascii_case("BINARY"));
        }
        indexes.push(SqliteIndex {
            name,
            unique: unique != 0,
            origin,
            partial: partial != 0,
            columns,
            ordered_or_collated,
        });
    }
    Ok(indexes)
}

/// `def` with `index` added if a registry can hold it (plain columns, no `WHERE`), once;
/// otherwise (or for what of it is lost) a note in `not_carried`. The primary key's own index
/// is the key already.
fn carry_index(
    def: CollectionDef,
    index: SqliteIndex,
    not_carried: &mut Vec<NotCarried>,
) -> CollectionDef {
    let table = def.name().to_owned();
    if index.origin == "pk" {
        return def;
    }
    let columns = match index.plain_columns() {
        Some(columns) if !index.partial => columns,
        _ => {
            let what = if index.partial {
                "a partial index (with WHERE)"
            } else {
                "an index on an expression"
            };
            let text = format!("index `{}` of `{table}`: {what}", index.name);
            not_carried.push(NotCarried::of(&table, text));
            return def;
        }
    };
    if index.ordered_or_collated {
        let text = format!(
            "the descending order or collation of index `{}` of `{table}` (the index is \
             carried without it)",
            index.name
        );
        not_carried.push(NotCarried::of(&table, text));
    }
    let known = def.indices().iter().any(|i| index.is(i));
    match (known, index.unique) {
        (true, _) => def,
        (false, true) => def.unique_index(columns),
        (false, false) => def.index(columns),
    }
}

/// What table `table` declares beyond its columns, keys and indexes: foreign keys, defaults,
/// generated columns, and what its `CREATE TABLE` says in words (`CHECK`, `AUTOINCREMENT`,
/// `COLLATE`).
async fn table_extras(
    db: &DatabaseConnection,
    table: &str,
) -> std::result::Result<Vec<String>, DbErr> {
    let mut extras = Vec::new();
    let names = |rows: Vec<sea_orm::QueryResult>, column: &str| {
        rows.iter()
            .map(|row| row.try_get::<String>("", column).map(|n| format!("`{n}`")))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(|names| names.join(", "))
    };
    let query = |sql: &str| {
        db.query_all_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            [table.into()],
        ))
    };
    let parents =
        query("SELECT DISTINCT \"table\" FROM pragma_foreign_key_list(?) ORDER BY 1").await?;
    if !parents.is_empty() {
        let parents = names(parents, "table")?;
        extras.push(format!("the foreign keys of `{table}` (to {parents})"));
    }
    let defaults =
        query("SELECT name FROM pragma_table_info(?) WHERE dflt_value IS NOT NULL ORDER BY cid")
            .await?;
    if !defaults.is_empty() {
        let columns = names(defaults, "name")?;
        extras.push(format!("the defaults of `{table}` ({columns})"));
    }
    let generated =
        query("SELECT name FROM pragma_table_xinfo(?) WHERE hidden IN (2, 3) ORDER BY cid").await?;
    if !generated.is_empty() {
        let columns = names(generated, "name")?;
        extras.push(format!("the generated columns of `{table}` ({columns})"));
    }
    let sql = query("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?").await?;
    let sql: Option<String> = match sql.first() {
        Some(row) => row.try_get("", "sql")?,
        None => None,
    };
    let words = sql.as_deref().map(sql_words).unwrap_or_default();
    for (word, what) in [
        ("CHECK", "the CHECK constraints"),
        ("AUTOINCREMENT", "AUTOINCREMENT"),
        ("COLLATE", "the column collations"),
    ] {
        if words.iter().any(|w| w == word) {
            extras.push(format!("{what} of `{table}`"));
        }
    }
    Ok(extras)
}

/// What the database holds beyond its tables: triggers and views.
async fn database_extras(db: &DatabaseConnection) -> std::result::Result<Vec<String>, DbErr> {
    let mut extras = Vec::new();
    let objects = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT type, name FROM sqlite_schema WHERE type IN ('trigger', 'view') \
             AND name NOT GLOB 'storex_*' ORDER BY type, name",
        ))
        .await?;
    for row in objects {
        let kind: String = row.try_get("", "type")?;
        let name: String = row.try_get("", "name")?;
        extras.push(format!("{kind} `{name}`"));
    }
    Ok(extras)
}

/// The schema version an app keeps in `PRAGMA user_version`.
async fn user_version(db: &DatabaseConnection) -> std::result::Result<i32, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT user_version FROM pragma_user_version",
        ))
        .await?;
    match row {
        Some(row) => row.try_get("", "user_version"),
        None => Ok(0),
    }
}

/// The bare words of `sql` in upper case, outside quotes, brackets and comments (so a column
/// named `"check"` is not the keyword).
fn sql_words(sql: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = sql.chars().peekable();
    let mut word = String::new();
    while let Some(c) = chars.next() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c.to_ascii_uppercase());
            continue;
        }
        if !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
        let close = match c {
            '\'' => '\'',
            '"' => '"',
            '`' => '`',
            '[' => ']',
            '-' if chars.peek() == Some(&'-') => '\n',
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                while let Some(c) = chars.next() {
                    if c == '*' && chars.peek() == Some(&'/') {
                        chars.next();
                        break;
                    }
                }
                continue;
            }
            _ => continue,
        };
        // A doubled quote inside a quoted name or string ends it and opens it again: the
        // same as skipping both.
        for c in chars.by_ref() {
            if c == close {
                break;
            }
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}
