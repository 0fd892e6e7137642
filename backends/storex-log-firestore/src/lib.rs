//! storex-log-firestore: [`FirestoreSharedLog`], the storex shared sync log in Google Cloud
//! Firestore, for apps that already live on Firebase.
//!
//! ## Layout
//! Every collection name starts with a prefix chosen at [`FirestoreSharedLog::connect`], so
//! several logs (or test runs) can share one database:
//! - `{prefix}users/{user key}` `{user, next_cursor, compacted_through}`: one document per user,
//!   its cursor counter and how far its log was compacted. The key is the user name with every
//!   byte outside `[A-Za-z0-9@+-]` escaped as `%XX`.
//! - `{prefix}users/{user key}/entries/{entry id}` `{cursor, device, topic, payload}`: the
//!   entries, the document id being the entry id, so a push is idempotent per user; the
//!   payload is an opaque (possibly encrypted) bytes value, the other fields route.
//! - `{prefix}devices/{device id}` `{user, acked}`: registered devices and the cursor each
//!   acknowledged.
//!
//! docs/firestore.md describes the fields and the indexes a production project needs.
//!
//! ## Why a reader never skips an entry
//! Cursors come from the user's counter document, never from device clocks. A push allocates
//! them optimistically, per chunk of entries: it reads the counter document (value `n` and
//! the `update_time` of that version) and which of the chunk's ids are stored already, then
//! sends one atomic commit holding the new entries with cursors `n+1..=n+k` (each with an
//! `exists: false` precondition) and the counter set to `n+k`, under the precondition that
//! the counter document still has the `update_time` read. If any other push (or compaction)
//! wrote the counter meanwhile, the whole commit fails, nothing of it is stored, and the push
//! reads again and retries. So every cursor is handed out exactly once, in commit order, and
//! the counter and the entries it covers become visible in the same instant.
//!
//! A pull first reads the committed counter `H`, then queries the entries with cursors in
//! `(after, H]`: each of them committed together with a counter at or below `H`, so all are
//! visible to the strongly consistent query, while an entry committing later gets a cursor
//! above `H` and is found by the next pull. Compaction raises the user's `compacted_through`
//! mark (with a `maximum` transform: acknowledgements and the counter only grow, so a mark
//! worked out from an older read is never too high) *before* deleting entries, and a pull
//! re-reads the mark after its
//! query, so a page that a concurrent compaction thinned out is answered with
//! [`storex_sync::SharedLogError::CursorCompacted`], never returned with a gap.
//!
//! This is the counter-in-the-same-transaction scheme with optimistic instead of pessimistic
//! concurrency control: a Firestore read-write transaction would lock the counter when it
//! reads it, and two pushers holding the read lock then wait for each other until a lock
//! timeout (the emulator needs seconds to break such a deadlock), while a conditional commit
//! holds no lock before it commits and the loser retries at once. A test of
//! `tests/integration/limits.rs` with four clients pushing and pulling at the same time checks
//! that every reader sees every entry exactly once.
//!
//! ## Limits
//! A commit holds at most 500 writes and a document at most 1 MiB, so a push is split into
//! transactions of at most 499 entries (plus the counter) and 3.5 MiB; each is atomic, and a
//! retry of a half-done push stores only what is missing. An entry whose payload exceeds
//! [`FirestoreSharedLog::MAX_PAYLOAD_BYTES`] (or whose topic exceeds 1,500 bytes) is refused
//! with [`storex_sync::SharedLogError::Invalid`] naming it, before anything is written; the
//! sync engine reads that limit from `SharedSyncLog::max_entry_bytes`, so it reports such an
//! entry and pushes the others. Pulls filter by topic in the query (Firestore's `in`, up to
//! 30 topics; beyond that the topics are filtered after reading). A pull returns at most
//! 1,000 entries and about 8 MiB of payload (the entry that crosses 8 MiB is kept; a bigger
//! entry comes alone): it reads the query as a stream and stops when the page is full, so a page of big
//! entries stays bounded in memory. Compaction with no registered device (their documents deleted by hand) drops
//! nothing more.
//!
//! ```no_run
//! # async fn demo() -> storex_sync::SharedResult<()> {
//! use storex_log_firestore::FirestoreSharedLog;
//! use storex_sync::SharedSyncLog;
//!
//! // With FIRESTORE_EMULATOR_HOST set, this talks to the emulator.
//! let log = FirestoreSharedLog::connect("my-project", "storex_").await?;
//! let phone = log.create_device("ann@example.com").await?;
//! let page = log.pull(phone, 0, 100, None).await?;
//! assert!(page.entries.is_empty());
//! # Ok(()) }
//! ```

mod documents;
mod log;

pub use firestore;
pub use log::{FirestoreSharedLog, REQUEST_TIMEOUT};
