//! Building SQL statements for storex operations, with sea-query except the multi-row INSERT
//! of bulk writes (written out directly, see [`insert`]): every user value is a bound
//! parameter, every name a quoted identifier; no value is ever part of the SQL text (on
//! SQLite a query's limit, an integer, is: see [`select`]).
//!
//! The filter semantics are storex-core's: `ne` also matches NULL (`IS DISTINCT FROM`), an
//! empty `in` matches nothing, ascending order puts NULLs first and descending last on both
//! databases, and the primary key breaks ties.

use sea_orm::sea_query::{
    Alias, Asterisk, BinOper, Condition as SqlCondition, DeleteStatement, Expr, ExprTrait,
    NullOrdering, Order as SqlOrder, Query as SqlQuery, ReturningClause, SelectStatement,
    SimpleExpr, UpdateStatement, Value as SqlValue, Values,
};
use sea_orm::{DbBackend, Statement};
use storex_core::{
    CollectionDef, Direction, Error, FieldType, Filter, Object, Pk, Predicate, Query, Value,
};

use crate::backend::Dialect;
use crate::values::to_sql;

/// The name of the rows of values in [`update_rows`] statements (a collection of that name
/// would clash).
const VALUES_TABLE: &str = "\"storex_values\"";

/// The name of the count column in [`count`] statements.
pub(crate) const COUNT_COLUMN: &str = "storex_count";

fn ident(name: &str) -> Alias {
    Alias::new(name)
}

fn field_type(def: &CollectionDef, field: &str) -> Result<FieldType, Error> {
    def.field_def(field)
        .map(|f| f.ty)
        .ok_or_else(|| Error::UnknownField {
            collection: def.name().to_owned(),
            field: field.to_owned(),
        })
}

fn param(def: &CollectionDef, field: &str, value: &Value) -> Result<SimpleExpr, Error> {
    let ty = field_type(def, field)?;
    Ok(Expr::val(to_sql(def.name(), field, ty, value.clone())?))
}

/// The SQL condition for `filter` (all conditions must hold).
pub(crate) fn condition(def: &CollectionDef, filter: &Filter) -> Result<SqlCondition, Error> {
    let mut all = SqlCondition::all();
    for c in &filter.conditions {
        let column = Expr::col(ident(&c.field));
        let expr = match &c.predicate {
            Predicate::Eq(Value::Null) => column.is_null(),
            Predicate::Ne(Value::Null) => column.is_not_null(),
            Predicate::Eq(v) => column.eq(param(def, &c.field, v)?),
            Predicate::Ne(v) => column.binary(
                BinOper::Custom("IS DISTINCT FROM"),
                param(def, &c.field, v)?,
            ),
            Predicate::Lt(v) => column.lt(param(def, &c.field, v)?),
            Predicate::Lte(v) => column.lte(param(def, &c.field, v)?),
            Predicate::Gt(v) => column.gt(param(def, &c.field, v)?),
            Predicate::Gte(v) => column.gte(param(def, &c.field, v)?),
            Predicate::In(values) if values.is_empty() => Expr::val(1).eq(0),
            Predicate::In(values) => {
                // Sized up front: growing a long list step by step reallocates it.
                let mut params = Vec::with_capacity(values.len());
                for value in values {
                    params.push(param(def, &c.field, value)?);
                }
                column.is_in(params)
            }
        };
        all = all.add(expr);
    }
    Ok(all)
}

/// The condition selecting the object with key `pk`.
pub(crate) fn pk_condition(def: &CollectionDef, pk: &Pk) -> Result<SqlCondition, Error> {
    let mut all = SqlCondition::all();
    for (field, value) in def.pk_fields().iter().zip(pk.values()) {
        all = all.add(Expr::col(ident(field)).eq(param(def, field, value)?));
    }
    Ok(all)
}

/// `SELECT <every field> FROM <collection> WHERE … ORDER BY … LIMIT … OFFSET …`.
///
/// On SQLite the limit is a number in the text, not a bound parameter: SQLite (3.51) reads
/// a bound `LIMIT`'s value while planning, so it marks the prepared statement as expired
/// whenever that parameter is bound again, and a cached `LIMIT ?` statement was parsed and
/// planned anew on every run (every keyed lookup runs with `LIMIT 1`). The limit is an
/// integer of the [`Query`], never text, so no value of an object or a filter is ever part
/// of the SQL text. The offset stays bound (SQLite does not plan with it, and paging by
/// offset would make every page a statement of its own), and so do both on PostgreSQL.
pub(crate) fn select(
    def: &CollectionDef,
    dialect: Dialect,
    query: &Query,
) -> Result<Statement, Error> {
    select_fields(
        def,
        def.fields().iter().map(|f| f.name.as_str()),
        dialect,
        query,
    )
}

/// [`select`] of only `fields`, in that order.
pub(crate) fn select_fields<'f>(
    def: &CollectionDef,
    fields: impl IntoIterator<Item = &'f str>,
    dialect: Dialect,
    query: &Query,
) -> Result<Statement, Error> {
    let mut stmt = SqlQuery::select();
    stmt.columns(fields.into_iter().map(ident))
        .from(ident(def.name()))
        .cond_where(condition(def, &query.filter)?);
    for order in &query.order {
        let (direction, nulls) = match order.direction {
            Direction::Asc => (SqlOrder::Asc, NullOrdering::First),
            Direction::Desc => (SqlOrder::Desc, NullOrdering::Last),
        };
        stmt.order_by_with_nulls(ident(&order.field), direction, nulls);
    }
    for pk in def.pk_fields() {
        stmt.order_by(ident(pk), SqlOrder::Asc);
    }
    // Both databases take counts up to i64::MAX: `Storage`'s validation refuses more, and
    // a query handed to the backend directly is kept within (no table holds that many rows,
    // so the answer is the same). SQLite takes no OFFSET without a LIMIT.
    let within = |count: u64| Ord::min(count, i64::MAX as u64);
    let (limit, skip) = match (query.limit, query.skip) {
        (None, 0) => (None, 0),
        (limit, skip) => (Some(within(limit.unwrap_or(u64::MAX))), within(skip)),
    };
    if dialect == Dialect::Postgres {
        if let Some(limit) = limit {
            stmt.limit(limit);
        }
        if skip > 0 {
            stmt.offset(skip);
        }
        return Ok(db_backend(dialect).build(&stmt));
    }
    let mut statement = db_backend(dialect).build(&stmt);
    if let Some(limit) = limit {
        statement.sql.push_str(&format!(" LIMIT {limit}"));
    }
    if skip > 0 {
        // The offset's placeholder is the statement's last.
        statement.sql.push_str(" OFFSET ?");
        let offset = SqlValue::BigInt(Some(i64::try_from(skip).unwrap_or(i64::MAX)));
        match &mut statement.values {
            Some(values) => values.0.push(offset),
            None => statement.values = Some(Values(vec![offset])),
        }
    }
    Ok(statement)
}

/// On SQLite, for a collection keyed by one UUID field: the keys of the objects `filter`
/// matches as one text, `group_concat(hex(<key>), ',')` (see [`crate::values::uuid_keys`]),
/// one row instead of a row per object, and how many triggers the table has (a trigger may
/// keep a row from a write: then the keys read are not the keys written). `None` for other
/// keys and on PostgreSQL.
pub(crate) fn uuid_keys_at_once(
    def: &CollectionDef,
    dialect: Dialect,
    filter: &Filter,
) -> Result<Option<SelectStatement>, Error> {
    let [key] = def.pk_fields() else {
        return Ok(None);
    };
    if dialect != Dialect::Sqlite || field_type(def, key)? != FieldType::Uuid {
        return Ok(None);
    }
    let mut stmt = SqlQuery::select();
    stmt.expr(Expr::cust(format!(
        "group_concat(hex({}), ',')",
        quoted(key)
    )))
    .expr(Expr::cust_with_values(
        "(SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?)",
        [def.name()],
    ))
    .from(ident(def.name()))
    .cond_where(condition(def, filter)?);
    Ok(Some(stmt))
}

/// `SELECT COUNT(*) AS storex_count FROM <collection> WHERE …`.
pub(crate) fn count(def: &CollectionDef, filter: &Filter) -> Result<SelectStatement, Error> {
    let mut stmt = SqlQuery::select();
    stmt.expr_as(Expr::col(Asterisk).count(), ident(COUNT_COLUMN))
        .from(ident(def.name()))
        .cond_where(condition(def, filter)?);
    Ok(stmt)
}

/// Quotes an identifier for both dialects (a double quote inside is doubled), as sea-query
/// does.
pub(crate) fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn db_backend(dialect: Dialect) -> DbBackend {
    match dialect {
        Dialect::Sqlite => DbBackend::Sqlite,
        Dialect::Postgres => DbBackend::Postgres,
    }
}

/// Appends one row of placeholders, `(?, ?, …)` or `($n, …)`, to `text`, and the cells'
/// values (field, its type, the value) to `values`.
fn push_row<'f>(
    text: &mut String,
    values: &mut Vec<SqlValue>,
    (collection, dialect): (&str, Dialect),
    cells: impl Iterator<Item = (&'f str, FieldType, Value)>,
) -> Result<(), Error> {
    text.push('(');
    for (column, (field, ty, value)) in cells.enumerate() {
        values.push(to_sql(collection, field, ty, value)?);
        if column > 0 {
            text.push_str(", ");
        }
        match dialect {
            Dialect::Sqlite => text.push('?'),
            Dialect::Postgres => {
                text.push('$');
                text.push_str(&values.len().to_string());
            }
        }
    }
    text.push(')');
    Ok(())
}

/// What a multi-row `INSERT` does with a row whose key exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnExisting {
    /// Fails (a create).
    Fail,
    /// Replaces every other field of the stored row (a put): `ON CONFLICT … DO UPDATE`.
    Replace,
}

/// A multi-row `INSERT` of whole objects (absent fields as NULL).
///
/// The hot path of bulk writes, so it is written out directly instead of through sea-query's
/// expression tree: the text is only quoted identifiers and placeholders, every value is a
/// bound parameter, converted once.
pub(crate) fn insert<'o>(
    def: &CollectionDef,
    dialect: Dialect,
    objects: impl IntoIterator<Item = &'o Object>,
    existing: OnExisting,
) -> Result<Statement, Error> {
    let fields = def.fields();
    let columns = fields
        .iter()
        .map(|f| quoted(&f.name))
        .collect::<Vec<_>>()
        .join(", ");
    let objects = objects.into_iter();
    // Sized for the rows at once: a statement holds up to thousands of values.
    let cells = objects.size_hint().0 * fields.len();
    let mut text = String::with_capacity(64 + columns.len() + 4 * cells);
    text.push_str("INSERT INTO ");
    text.push_str(&quoted(def.name()));
    text.push_str(" (");
    text.push_str(&columns);
    text.push_str(") VALUES ");
    let mut values = Vec::with_capacity(cells);
    for (row, object) in objects.enumerate() {
        if row > 0 {
            text.push_str(", ");
        }
        let cells = fields.iter().map(|f| {
            let value = object.get(&f.name).cloned().unwrap_or(Value::Null);
            (f.name.as_str(), f.ty, value)
        });
        push_row(&mut text, &mut values, (def.name(), dialect), cells)?;
    }
    if values.is_empty() {
        return Err(Error::invalid_operation(
            def.name(),
            "cannot build an insert of no rows",
        ));
    }
    if existing == OnExisting::Replace {
        // The same words on SQLite (3.24 and later) and PostgreSQL.
        let key = def.pk_fields();
        let key_columns = key.iter().map(|f| quoted(f)).collect::<Vec<_>>().join(", ");
        let set = fields
            .iter()
            .filter(|f| !key.contains(&f.name))
            .map(|f| format!("{0} = excluded.{0}", quoted(&f.name)))
            .collect::<Vec<_>>();
        text.push_str(&format!(" ON CONFLICT ({key_columns}) DO "));
        if set.is_empty() {
            text.push_str("NOTHING");
        } else {
            text.push_str("UPDATE SET ");
            text.push_str(&set.join(", "));
        }
    }
    Ok(Statement::from_sql_and_values(
        db_backend(dialect),
        text,
        values,
    ))
}

/// One `UPDATE` of several objects by key, each with values of its own for the same
/// `fields`:
///
/// ```sql
/// WITH "storex_values"("k0", …, "f0", …) AS (VALUES (…), …)
/// UPDATE <collection> SET <field> = "storex_values"."f0", … FROM "storex_values"
/// WHERE <collection>.<key> = "storex_values"."k0" AND …
/// ```
///
/// The same words on SQLite (3.33 and later) and PostgreSQL. Each key must appear once: a
/// row the values name twice would be updated once, with either. Written out directly, like
/// [`insert`], for the hot path of applying received changes.
pub(crate) fn update_rows(
    def: &CollectionDef,
    dialect: Dialect,
    fields: &[String],
    rows: &[(Pk, Object)],
) -> Result<Statement, Error> {
    let key = def.pk_fields();
    let key_types = key
        .iter()
        .map(|f| field_type(def, f))
        .collect::<Result<Vec<_>, _>>()?;
    let field_types = fields
        .iter()
        .map(|f| field_type(def, f))
        .collect::<Result<Vec<_>, _>>()?;
    if rows.is_empty() || fields.is_empty() {
        return Err(Error::invalid_operation(
            def.name(),
            "cannot build an update of no rows or no fields",
        ));
    }
    let cells = rows.len() * (key.len() + fields.len());
    let mut text = String::with_capacity(128 + 4 * cells);
    let names = (0..key.len())
        .map(|i| format!("\"k{i}\""))
        .chain((0..fields.len()).map(|i| format!("\"f{i}\"")))
        .collect::<Vec<_>>()
        .join(", ");
    text.push_str("WITH ");
    text.push_str(VALUES_TABLE);
    text.push('(');
    text.push_str(&names);
    text.push_str(") AS (VALUES ");
    let mut values = Vec::with_capacity(cells);
    for (row, (pk, changes)) in rows.iter().enumerate() {
        if pk.values().len() != key.len() {
            return Err(Error::invalid_operation(
                def.name(),
                format!("the key {pk} does not have {} values", key.len()),
            ));
        }
        if row > 0 {
            text.push_str(", ");
        }
        let keyed = key
            .iter()
            .zip(&key_types)
            .zip(pk.values())
            .map(|((field, ty), value)| (field.as_str(), *ty, value.clone()));
        let changed = fields.iter().zip(&field_types).map(|(field, ty)| {
            let value = changes.get(field).cloned().unwrap_or(Value::Null);
            (field.as_str(), *ty, value)
        });
        push_row(
            &mut text,
            &mut values,
            (def.name(), dialect),
            keyed.chain(changed),
        )?;
    }
    text.push_str(") UPDATE ");
    let table = quoted(def.name());
    text.push_str(&table);
    text.push_str(" SET ");
    let set = fields
        .iter()
        .enumerate()
        .map(|(i, field)| format!("{} = {VALUES_TABLE}.\"f{i}\"", quoted(field)))
        .collect::<Vec<_>>()
        .join(", ");
    text.push_str(&set);
    text.push_str(" FROM ");
    text.push_str(VALUES_TABLE);
    text.push_str(" WHERE ");
    let on = key
        .iter()
        .enumerate()
        .map(|(i, field)| format!("{table}.{} = {VALUES_TABLE}.\"k{i}\"", quoted(field)))
        .collect::<Vec<_>>()
        .join(" AND ");
    text.push_str(&on);
    Ok(Statement::from_sql_and_values(
        db_backend(dialect),
        text,
        values,
    ))
}

/// `UPDATE <collection> SET … WHERE …`.
pub(crate) fn update(
    def: &CollectionDef,
    condition: SqlCondition,
    changes: Object,
) -> Result<UpdateStatement, Error> {
    let mut stmt = SqlQuery::update();
    stmt.table(ident(def.name()));
    for (field, value) in changes {
        let ty = field_type(def, &field)?;
        let value = to_sql(def.name(), &field, ty, value)?;
        stmt.value(ident(&field), Expr::val(value));
    }
    stmt.cond_where(condition);
    Ok(stmt)
}

/// `RETURNING <key fields>`, in key order (as [`crate::values::read_pk`] reads them).
pub(crate) fn returning_pk(def: &CollectionDef) -> ReturningClause {
    SqlQuery::returning().columns(def.pk_fields().iter().map(|field| ident(field)))
}

/// `DELETE FROM <collection> WHERE …`.
pub(crate) fn delete(def: &CollectionDef, condition: SqlCondition) -> DeleteStatement {
    let mut stmt = SqlQuery::delete();
    stmt.from_table(ident(def.name())).cond_where(condition);
    stmt
}
