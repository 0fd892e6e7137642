//! storex-log-sql: [`SqlSharedLog`], the storex shared sync log in a SQL database through
//! SeaORM: a SQLite file for devices on one machine, PostgreSQL for a server many devices share.
//!
//! ## Tables
//! - `storex_shared_users (user_name PK, next_cursor, compacted_through)`: one row per user;
//!   the cursor counter and how far the log was compacted.
//! - `storex_shared_devices (device PK, user_name, acked)`: registered devices and the cursor
//!   each acknowledged.
//! - `storex_shared_entries (user_name, cursor, id, device, topic, payload)`, keyed by
//!   `(user_name, cursor)`, with `(user_name, id)` unique: the entries, opaque payloads with
//!   their routing fields. (A log from before ids were unique per user had `id` unique alone;
//!   that index is dropped when the log opens.)
//!
//! ## Why a reader never skips an entry
//! A push locks its user's counter row (`UPDATE … SET next_cursor = next_cursor + n`, which
//! PostgreSQL holds until commit and SQLite's single writer serializes anyway), takes its
//! cursors from it, inserts the entries and commits. So pushes of one user commit in cursor
//! order: once an entry with cursor `c` is visible, every entry below `c` is too. A pull first
//! reads the committed counter `H`, then returns entries with cursors in `(after, H]`; an
//! entry committing later gets a cursor above `H` and is found by the next pull. Cursors come
//! from the log alone, never from device clocks.
//!
//! ## Bounds
//! A pull page holds at most the entries asked for (and at most 100,000) and at most 8 MiB of
//! payload, or less with `SqlSharedLog::pull_within` (a bigger single entry still comes
//! alone; `SqlSharedLog::pull_page` answers its size instead of reading it past a bound), with `more` set when it was cut. A stored counter, position or cursor that is negative
//! (damaged tables) is reported as an error, never taken for 0. An ack beyond the user's
//! counter is kept at the counter, and compaction never goes past it, so a confused or
//! hostile device cannot make later entries vanish. A pull re-reads the compaction mark
//! after its query and answers `CursorCompacted` rather than a page with a hole. Entry ids
//! are unique per user.

mod log;

pub use log::{set_up_already, LogStats, PageBounds, PagePull, SqlSharedLog, MAX_PULL_BYTES};
