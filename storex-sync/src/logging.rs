//! [`SyncLoggingMiddleware`]: every write is executed together with its log entries.
//!
//! A write runs in a transaction of its own, which the logger opens (all-or-nothing: no
//! savepoint around each operation), with one [journal](crate::journal) record holding an
//! entry per changed object; any failure rolls the whole transaction back, so the write and
//! its entries land together or not at all. The
//! entries are stamped after the data steps have run: by then those hold the locks on what
//! they wrote (SQLite's database lock from the transaction's start, PostgreSQL's row locks),
//! so a write that commits before this one was stamped before it too, and the row keeps the
//! value of the entry that wins everywhere else. A where-clause write runs as
//! [`Operation::UpdateWhereReturningPks`] (or the delete), one statement that changes the
//! objects and reports their keys, and their record follows. In the caller's own transaction,
//! which the caller may commit after a failed write, the entries are stamped first and the
//! write runs with its record as one batch, which the backend undoes whole if either fails
//! (a where-write first resolves the keys its filter matches, then writes exactly those
//! objects, one statement per 1,000 keys when the key is a single field); the caller's
//! transaction holds SQLite's lock from its start. A backend without transactions runs a
//! write that names its objects the same way. A write is stamped and run under the
//! device's write-order lock, which the application of received changes also takes, so the
//! device's timestamps follow the order in which its own writes and the changes it receives
//! land.
//!
//! Placeholders of a batch are resolved here, before the batch runs: the UUID key middleware
//! (which must come first in the chain) has filled every key, so each entry records the keys
//! actually written (a create's values are read from its row when the journal is indexed).
//! Operations with [`Origin::Sync`] (changes applied by sync) and collections excluded from
//! sync pass through unlogged.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use storex_core::{
    BatchStep, BoxFuture, Error as CoreError, Filter, Middleware, Next, Object, Operation, Origin,
    Outcome, Pk, Query, Result as CoreResult, Value,
};

use crate::client_log::LOOKUP_CHUNK;
use crate::entry::{EntryOp, INTERNAL_COLLECTIONS};
use crate::hlc::Clock;
use crate::journal::RecordBuilder;
use crate::write_order::WriteOrder;

/// The fields of a delete's entry.
static NO_FIELDS: Object = Object::new();

/// Logs every write of the app, atomically with the write: one journal record holding its
/// entries, which the log's readers index into the client sync log.
#[derive(Debug)]
pub struct SyncLoggingMiddleware {
    clock: Arc<Clock>,
    excluded: HashSet<String>,
    order: WriteOrder,
}

impl SyncLoggingMiddleware {
    /// A logger stamping entries with `clock`.
    pub fn new(clock: Arc<Clock>) -> Self {
        SyncLoggingMiddleware {
            clock,
            excluded: INTERNAL_COLLECTIONS
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
            order: WriteOrder::default(),
        }
    }

    /// The lock that orders this device's writes with the application of received changes:
    /// held while a write is stamped and runs, and by [`SyncDevice`](crate::SyncDevice)
    /// around each transaction that applies received entries (which moves the clock).
    pub(crate) fn write_order(&self) -> WriteOrder {
        self.order.clone()
    }

    /// Leaves `collection` out of sync: its writes are not logged (local-only data).
    pub fn exclude(mut self, collection: impl Into<String>) -> Self {
        self.excluded.insert(collection.into());
        self
    }

    fn logged(&self, collection: &str) -> bool {
        !self.excluded.contains(collection)
    }
}

/// A where-write without its filter: what its entries record.
#[derive(Debug)]
struct WhereWrite {
    collection: String,
    /// The fields an update sets; `None` for a delete.
    changes: Option<Object>,
}

/// Fills replacements whose placeholders name keys already known from earlier creates.
fn resolve_placeholders(next: &Next<'_>, steps: &mut [BatchStep]) {
    let mut keys: HashMap<String, Value> = HashMap::new();
    for step in steps.iter_mut() {
        // Filled here are done; the others are left for the backend, which reports them.
        step.replace
            .retain(|replacement| match keys.get(&replacement.placeholder) {
                Some(value) => !replacement.apply(&mut step.operation, value.clone()),
                None => true,
            });
        if let (Some(name), Operation::Create { collection, object }) =
            (&step.placeholder, &step.operation)
        {
            let key = next
                .registry()
                .collection(collection)
                .ok()
                .and_then(|def| def.pk_of(object))
                .and_then(|pk| pk.single().cloned());
            if let Some(key) = key {
                keys.insert(name.clone(), key);
            }
        }
    }
}

/// One logged change, borrowed from the operation that makes it.
type Change<'a> = (&'a str, Cow<'a, Pk>, EntryOp, &'a Object);

/// The error of a write whose sync log record failed to land (which undid the write).
fn log_write_failed(source: CoreError) -> CoreError {
    CoreError::Transaction {
        problem: format!("writing the sync log failed, nothing was written: {source}"),
    }
}

/// Runs the data `steps` of a write in the current transaction: one step as the operation
/// it is, several as a batch. A failing step is named as a step of the batch either way.
async fn run_steps(next: Next<'_>, mut steps: Vec<BatchStep>) -> CoreResult<Vec<Outcome>> {
    if steps.len() == 1 && steps[0].replace.is_empty() {
        if let Some(step) = steps.pop() {
            let outcome =
                next.run(step.operation)
                    .await
                    .map_err(|source| CoreError::BatchStep {
                        step: 0,
                        source: Box::new(source),
                    })?;
            return Ok(vec![outcome]);
        }
    }
    if steps.is_empty() {
        return Ok(Vec::new());
    }
    match next.run(Operation::Batch { steps }).await? {
        Outcome::Batch(outcomes) => Ok(outcomes),
        other => Err(CoreError::UnexpectedOutcome {
            operation: "batch",
            outcome: format!("{other:?}"),
        }),
    }
}

impl SyncLoggingMiddleware {
    /// The journal record of `changes`, not stamped yet.
    fn builder<'a>(
        &self,
        next: &Next<'_>,
        changes: impl IntoIterator<Item = Change<'a>>,
    ) -> RecordBuilder<'a> {
        let mut record = RecordBuilder::default();
        for (collection, pk, op, values) in changes {
            let schema_version = next
                .registry()
                .collection(collection)
                .map_or(1, |def| def.schema_version());
            record.push(collection, schema_version, op, pk, values);
        }
        record
    }

    /// The step writing `record`, stamped now (none if it is empty: no timestamp is taken).
    /// `into_step` refuses an oversized record.
    fn stamped(&self, record: RecordBuilder<'_>) -> CoreResult<Option<BatchStep>> {
        if record.is_empty() {
            return Ok(None);
        }
        let first = self.clock.now_many(record.len());
        record.into_step(first)
    }

    /// The journal record of `changes`, stamped now (none if there are none).
    fn record(&self, next: &Next<'_>, changes: Vec<Change<'_>>) -> CoreResult<Option<BatchStep>> {
        self.stamped(self.builder(next, changes))
    }

    /// The change a write that names its object makes, if it is logged.
    fn change_of<'a>(&self, next: &Next<'_>, op: &'a Operation) -> Option<Change<'a>> {
        match op {
            // A put is logged as a create: a create of an object that exists replaces every
            // field (one it leaves out takes its default) wherever its timestamp wins, as a put does.
            Operation::Create { collection, object } | Operation::Put { collection, object }
                if self.logged(collection) =>
            {
                let pk = next.registry().collection(collection).ok()?.pk_of(object)?;
                Some((collection, Cow::Owned(pk), EntryOp::Create, object))
            }
            Operation::UpdateByPk {
                collection,
                pk,
                changes,
            } if self.logged(collection) => {
                Some((collection, Cow::Borrowed(pk), EntryOp::Update, changes))
            }
            Operation::DeleteByPk { collection, pk } if self.logged(collection) => {
                Some((collection, Cow::Borrowed(pk), EntryOp::Delete, &NO_FIELDS))
            }
            _ => None,
        }
    }

    /// Runs `steps` (no where-writes) and the journal record of their entries; returns the
    /// outcomes of `steps` only. In a transaction this logger opened (`own_transaction`),
    /// which any error rolls back, the steps run first and their entries are stamped after
    /// them: by then the steps hold the locks on what they wrote (on SQLite the database's,
    /// from the transaction's start; on PostgreSQL the rows'), so no write that commits
    /// earlier can have been stamped later. Otherwise (the caller's transaction, or a backend
    /// without transactions) they are stamped first and run with the record as one batch,
    /// which the backend undoes whole if either fails.
    async fn run_logged_batch(
        &self,
        next: Next<'_>,
        steps: Vec<BatchStep>,
        own_transaction: bool,
    ) -> CoreResult<Vec<Outcome>> {
        if !own_transaction {
            let changes: Vec<Change<'_>> = steps
                .iter()
                .filter_map(|s| self.change_of(&next, &s.operation))
                .collect();
            let record = self.record(&next, changes)?;
            return self.run_with_record(next, steps, record).await;
        }
        let changes = steps
            .iter()
            .filter_map(|s| self.change_of(&next, &s.operation));
        let record = self.builder(&next, changes);
        // Refused before anything runs, as a write stamped first is.
        record.check_size()?;
        let record = record.into_owned();
        let outcomes = run_steps(next, steps).await?;
        if let Some(record) = self.stamped(record)? {
            next.run(record.operation).await.map_err(log_write_failed)?;
        }
        Ok(outcomes)
    }

    /// Runs the data `steps` and then the journal `record` of their entries as one batch;
    /// returns the outcomes of the data steps.
    async fn run_with_record(
        &self,
        next: Next<'_>,
        steps: Vec<BatchStep>,
        record: Option<BatchStep>,
    ) -> CoreResult<Vec<Outcome>> {
        let data_steps = steps.len();
        if data_steps == 0 {
            return Ok(Vec::new());
        }
        let mut all = steps;
        all.extend(record);
        match next.run(Operation::Batch { steps: all }).await {
            Ok(Outcome::Batch(mut outcomes)) => {
                outcomes.truncate(data_steps);
                Ok(outcomes)
            }
            Ok(other) => Err(CoreError::UnexpectedOutcome {
                operation: "batch",
                outcome: format!("{other:?}"),
            }),
            Err(CoreError::BatchStep { step, source }) if step >= data_steps => {
                Err(log_write_failed(*source))
            }
            Err(e) => Err(e),
        }
    }

    /// Runs a where-write with the entries of the objects it changes; returns its outcome
    /// (their keys if it asked for them, else how many). In a transaction this logger opened
    /// (`own_transaction`), which any error rolls back, the write reports the keys it changed
    /// and the journal record follows it. In the caller's transaction the keys are resolved
    /// first and the write of exactly those objects and its record run as one batch, which
    /// the backend undoes whole if either fails.
    async fn run_where_write(
        &self,
        next: Next<'_>,
        op: Operation,
        own_transaction: bool,
    ) -> CoreResult<Outcome> {
        let (collection, filter, changes, wants_pks) = match op {
            Operation::UpdateWhere {
                collection,
                filter,
                changes,
            } => (collection, filter, Some(changes), false),
            Operation::DeleteWhere { collection, filter } => (collection, filter, None, false),
            Operation::UpdateWhereReturningPks {
                collection,
                filter,
                changes,
            } => (collection, filter, Some(changes), true),
            Operation::DeleteWhereReturningPks { collection, filter } => {
                (collection, filter, None, true)
            }
            other => return next.run(other).await,
        };
        let write = WhereWrite {
            collection,
            changes,
        };
        let pks = if own_transaction {
            self.write_then_log(next, &write, filter).await?
        } else {
            self.resolve_then_write(next, &write, filter).await?
        };
        Ok(match (write.changes.is_some(), wants_pks) {
            (true, true) => Outcome::UpdatedPks { pks },
            (false, true) => Outcome::DeletedPks { pks },
            (true, false) => Outcome::Updated {
                count: pks.len() as u64,
            },
            (false, false) => Outcome::Deleted {
                count: pks.len() as u64,
            },
        })
    }

    /// The journal record of `write` on the objects with keys `pks` (none if there are none).
    fn where_record(
        &self,
        next: &Next<'_>,
        write: &WhereWrite,
        pks: &[Pk],
    ) -> CoreResult<Option<BatchStep>> {
        let (entry_op, fields) = match &write.changes {
            Some(changes) => (EntryOp::Update, changes),
            None => (EntryOp::Delete, &NO_FIELDS),
        };
        let logged: Vec<Change<'_>> = pks
            .iter()
            .map(|pk| {
                (
                    write.collection.as_str(),
                    Cow::Borrowed(pk),
                    entry_op,
                    fields,
                )
            })
            .collect();
        self.record(next, logged)
    }

    /// One statement changes the objects and reports their keys; their record follows in the
    /// same transaction. Returns the keys.
    async fn write_then_log(
        &self,
        next: Next<'_>,
        write: &WhereWrite,
        filter: Filter,
    ) -> CoreResult<Vec<Pk>> {
        let collection = write.collection.clone();
        let op = match &write.changes {
            Some(changes) => {
                Operation::update_where_returning_pks(collection, filter, changes.clone())
            }
            None => Operation::delete_where_returning_pks(collection, filter),
        };
        let pks = match next.run(op).await? {
            Outcome::UpdatedPks { pks } | Outcome::DeletedPks { pks } => pks,
            other => {
                return Err(CoreError::UnexpectedOutcome {
                    operation: "where-write returning keys",
                    outcome: format!("{other:?}"),
                })
            }
        };
        if let Some(record) = self.where_record(&next, write, &pks)? {
            next.run(record.operation).await.map_err(log_write_failed)?;
        }
        Ok(pks)
    }

    /// Resolves the keys `filter` matches now, then writes exactly those objects (one
    /// statement per run of keys where the key is one field; one per object otherwise) and
    /// their record as one batch. Returns the keys.
    async fn resolve_then_write(
        &self,
        next: Next<'_>,
        write: &WhereWrite,
        filter: Filter,
    ) -> CoreResult<Vec<Pk>> {
        let collection = &write.collection;
        let def = next.registry().collection(collection)?;
        let matched = next
            .run(Operation::find_many(collection.clone(), Query::new(filter)))
            .await?
            .into_objects()?;
        let pks: Vec<Pk> = matched.iter().filter_map(|o| def.pk_of(o)).collect();
        if pks.is_empty() {
            return Ok(pks);
        }
        let record = self.where_record(&next, write, &pks)?;
        let write_where = |filter: Filter| match &write.changes {
            Some(changes) => Operation::update_where(collection.clone(), filter, changes.clone()),
            None => Operation::delete_where(collection.clone(), filter),
        };
        let steps: Vec<BatchStep> = match def.pk_fields() {
            [field] => pks
                .chunks(LOOKUP_CHUNK)
                .map(|chunk| {
                    let keys = chunk.iter().filter_map(|pk| pk.single().cloned());
                    BatchStep::new(write_where(Filter::all().is_in(field.clone(), keys)))
                })
                .collect(),
            fields => pks
                .iter()
                .map(|pk| {
                    let filter = fields
                        .iter()
                        .zip(pk.values())
                        .fold(Filter::all(), |f, (field, value)| {
                            f.eq(field.clone(), value.clone())
                        });
                    BatchStep::new(write_where(filter))
                })
                .collect(),
        };
        self.run_with_record(next, steps, record).await?;
        Ok(pks)
    }

    /// Runs `steps` in order inside one transaction: plain steps in logged batches, where-writes
    /// in between. `own_transaction` says this logger opened the transaction (and rolls it
    /// back on any error). Returns one outcome per step.
    async fn run_with_where_writes(
        &self,
        next: Next<'_>,
        steps: Vec<BatchStep>,
        own_transaction: bool,
    ) -> CoreResult<Vec<Outcome>> {
        let mut outcomes = Vec::with_capacity(steps.len());
        let mut pending = Vec::new();
        // A failing step is named by its place in the caller's batch, not in its part.
        let at = |first: usize| {
            move |e: CoreError| match e {
                CoreError::BatchStep { step, source } => CoreError::BatchStep {
                    step: first + step,
                    source,
                },
                other => other,
            }
        };
        for step in steps {
            if self.logged_where_write(&step.operation) {
                let first = outcomes.len();
                let part = std::mem::take(&mut pending);
                outcomes.extend(
                    self.run_logged_batch(next, part, own_transaction)
                        .await
                        .map_err(at(first))?,
                );
                // (A step of the where-write's own, a part of its keys or its record, is
                // named as the where-write.)
                let first = outcomes.len();
                let outcome = self.run_where_write(next, step.operation, own_transaction);
                outcomes.push(outcome.await.map_err(|e| match e {
                    CoreError::BatchStep { source, .. } => CoreError::BatchStep {
                        step: first,
                        source,
                    },
                    other => other,
                })?);
            } else {
                pending.push(step);
            }
        }
        let first = outcomes.len();
        outcomes.extend(
            self.run_logged_batch(next, pending, own_transaction)
                .await
                .map_err(at(first))?,
        );
        Ok(outcomes)
    }

    /// Runs `steps` in the caller's transaction, stamped before they run (see
    /// [`Self::run_logged_batch`]).
    async fn in_callers_transaction(
        &self,
        next: Next<'_>,
        steps: Vec<BatchStep>,
    ) -> CoreResult<Vec<Outcome>> {
        // Its parts would run one after another in the caller's transaction, which a failing
        // part leaves open with the parts before it applied: a batch is undone whole, so such
        // a batch is refused rather than applied in part.
        if steps.len() > 1 && steps.iter().any(|s| self.logged_where_write(&s.operation)) {
            return Err(CoreError::invalid_operation(
                "",
                "a batch with a where-clause write of a synced collection cannot run in the \
                 app's own transaction: run the where-write as an operation of its own in the \
                 transaction, or the batch outside it",
            ));
        }
        self.run_with_where_writes(next, steps, false).await
    }

    /// Runs `steps` in a transaction of their own, their entries stamped after the steps
    /// that make them. A backend without transactions runs writes that name their objects
    /// as one batch, stamped first.
    async fn in_own_transaction(
        &self,
        next: Next<'_>,
        steps: Vec<BatchStep>,
    ) -> CoreResult<Vec<Outcome>> {
        let tx = match next.begin_all_or_nothing().await {
            Ok(tx) => tx,
            Err(CoreError::Unsupported { .. })
                if !steps.iter().any(|s| self.logged_where_write(&s.operation)) =>
            {
                return self.run_logged_batch(next, steps, false).await;
            }
            Err(e) => return Err(e),
        };
        match self
            .run_with_where_writes(next.within(&*tx), steps, true)
            .await
        {
            Ok(outcomes) => {
                tx.commit().await?;
                Ok(outcomes)
            }
            Err(e) => {
                // Nothing of the write is committed either way; its own error says why.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    fn logged_where_write(&self, op: &Operation) -> bool {
        op.is_where_write() && self.logged(op.collection().unwrap_or_default())
    }

    async fn process_write(&self, op: Operation, next: Next<'_>) -> CoreResult<Outcome> {
        let (mut steps, single) = match op {
            Operation::Batch { steps } => (steps, false),
            other => (vec![BatchStep::new(other)], true),
        };
        resolve_placeholders(&next, &mut steps);
        // Stamped and run under the write-order lock (inside a caller's transaction, that
        // transaction orders it already): received changes are applied either before, and the
        // stamps are later than what they moved the clock to, or after this write.
        let written = if next.in_transaction() {
            self.in_callers_transaction(next, steps).await
        } else {
            self.order
                .hold(self.in_own_transaction(next, steps))
                .await?
        };
        let mut outcomes = match written {
            Ok(outcomes) => outcomes,
            // A single write fails as it would without sync (`DuplicateKey`, `Refused`, ...),
            // not as the first step of the batch it ran in.
            Err(CoreError::BatchStep { step: 0, source }) if single => return Err(*source),
            Err(error) => return Err(error),
        };
        if single {
            outcomes.pop().ok_or_else(|| CoreError::UnexpectedOutcome {
                operation: "write",
                outcome: "no outcome".into(),
            })
        } else {
            Ok(Outcome::Batch(outcomes))
        }
    }
}

impl Middleware for SyncLoggingMiddleware {
    fn process<'a>(&'a self, op: Operation, next: Next<'a>) -> BoxFuture<'a, CoreResult<Outcome>> {
        let needs_log = next.origin() == Origin::App
            && match &op {
                Operation::Batch { steps } => steps
                    .iter()
                    .any(|s| self.logged(s.operation.collection().unwrap_or_default())),
                other => other.is_write() && self.logged(other.collection().unwrap_or_default()),
            };
        if !needs_log {
            return next.run(op);
        }
        Box::pin(self.process_write(op, next))
    }
}
