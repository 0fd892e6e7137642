//! Fills UUID primary keys on creates, so objects made on two devices never collide.

use uuid::Uuid;

use crate::backend::BoxFuture;
use crate::error::Result;
use crate::middleware::{Middleware, Next};
use crate::operation::{Operation, Outcome};
use crate::registry::Registry;
use crate::value::{Object, Value};

/// Gives every create on a collection with a one-field UUID key a fresh UUIDv7 when the key
/// is missing or null, creates inside batches included. UUIDv7 keys sort by creation time,
/// which keeps B-tree inserts local. Put it first in the chain, before the sync logger.
#[derive(Clone, Copy, Debug, Default)]
pub struct UuidPkMiddleware;

impl UuidPkMiddleware {
    /// The middleware.
    pub fn new() -> Self {
        UuidPkMiddleware
    }
}

fn fill(registry: &Registry, collection: &str, object: &mut Object) {
    let Ok(def) = registry.collection(collection) else {
        return; // validation reports the unknown collection
    };
    let [field] = def.pk_fields() else { return };
    if !def.has_uuid_pk() {
        return;
    }
    match object.get_mut(field) {
        Some(value) if !value.is_null() => {}
        Some(value) => *value = Value::Uuid(Uuid::now_v7()),
        None => {
            object.insert(field.clone(), Value::Uuid(Uuid::now_v7()));
        }
    }
}

impl Middleware for UuidPkMiddleware {
    fn process<'a>(&'a self, mut op: Operation, next: Next<'a>) -> BoxFuture<'a, Result<Outcome>> {
        let registry = next.registry();
        match &mut op {
            Operation::Create { collection, object } => fill(registry, collection, object),
            Operation::Batch { steps } => {
                for step in steps {
                    if let Operation::Create { collection, object } = &mut step.operation {
                        fill(registry, collection, object);
                    }
                }
            }
            _ => {}
        }
        next.run(op)
    }
}
