//! The middleware chain: an onion of steps between the caller and the backend.
//!
//! Each [`Middleware`] receives the operation and a [`Next`], the rest of the chain. It may
//! pass the operation on unchanged, rewrite it (turn a create into a batch), run several
//! operations, or refuse it. The chain ends at the backend, or at an open transaction when
//! the operation runs inside one; the operation is validated once more just before.
//!
//! A middleware that must read and write atomically opens a transaction with
//! [`Next::begin`] and runs its operations through [`Next::within`], unless
//! [`Next::in_transaction`] says it already runs inside one.

use std::fmt;
use std::sync::Arc;

use crate::backend::{BoxFuture, StorageBackend, Transaction};
use crate::error::{Error, Result};
use crate::operation::{Operation, Outcome};
use crate::registry::Registry;
use crate::validate::{validate, Stage};
use crate::value::{Object, Value};

/// Who asked for an operation; middleware can treat them differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// The app's own code.
    App,
    /// The sync engine applying changes from other devices (the sync logger does not log
    /// these again).
    Sync,
}

/// One step between the caller and the backend. Object-safe: chains hold `Arc<dyn Middleware>`.
pub trait Middleware: Send + Sync + fmt::Debug + 'static {
    /// Handles `op`, usually by passing it (or a rewritten form) to `next.run`.
    fn process<'a>(&'a self, op: Operation, next: Next<'a>) -> BoxFuture<'a, Result<Outcome>>;

    /// Called after a transaction opened with [`crate::Storage::begin`] (or its snapshot or
    /// isolated form) commits, when a write of the app's ([`Origin::App`]) succeeded in it:
    /// the writes it passed to [`Middleware::process`] are visible to others now. Not
    /// called for transactions a middleware opens itself ([`Next::begin`]), nor after a
    /// rollback. Does nothing unless a middleware overrides it.
    fn app_transaction_committed(&self) {}
}

#[derive(Clone, Copy)]
enum Target<'a> {
    Backend(&'a dyn StorageBackend),
    Transaction(&'a dyn Transaction),
}

/// The rest of the chain, ending at the backend or at an open transaction.
#[derive(Clone, Copy)]
pub struct Next<'a> {
    rest: &'a [Arc<dyn Middleware>],
    target: Target<'a>,
    backend: &'a dyn StorageBackend,
    registry: &'a Registry,
    origin: Origin,
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("rest", &self.rest)
            .field("backend", &self.backend.name())
            .field("in_transaction", &self.in_transaction())
            .field("origin", &self.origin)
            .finish()
    }
}

impl<'a> Next<'a> {
    pub(crate) fn new(
        rest: &'a [Arc<dyn Middleware>],
        backend: &'a dyn StorageBackend,
        transaction: Option<&'a dyn Transaction>,
        registry: &'a Registry,
        origin: Origin,
    ) -> Self {
        let target = match transaction {
            Some(tx) => Target::Transaction(tx),
            None => Target::Backend(backend),
        };
        Next {
            rest,
            target,
            backend,
            registry,
            origin,
        }
    }

    /// Runs `op` through the rest of the chain.
    pub fn run(self, op: Operation) -> BoxFuture<'a, Result<Outcome>> {
        match self.rest.split_first() {
            Some((first, rest)) => first.process(op, Next { rest, ..self }),
            None => Box::pin(async move {
                let mut op = op;
                validate(self.registry, &mut op, Stage::Backend)?;
                let features = self.backend.features();
                if let Some(what) = features.missing_for(&op) {
                    return Err(Error::Unsupported {
                        backend: self.backend.name(),
                        what: what.to_owned(),
                    });
                }
                // A backend that does not read values itself is asked for the objects.
                let (op, fields) = match op {
                    Operation::FindValues {
                        collection,
                        query,
                        fields,
                    } if !features.find_values => {
                        (Operation::FindMany { collection, query }, Some(fields))
                    }
                    op => (op, None),
                };
                let outcome = match self.target {
                    Target::Backend(backend) => backend.execute(op).await,
                    Target::Transaction(tx) => tx.execute(op).await,
                }?;
                Ok(match fields {
                    Some(fields) => values_of(outcome, &fields)?,
                    None => outcome,
                })
            }),
        }
    }

    /// The registry operations are checked against.
    pub fn registry(&self) -> &'a Registry {
        self.registry
    }

    /// Who asked for the operation.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// True when the operation runs inside a transaction already.
    pub fn in_transaction(&self) -> bool {
        matches!(self.target, Target::Transaction(_))
    }

    /// Opens a transaction on the backend. Run operations in it through [`Next::within`],
    /// then commit or roll it back. Refused inside a transaction: use the current one.
    pub fn begin(&self) -> BoxFuture<'a, Result<Box<dyn Transaction>>> {
        self.open(false)
    }

    /// [`Next::begin`] for a caller that rolls the transaction back whole on any error (see
    /// [`StorageBackend::begin_all_or_nothing`]).
    pub fn begin_all_or_nothing(&self) -> BoxFuture<'a, Result<Box<dyn Transaction>>> {
        self.open(true)
    }

    fn open(&self, all_or_nothing: bool) -> BoxFuture<'a, Result<Box<dyn Transaction>>> {
        let backend = self.backend;
        let nested = self.in_transaction();
        Box::pin(async move {
            if nested {
                return Err(Error::Transaction {
                    problem: "a transaction is already open for this operation; run inside it"
                        .into(),
                });
            }
            if !backend.features().transactions {
                return Err(Error::Unsupported {
                    backend: backend.name(),
                    what: "transactions".into(),
                });
            }
            if all_or_nothing {
                backend.begin_all_or_nothing().await
            } else {
                backend.begin().await
            }
        })
    }

    /// The rest of the chain, ending at `transaction` instead of the backend.
    pub fn within<'b>(&self, transaction: &'b dyn Transaction) -> Next<'b>
    where
        'a: 'b,
    {
        Next {
            target: Target::Transaction(transaction),
            ..*self
        }
    }
}

/// The values of `fields` of the objects a `FindMany` found, for a `FindValues` its backend
/// does not read itself.
fn values_of(found: Outcome, fields: &[String]) -> Result<Outcome> {
    let Outcome::FoundMany(objects) = found else {
        return Err(found.unexpected("find_many"));
    };
    let rows = objects
        .iter()
        .map(|object| field_values(object, fields))
        .collect();
    Ok(Outcome::FoundValues(rows))
}

/// The values of `fields` of `object`, in that order (`Null` for a field it lacks).
pub(crate) fn field_values(object: &Object, fields: &[String]) -> Vec<Value> {
    fields
        .iter()
        .map(|field| object.get(field).cloned().unwrap_or(Value::Null))
        .collect()
}
