//! Running storex operations on a SeaORM connection or transaction.
//!
//! Batches run inside a transaction the caller opened; consecutive creates on one collection
//! become multi-row INSERTs (up to 1,000 rows, within the database's parameter limit), which
//! is several times faster than one statement per row. If such a group fails, it is undone
//! with a savepoint and replayed row by row, so the error names the exact failing step.

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, SqlErr, TransactionTrait};
use storex_core::{
    BatchResolver, BatchStep, CollectionDef, Error, Object, Operation, Outcome, Pk, Query, Registry,
};

use crate::backend::Dialect;
use crate::sql;
use crate::values::read_object;

/// Rows per multi-row INSERT at most.
const MAX_ROWS_PER_INSERT: usize = 1_000;

/// What an operation runs against besides the connection.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) backend: &'static str,
    pub(crate) dialect: Dialect,
    pub(crate) registry: &'a Registry,
}

impl Ctx<'_> {
    /// Maps a database error: a unique violation is the caller's [`Error::DuplicateKey`],
    /// anything else a backend failure.
    pub(crate) fn db_err(&self, collection: &str, e: DbErr) -> Error {
        match e.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(detail)) => Error::DuplicateKey {
                collection: collection.to_owned(),
                detail,
            },
            _ => Error::backend(self.backend, e),
        }
    }

    fn max_rows_per_insert(&self, def: &CollectionDef) -> usize {
        let max_params = match self.dialect {
            Dialect::Sqlite => 32_766,
            Dialect::Postgres => 65_535,
        };
        (max_params / def.fields().len().max(1)).clamp(1, MAX_ROWS_PER_INSERT)
    }
}

fn pk_of(def: &CollectionDef, object: &Object) -> Result<Pk, Error> {
    def.pk_of(object).ok_or_else(|| Error::MissingField {
        collection: def.name().to_owned(),
        field: def.pk_fields().join(", "),
    })
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
    match op {
        Operation::Create { object, .. } => {
            let pk = pk_of(def, &object)?;
            conn.execute(&sql::insert(def, [&object])?)
                .await
                .map_err(err)?;
            Ok(Outcome::Created { pk })
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
                .query_one(&sql::select(def, &query)?)
                .await
                .map_err(err)?;
            let object = row
                .map(|row| read_object(&row, def))
                .transpose()
                .map_err(err)?;
            Ok(Outcome::Found(object))
        }
        Operation::FindMany { query, .. } => {
            let rows = conn
                .query_all(&sql::select(def, &query)?)
                .await
                .map_err(err)?;
            let objects = rows
                .iter()
                .map(|row| read_object(row, def))
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            Ok(Outcome::FoundMany(objects))
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

fn step_error(step: usize) -> impl FnOnce(Error) -> Error {
    move |source| Error::BatchStep {
        step,
        source: Box::new(source),
    }
}

/// Where the run of plain creates on one collection that starts at `start` ends.
fn create_run_end(steps: &[BatchStep], start: usize) -> usize {
    let Some(Operation::Create { collection, .. }) = steps.get(start).map(|s| &s.operation) else {
        return start;
    };
    let mut end = start;
    while let Some(step) = steps.get(end) {
        match &step.operation {
            Operation::Create { collection: c, .. }
                if c == collection && step.replace.is_empty() =>
            {
                end += 1
            }
            _ => break,
        }
    }
    end
}

/// Applies `steps` inside `txn`; the caller commits or rolls back.
pub(crate) async fn run_batch(
    txn: &DatabaseTransaction,
    ctx: &Ctx<'_>,
    steps: Vec<BatchStep>,
) -> Result<Vec<Outcome>, Error> {
    let mut resolver = BatchResolver::new();
    let mut outcomes = Vec::with_capacity(steps.len());
    let mut start = 0;
    while start < steps.len() {
        let end = create_run_end(&steps, start);
        if end - start >= 2 {
            let created = create_group(txn, ctx, &steps[start..end], start, &resolver).await?;
            for (offset, pk) in created.into_iter().enumerate() {
                let outcome = Outcome::Created { pk };
                resolver
                    .record(&steps[start + offset], &outcome)
                    .map_err(step_error(start + offset))?;
                outcomes.push(outcome);
            }
            start = end;
        } else {
            let step = &steps[start];
            let op = resolver
                .resolve(ctx.registry, step)
                .map_err(step_error(start))?;
            let outcome = run(txn, ctx, op).await.map_err(step_error(start))?;
            resolver.record(step, &outcome).map_err(step_error(start))?;
            outcomes.push(outcome);
            start += 1;
        }
    }
    Ok(outcomes)
}

/// Inserts a run of creates with multi-row INSERTs; returns their keys in step order.
async fn create_group(
    txn: &DatabaseTransaction,
    ctx: &Ctx<'_>,
    steps: &[BatchStep],
    first_index: usize,
    resolver: &BatchResolver,
) -> Result<Vec<Pk>, Error> {
    let mut collection = String::new();
    let mut objects = Vec::with_capacity(steps.len());
    for (offset, step) in steps.iter().enumerate() {
        match resolver
            .resolve(ctx.registry, step)
            .map_err(step_error(first_index + offset))?
        {
            Operation::Create {
                collection: c,
                object,
            } => {
                collection = c;
                objects.push(object);
            }
            other => {
                return Err(step_error(first_index + offset)(Error::invalid_operation(
                    other.collection().unwrap_or_default(),
                    "expected a create",
                )))
            }
        }
    }
    let def = ctx.registry.collection(&collection)?;
    let pks = objects
        .iter()
        .enumerate()
        .map(|(offset, o)| pk_of(def, o).map_err(step_error(first_index + offset)))
        .collect::<Result<Vec<_>, _>>()?;
    let savepoint = txn.begin().await.map_err(|e| ctx.db_err(&collection, e))?;
    let mut result = Ok(());
    let per_statement = ctx.max_rows_per_insert(def);
    for chunk in objects.chunks(per_statement) {
        if let Err(e) = savepoint.execute(&sql::insert(def, chunk)?).await {
            result = Err(e);
            break;
        }
    }
    match result {
        Ok(()) => {
            savepoint
                .commit()
                .await
                .map_err(|e| ctx.db_err(&collection, e))?;
            Ok(pks)
        }
        Err(group_error) => {
            savepoint
                .rollback()
                .await
                .map_err(|e| ctx.db_err(&collection, e))?;
            // Replay one row at a time to name the step that fails.
            for (offset, object) in objects.into_iter().enumerate() {
                run(txn, ctx, Operation::create(collection.clone(), object))
                    .await
                    .map_err(step_error(first_index + offset))?;
            }
            Err(step_error(first_index)(
                ctx.db_err(&collection, group_error),
            ))
        }
    }
}
