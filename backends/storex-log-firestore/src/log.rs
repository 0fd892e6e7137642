//! [`FirestoreSharedLog`]: the shared-log operations as Firestore reads, queries and
//! transactions, each retried with backoff while Firestore says a retry may succeed.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::future::Future;
use std::hash::BuildHasher;
use std::time::Duration;

use firestore::timestamp_utils::from_timestamp;
use firestore::{
    errors::FirestoreError, FirestoreConsistencySelector, FirestoreDb, FirestoreInstant,
    FirestoreTransaction, FirestoreWritePrecondition, ParentPathBuilder,
};
use futures::TryStreamExt;
use storex_core::uuid::Uuid;
use storex_core::BoxFuture;
use storex_sync::{
    device_of_another_user, DeviceId, DeviceInfo, Pull, PulledEntry, SharedEntry, SharedLogError,
    SharedResult, SharedSyncLog, UnreadableEntry,
};

use crate::documents::{
    check_prefix, field, user_key, CursorDoc, DeviceDoc, EntryDoc, Payload, RoutingDoc, UserDoc,
    MAX_PAYLOAD_BYTES, MAX_TOPIC_BYTES,
};

/// The subcollection of a user document holding its entries.
const ENTRIES: &str = "entries";
/// Firestore's limit on the writes of one commit.
const MAX_WRITES_PER_COMMIT: usize = 500;
/// Entries per push transaction: the counter update takes the last write.
const ENTRIES_PER_COMMIT: usize = MAX_WRITES_PER_COMMIT - 1;
/// Bytes of entries per push transaction: Firestore takes 10 MiB per request, but its
/// emulator (like any gRPC server left at the default) only 4 MiB.
const BYTES_PER_COMMIT: usize = 3 * 1024 * 1024 + 512 * 1024;
/// Bytes an entry costs in a commit besides its payload and topic (names, ids, cursor).
const ENTRY_COMMIT_OVERHEAD: usize = 4 * 1024;
/// Firestore's limit on the values of an `in` filter; more topics are filtered here instead.
const MAX_IN_VALUES: usize = 30;
/// Most entries one pull returns (Firestore takes a query's limit as a 32-bit number).
const MAX_PULL_ENTRIES: usize = 1_000;
/// Payload bytes after which a pull stops (one larger entry still comes alone), as the SQL log.
const MAX_PULL_BYTES: usize = 8 * 1024 * 1024;
/// Entries deleted per compaction commit.
const DELETES_PER_COMMIT: u32 = 500;
/// Attempts of one operation while Firestore answers "aborted" or "unavailable".
const MAX_ATTEMPTS: u32 = 12;
/// Attempts of one conditional commit that keeps losing races to other writers.
const MAX_CONFLICT_ATTEMPTS: u32 = 60;
/// How long one call keeps retrying on a client whose request timeout storex did not set
/// ([`FirestoreSharedLog::new`]); otherwise twice that timeout. No new attempt starts after
/// it, so a log that answers nothing fails a call within about this plus one attempt.
const RETRY_WINDOW: Duration = Duration::from_secs(60);

/// How long one request to Firestore may take (a streamed read: between two of its
/// documents) on a client [`FirestoreSharedLog::connect`] makes: a connection that stays open
/// but answers nothing (a stuck proxy) fails the request then, instead of holding the sync
/// for ever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why one attempt of an operation failed.
#[derive(Debug)]
enum Failure {
    /// A definite answer: return it as it is.
    Log(SharedLogError),
    /// Firestore failed; retried when it says a retry may succeed.
    Store(FirestoreError),
    /// A conditional commit lost a race (another writer got there first): read again, retry.
    Conflict(FirestoreError),
}

impl From<FirestoreError> for Failure {
    fn from(e: FirestoreError) -> Self {
        Failure::Store(e)
    }
}

impl From<SharedLogError> for Failure {
    fn from(e: SharedLogError) -> Self {
        Failure::Log(e)
    }
}

fn retryable(e: &FirestoreError) -> bool {
    matches!(e, FirestoreError::DatabaseError(db) if db.retry_possible || transaction_expired(db))
}

/// Firestore dropped the transaction a commit names (it was idle too long, about 60 s, or
/// the server let it go): `INVALID_ARGUMENT`, though nothing was written and a new
/// transaction goes through, as Google's own clients retry it.
fn transaction_expired(db: &firestore::errors::FirestoreDatabaseError) -> bool {
    db.public.code == "InvalidArgument" && db.details.contains("transaction has expired")
}

/// A failure that retrying cannot fix (bad credentials, a missing index, a request Firestore
/// refuses); `None` for one that may pass, among them every failure [`retryable`] says is
/// worth retrying (an expired transaction is `INVALID_ARGUMENT` too: retried until the window
/// closed, it is still not the request's fault).
fn refusal_of(e: &FirestoreError) -> Option<SharedLogError> {
    if retryable(e) {
        return None;
    }
    let code = match e {
        FirestoreError::DatabaseError(db) => db.public.code.as_str(),
        FirestoreError::InvalidParametersError(_) | FirestoreError::SerializeError(_) => {
            "InvalidArgument"
        }
        _ => "",
    };
    match code {
        "Unauthenticated" | "PermissionDenied" => Some(SharedLogError::Unauthorized {
            problem: format!("Firestore refused the credentials: {e}"),
        }),
        // An index deployed and still being built: it will serve the query in a while.
        "FailedPrecondition" if index_building(e) => None,
        // FailedPrecondition outside a commit: typically a composite index that the
        // project lacks (see docs/firestore.md).
        "InvalidArgument" | "FailedPrecondition" | "OutOfRange" | "Unimplemented" => {
            Some(SharedLogError::Invalid {
                problem: format!("Firestore refused the request: {e}"),
            })
        }
        _ => None,
    }
}

/// Whether Firestore refused a query because the index it needs is still being built (as it
/// is for minutes or hours after being deployed).
fn index_building(e: &FirestoreError) -> bool {
    matches!(e, FirestoreError::DatabaseError(db) if db.details.contains("index is currently building"))
}

/// A precondition failed: the document changed, or an entry exists already.
fn is_conflict(e: &FirestoreError) -> bool {
    match e {
        FirestoreError::DatabaseError(db) => db.public.code == "FailedPrecondition",
        FirestoreError::DataConflictError(_) => true,
        _ => false,
    }
}

/// Exponential backoff with full jitter, so contending pushers spread out.
fn backoff(attempt: u32) -> Duration {
    let ceiling_ms = (10u64 << attempt.min(7)).min(1_500);
    let jitter = RandomState::new().hash_one(attempt) % ceiling_ms;
    Duration::from_millis(ceiling_ms / 2 + jitter / 2)
}

fn as_cursor(value: i64) -> Result<u64, Failure> {
    u64::try_from(value).map_err(|_| Failure::Log(corrupt(format!("negative cursor {value}"))))
}

fn as_stored(cursor: u64) -> i64 {
    i64::try_from(cursor).unwrap_or(i64::MAX)
}

fn corrupt(what: String) -> SharedLogError {
    SharedLogError::Unavailable {
        log: "firestore",
        source: format!("the shared log's documents are damaged: {what}").into(),
    }
}

/// Commits `tx` when `outcome` is a success, rolls it back otherwise (releasing the locks
/// its reads took at once rather than when the transaction expires).
async fn finish<T>(
    tx: FirestoreTransaction<'_>,
    outcome: Result<T, Failure>,
) -> Result<T, Failure> {
    match outcome {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(e) => {
            // A failed rollback changes nothing: the transaction expires on its own.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// A [`SharedSyncLog`] in Google Cloud Firestore (or its emulator); see the crate docs for
/// the layout and why a reader never skips an entry.
#[derive(Clone, Debug)]
pub struct FirestoreSharedLog {
    db: FirestoreDb,
    /// How long one call keeps retrying.
    retry_window: Duration,
    prefix: String,
    users: String,
    devices: String,
}

impl FirestoreSharedLog {
    /// Largest payload of one entry, in bytes: Firestore's 1 MiB per document less 8 KiB kept
    /// for the routing fields and the document's name. A larger entry is refused with
    /// [`SharedLogError::Invalid`]. The sync engine learns this limit from
    /// [`SharedSyncLog::max_entry_bytes`]: it reports such an entry and pushes the others.
    pub const MAX_PAYLOAD_BYTES: usize = MAX_PAYLOAD_BYTES;

    /// Longest topic, in bytes (Firestore indexes at most 1,500 bytes of a string).
    pub const MAX_TOPIC_BYTES: usize = MAX_TOPIC_BYTES;

    /// Connects to the Firestore database of `project_id` and keeps the log in collections
    /// whose names start with `collection_prefix` (letters, digits, `_`, `-`; not empty, so
    /// that the log's `users` and `devices` collections never mix with the app's own).
    ///
    /// Talks to the emulator at `FIRESTORE_EMULATOR_HOST` when that variable is set, and to
    /// Google with the Application Default Credentials otherwise.
    pub async fn connect(project_id: &str, collection_prefix: &str) -> SharedResult<Self> {
        check_prefix(collection_prefix)?;
        if project_id.is_empty() {
            return Err(SharedLogError::Invalid {
                problem: "a Firestore project id cannot be empty".into(),
            });
        }
        let db = FirestoreDb::new(project_id)
            .await
            .map_err(|e| SharedLogError::Unavailable {
                log: "firestore",
                source: Box::new(e),
            })?;
        Ok(Self::new(db, collection_prefix)?.with_request_timeout(REQUEST_TIMEOUT))
    }

    /// This log with requests limited to `timeout` each (a streamed read: between two of its
    /// documents) instead of [`REQUEST_TIMEOUT`] (or, for a client given to
    /// [`FirestoreSharedLog::new`], instead of its own limit).
    /// A call then keeps retrying for twice `timeout`.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.db = self.db.clone_with_request_timeout(Some(timeout));
        self.retry_window = timeout.saturating_mul(2);
        self
    }

    /// Uses an open client, keeping the log in collections whose names start with
    /// `collection_prefix`. Its requests keep the client's own timeout
    /// (`FirestoreDbOptions::request_timeout`, none by default): see
    /// [`FirestoreSharedLog::with_request_timeout`].
    pub fn new(db: FirestoreDb, collection_prefix: &str) -> SharedResult<Self> {
        check_prefix(collection_prefix)?;
        Ok(FirestoreSharedLog {
            db,
            retry_window: RETRY_WINDOW,
            prefix: collection_prefix.to_owned(),
            users: format!("{collection_prefix}users"),
            devices: format!("{collection_prefix}devices"),
        })
    }

    /// The client.
    pub fn db(&self) -> &FirestoreDb {
        &self.db
    }

    /// The prefix of the log's collection names.
    pub fn collection_prefix(&self) -> &str {
        &self.prefix
    }

    /// Removes a device (a revoked or lost one): its later calls get
    /// [`SharedLogError::UnknownDevice`] and its position no longer holds back compaction.
    /// Its entries stay. Returns false when the device was not registered.
    pub async fn remove_device(&self, device: DeviceId) -> SharedResult<bool> {
        self.retrying(|| self.remove_device_once(device)).await
    }

    async fn remove_device_once(&self, device: DeviceId) -> Result<bool, Failure> {
        let mut tx = self.db.begin_transaction().await?;
        let outcome = async {
            match self.device_doc(&self.reading_in(&tx), device).await {
                Ok(_) => {}
                Err(Failure::Log(SharedLogError::UnknownDevice { .. })) => return Ok(false),
                Err(e) => return Err(e),
            }
            self.db
                .fluent()
                .delete()
                .from(self.devices.as_str())
                .document_id(device.0.to_string())
                .add_to_transaction(&mut tx)?;
            Ok(true)
        }
        .await;
        finish(tx, outcome).await
    }

    fn unavailable(&self, e: FirestoreError) -> SharedLogError {
        SharedLogError::Unavailable {
            log: self.name(),
            source: Box::new(e),
        }
    }

    /// A failure that retrying cannot fix ([`refusal_of`]) as such, so it is reported instead
    /// of retried forever; anything else as unavailable.
    fn refusal_or_unavailable(&self, e: FirestoreError) -> SharedLogError {
        match refusal_of(&e) {
            Some(refused) => refused,
            None => self.unavailable(e),
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or Firestore stays busy (for
    /// [`MAX_ATTEMPTS`] attempts, or the retry window).
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> SharedResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut attempts = 0;
        let started = tokio::time::Instant::now();
        loop {
            attempts += 1;
            let result = attempt().await;
            let in_window = started.elapsed() < self.retry_window;
            match result {
                Ok(value) => return Ok(value),
                Err(Failure::Log(e)) => return Err(e),
                Err(Failure::Store(e)) if retryable(&e) && attempts < MAX_ATTEMPTS && in_window => {
                    tokio::time::sleep(backoff(attempts)).await;
                }
                Err(Failure::Conflict(_)) if attempts < MAX_CONFLICT_ATTEMPTS && in_window => {
                    tokio::time::sleep(backoff(attempts.min(5))).await;
                }
                Err(Failure::Store(e)) => return Err(self.refusal_or_unavailable(e)),
                Err(Failure::Conflict(e)) => return Err(self.unavailable(e)),
            }
        }
    }

    /// A client whose reads belong to `tx`.
    fn reading_in(&self, tx: &FirestoreTransaction<'_>) -> FirestoreDb {
        self.db
            .clone_with_consistency_selector(FirestoreConsistencySelector::Transaction(
                tx.transaction_id().clone(),
            ))
    }

    fn entries_parent(&self, key: &str) -> Result<ParentPathBuilder, Failure> {
        Ok(self.db.parent_path(&self.users, key)?)
    }

    async fn device_doc(&self, db: &FirestoreDb, device: DeviceId) -> Result<DeviceDoc, Failure> {
        db.fluent()
            .select()
            .by_id_in(&self.devices)
            .obj::<DeviceDoc>()
            .one(device.0.to_string())
            .await?
            .ok_or(Failure::Log(SharedLogError::UnknownDevice { device }))
    }

    async fn user_doc(&self, db: &FirestoreDb, key: &str) -> Result<Option<UserDoc>, Failure> {
        Ok(db
            .fluent()
            .select()
            .by_id_in(&self.users)
            .obj::<UserDoc>()
            .one(key)
            .await?)
    }

    /// A user document and the time of its last write, for a conditional update.
    async fn user_doc_versioned(
        &self,
        key: &str,
    ) -> Result<Option<(UserDoc, FirestoreInstant)>, Failure> {
        let Some(doc) = self
            .db
            .fluent()
            .select()
            .by_id_in(&self.users)
            .one(key)
            .await?
        else {
            return Ok(None);
        };
        let version = doc
            .update_time
            .ok_or_else(|| Failure::Log(corrupt(format!("user document {key} has no version"))))?;
        let user = FirestoreDb::deserialize_doc_to::<UserDoc>(&doc)?;
        Ok(Some((user, from_timestamp(version)?)))
    }

    /// Commits the writes `add` queues as one atomic commit that reads nothing (so it holds
    /// no lock before it commits). A failed precondition comes back as [`Failure::Conflict`].
    async fn commit_writes<F>(&self, add: F) -> Result<(), Failure>
    where
        F: FnOnce(&mut FirestoreTransaction<'_>) -> Result<(), Failure>,
    {
        let mut tx = self.db.begin_transaction().await?;
        let outcome = add(&mut tx);
        finish(tx, outcome).await.map_err(|failure| match failure {
            Failure::Store(e) if is_conflict(&e) => Failure::Conflict(e),
            other => other,
        })
    }

    /// Adds to `tx` the update of `field` of the user document `key`, on condition that the
    /// document is still at `version` (the optimistic check the cursor counter relies on).
    fn update_user_unchanged_since(
        &self,
        tx: &mut FirestoreTransaction<'_>,
        key: &str,
        user: &UserDoc,
        version: FirestoreInstant,
        field: &str,
    ) -> Result<(), Failure> {
        self.db
            .fluent()
            .update()
            .fields([field])
            .in_col(&self.users)
            .precondition(FirestoreWritePrecondition::UpdateTime(version))
            .document_id(key)
            .object(user)
            .add_to_transaction(tx)?;
        Ok(())
    }

    /// `(greatest cursor handed out, compacted through)` of a user.
    async fn counters(&self, key: &str) -> Result<(u64, u64), Failure> {
        let user = self
            .user_doc(&self.db, key)
            .await?
            .ok_or_else(|| Failure::Log(corrupt(format!("user document {key} is missing"))))?;
        Ok((
            as_cursor(user.next_cursor)?,
            as_cursor(user.compacted_through)?,
        ))
    }

    async fn register_device_once(
        &self,
        user: &str,
        key: &str,
        device: DeviceId,
    ) -> Result<(), Failure> {
        let registered = match self.device_doc(&self.db, device).await {
            Ok(doc) if doc.user == user => true,
            Ok(_) => return Err(Failure::Log(device_of_another_user(device))),
            Err(Failure::Log(SharedLogError::UnknownDevice { .. })) => false,
            Err(e) => return Err(e),
        };
        let mut known = self.user_doc(&self.db, key).await?.is_some();
        if !known && (registered || self.user_has_data(user, key).await?) {
            // The first registration of the user, committed since the read above, or a user
            // document lost (deleted by hand, a partial restore) while its devices or entries
            // remain: made again at cursor 0, it would hand out the cursors those entries hold.
            known = self.user_doc(&self.db, key).await?.is_some();
            if !known {
                return Err(Failure::Log(corrupt(format!(
                    "user document {key} is missing while the user has devices or entries \
                     (restore it from a backup)"
                ))));
            }
        }
        if known && registered {
            return Ok(()); // registered before: it keeps its position
        }
        self.commit_writes(|tx| {
            if !known {
                let doc = UserDoc {
                    user: user.to_owned(),
                    next_cursor: 0,
                    compacted_through: 0,
                };
                // A concurrent first device of the same user makes this fail; the retry
                // then finds the user.
                self.db
                    .fluent()
                    .update()
                    .in_col(&self.users)
                    .precondition(FirestoreWritePrecondition::Exists(false))
                    .document_id(key)
                    .object(&doc)
                    .add_to_transaction(tx)?;
            }
            if !registered {
                let doc = DeviceDoc {
                    user: user.to_owned(),
                    acked: 0,
                };
                // A concurrent registration of the same id makes this fail; the retry then
                // finds the device.
                self.db
                    .fluent()
                    .update()
                    .in_col(&self.devices)
                    .precondition(FirestoreWritePrecondition::Exists(false))
                    .document_id(device.0.to_string())
                    .object(&doc)
                    .add_to_transaction(tx)?;
            }
            Ok(())
        })
        .await
    }

    /// Whether `user` has a device or an entry stored.
    async fn user_has_data(&self, user: &str, key: &str) -> Result<bool, Failure> {
        let devices: Vec<DeviceDoc> = self
            .db
            .fluent()
            .select()
            .from(self.devices.as_str())
            .filter(|q| q.field(field::USER).eq(user))
            .limit(1)
            .obj::<DeviceDoc>()
            .query()
            .await?;
        if !devices.is_empty() {
            return Ok(true);
        }
        let parent = self.entries_parent(key)?;
        let entries: Vec<ProjectedEntry> = self
            .db
            .fluent()
            .select()
            .fields([field::CURSOR])
            .from(ENTRIES)
            .parent(&parent)
            .limit(1)
            .obj::<ProjectedEntry>()
            .query()
            .await?;
        Ok(!entries.is_empty())
    }

    /// Stores the entries of `chunk` not stored yet in one commit with the counter update;
    /// returns the greatest cursor assigned (0 when all were stored already).
    ///
    /// Optimistic: the counter is read without a lock and written back only if its document
    /// is still the version read (an `update_time` precondition), so two pushes can never
    /// take the same cursors; the loser's commit fails whole and is retried.
    async fn push_chunk_once(&self, key: &str, chunk: &[SharedEntry]) -> Result<u64, Failure> {
        let parent = self.entries_parent(key)?;
        let (mut user, version) = self
            .user_doc_versioned(key)
            .await?
            .ok_or_else(|| Failure::Log(corrupt(format!("user document {key} is missing"))))?;
        let ids: Vec<String> = chunk.iter().map(|e| e.id.to_string()).collect();
        let stored: HashSet<String> = self
            .db
            .fluent()
            .select()
            .fields([field::CURSOR])
            .by_id_in(ENTRIES)
            .parent(&parent)
            .batch_with_errors(ids.iter())
            .await?
            .try_filter_map(|(id, doc)| async move { Ok(doc.map(|_| id)) })
            .try_collect()
            .await?;
        let fresh: Vec<(&SharedEntry, &String)> = chunk
            .iter()
            .zip(&ids)
            .filter(|(_, id)| !stored.contains(*id))
            .collect();
        if fresh.is_empty() {
            return Ok(0);
        }
        let first = as_cursor(user.next_cursor)? + 1;
        let last = first + (fresh.len() as u64 - 1);
        user.next_cursor = as_stored(last);
        self.commit_writes(|tx| {
            for ((entry, id), cursor) in fresh.iter().zip(first..) {
                let doc = EntryDoc {
                    id: None,
                    cursor: as_stored(cursor),
                    device: entry.device.0.to_string(),
                    topic: entry.topic.clone(),
                    payload: Payload(entry.payload.clone()),
                };
                self.db
                    .fluent()
                    .update()
                    .in_col(ENTRIES)
                    .precondition(FirestoreWritePrecondition::Exists(false))
                    .document_id(id.as_str())
                    .parent(&parent)
                    .object(&doc)
                    .add_to_transaction(tx)?;
            }
            self.update_user_unchanged_since(tx, key, &user, version, field::NEXT_CURSOR)
        })
        .await?;
        Ok(last)
    }

    async fn pull_once(
        &self,
        device: DeviceId,
        after: u64,
        limit: usize,
        topics: Option<&[String]>,
    ) -> Result<Pull, Failure> {
        let key = user_key(&self.device_doc(&self.db, device).await?.user)?;
        // Read the counter first: every entry up to it committed with it, and an entry
        // committing later gets a greater cursor, found by the next pull.
        let (high, compacted) = self.counters(&key).await?;
        if after < compacted {
            return Err(SharedLogError::CursorCompacted {
                cursor: after,
                compacted_through: compacted,
            }
            .into());
        }
        if after > high {
            return Err(SharedLogError::CursorAhead {
                cursor: after,
                log_end: high,
                compacted_through: compacted,
            }
            .into());
        }
        let nothing = Pull {
            next_cursor: Ord::max(high, after),
            ..Pull::default()
        };
        if after >= high {
            return Ok(nothing);
        }
        if limit == 0 {
            // Nothing taken: the cursor stays, and entries remain above it.
            return Ok(Pull {
                next_cursor: after,
                more: true,
                ..Pull::default()
            });
        }
        if topics.is_some_and(<[String]>::is_empty) {
            return Ok(nothing);
        }
        let server_topics = topics.filter(|t| t.len() <= MAX_IN_VALUES);
        let page = limit.min(MAX_PULL_ENTRIES);
        let parent = self.entries_parent(&key)?;
        let me = device.0.to_string();
        let mut pull = Pull {
            next_cursor: nothing.next_cursor,
            ..Pull::default()
        };
        // Read as a stream and left once the page is full by count or by bytes: a page of
        // big entries stays bounded in memory (at least one entry always comes). One entry
        // past the page tells that more follow. Documents are read one by one: one that does
        // not read is passed over and named, so that it does not stop every later pull.
        let mut docs = self
            .db
            .fluent()
            .select()
            .from(ENTRIES)
            .parent(&parent)
            .filter(|q| {
                q.for_all([
                    q.field(field::CURSOR).greater_than(as_stored(after)),
                    q.field(field::CURSOR).less_than_or_equal(as_stored(high)),
                    server_topics.and_then(|t| q.field(field::TOPIC).is_in(t)),
                ])
            })
            .order(|o| o.fields([o.field(field::CURSOR).asc()]))
            .limit(u32::try_from(page + 1).unwrap_or(u32::MAX))
            .stream_query_with_errors()
            .await?;
        let (mut scanned, mut bytes, mut last) = (0usize, 0usize, after);
        while let Some(doc) = docs.try_next().await? {
            if scanned == page || bytes >= MAX_PULL_BYTES {
                pull.more = true;
                pull.next_cursor = last;
                break;
            }
            let (cursor, read) = read_entry_doc(&doc)?;
            scanned += 1;
            last = cursor;
            let doc = match read {
                Ok(doc) => doc,
                Err(unread) => {
                    // Left out like a readable one when it is this device's own, or of a
                    // topic not asked for; named when that cannot be told.
                    let theirs = unread.routing.as_ref().is_none_or(|routing| {
                        routing.device != me && topics.is_none_or(|t| t.contains(&routing.topic))
                    });
                    if theirs {
                        pull.unreadable
                            .push(UnreadableEntry::new(cursor, unread.problem));
                    }
                    continue;
                }
            };
            bytes += doc.payload.0.len();
            let wanted = topics.is_none_or(|t| t.contains(&doc.topic));
            if doc.device != me && wanted {
                match read_entry(doc) {
                    Ok(entry) => pull.entries.push(PulledEntry { cursor, entry }),
                    Err(problem) => pull.unreadable.push(UnreadableEntry::new(cursor, problem)),
                }
            }
        }
        drop(docs);
        // A compaction that raised its mark meanwhile may have deleted part of this page.
        let (_, compacted) = self.counters(&key).await?;
        if after < compacted {
            return Err(SharedLogError::CursorCompacted {
                cursor: after,
                compacted_through: compacted,
            }
            .into());
        }
        Ok(pull)
    }

    async fn ack_once(&self, device: DeviceId, cursor: u64) -> Result<(), Failure> {
        let mut tx = self.db.begin_transaction().await?;
        let outcome = async {
            let mut doc = self.device_doc(&self.reading_in(&tx), device).await?;
            // An ack beyond the log's end is kept at the end, so it cannot let a compaction
            // drop entries pushed later. (The counter only grows: a stale read is safe.)
            let key = user_key(&doc.user).map_err(Failure::Log)?;
            let end = match self.user_doc_versioned(&key).await? {
                Some((user, _)) => as_cursor(user.next_cursor)?,
                None => 0,
            };
            let cursor = cursor.min(end);
            if as_cursor(doc.acked)? < cursor {
                doc.acked = as_stored(cursor);
                self.db
                    .fluent()
                    .update()
                    .fields([field::ACKED])
                    .in_col(&self.devices)
                    .document_id(device.0.to_string())
                    .object(&doc)
                    .add_to_transaction(&mut tx)?;
            }
            Ok(())
        }
        .await;
        finish(tx, outcome).await
    }

    /// Raises the user's compaction mark to the smallest acknowledged cursor (never past the
    /// counter) and returns the mark, or `None` when the user has no log. Acknowledgements and
    /// the counter only grow, so one landing meanwhile cannot make the mark too high.
    async fn mark_compaction_once(&self, key: &str) -> Result<Option<u64>, Failure> {
        let Some(user) = self.user_doc(&self.db, key).await? else {
            return Ok(None);
        };
        let devices: Vec<DeviceDoc> = self
            .db
            .fluent()
            .select()
            .from(self.devices.as_str())
            .filter(|q| q.field(field::USER).eq(user.user.as_str()))
            .obj::<DeviceDoc>()
            .query()
            .await?;
        if devices.is_empty() {
            // No device left to hold compaction back (their documents were deleted by hand,
            // say): nothing new was acknowledged, so the mark stays where it is.
            return Ok(Some(as_cursor(user.compacted_through)?));
        }
        let mut through = as_cursor(user.next_cursor)?;
        for device in &devices {
            through = through.min(as_cursor(device.acked)?);
        }
        let compacted = as_cursor(user.compacted_through)?;
        if through > compacted {
            // Raised with `maximum`, not on condition that the document is unchanged: every
            // push moves its counter, and a user pushing steadily kept such a mark failing
            // until its retries ran out. `maximum` keeps a higher mark another compaction set
            // meanwhile; the document must still exist (a transform would make it again).
            self.commit_writes(|tx| {
                self.db
                    .fluent()
                    .update()
                    .in_col(&self.users)
                    .precondition(FirestoreWritePrecondition::Exists(true))
                    .document_id(key)
                    .transforms(|t| {
                        t.fields([t
                            .field(field::COMPACTED_THROUGH)
                            .maximum(as_stored(through))])
                    })
                    .only_transform()
                    .add_to_transaction(tx)?;
                Ok(())
            })
            .await?;
        }
        Ok(Some(through.max(compacted)))
    }

    /// Deletes one page of the entries up to `through`; returns how many.
    async fn delete_page_once(&self, key: &str, through: u64) -> Result<u64, Failure> {
        let parent = self.entries_parent(key)?;
        let docs: Vec<ProjectedEntry> = self
            .db
            .fluent()
            .select()
            .fields([field::CURSOR])
            .from(ENTRIES)
            .parent(&parent)
            .filter(|q| {
                q.field(field::CURSOR)
                    .less_than_or_equal(as_stored(through))
            })
            .order(|o| o.fields([o.field(field::CURSOR).asc()]))
            .limit(DELETES_PER_COMMIT)
            .obj::<ProjectedEntry>()
            .query()
            .await?;
        if docs.is_empty() {
            return Ok(0);
        }
        self.commit_writes(|tx| {
            for doc in &docs {
                let id = doc
                    .id
                    .as_deref()
                    .ok_or_else(|| Failure::Log(corrupt("an entry without an id".into())))?;
                self.db
                    .fluent()
                    .delete()
                    .from(ENTRIES)
                    .parent(&parent)
                    .document_id(id)
                    .add_to_transaction(tx)?;
            }
            Ok(())
        })
        .await?;
        Ok(docs.len() as u64)
    }
}

/// An entry read for compaction: its id only (the query projects the cursor alone).
#[derive(Debug, serde::Deserialize)]
struct ProjectedEntry {
    #[serde(alias = "_firestore_id", default)]
    id: Option<String>,
}

/// A pulled document whose fields do not read.
struct Unread {
    /// Its device and topic, when those read.
    routing: Option<RoutingDoc>,
    /// What does not read.
    problem: String,
}

/// A pulled document's cursor, and its fields or what of them does not read. A document
/// whose cursor does not read cannot be passed over: the pull fails.
fn read_entry_doc(
    doc: &firestore::FirestoreDocument,
) -> Result<(u64, Result<EntryDoc, Unread>), Failure> {
    match FirestoreDb::deserialize_doc_to::<EntryDoc>(doc) {
        Ok(entry) => Ok((as_cursor(entry.cursor)?, Ok(entry))),
        Err(e) => {
            let position = FirestoreDb::deserialize_doc_to::<CursorDoc>(doc).map_err(|_| {
                Failure::Log(corrupt(format!("entry {:?} has no cursor", doc.name)))
            })?;
            let unread = Unread {
                routing: FirestoreDb::deserialize_doc_to::<RoutingDoc>(doc).ok(),
                problem: format!("its fields do not read: {e}"),
            };
            Ok((as_cursor(position.cursor)?, Err(unread)))
        }
    }
}

/// A pulled document's entry, or which of its ids does not read.
fn read_entry(doc: EntryDoc) -> Result<SharedEntry, String> {
    let id = doc
        .id
        .as_deref()
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| format!("its id {:?} is not a UUID", doc.id))?;
    let device = Uuid::parse_str(&doc.device)
        .map_err(|_| format!("its device {:?} is not a UUID", doc.device))?;
    Ok(SharedEntry {
        id,
        device: DeviceId(device),
        topic: doc.topic,
        payload: doc.payload.0,
    })
}

/// Splits `entries` into the chunks one push transaction stores: at most
/// [`ENTRIES_PER_COMMIT`] entries and [`BYTES_PER_COMMIT`] bytes each.
fn commit_chunks(entries: &[SharedEntry]) -> Vec<&[SharedEntry]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, entry) in entries.iter().enumerate() {
        let size = entry.payload.len() + entry.topic.len() + ENTRY_COMMIT_OVERHEAD;
        if i > start && (i - start == ENTRIES_PER_COMMIT || bytes + size > BYTES_PER_COMMIT) {
            chunks.push(&entries[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < entries.len() {
        chunks.push(&entries[start..]);
    }
    chunks
}

/// Refuses an entry Firestore could not store, naming it.
fn check_entry(entry: &SharedEntry) -> SharedResult<()> {
    if entry.payload.len() > MAX_PAYLOAD_BYTES {
        return Err(SharedLogError::Invalid {
            problem: format!(
                "entry {} has a payload of {} bytes, more than the {MAX_PAYLOAD_BYTES} bytes a \
                 Firestore document can hold; nothing of this push was stored",
                entry.id,
                entry.payload.len()
            ),
        });
    }
    if entry.topic.len() > MAX_TOPIC_BYTES {
        return Err(SharedLogError::Invalid {
            problem: format!(
                "entry {} has a topic of {} bytes, more than {MAX_TOPIC_BYTES}; nothing of this \
                 push was stored",
                entry.id,
                entry.topic.len()
            ),
        });
    }
    Ok(())
}

impl SharedSyncLog for FirestoreSharedLog {
    fn name(&self) -> &'static str {
        "firestore"
    }

    fn max_entry_bytes(&self) -> Option<usize> {
        Some(MAX_PAYLOAD_BYTES)
    }

    fn register_device<'a>(
        &'a self,
        user: &'a str,
        device: DeviceId,
    ) -> BoxFuture<'a, SharedResult<()>> {
        Box::pin(async move {
            let key = user_key(user)?;
            self.retrying(|| self.register_device_once(user, &key, device))
                .await
        })
    }

    fn devices(&self, device: DeviceId) -> BoxFuture<'_, SharedResult<Vec<DeviceInfo>>> {
        Box::pin(async move {
            self.retrying(|| async {
                let user = self.device_doc(&self.db, device).await?.user;
                let docs: Vec<DeviceListed> = self
                    .db
                    .fluent()
                    .select()
                    .from(self.devices.as_str())
                    .filter(|q| q.field(field::USER).eq(user.as_str()))
                    .obj::<DeviceListed>()
                    .query()
                    .await?;
                let mut devices = docs
                    .into_iter()
                    .map(|doc| {
                        let id = doc
                            .id
                            .as_deref()
                            .and_then(|id| Uuid::parse_str(id).ok())
                            .ok_or_else(|| {
                                Failure::Log(corrupt(format!("device id {:?}", doc.id)))
                            })?;
                        Ok(DeviceInfo {
                            device: DeviceId(id),
                            acked: as_cursor(doc.acked)?,
                        })
                    })
                    .collect::<Result<Vec<_>, Failure>>()?;
                devices.sort_by_key(|d| d.device);
                Ok(devices)
            })
            .await
        })
    }

    fn push(
        &self,
        device: DeviceId,
        entries: Vec<SharedEntry>,
    ) -> BoxFuture<'_, SharedResult<u64>> {
        Box::pin(async move {
            let user = self
                .retrying(|| async { Ok(self.device_doc(&self.db, device).await?.user) })
                .await?;
            if let Some(other) = entries.iter().find(|e| e.device != device) {
                return Err(SharedLogError::WrongDevice {
                    device,
                    other: other.device,
                });
            }
            entries.iter().try_for_each(check_entry)?;
            storex_sync::check_topics(entries.iter().map(|e| e.topic.as_str()))?;
            let key = user_key(&user)?;
            let mut seen = HashSet::with_capacity(entries.len());
            let entries: Vec<SharedEntry> =
                entries.into_iter().filter(|e| seen.insert(e.id)).collect();
            let mut last = 0;
            for chunk in commit_chunks(&entries) {
                let cursor = self.retrying(|| self.push_chunk_once(&key, chunk)).await?;
                last = last.max(cursor);
            }
            Ok(last)
        })
    }

    fn pull<'a>(
        &'a self,
        device: DeviceId,
        after: u64,
        limit: usize,
        topics: Option<&'a [String]>,
    ) -> BoxFuture<'a, SharedResult<Pull>> {
        Box::pin(async move {
            storex_sync::check_topics(topics.into_iter().flatten().map(String::as_str))?;
            self.retrying(|| self.pull_once(device, after, limit, topics))
                .await
        })
    }

    fn ack(&self, device: DeviceId, cursor: u64) -> BoxFuture<'_, SharedResult<()>> {
        Box::pin(async move { self.retrying(|| self.ack_once(device, cursor)).await })
    }

    fn compact<'a>(&'a self, user: &'a str) -> BoxFuture<'a, SharedResult<u64>> {
        Box::pin(async move {
            let key = user_key(user)?;
            // The mark goes first: a pull that could miss a deleted entry sees it and answers
            // CursorCompacted instead.
            let Some(through) = self.retrying(|| self.mark_compaction_once(&key)).await? else {
                return Ok(0);
            };
            let mut dropped = 0;
            loop {
                let deleted = self
                    .retrying(|| self.delete_page_once(&key, through))
                    .await?;
                dropped += deleted;
                if deleted < u64::from(DELETES_PER_COMMIT) {
                    return Ok(dropped);
                }
            }
        })
    }
}

/// A device document with its id, as `devices` lists it.
#[derive(Debug, serde::Deserialize)]
struct DeviceListed {
    #[serde(alias = "_firestore_id", default)]
    id: Option<String>,
    acked: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database_error(code: &str, details: &str) -> FirestoreError {
        FirestoreError::DatabaseError(firestore::errors::FirestoreDatabaseError::new(
            firestore::errors::FirestoreErrorPublicGenericDetails::new(code.into()),
            details.into(),
            false,
        ))
    }

    #[test]
    fn an_expired_transaction_is_retried_and_other_invalid_arguments_are_not() {
        let expired = database_error(
            "InvalidArgument",
            "status: InvalidArgument, message: \"The referenced transaction has expired or is \
             no longer valid.\"",
        );
        assert!(retryable(&expired));
        let invalid = database_error("InvalidArgument", "status: InvalidArgument, message: \"x\"");
        assert!(!retryable(&invalid));
        let other = database_error("FailedPrecondition", "transaction has expired");
        assert!(!retryable(&other));
        // Still expired when the retries ran out: unavailable, not the request's fault.
        assert!(refusal_of(&expired).is_none());
        assert!(matches!(
            refusal_of(&invalid),
            Some(SharedLogError::Invalid { .. })
        ));
        let denied = database_error("PermissionDenied", "status: PermissionDenied");
        assert!(matches!(
            refusal_of(&denied),
            Some(SharedLogError::Unauthorized { .. })
        ));
        assert!(refusal_of(&database_error("Unavailable", "status: Unavailable")).is_none());
    }

    #[test]
    fn an_index_still_building_may_pass_and_a_missing_one_is_refused() {
        let building = database_error(
            "FailedPrecondition",
            "status: FailedPrecondition, message: \"The query requires an index. That index is \
             currently building and cannot be used yet. See its status here: …\"",
        );
        assert!(refusal_of(&building).is_none());
        let missing = database_error(
            "FailedPrecondition",
            "status: FailedPrecondition, message: \"The query requires an index. You can create \
             it here: …\"",
        );
        assert!(matches!(
            refusal_of(&missing),
            Some(SharedLogError::Invalid { .. })
        ));
    }

    fn entry(payload: usize) -> SharedEntry {
        SharedEntry {
            id: Uuid::now_v7(),
            device: DeviceId::random(),
            topic: "t".into(),
            payload: vec![0; payload],
        }
    }

    #[test]
    fn chunks_respect_the_write_and_byte_limits() {
        let many: Vec<SharedEntry> = (0..1_200).map(|_| entry(10)).collect();
        let sizes: Vec<usize> = commit_chunks(&many).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![499, 499, 202]);

        let big: Vec<SharedEntry> = (0..20).map(|_| entry(MAX_PAYLOAD_BYTES)).collect();
        let chunks = commit_chunks(&big);
        assert!(chunks.len() > 2);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 20);
        for chunk in chunks {
            let bytes: usize = chunk.iter().map(|e| e.payload.len()).sum();
            assert!(bytes <= BYTES_PER_COMMIT, "{bytes}");
        }
        assert!(commit_chunks(&[]).is_empty());
    }

    #[test]
    fn oversized_entries_and_topics_are_refused_by_name() {
        let fine = entry(MAX_PAYLOAD_BYTES);
        assert!(check_entry(&fine).is_ok());
        let big = entry(MAX_PAYLOAD_BYTES + 1);
        match check_entry(&big) {
            Err(SharedLogError::Invalid { problem }) => {
                assert!(problem.contains(&big.id.to_string()), "{problem}")
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        let mut long_topic = entry(1);
        long_topic.topic = "t".repeat(MAX_TOPIC_BYTES + 1);
        assert!(matches!(
            check_entry(&long_topic),
            Err(SharedLogError::Invalid { .. })
        ));
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        assert!(backoff(1) <= Duration::from_millis(20));
        for attempt in 1..MAX_ATTEMPTS {
            assert!(backoff(attempt) <= Duration::from_millis(1_500));
        }
    }
}
