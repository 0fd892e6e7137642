//! Runs of consecutive UUID keys, looked up as key ranges.
//!
//! [`storex_core::UuidPkMiddleware`] gives the creates of one write consecutive keys, so a
//! batch of changes received from another device (or read back from this one's journal)
//! often names whole runs of objects. A lookup of such a run asks for one key range, which
//! the database answers with one index seek, instead of an `IN` list that binds and probes
//! every key. A range of exactly consecutive keys holds no other key of one UUID in the
//! collection; what makes the lookups exact is that callers keep only the objects they
//! asked for (a key of another shape could sort between the ends).

use std::collections::BTreeMap;

use storex_core::uuid::Uuid;
use storex_core::{Pk, Value};

use crate::entry::pk_text;
use crate::reconcile::ObjectKey;

/// Fewer consecutive keys than this are looked up one by one (an `IN` list): each run is a
/// query of its own (on PostgreSQL a round trip), so a run must save many keys' binds and
/// probes to be worth one.
const MIN_RUN: usize = 64;

/// Keys split into runs of consecutive UUIDs and the rest.
#[derive(Debug, PartialEq)]
pub(crate) struct Split<T> {
    /// The first and last key of each run (every UUID between them is one of the keys).
    pub(crate) runs: Vec<(Uuid, Uuid)>,
    /// The keys in no run, in no particular order.
    pub(crate) rest: Vec<T>,
}

/// Splits `keys` into runs of at least [`MIN_RUN`] consecutive UUIDs (as `uuid_of` reads
/// them) and the rest (keys that are no UUID, or in shorter runs).
pub(crate) fn split<T>(keys: Vec<T>, uuid_of: impl Fn(&T) -> Option<Uuid>) -> Split<T> {
    let mut rest = Vec::new();
    let mut numbered: Vec<(u128, T)> = Vec::with_capacity(keys.len());
    for key in keys {
        match uuid_of(&key) {
            Some(uuid) => numbered.push((uuid.as_u128(), key)),
            None => rest.push(key),
        }
    }
    numbered.sort_unstable_by_key(|(n, _)| *n);
    let mut runs = Vec::new();
    let mut group: Vec<(u128, T)> = Vec::new();
    let mut close = |group: &mut Vec<(u128, T)>, rest: &mut Vec<T>| {
        let distinct = match (group.first(), group.last()) {
            (Some((first, _)), Some((last, _))) => last - first + 1,
            _ => return,
        };
        if distinct >= MIN_RUN as u128 {
            runs.push((
                Uuid::from_u128(group[0].0),
                Uuid::from_u128(group[group.len() - 1].0),
            ));
            group.clear();
        } else {
            rest.extend(group.drain(..).map(|(_, key)| key));
        }
    };
    for (n, key) in numbered {
        let follows = group.last().is_some_and(|(last, _)| n - last <= 1);
        if !follows {
            close(&mut group, &mut rest);
        }
        group.push((n, key));
    }
    close(&mut group, &mut rest);
    Split { runs, rest }
}

/// The objects `objects` by collection, in collection order, the keys of each split into
/// runs of consecutive UUIDs (read from their text) and the rest.
pub(crate) fn split_by_collection(objects: &[ObjectKey]) -> Vec<(&str, Split<&ObjectKey>)> {
    let mut by_collection: BTreeMap<&str, Vec<&ObjectKey>> = BTreeMap::new();
    for key in objects {
        by_collection.entry(&key.0).or_default().push(key);
    }
    by_collection
        .into_iter()
        .map(|(collection, keys)| (collection, split(keys, |key| uuid_of_pk_text(&key.1))))
        .collect()
}

/// The UUID of a key's text (as [`pk_text`] writes a key of one UUID), if it is one.
pub(crate) fn uuid_of_pk_text(text: &str) -> Option<Uuid> {
    let inner = text.strip_prefix("[{\"uuid\":\"")?.strip_suffix("\"}]")?;
    let uuid = Uuid::try_parse(inner).ok()?;
    // Only the text `pk_text` writes for it, so that text order is the UUIDs' order.
    let mut canonical = [0u8; 36];
    (uuid.hyphenated().encode_lower(&mut canonical) == inner).then_some(uuid)
}

/// The UUID of a key of one UUID.
pub(crate) fn uuid_of_pk(pk: &Pk) -> Option<Uuid> {
    match pk.values() {
        [Value::Uuid(uuid)] => Some(*uuid),
        _ => None,
    }
}

/// The text [`pk_text`] writes for the key `uuid`.
pub(crate) fn text_of(uuid: Uuid) -> String {
    pk_text(&Pk::from(uuid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuids(from: u128, count: u128) -> Vec<Uuid> {
        (from..=from + (count - 1)).map(Uuid::from_u128).collect()
    }

    #[test]
    fn consecutive_keys_make_a_run_and_scattered_ones_stay_apart() {
        let mut keys = uuids(1_000, MIN_RUN as u128 + 20);
        keys.extend(uuids(5_000, 3));
        keys.push(Uuid::from_u128(9));
        keys.reverse(); // any order
        keys.push(Uuid::from_u128(1_010)); // a key twice
        let split = split(keys, |u| Some(*u));
        let last = 1_000 + MIN_RUN as u128 + 19;
        assert_eq!(
            split.runs,
            vec![(Uuid::from_u128(1_000), Uuid::from_u128(last))]
        );
        let mut rest = split.rest;
        rest.sort();
        assert_eq!(rest.len(), 4);
        assert_eq!(rest[0], Uuid::from_u128(9));
    }

    #[test]
    fn a_short_run_and_keys_that_are_no_uuid_are_left_as_they_are() {
        let keys: Vec<Option<Uuid>> = uuids(1, (MIN_RUN - 1) as u128)
            .into_iter()
            .map(Some)
            .chain([None])
            .collect();
        let split = split(keys, |k| *k);
        assert!(split.runs.is_empty());
        assert_eq!(split.rest.len(), MIN_RUN);
    }

    #[test]
    fn a_run_of_exactly_the_minimum_and_the_ends_of_the_range_count() {
        let mut keys = uuids(0, MIN_RUN as u128);
        keys.extend(uuids(u128::MAX - MIN_RUN as u128 + 1, MIN_RUN as u128));
        let split = split(keys, |u| Some(*u));
        assert_eq!(
            split.runs,
            vec![
                (Uuid::nil(), Uuid::from_u128(MIN_RUN as u128 - 1)),
                (
                    Uuid::from_u128(u128::MAX - MIN_RUN as u128 + 1),
                    Uuid::max()
                ),
            ]
        );
        assert!(split.rest.is_empty());
    }

    #[test]
    fn two_runs_side_by_side_with_a_gap_are_two_runs() {
        let run = MIN_RUN as u128;
        let mut keys = uuids(100, run);
        keys.extend(uuids(100 + run + 1, run));
        let split = split(keys, |u| Some(*u));
        assert_eq!(split.runs.len(), 2);
        assert!(split.rest.is_empty());
    }

    #[test]
    fn key_texts_read_back_only_in_the_form_pk_text_writes() {
        let uuid = Uuid::from_u128(0xABCD_0000_0000_0000_0000_0000_0000_0001);
        let text = text_of(uuid);
        assert_eq!(uuid_of_pk_text(&text), Some(uuid));
        assert_eq!(uuid_of_pk(&Pk::from(uuid)), Some(uuid));
        let upper = uuid.hyphenated().to_string().to_uppercase();
        assert_eq!(
            uuid_of_pk_text(&format!("[{{\"uuid\":\"{upper}\"}}]")),
            None
        );
        assert_eq!(uuid_of_pk_text("[1]"), None);
        assert_eq!(uuid_of_pk_text("[{\"uuid\":\"x\"}]"), None);
        assert_eq!(uuid_of_pk(&Pk::from(1i64)), None);
        // Text order is the keys' order.
        let (a, b) = (Uuid::from_u128(0x0F), Uuid::from_u128(0x10));
        assert!(text_of(a) < text_of(b));
    }
}
