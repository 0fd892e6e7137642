//! What a sender tells the receiver of its objects' history: their *versions* (see
//! [`crate::versions`]), one row per object, with the changes its log still holds folded in
//! as compaction would fold them. The receiver learns the timestamp of every value without
//! a log row per change, which it would have to store (with every value a second time) and
//! the channel would carry.
//!
//! Objects come in two passes inside the snapshot: first those with applied entries in the
//! log, collection by collection in key order (an object's entries all in one page), their
//! stored versions folded with the entries; then those known only through the versions
//! index. Entries held back (from a newer schema, not applied here) are not folded: they
//! still travel as log rows, and the receiver holds them too.

use std::collections::{HashMap, HashSet};

use storex_core::{Filter, Object, Query, Registry, Value};

use crate::client_log::{current_rows, entry_object, logged_for, Exec};
use crate::entry::{LogEntry, StoredEntry, LOG_COLLECTION};
use crate::error::Result;
use crate::fast_sync::FastSyncError;
use crate::reconcile::{object_key, ObjectKey};
use crate::versions::{self, object_id, object_of, Versions, VERSIONS_COLLECTION};

/// Where the sender is in its objects' versions.
#[derive(Debug)]
enum Stage {
    /// Objects with applied entries in the log: the collection at this index of the ones
    /// sent, from this key's text on (inclusive: the first page has none).
    Logged {
        collection: usize,
        from: Option<String>,
    },
    /// Objects known only through the versions index, after this row id.
    Stored { after: Option<String> },
    /// Everything sent.
    Done,
}

/// Pages through the versions a snapshot sends (see the module doc).
#[derive(Debug)]
pub(crate) struct VersionsPager {
    /// The app collections sent, in order.
    collections: Vec<String>,
    /// Send the values of the objects' rows with their versions, for a receiver that merges
    /// (it keeps rows of its own). A receiver that copies has the sender's rows.
    with_values: bool,
    stage: Stage,
}

/// A page of rows and whether it is the last.
type Page = (Vec<Object>, bool);

impl VersionsPager {
    /// Versions of the objects of `collections` (app collections only), `with_values` of
    /// their rows or not.
    pub(crate) fn new(collections: Vec<String>, with_values: bool) -> Self {
        VersionsPager {
            collections,
            with_values,
            stage: Stage::Logged {
                collection: 0,
                from: None,
            },
        }
    }

    /// The next page of rows of the versions collection (with the values of each object's
    /// row, if asked): about `limit` log entries or versions rows read, leaving out the
    /// objects in `left_out`.
    pub(crate) async fn next(
        &mut self,
        exec: Exec<'_>,
        registry: &Registry,
        limit: u64,
        left_out: &HashSet<ObjectKey>,
    ) -> Result<Page> {
        loop {
            match &self.stage {
                Stage::Logged { collection, from } => {
                    let index = *collection;
                    let Some(name) = self.collections.get(index) else {
                        self.stage = Stage::Stored { after: None };
                        continue;
                    };
                    let (entries, next_from) =
                        logged_page(exec, name, from.as_deref(), limit).await?;
                    self.stage = match next_from {
                        Some(from) => Stage::Logged {
                            collection: index,
                            from: Some(from),
                        },
                        None => Stage::Logged {
                            collection: index + 1,
                            from: None,
                        },
                    };
                    let with_values = self.with_values;
                    let rows = fold_logged(exec, registry, &entries, left_out, with_values).await?;
                    return Ok((rows, false));
                }
                Stage::Stored { after } => {
                    let (rows, last, after) = self
                        .stored_page(exec, registry, after.clone(), limit, left_out)
                        .await?;
                    self.stage = if last {
                        Stage::Done
                    } else {
                        Stage::Stored { after }
                    };
                    return Ok((rows, last));
                }
                Stage::Done => return Ok((Vec::new(), true)),
            }
        }
    }

    /// A page of the versions index after `after`: the rows of objects of the collections
    /// sent, not left out, with no applied entry in the log (those went with the log's
    /// pass). Returns them, whether the index ended, and the last id read.
    async fn stored_page(
        &self,
        exec: Exec<'_>,
        registry: &Registry,
        after: Option<String>,
        limit: u64,
        left_out: &HashSet<ObjectKey>,
    ) -> Result<(Vec<Object>, bool, Option<String>)> {
        let mut query = Query::default().limit(limit);
        if let Some(after) = &after {
            query.filter = Filter::all().gt("object", after.as_str());
        }
        let page = exec.find(VERSIONS_COLLECTION, query).await?;
        let last = (page.len() as u64) < limit;
        let mut after = after;
        let mut kept = Vec::with_capacity(page.len());
        for row in &page {
            let (id, versions) = Versions::from_row(row)?;
            after = Some(id.clone());
            let Some(key) = object_of(&id) else {
                continue; // the clock's row: the receiver keeps its own
            };
            if !self.collections.contains(&key.0) || left_out.contains(&key) {
                continue;
            }
            kept.push((key, versions));
        }
        let keys: Vec<ObjectKey> = kept.iter().map(|(key, _)| key.clone()).collect();
        let logged = logged_for(exec, &keys).await?.integrated;
        kept.retain(|(key, _)| !logged.contains_key(key));
        let rows = if self.with_values {
            let pks = kept
                .iter()
                .map(|(key, _)| Ok((key.0.as_str(), versions::pk_from_text(&key.1)?)))
                .collect::<Result<Vec<_>>>()?;
            current_rows(exec, registry, pks.iter().map(|(c, pk)| (*c, pk))).await?
        } else {
            HashMap::new()
        };
        let out = kept
            .into_iter()
            .map(|(key, mut versions)| {
                if let Some(row) = rows.get(&key) {
                    versions.fill(row);
                }
                versions.to_row(object_id(&key))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((out, last, after))
    }
}

/// Up to about `limit` applied log entries of `collection` from the key `from` on, in key
/// order, each object's entries all in the page; with the key to read on from, or `None`
/// when the collection's entries ended.
async fn logged_page(
    exec: Exec<'_>,
    collection: &str,
    from: Option<&str>,
    limit: u64,
) -> Result<(Vec<(String, LogEntry)>, Option<String>)> {
    let mut limit = limit.max(1);
    loop {
        let mut filter = Filter::all()
            .eq("collection", collection)
            .eq("integrated", true);
        if let Some(from) = from {
            filter = filter.gte("pk", from);
        }
        let query = Query::new(filter).order_asc("pk").limit(limit);
        let rows = exec.find(LOG_COLLECTION, query).await?;
        let full = rows.len() as u64 == limit;
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            let pk = row
                .get("pk")
                .and_then(Value::as_text)
                .map(str::to_owned)
                .unwrap_or_default();
            let stored = StoredEntry::from_object(row).map_err(|e| {
                FastSyncError::Protocol(format!("a log entry that does not read back: {e}"))
            })?;
            entries.push((pk, stored.entry));
        }
        if !full {
            return Ok((entries, None));
        }
        // The last object's entries may go on past the page: they start the next one.
        let last = entries.last().map(|(pk, _)| pk.clone()).unwrap_or_default();
        let cut = entries
            .iter()
            .position(|(pk, _)| *pk == last)
            .unwrap_or_default();
        if cut > 0 {
            entries.truncate(cut);
            return Ok((entries, Some(last)));
        }
        // One object has more entries than the page holds: read a larger page.
        limit = limit.saturating_mul(2);
    }
}

/// The versions rows of the objects of `entries` (in key order, each object's together):
/// their stored versions with the entries folded in, pruned for whether the object exists,
/// and, `with_values`, given the values of its row.
async fn fold_logged(
    exec: Exec<'_>,
    registry: &Registry,
    entries: &[(String, LogEntry)],
    left_out: &HashSet<ObjectKey>,
    with_values: bool,
) -> Result<Vec<Object>> {
    let mut groups: Vec<(ObjectKey, Vec<&LogEntry>)> = Vec::new();
    let mut group_pk: Option<&str> = None;
    for (pk, entry) in entries {
        match groups.last_mut() {
            Some((_, group)) if group_pk == Some(pk.as_str()) => group.push(entry),
            _ => groups.push((object_key(entry), vec![entry])),
        }
        group_pk = Some(pk);
    }
    groups.retain(|(key, _)| !left_out.contains(key));
    let keys: Vec<ObjectKey> = groups.iter().map(|(key, _)| key.clone()).collect();
    let mut base = versions::load(exec, &keys).await?;
    if !with_values {
        // Whether the object exists is what its versions say, once everything is folded.
        let mut out = Vec::with_capacity(groups.len());
        for (key, entries) in groups {
            let Ok(def) = registry.collection(&key.0) else {
                continue;
            };
            let mut versions = base.remove(&key).unwrap_or_default();
            for entry in entries {
                versions.fold(def, entry, true);
            }
            versions.prune(versions.live_since().is_some());
            out.push(versions.to_row(object_id(&key))?);
        }
        return Ok(out);
    }
    let firsts = groups
        .iter()
        .filter_map(|(_, group)| group.first().copied());
    let rows = current_rows(exec, registry, firsts.map(entry_object)).await?;
    let exists: HashSet<ObjectKey> = rows.keys().cloned().collect();
    let folded = versions::fold_objects(registry, &mut base, &HashMap::new(), groups, &exists);
    folded
        .into_iter()
        .map(|(key, mut versions, _)| {
            if let Some(row) = rows.get(&key) {
                versions.fill(row);
            }
            versions.to_row(object_id(&key))
        })
        .collect()
}
