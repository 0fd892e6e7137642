//! What a sender tells the receiver of its objects' history: their *versions* (see
//! [`crate::versions`]), one row per object, with the changes its log still holds folded in
//! as compaction would fold them. The receiver learns the timestamp of every value without
//! a log row per change, which it would have to store (with every value a second time) and
//! the channel would carry.
//!
//! Objects come in two passes inside the snapshot: first those with applied entries in the
//! log, collection by collection in key order, their stored versions folded with the
//! entries (an object with more entries than a page holds is folded over several pages, and
//! sent once); then those known only through the versions index. Entries held back (from a
//! newer schema, not applied here) are not folded: they still travel as log rows, and the
//! receiver holds them too. Pages of the log are sized by the bytes of the rows read, so
//! large values come a few at a time; the next page is read while one is folded, so two are
//! held at most.
//!
//! A row of the log or of the versions index that does not read (damaged, or in a newer
//! version's format) is passed over and named in [`VersionsPager::damaged`]: its object goes
//! with what does read (the object's row itself travels in its collection's pass).

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use storex_core::uuid::Uuid;
use storex_core::{Filter, Object, Query, Registry, Value};

use crate::client_log::{current_rows, logged_reading, Exec};
use crate::entry::{log_value, LogEntry, StoredEntry, LOG_COLLECTION, LOG_FIELDS};
use crate::error::Result;
use crate::fast_sync::page_limit;
use crate::reconcile::{object_key, ObjectKey};
use crate::versions::{self, object_id, object_of, pk_from_text, Versions, VERSIONS_COLLECTION};

/// Log entries read at a time, at most.
const LOG_PAGE: u64 = 2_000;
/// Log entries in the pass's first page, before their size is known.
const FIRST_LOG_PAGE: u64 = 64;
/// About how many bytes of log rows a page holds.
const LOG_PAGE_BYTES: u64 = 8 * 1024 * 1024;
/// What a log row takes besides its values' text, about.
const LOG_ROW_BYTES: u64 = 160;

/// An object whose entries are being folded: its key's text as the log stores it, where the
/// next page goes on, its versions so far, and whether any of its entries read (one whose
/// rows all fail to read goes with the versions index's pass, if it has a row there).
#[derive(Debug)]
struct OpenObject {
    pk: String,
    key: ObjectKey,
    last_id: Uuid,
    versions: Versions,
    read_any: bool,
}

/// Where the sender is in its objects' versions.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per pager: boxing the open object saves nothing
enum Stage {
    /// Objects with applied entries in the log: the collection at this index of the ones
    /// sent, after the object whose key's text is `after`, or going on with `open`.
    Logged {
        collection: usize,
        after: Option<String>,
        open: Option<OpenObject>,
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
    /// Log entries in the next page read (sized by the last page read).
    log_limit: u64,
    stage: Stage,
    /// The page of the log the next stage reads, read ahead, with its query.
    ahead: Option<(Query, LogPage)>,
    /// The collection (by index) whose log is being read, and whether the versions index
    /// holds any object of it: if not, its objects' stored versions need no lookup.
    indexed: Option<(usize, bool)>,
    /// Rows passed over because they do not read, one message each.
    damaged: Vec<String>,
    /// The objects whose row of the versions index is among `damaged` (both passes may
    /// look it up).
    unread_versions: HashSet<ObjectKey>,
}

/// A page of rows and whether it is the last.
type Page = (Vec<Object>, bool);

/// One page of the log: each row's key's text as stored, its id and its entry (or why it
/// does not read), the rows left out because they have no place in the log's order, and
/// whether the page was full (more may follow).
#[derive(Debug)]
struct LogPage {
    rows: Vec<LogPageRow>,
    /// Why rows were left out of `rows` (see [`read_log`]).
    unplaced: Vec<String>,
    full: bool,
}

/// A row of a [`LogPage`].
#[derive(Debug)]
struct LogPageRow {
    pk: String,
    id: Uuid,
    entry: std::result::Result<LogEntry, String>,
}

impl VersionsPager {
    /// Versions of the objects of `collections` (app collections only), `with_values` of
    /// their rows or not.
    pub(crate) fn new(collections: Vec<String>, with_values: bool) -> Self {
        VersionsPager {
            collections,
            with_values,
            log_limit: FIRST_LOG_PAGE,
            ahead: None,
            indexed: None,
            damaged: Vec::new(),
            unread_versions: HashSet::new(),
            stage: Stage::Logged {
                collection: 0,
                after: None,
                open: None,
            },
        }
    }

    /// The rows passed over so far because they do not read (of the log's applied entries,
    /// and of the versions index), one message each naming the row.
    pub(crate) fn damaged(&self) -> &[String] {
        &self.damaged
    }

    /// Names the row of the versions index of `key` among the rows passed over, once.
    fn note_unread_versions(&mut self, key: ObjectKey, problem: &impl std::fmt::Display) {
        let message = format!("the versions of {} {} do not read: {problem}", key.0, key.1);
        if self.unread_versions.insert(key) {
            self.damaged.push(message);
        }
    }

    /// The next page of rows of the versions collection (with the values of each object's
    /// row, if asked), leaving out the objects in `left_out`: about a page of log entries
    /// read, or `limit` rows of the versions index.
    pub(crate) async fn next(
        &mut self,
        exec: Exec<'_>,
        registry: &Registry,
        limit: u64,
        left_out: &HashSet<ObjectKey>,
    ) -> Result<Page> {
        loop {
            match std::mem::replace(&mut self.stage, Stage::Done) {
                Stage::Logged {
                    collection,
                    after,
                    open,
                } => {
                    let Some(name) = self.collections.get(collection).cloned() else {
                        self.stage = Stage::Stored { after: None };
                        continue;
                    };
                    let rows = self
                        .logged(exec, registry, (collection, &name), after, open, left_out)
                        .await?;
                    return Ok((rows, false));
                }
                Stage::Stored { after } => {
                    let (rows, last, after) = self
                        .stored_page(exec, registry, after, limit, left_out)
                        .await?;
                    if !last {
                        self.stage = Stage::Stored { after };
                    }
                    return Ok((rows, last));
                }
                Stage::Done => return Ok((Vec::new(), true)),
            }
        }
    }

    /// Reads one page of the log of the collection `name` (at `index`): the rest of `open`'s
    /// entries, or the objects after `after`. Folds them into their objects' stored versions,
    /// sets the next stage, and returns the rows of the objects whose entries are all read.
    /// The next stage's page is read while this one is folded, and kept for the next call.
    async fn logged(
        &mut self,
        exec: Exec<'_>,
        registry: &Registry,
        (index, name): (usize, &str),
        after: Option<String>,
        mut open: Option<OpenObject>,
        left_out: &HashSet<ObjectKey>,
    ) -> Result<Vec<Object>> {
        let going_on = open.as_ref().map(|o| o.pk.clone());
        let query = log_query(
            name,
            after.as_deref(),
            open.as_ref().map(|o| (o.pk.as_str(), o.last_id)),
        );
        let mut page = match self.ahead.take() {
            Some((asked, page)) if asked == query => page,
            _ => {
                let (page, limit) = read_log(exec, query, self.log_limit, self.with_values).await?;
                self.log_limit = limit;
                page
            }
        };
        self.damaged.append(&mut page.unplaced);
        // What the next call reads, known from this page's last row (whether it reads or not).
        let next = match (page.full, page.rows.last(), going_on.as_deref()) {
            (true, Some(row), _) => Some(log_query(name, None, Some((&row.pk, row.id)))),
            (false, _, Some(pk)) => Some(log_query(name, Some(pk), None)),
            (false, _, None) => self
                .collections
                .get(index + 1)
                .map(|next| log_query(next, None, None)),
            (true, None, _) => None,
        };
        // The objects this page starts, with their stored versions. (The key of a row that
        // does not read is its collection and its key's text, as for one that reads.)
        let mut starting = Vec::new();
        let mut previous = going_on.as_deref();
        for row in &page.rows {
            if previous != Some(row.pk.as_str()) {
                starting.push(row_key(name, &row.pk, &row.entry));
                previous = Some(&row.pk);
            }
        }
        let indexed = match self.indexed {
            _ if starting.is_empty() => false,
            Some((collection, any)) if collection == index => any,
            _ => {
                // The snapshot does not change: asked once per collection.
                let any = versions::any_of(exec, name).await?;
                self.indexed = Some((index, any));
                any
            }
        };
        let mut stored = if indexed {
            let loaded = versions::load(exec, &starting).await?;
            let unread = loaded.damaged.objects.into_iter();
            for (key, problem) in unread.filter(|(key, _)| !left_out.contains(key)) {
                self.note_unread_versions(key, &problem);
            }
            loaded.versions
        } else {
            HashMap::new()
        };
        let (limit, with_values) = (self.log_limit, self.with_values);
        let reading = async {
            match next {
                Some(query) => read_log(exec, query.clone(), limit, with_values)
                    .await
                    .map(|(page, limit)| Some((query, page, limit))),
                None => Ok(None),
            }
        };
        let folding = async {
            // The loop below starts the same objects in the same order: their keys are these.
            let mut starting = starting.into_iter();
            let mut done: Vec<(ObjectKey, Versions)> = Vec::new();
            let mut unread = Vec::new();
            let close = |o: OpenObject| o.read_any.then_some((o.key, o.versions));
            for LogPageRow { pk, id, entry } in page.rows {
                let mut current = match open.take() {
                    Some(o) if o.pk == pk => o,
                    other => {
                        done.extend(other.and_then(close));
                        let key = starting
                            .next()
                            .unwrap_or_else(|| row_key(name, &pk, &entry));
                        let versions = stored.remove(&key).unwrap_or_default();
                        OpenObject {
                            pk,
                            key,
                            last_id: id,
                            versions,
                            read_any: false,
                        }
                    }
                };
                current.last_id = id;
                match entry {
                    // Folded with their values: whether the object exists is known at the
                    // end.
                    Ok(entry) => {
                        if let Ok(def) = registry.collection(&entry.collection) {
                            current.versions.fold(def, &entry, true);
                        }
                        current.read_any = true;
                    }
                    Err(problem) => unread.push(problem),
                }
                open = Some(current);
            }
            let stage = if page.full {
                // The last object's entries may go on in the next page.
                Stage::Logged {
                    collection: index,
                    after: None,
                    open,
                }
            } else {
                done.extend(open.and_then(close));
                match going_on {
                    Some(pk) => Stage::Logged {
                        collection: index,
                        after: Some(pk),
                        open: None,
                    },
                    None => Stage::Logged {
                        collection: index + 1,
                        after: None,
                        open: None,
                    },
                }
            };
            done.retain(|(key, _)| !left_out.contains(key));
            let rows = finish(exec, registry, done, with_values).await;
            (stage, rows, unread)
        };
        let (read, (stage, rows, unread)) = tokio::join!(reading, folding);
        self.stage = stage;
        self.damaged.extend(unread);
        // A read ahead that failed is dropped: the next call reads again, and reports it.
        if let Ok(Some((query, page, limit))) = read {
            self.ahead = Some((query, page));
            self.log_limit = limit;
        }
        rows
    }

    /// A page of the versions index after `after`: the rows of objects of the collections
    /// sent, not left out, with no applied entry in the log that reads (those went with the
    /// log's pass). Returns them, whether the index ended, and the last id read. A row that
    /// does not read is passed over and named in `damaged` (once, if the log's pass looked
    /// it up too).
    async fn stored_page(
        &mut self,
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
        let mut unread = Vec::new();
        for row in &page {
            // Pages go on from the last row's id (text, as sync writes it): without one the
            // index cannot be read further.
            let Some(id) = row.get("object").and_then(Value::as_text) else {
                return Err(crate::Error::CorruptEntry {
                    id: after.unwrap_or_default(),
                    problem: "the next row of the versions index has an id that is not text"
                        .to_owned(),
                });
            };
            after = Some(id.to_owned());
            let Some(key) = object_of(id) else {
                continue; // the clock's row: the receiver keeps its own
            };
            if !self.collections.contains(&key.0) || left_out.contains(&key) {
                continue;
            }
            match Versions::from_row(row) {
                Ok((_, versions)) => kept.push((key, versions)),
                Err(e) => unread.push((key, e)),
            }
        }
        let keys: Vec<ObjectKey> = kept
            .iter()
            .map(|(key, _)| key)
            .chain(unread.iter().map(|(key, _)| key))
            .cloned()
            .collect();
        // Objects whose log rows all fail to read went with no entry: their versions go here.
        // (Read as the log's pass reads them, so both passes agree on which rows read.)
        let logged = logged_reading(exec, &keys, self.with_values)
            .await?
            .integrated;
        kept.retain(|(key, _)| !logged.contains_key(key));
        unread.retain(|(key, _)| !logged.contains_key(key));
        for (key, problem) in unread {
            self.note_unread_versions(key, &problem);
        }
        let rows = if self.with_values {
            rows_of(exec, registry, kept.iter().map(|(key, _)| key)).await?
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

/// The object of a row of `collection`'s log with the key text `pk`: its entry's, or, if the
/// row does not read, the collection and the key text.
fn row_key(collection: &str, pk: &str, entry: &std::result::Result<LogEntry, String>) -> ObjectKey {
    match entry {
        Ok(entry) => object_key(entry),
        Err(_) => (collection.to_owned(), pk.to_owned()),
    }
}

/// The rows of these objects' versions, folded with their values: one per object (a key
/// stored under two texts is merged), pruned for whether the object exists, with the values
/// of its row if `with_values`. An object exists if it has a row when its row is read (to
/// send its values, or when its versions know no create: a row from before sync has none
/// logged), otherwise if its versions say so.
async fn finish(
    exec: Exec<'_>,
    registry: &Registry,
    objects: Vec<(ObjectKey, Versions)>,
    with_values: bool,
) -> Result<Vec<Object>> {
    let mut index: HashMap<ObjectKey, usize> = HashMap::with_capacity(objects.len());
    let mut unique: Vec<(ObjectKey, Versions)> = Vec::with_capacity(objects.len());
    for (key, versions) in objects {
        match index.get(&key) {
            Some(&i) => unique[i].1.merge(versions),
            None => {
                index.insert(key.clone(), unique.len());
                unique.push((key, versions));
            }
        }
    }
    let read_row = |versions: &Versions| with_values || versions.created().is_none();
    let look_up = unique.iter().filter(|(_, versions)| read_row(versions));
    let rows = rows_of(exec, registry, look_up.map(|(key, _)| key)).await?;
    unique
        .into_iter()
        .map(|(key, mut versions)| {
            let exists = if read_row(&versions) {
                rows.contains_key(&key)
            } else {
                versions.live_since().is_some()
            };
            versions.prune(exists);
            if let Some(row) = rows.get(&key).filter(|_| with_values) {
                versions.fill(row);
            }
            versions.to_row(object_id(&key))
        })
        .collect()
}

/// The stored rows of the objects `keys`.
async fn rows_of<'k>(
    exec: Exec<'_>,
    registry: &Registry,
    keys: impl Iterator<Item = &'k ObjectKey>,
) -> Result<HashMap<ObjectKey, Object>> {
    let pks = keys
        .map(|key| Ok((key.0.as_str(), pk_from_text(&key.1)?)))
        .collect::<Result<Vec<_>>>()?;
    current_rows(
        exec,
        registry,
        pks.iter().map(|(collection, pk)| (*collection, pk)),
    )
    .await
}

/// The query of a page of the log's applied entries of `collection`: the rest of an open
/// object's entries (its key's text and the last entry read), or the objects after `after`.
fn log_query(collection: &str, after: Option<&str>, open: Option<(&str, Uuid)>) -> Query {
    let filter = Filter::all()
        .eq("collection", collection)
        .eq("integrated", true);
    match (open, after) {
        (Some((pk, last_id)), _) => {
            Query::new(filter.eq("pk", pk).gt("id", last_id)).order_asc("id")
        }
        (None, Some(after)) => Query::new(filter.gt("pk", after)).order_asc("pk"),
        (None, None) => Query::new(filter).order_asc("pk"),
    }
}

/// Reads a page of at most `limit` log entries with `query`; returns it and the size of the
/// next page, from the bytes of this one's rows.
async fn read_log(
    exec: Exec<'_>,
    query: Query,
    limit: u64,
    with_values: bool,
) -> Result<(LogPage, u64)> {
    let rows = exec
        .find_values(LOG_COLLECTION, query.limit(limit), &LOG_FIELDS)
        .await?;
    let mut full = rows.len() as u64 == limit;
    let mut bytes = 0u64;
    let mut page_rows = Vec::with_capacity(rows.len());
    let mut unplaced = Vec::new();
    let text = |row, field| log_value(row, field).and_then(Value::as_text);
    for (index, row) in rows.iter().enumerate() {
        let fields = text(row, "fields").map_or(0, str::len);
        bytes += LOG_ROW_BYTES + fields as u64;
        // Pages go on from the last row's key text and id: a row without them (its id is
        // its key, which reads if the row was found at all) has no place in that order.
        let (Some(pk), Some(id)) = (
            text(row, "pk").map(str::to_owned),
            log_value(row, "id").and_then(Value::as_uuid),
        ) else {
            let id = log_value(row, "id").and_then(Value::as_uuid);
            let mut problem = format!(
                "the log row {} has a key that does not read",
                id.map(|id| id.to_string()).unwrap_or_default()
            );
            if full && index + 1 == rows.len() {
                // The next page cannot start after it: the rest of the log of this
                // collection is not read.
                problem.push_str("; the log of its collection after it was not read");
                full = false;
            }
            unplaced.push(problem);
            continue;
        };
        // A create's values are kept only for a merging receiver: for any other, the
        // versions of an object that exists keep none, and one that does not exist was
        // deleted after all its creates.
        let entry = StoredEntry::read_values(row, with_values)
            .map(|stored| stored.entry)
            .map_err(|e| e.to_string());
        page_rows.push(LogPageRow { pk, id, entry });
    }
    let next_limit = bytes
        .checked_div(rows.len() as u64)
        .map_or(limit, |average| {
            page_limit(LOG_PAGE_BYTES, average, LOG_PAGE)
        });
    Ok((
        LogPage {
            rows: page_rows,
            unplaced,
            full,
        },
        next_limit,
    ))
}
