//! Running storex operations on a SeaORM connection or transaction.
//!
//! Batches run inside a transaction the caller opened; consecutive creates (or puts) on one
//! collection become multi-row INSERTs (up to 1,000 rows, within the database's parameter
//! limit; puts as `INSERT … ON CONFLICT … DO UPDATE`), and consecutive updates by key of
//! distinct objects that set the same fields (none of them in a unique index) become
//! multi-row UPDATEs (each row its own values), several times faster than one statement per
//! row. If such a statement fails, its rows are replayed one by one, so the error names the
//! exact failing step; a group of updates is also replayed one by one when some of its
//! objects were missing, which tells each step's count. An update by filter that answers with
//! its keys reads them in one row first on SQLite (see [`keys_then_update`]).

use std::collections::{BTreeSet, HashSet};

use sea_orm::sea_query::SelectStatement;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, QueryResult, SqlErr, StatementBuilder};
use storex_core::uuid::Uuid;
use storex_core::{
    BatchResolver, BatchStep, CollectionDef, Error, Object, Operation, Outcome, Pk, PkKey, Query,
    Registry, Value,
};

use crate::backend::Dialect;
use crate::savepoint::Savepoint;
use crate::sql::{self, OnExisting};
use crate::values::{read_object, read_pk, read_values, uuid_keys};

/// Rows per multi-row INSERT or UPDATE at most.
const MAX_ROWS_PER_STATEMENT: usize = 1_000;

/// What an operation runs against besides the connection.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) backend: &'static str,
    pub(crate) dialect: Dialect,
    pub(crate) registry: &'a Registry,
    /// Set once the transaction the operation runs in was found ended by the database, or
    /// in a state no longer known ([`Ctx::transaction_lost`]).
    pub(crate) lost: std::sync::atomic::AtomicBool,
}

impl Ctx<'_> {
    /// Maps a database error: a unique violation is the caller's [`Error::DuplicateKey`];
    /// an error the write itself causes (another constraint, a value the column cannot
    /// hold) an [`Error::Refused`]; a failure of the database or the connection, which may
    /// pass (busy, full, gone), an [`Error::Backend`].
    pub(crate) fn db_err(&self, collection: &str, e: DbErr) -> Error {
        if let Some(SqlErr::UniqueConstraintViolation(detail)) = e.sql_err() {
            return Error::DuplicateKey {
                collection: collection.to_owned(),
                detail,
            };
        }
        match refusal(self.dialect, &e) {
            Some(detail) => Error::Refused {
                collection: collection.to_owned(),
                detail,
            },
            None => Error::backend(self.backend, e),
        }
    }

    /// Rows per multi-row statement at most, with `columns` parameters a row.
    fn max_rows_per_statement(&self, columns: usize) -> usize {
        let max_params = match self.dialect {
            Dialect::Sqlite => 32_766,
            Dialect::Postgres => 65_535,
        };
        (max_params / columns.max(1)).clamp(1, MAX_ROWS_PER_STATEMENT)
    }
}

/// The database's message when it refused the statement for what it writes, not for its
/// own state: any error the database reports, except those [`may_pass`] says may pass.
/// Errors that are not the database's (I/O, a closed pool) are not refusals.
fn refusal(dialect: Dialect, e: &DbErr) -> Option<String> {
    use sea_orm::RuntimeErr;
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = e else {
        return None;
    };
    let sea_orm::sqlx::Error::Database(e) = e.as_ref() else {
        return None;
    };
    let code = e.code().unwrap_or_default();
    (!may_pass(dialect, &code)).then(|| e.message().to_owned())
}

/// Whether a database error code means the database's state, which may pass, rather than
/// what the statement writes. On SQLite: abort, busy, locked, out of memory, read-only,
/// interrupted, I/O, corrupt, full, cannot open, protocol, schema changed, not a database. On
/// PostgreSQL the classes invalid transaction state (25: a read-only standby after a
/// failover), connection (08), transaction rollback (40: serialization failure, deadlock),
/// insufficient resources (53), object not in prerequisite state (55: lock not available),
/// operator intervention (57), system (58) and internal (XX) errors, and a missing
/// privilege (42501), which an administrator mends. An unknown code counts as passing:
/// nothing is set aside for it.
fn may_pass(dialect: Dialect, code: &str) -> bool {
    match dialect {
        // SQLite reports extended codes; the primary code is the low byte.
        Dialect::Sqlite => match code.parse::<i32>() {
            Ok(code) => matches!(code & 0xff, 4..=11 | 13..=15 | 17 | 26),
            Err(_) => true,
        },
        Dialect::Postgres => match code.get(..2) {
            Some(class) if code.len() == 5 => {
                code == "42501"
                    || matches!(class, "08" | "25" | "40" | "53" | "55" | "57" | "58" | "XX")
            }
            _ => true,
        },
    }
}

fn pk_of(def: &CollectionDef, object: &Object) -> Result<Pk, Error> {
    def.pk_of(object).ok_or_else(|| Error::MissingField {
        collection: def.name().to_owned(),
        field: def.pk_fields().join(", "),
    })
}

/// The keys of a group of updates, to find a key twice: single UUID keys (what
/// `UuidPkMiddleware` gives) in a hash set, without copying them; others copied, in order.
#[derive(Default)]
struct GroupKeys {
    uuids: HashSet<Uuid>,
    others: BTreeSet<PkKey>,
}

impl GroupKeys {
    fn insert(&mut self, pk: &Pk) {
        match pk.single() {
            Some(Value::Uuid(uuid)) => {
                self.uuids.insert(*uuid);
            }
            _ => {
                self.others.insert(PkKey(pk.clone()));
            }
        }
    }

    fn contains(&self, pk: &Pk) -> bool {
        match pk.single() {
            Some(Value::Uuid(uuid)) => self.uuids.contains(uuid),
            _ => self.others.contains(&PkKey(pk.clone())),
        }
    }
}

/// Runs one operation other than a batch.
pub(crate) async fn run<C: ConnectionTrait>(
    conn: &C,
    ctx: &Ctx<'_>,
    op: Operation,
) -> Result<Outcome, Error> {
    let Some(collection) = op.collection().map(str::to_owned) else {
        return Err(Error::invalid_operation(
            "",
            "a batch must run inside a transaction",
        ));
    };
    let def = ctx.registry.collection(&collection)?;
    let err = |e: DbErr| ctx.db_err(&collection, e);
    let unreadable = |e: DbErr| unreadable(&collection, e);
    match op {
        Operation::Create { object, .. } => {
            let pk = pk_of(def, &object)?;
            conn.execute_raw(sql::insert(def, ctx.dialect, [&object], OnExisting::Fail)?)
                .await
                .map_err(err)?;
            Ok(Outcome::Created { pk })
        }
        Operation::Put { object, .. } => {
            let pk = pk_of(def, &object)?;
            conn.execute_raw(sql::insert(
                def,
                ctx.dialect,
                [&object],
                OnExisting::Replace,
            )?)
            .await
            .map_err(err)?;
            Ok(Outcome::Put { pk })
        }
        Operation::UpdateByPk { pk, changes, .. } => {
            let stmt = sql::update(def, sql::pk_condition(def, &pk)?, changes)?;
            let count = conn.execute(&stmt).await.map_err(err)?.rows_affected();
            Ok(Outcome::Updated { count })
        }
        Operation::UpdateWhere {
            filter, changes, ..
        } => {
            let stmt = sql::update(def, sql::condition(def, &filter)?, changes)?;
            let count = conn.execute(&stmt).await.map_err(err)?.rows_affected();
            Ok(Outcome::Updated { count })
        }
        Operation::UpdateWhereReturningPks {
            filter, changes, ..
        } => {
            let mut stmt = sql::update(def, sql::condition(def, &filter)?, changes)?;
            if let Some(keys) = sql::uuid_keys_at_once(def, ctx.dialect, &filter)? {
                if let Some(pks) = keys_then_update(conn, &collection, &keys, &stmt, err).await? {
                    return Ok(Outcome::UpdatedPks { pks });
                }
            }
            stmt.returning(sql::returning_pk(def));
            let rows = conn.query_all(&stmt).await.map_err(err)?;
            let pks = read_pks(&rows, def).map_err(unreadable)?;
            Ok(Outcome::UpdatedPks { pks })
        }
        Operation::DeleteWhereReturningPks { filter, .. } => {
            let mut stmt = sql::delete(def, sql::condition(def, &filter)?);
            stmt.returning(sql::returning_pk(def));
            let rows = conn.query_all(&stmt).await.map_err(err)?;
            let pks = read_pks(&rows, def).map_err(unreadable)?;
            Ok(Outcome::DeletedPks { pks })
        }
        Operation::DeleteByPk { pk, .. } => {
            let stmt = sql::delete(def, sql::pk_condition(def, &pk)?);
            let count = conn.execute(&stmt).await.map_err(err)?.rows_affected();
            Ok(Outcome::Deleted { count })
        }
        Operation::DeleteWhere { filter, .. } => {
            let stmt = sql::delete(def, sql::condition(def, &filter)?);
            let count = conn.execute(&stmt).await.map_err(err)?.rows_affected();
            Ok(Outcome::Deleted { count })
        }
        Operation::FindOne { query, .. } => {
            let query = Query {
                limit: Some(1),
                ..query
            };
            let row = conn
                .query_one_raw(sql::select(def, ctx.dialect, &query)?)
                .await
                .map_err(err)?;
            let object = row
                .map(|row| read_object(&row, def))
                .transpose()
                .map_err(unreadable)?;
            Ok(Outcome::Found(object))
        }
        Operation::FindMany { query, .. } => {
            let rows = conn
                .query_all_raw(sql::select(def, ctx.dialect, &query)?)
                .await
                .map_err(err)?;
            let objects = rows
                .iter()
                .map(|row| read_object(row, def))
                .collect::<Result<Vec<_>, _>>()
                .map_err(unreadable)?;
            Ok(Outcome::FoundMany(objects))
        }
        Operation::FindValues { query, fields, .. } => {
            let defs = fields
                .iter()
                .map(|name| {
                    def.field_def(name).ok_or_else(|| Error::UnknownField {
                        collection: def.name().to_owned(),
                        field: name.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let statement =
                sql::select_fields(def, fields.iter().map(String::as_str), ctx.dialect, &query)?;
            let rows = conn.query_all_raw(statement).await.map_err(err)?;
            let values = rows
                .iter()
                .map(|row| read_values(row, &defs))
                .collect::<Result<Vec<_>, _>>()
                .map_err(unreadable)?;
            Ok(Outcome::FoundValues(values))
        }
        Operation::Count { filter, .. } => {
            let row = conn
                .query_one(&sql::count(def, &filter)?)
                .await
                .map_err(err)?;
            let count: i64 = match row {
                Some(row) => row.try_get("", sql::COUNT_COLUMN).map_err(err)?,
                None => 0,
            };
            Ok(Outcome::Counted(u64::try_from(count).unwrap_or_default()))
        }
        other => Err(Error::invalid_operation(
            collection,
            format!("{} is not handled by this backend", other.kind()),
        )),
    }
}

/// An update by filter that answers with its keys, on SQLite for a collection keyed by one
/// UUID: reads the keys of the objects the filter matches in one row (`keys`, see
/// [`sql::uuid_keys_at_once`]), then runs the `update` of that filter. `UPDATE … RETURNING`
/// hands back a row per object, which costs about as much again as the update itself; this
/// way a logged where-write costs about 1.4x the plain one instead of 2x. `None` (nothing
/// written) when the table has triggers, which may keep rows from the update: the caller
/// uses `RETURNING` then. Both statements run in one transaction (the backend opens one for
/// the operation run alone, see `SeaOrmBackend::execute`), so the update changes exactly the
/// objects read; a count that differs all the same (a unique constraint the table declares
/// `ON CONFLICT IGNORE`) is an error, never keys of objects left unchanged. In a deferred
/// (snapshot) transaction a commit of another connection between the two statements fails
/// the update (`SQLITE_BUSY_SNAPSHOT`); more than about 30 million keys exceed SQLite's
/// longest text. Both are errors too. (Deletes keep `RETURNING`: a cascade may delete rows a
/// delete matched.)
async fn keys_then_update<C: ConnectionTrait, S: StatementBuilder>(
    conn: &C,
    collection: &str,
    keys: &SelectStatement,
    update: &S,
    err: impl Fn(DbErr) -> Error,
) -> Result<Option<Vec<Pk>>, Error> {
    let row = conn.query_one(keys).await.map_err(&err)?;
    // A key that does not read as a UUID is the data's fault, as for a row read back.
    let Some(pks) = uuid_keys(row.as_ref()).map_err(|e| unreadable(collection, e))? else {
        return Ok(None);
    };
    let count = conn.execute(update).await.map_err(&err)?.rows_affected();
    if count != pks.len() as u64 {
        return Err(Error::Refused {
            collection: collection.to_owned(),
            detail: format!(
                "a where-update matched {} objects and updated {count}",
                pks.len()
            ),
        });
    }
    Ok(Some(pks))
}

/// The error for a row fetched from `collection` whose values do not read as its fields (an
/// adopted table holding text in an integer column, say): the data, not the database, is at
/// fault, so trying again does not help.
fn unreadable(collection: &str, e: DbErr) -> Error {
    Error::InvalidDefinition {
        collection: collection.to_owned(),
        problem: format!("a row of the table does not read as the collection's fields: {e}"),
    }
}

fn read_pks(rows: &[QueryResult], def: &CollectionDef) -> Result<Vec<Pk>, DbErr> {
    rows.iter().map(|row| read_pk(row, def)).collect()
}

fn step_error(step: usize) -> impl FnOnce(Error) -> Error {
    move |source| Error::BatchStep {
        step,
        source: Box::new(source),
    }
}

/// The collection of a create or put with nothing to fill in, and what it does with an
/// existing key: such steps in a row on one collection are inserted together.
fn plain_insert(step: &BatchStep) -> Option<(&str, OnExisting)> {
    if !step.replace.is_empty() {
        return None;
    }
    match &step.operation {
        Operation::Create { collection, .. } => Some((collection, OnExisting::Fail)),
        Operation::Put { collection, .. } => Some((collection, OnExisting::Replace)),
        _ => None,
    }
}

/// The collection and changes of an update by key with nothing to fill in: such steps in a
/// row on one collection that set the same fields (of distinct objects) are written by one
/// statement.
fn plain_update(step: &BatchStep) -> Option<(&str, &Pk, &Object)> {
    if !step.replace.is_empty() {
        return None;
    }
    match &step.operation {
        Operation::UpdateByPk {
            collection,
            pk,
            changes,
        } if !changes.is_empty() => Some((collection, pk, changes)),
        _ => None,
    }
}

/// Whether `next` updates the fields `fields` of `collection` (in the order of a
/// [`Object`]'s keys).
fn updates_alike<'f>(
    collection: &str,
    fields: impl IntoIterator<Item = &'f String>,
    next: &BatchStep,
) -> bool {
    plain_update(next).is_some_and(|(next_collection, _, changes)| {
        next_collection == collection && changes.keys().eq(fields)
    })
}

/// Whether updates setting `changes`' fields in `collection` may be written together: not if
/// one of them is in a unique index, where one statement could accept what the same updates
/// one after the other refuse (two objects trading a value).
fn may_group_updates(ctx: &Ctx<'_>, collection: &str, changes: &Object) -> bool {
    ctx.registry.collection(collection).is_ok_and(|def| {
        !def.indices()
            .iter()
            .any(|index| index.unique && index.fields.iter().any(|f| changes.contains_key(f)))
    })
}

/// Applies `steps` inside `txn`; the caller commits or rolls back.
pub(crate) async fn run_batch(
    txn: &DatabaseTransaction,
    ctx: &Ctx<'_>,
    steps: Vec<BatchStep>,
) -> Result<Vec<Outcome>, Error> {
    let mut resolver = BatchResolver::new();
    let mut outcomes = Vec::with_capacity(steps.len());
    let mut steps = steps.into_iter().enumerate().peekable();
    while let Some((index, step)) = steps.next() {
        // An update by key followed by one alike starts a group of updates, which ends before
        // a key already in it (applied one after the other, the later update of a key wins).
        // (The fields are copied only once a group starts: most updates come alone.)
        let update_group = plain_update(&step).and_then(|(collection, _, changes)| {
            let alike = steps
                .peek()
                .is_some_and(|(_, next)| updates_alike(collection, changes.keys(), next));
            (alike && may_group_updates(ctx, collection, changes)).then(|| {
                let fields: Vec<String> = changes.keys().cloned().collect();
                (collection.to_owned(), fields)
            })
        });
        if let Some((collection, fields)) = update_group {
            let mut keys = GroupKeys::default();
            let mut group = Vec::with_capacity(1 + steps.len());
            let mut step = step;
            loop {
                if let Operation::UpdateByPk { pk, changes, .. } = step.operation {
                    keys.insert(&pk);
                    group.push((pk, changes));
                }
                let next = steps.next_if(|(_, next)| {
                    updates_alike(&collection, &fields, next)
                        && plain_update(next).is_some_and(|(_, pk, _)| !keys.contains(pk))
                });
                match next {
                    Some((_, next)) => step = next,
                    None => break,
                }
            }
            outcomes
                .extend(update_group_rows(txn, ctx, (&collection, &fields), group, index).await?);
            continue;
        }
        // A create (or put) followed by the same on the same collection starts a group.
        let group_on = plain_insert(&step)
            .filter(|kind| {
                steps
                    .peek()
                    .is_some_and(|(_, next)| plain_insert(next) == Some(*kind))
            })
            .map(|(collection, existing)| (collection.to_owned(), existing));
        let Some((collection, existing)) = group_on else {
            outcomes.push(run_step(txn, ctx, &mut resolver, step, index).await?);
            continue;
        };
        // At most every step left joins the group: sized once for a batch of thousands.
        let mut objects = Vec::with_capacity(1 + steps.len());
        let mut placeholders = Vec::with_capacity(1 + steps.len());
        let mut join = |step: BatchStep| {
            if let Operation::Create { object, .. } | Operation::Put { object, .. } = step.operation
            {
                objects.push(object);
                placeholders.push(step.placeholder);
            }
        };
        join(step);
        while let Some((_, next)) =
            steps.next_if(|(_, next)| plain_insert(next) == Some((collection.as_str(), existing)))
        {
            join(next);
        }
        let pks = insert_group(txn, ctx, (&collection, existing), objects, index).await?;
        for (offset, (pk, placeholder)) in pks.into_iter().zip(placeholders).enumerate() {
            let outcome = match existing {
                OnExisting::Fail => Outcome::Created { pk },
                OnExisting::Replace => Outcome::Put { pk },
            };
            resolver
                .record(placeholder, &outcome)
                .map_err(step_error(index + offset))?;
            outcomes.push(outcome);
        }
    }
    Ok(outcomes)
}

async fn run_step(
    txn: &DatabaseTransaction,
    ctx: &Ctx<'_>,
    resolver: &mut BatchResolver,
    step: BatchStep,
    index: usize,
) -> Result<Outcome, Error> {
    let (op, placeholder) = resolver
        .resolve(ctx.registry, step)
        .map_err(step_error(index))?;
    let outcome = run(txn, ctx, op).await.map_err(step_error(index))?;
    resolver
        .record(placeholder, &outcome)
        .map_err(step_error(index))?;
    Ok(outcome)
}

/// Applies a run of updates by key of distinct objects that set the same `fields` (steps
/// from `first_index` on) with multi-row `UPDATE`s (see [`sql::update_rows`]); returns their
/// outcomes in step order.
///
/// The group runs in a savepoint. When every object was there (the statements changed as
/// many rows as there are updates), each step updated one. Otherwise, or if a statement
/// fails for a row the database refuses, the savepoint is undone and the updates are applied
/// one at a time, which tells each step's count and the step at fault.
async fn update_group_rows(
    txn: &DatabaseTransaction,
    ctx: &Ctx<'_>,
    (collection, fields): (&str, &[String]),
    updates: Vec<(Pk, Object)>,
    first_index: usize,
) -> Result<Vec<Outcome>, Error> {
    let def = ctx.registry.collection(collection)?;
    let savepoint = Savepoint::set(txn, "storex_group")
        .await
        .map_err(|e| ctx.db_err(collection, e))?;
    let per_statement = ctx.max_rows_per_statement(def.pk_fields().len() + fields.len());
    let mut changed = 0;
    let mut failed = None;
    for (chunk_index, chunk) in updates.chunks(per_statement).enumerate() {
        let statement = sql::update_rows(def, ctx.dialect, fields, chunk)
            .map_err(step_error(first_index + chunk_index * per_statement))?;
        match txn.execute_raw(statement).await {
            Ok(done) => changed += done.rows_affected(),
            Err(e) => {
                failed = Some((chunk_index * per_statement, e));
                break;
            }
        }
    }
    if failed.is_none() && changed == updates.len() as u64 {
        savepoint
            .release()
            .await
            .map_err(|e| ctx.db_err(collection, e))?;
        return Ok(vec![Outcome::Updated { count: 1 }; updates.len()]);
    }
    let undone = savepoint.undo().await;
    if undone.is_err() {
        // Not replayed: what the transaction holds is not known (SQLite may have ended it).
        ctx.note_lost(txn).await;
    }
    if let Some((failed_from, group_error)) = failed {
        if !worth_replaying(ctx, &group_error) || undone.is_err() {
            return Err(step_error(first_index + failed_from)(
                ctx.db_err(collection, group_error),
            ));
        }
    } else {
        undone.map_err(|e| ctx.db_err(collection, e))?;
    }
    let mut outcomes = Vec::with_capacity(updates.len());
    for (offset, (pk, changes)) in updates.into_iter().enumerate() {
        let op = Operation::UpdateByPk {
            collection: collection.to_owned(),
            pk,
            changes,
        };
        outcomes.push(
            run(txn, ctx, op)
                .await
                .map_err(step_error(first_index + offset))?,
        );
    }
    Ok(outcomes)
}

/// Whether a group's statement failed for a row the database refuses (a constraint, a value
/// its column cannot hold), which replaying the rows one at a time finds. After a failure
/// that may pass (I/O, a full disk) the group's own error is the one to report.
fn worth_replaying(ctx: &Ctx<'_>, e: &DbErr) -> bool {
    e.sql_err().is_some() || refusal(ctx.dialect, e).is_some()
}

/// Inserts a run of creates or puts (steps from `first_index` on) with multi-row INSERTs;
/// returns their keys in step order.
///
/// If a statement fails, its rows are replayed one at a time so that the error names the
/// step at fault. SQLite undoes a failed statement by itself; PostgreSQL aborts the whole
/// transaction on an error, so there the group runs in a savepoint that is undone first.
/// A replay of puts in which every row succeeds is the group's success: PostgreSQL refuses
/// one statement that puts a key twice, and one row at a time does not.
async fn insert_group(
    txn: &DatabaseTransaction,
    ctx: &Ctx<'_>,
    (collection, existing): (&str, OnExisting),
    objects: Vec<Object>,
    first_index: usize,
) -> Result<Vec<Pk>, Error> {
    let def = ctx.registry.collection(collection)?;
    let pks = objects
        .iter()
        .enumerate()
        .map(|(offset, o)| pk_of(def, o).map_err(step_error(first_index + offset)))
        .collect::<Result<Vec<_>, _>>()?;
    let savepoint = match ctx.dialect {
        Dialect::Postgres => Some(
            Savepoint::set(txn, "storex_group")
                .await
                .map_err(|e| ctx.db_err(collection, e))?,
        ),
        Dialect::Sqlite => None,
    };
    let per_statement = ctx.max_rows_per_statement(def.fields().len());
    let mut failed = None;
    for (chunk_index, chunk) in objects.chunks(per_statement).enumerate() {
        if let Err(e) = txn
            .execute_raw(sql::insert(def, ctx.dialect, chunk, existing)?)
            .await
        {
            failed = Some((chunk_index * per_statement, e));
            break;
        }
    }
    let Some((replay_from, group_error)) = failed else {
        if let Some(savepoint) = savepoint {
            savepoint
                .release()
                .await
                .map_err(|e| ctx.db_err(collection, e))?;
        }
        return Ok(pks);
    };
    let undone = match savepoint {
        Some(savepoint) => savepoint.undo().await,
        // SQLite undid the statement, unless it ended the whole transaction: then the rows
        // replayed would each be committed alone.
        None if ctx.transaction_lost(txn).await => {
            Err(DbErr::Custom("the database ended the transaction".into()))
        }
        None => Ok(()),
    };
    if undone.is_err() {
        ctx.note_lost(txn).await;
    }
    // A refused row is found by replaying the rows one at a time, once the savepoint is
    // undone; otherwise the group's own error is the one to report.
    if !worth_replaying(ctx, &group_error) || undone.is_err() {
        return Err(step_error(first_index + replay_from)(
            ctx.db_err(collection, group_error),
        ));
    }
    let replay_from = match ctx.dialect {
        Dialect::Postgres => 0,
        Dialect::Sqlite => replay_from,
    };
    for (offset, object) in objects.into_iter().enumerate().skip(replay_from) {
        let op = match existing {
            OnExisting::Fail => Operation::create(collection, object),
            OnExisting::Replace => Operation::put(collection, object),
        };
        run(txn, ctx, op)
            .await
            .map_err(step_error(first_index + offset))?;
    }
    match existing {
        OnExisting::Replace => Ok(pks),
        // A row of the group must have failed alone too; if none did, the group's error
        // stands.
        OnExisting::Fail => Err(step_error(first_index + replay_from)(
            ctx.db_err(collection, group_error),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_states_may_pass_and_refused_writes_do_not() {
        for code in ["4", "5", "517", "6", "10", "3850", "13", "14", "15", "17"] {
            assert!(may_pass(Dialect::Sqlite, code), "SQLite {code}");
        }
        // constraint (check, foreign key, not null), too big, datatype mismatch, range, error
        for code in ["275", "787", "1299", "18", "20", "25", "1"] {
            assert!(!may_pass(Dialect::Sqlite, code), "SQLite {code}");
        }
        for code in [
            "08006", "25006", "40001", "40P01", "53100", "55P03", "57P01", "58030", "XX000",
            "42501",
        ] {
            assert!(may_pass(Dialect::Postgres, code), "PostgreSQL {code}");
        }
        // value too long, numeric out of range, check, foreign key, undefined column
        for code in ["22001", "22003", "23514", "23503", "42703"] {
            assert!(!may_pass(Dialect::Postgres, code), "PostgreSQL {code}");
        }
        assert!(
            may_pass(Dialect::Postgres, ""),
            "no code: nothing set aside"
        );
        assert!(may_pass(Dialect::Sqlite, "?"), "no code: nothing set aside");
        assert!(may_pass(Dialect::Postgres, "é2001"), "not a SQLSTATE");
    }
}
