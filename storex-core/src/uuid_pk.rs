//! Fills UUID primary keys on creates, so objects made on two devices never collide.

use std::sync::Mutex;

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
///
/// The keys one operation gets are consecutive: the first is a new UUIDv7 whose last 62 bits
/// are random, each next one adds one to those bits, as RFC 9562's monotonic random method
/// does. A run of consecutive keys is stored in a few bytes where the sync journal would
/// otherwise keep 16 an object. Keys stay unique in the process (each run starts after the
/// previous one) and across devices (a run starts at a random point of 2^62 in its
/// millisecond). So one key of a write tells the others: do not use these keys as secrets
/// (in share links, say).
#[derive(Clone, Copy, Debug, Default)]
pub struct UuidPkMiddleware;

impl UuidPkMiddleware {
    /// The middleware.
    pub fn new() -> Self {
        UuidPkMiddleware
    }
}

/// The bits of a UUIDv7 that a run of keys counts up in (`rand_b`).
const RUN_BITS: u128 = (1 << 62) - 1;

/// The last key given out in this process.
static LAST_KEY: Mutex<u128> = Mutex::new(0);

/// Consecutive UUIDv7 keys, handed out one by one.
struct KeyRun {
    next: u128,
    left: u128,
}

impl KeyRun {
    /// Reserves `count` (at least one) consecutive keys after every key given out before.
    fn reserve(count: usize) -> Self {
        let span = (count as u128).saturating_sub(1);
        let fresh = fresh_key();
        let mut last = LAST_KEY.lock().unwrap_or_else(|e| e.into_inner());
        match run_start(fresh, *last, span) {
            Some(first) => {
                *last = first + span;
                KeyRun {
                    next: first,
                    left: span + 1,
                }
            }
            // No room left for a run: separate keys.
            None => KeyRun { next: 0, left: 0 },
        }
    }

    /// The next key of the run (a separate UUIDv7 once the run is used up).
    fn next_key(&mut self) -> Uuid {
        if self.left == 0 {
            return Uuid::now_v7();
        }
        let key = self.next;
        self.next += 1;
        self.left -= 1;
        Uuid::from_u128(key)
    }
}

/// A new UUIDv7's time with 62 random bits of its own (`now_v7` counts in part of them
/// within a millisecond, which a run would count into).
fn fresh_key() -> u128 {
    (Uuid::now_v7().as_u128() & !RUN_BITS) | (Uuid::new_v4().as_u128() & RUN_BITS)
}

/// Where a run of `span + 1` keys starts, given a `fresh` UUIDv7 and the `last` key given
/// out: the fresh one, or the one after the last (the clock went back, or the last run
/// reaches past this millisecond's keys); `None` when neither has room in its counting bits.
fn run_start(fresh: u128, last: u128, span: u128) -> Option<u128> {
    let fits = |first: u128| first & RUN_BITS <= RUN_BITS - span;
    if fresh > last && fits(fresh) {
        Some(fresh)
    } else if last != 0 && last & RUN_BITS != RUN_BITS && fits(last + 1) {
        Some(last + 1)
    } else {
        None
    }
}

/// The key field a create of `object` in `collection` needs filled, if any: a one-field
/// UUID key that is missing or null.
fn missing_key<'r>(registry: &'r Registry, collection: &str, object: &Object) -> Option<&'r str> {
    // An unknown collection is left to validation to report.
    let def = registry.collection(collection).ok()?;
    match def.pk_fields() {
        [field] if def.has_uuid_pk() && object.get(field).is_none_or(Value::is_null) => Some(field),
        _ => None,
    }
}

impl Middleware for UuidPkMiddleware {
    fn process<'a>(&'a self, mut op: Operation, next: Next<'a>) -> BoxFuture<'a, Result<Outcome>> {
        let registry = next.registry();
        let mut targets: Vec<(&str, &mut Object)> = match &mut op {
            Operation::Create { collection, object } => missing_key(registry, collection, object)
                .map(|field| (field, object))
                .into_iter()
                .collect(),
            Operation::Batch { steps } => steps
                .iter_mut()
                .filter_map(|step| match &mut step.operation {
                    Operation::Create { collection, object } => {
                        missing_key(registry, collection, object).map(|field| (field, object))
                    }
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if !targets.is_empty() {
            let mut keys = KeyRun::reserve(targets.len());
            for (field, object) in &mut targets {
                object.insert((*field).to_owned(), Value::Uuid(keys.next_key()));
            }
        }
        drop(targets);
        next.run(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_keys_are_consecutive_version_7_and_after_every_earlier_key() {
        let mut previous_last = 0u128;
        for count in [1usize, 1000, 3, 1000] {
            let mut run = KeyRun::reserve(count);
            let keys: Vec<Uuid> = (0..count).map(|_| run.next_key()).collect();
            for pair in keys.windows(2) {
                assert_eq!(pair[1].as_u128(), pair[0].as_u128() + 1, "consecutive keys");
            }
            for key in &keys {
                assert_eq!(key.get_version_num(), 7);
                assert_eq!(key.get_variant(), uuid::Variant::RFC4122);
            }
            assert!(
                keys[0].as_u128() > previous_last,
                "a run starts after the last one"
            );
            previous_last = keys[count - 1].as_u128();
        }
    }

    #[test]
    fn a_run_starts_where_its_keys_fit_after_the_last_one() {
        let fresh = fresh_key();
        let top = fresh | RUN_BITS;
        // A fresh key after the last one, with room: the run starts there.
        assert_eq!(run_start(fresh, 0, 0), Some(fresh));
        assert_eq!(
            run_start(fresh & !RUN_BITS, 0, 999),
            Some(fresh & !RUN_BITS)
        );
        // No room after the fresh key for 1,000: after the last one.
        let last = (fresh & !RUN_BITS) + 5;
        assert_eq!(
            run_start(top, last.min(top - 1), 999).map(|s| s & RUN_BITS),
            Some(6)
        );
        // A fresh key not after the last one (the clock went back): after the last one.
        assert_eq!(run_start(fresh, fresh + 10, 1), Some(fresh + 11));
        // Neither has room: no run.
        assert_eq!(run_start(top - 1, top, 1), None);
        assert_eq!(run_start(top, top - 1, 1), None);
        // A run given out separately still gets version 7 keys.
        let mut run = KeyRun { next: 0, left: 0 };
        assert_eq!(run.next_key().get_version_num(), 7);
    }
}
