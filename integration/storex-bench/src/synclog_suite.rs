//! Suite `synclog`: what sync logging costs, and how fast received changes are applied.
//!
//! - Logged writes (a [`SyncDevice`]'s storage) against the same writes without logging, each
//!   in its own transaction, on one SQLite file, taking turns: single creates, single updates,
//!   1,000-row batches, and where-clause updates that edit a fifth of the notes each. Ratios
//!   are the logged time over the unlogged one (targets: 1.5 for single writes, 1.2 for
//!   batches).
//! - The layout's floor: 1,000 rows of the notes' shape written with plain SQL (prepared
//!   multi-row INSERTs, no storex code), alone and together with 1,000 rows of the sync log's
//!   shape, in the log's own table with its indexes. Their ratio is what one log row per
//!   changed object costs SQLite itself, below any code of ours.
//! - Reconcile + apply: a second device on its own SQLite file integrates the first one's
//!   entries in batches of 1,000, once as new objects (creates) and once as changes to
//!   objects it already has (updates, all setting the same value), and once as edits that
//!   differ from object to object (`apply_edits`: each note a title of its own): entries per
//!   second (target: 100,000); then the size of its database file per note it holds (the
//!   notes and what sync keeps of them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use storex_core::uuid::Uuid;
use storex_core::{
    object, BatchStep, CollectionDef, FieldType, Filter, Operation, Pk, Query, Registry, Storage,
    StorageBackend, UuidPkMiddleware,
};
use storex_seaorm::SeaOrmBackend;
use storex_sync::{with_sync_log, Clock, DeviceId, Hlc, LogEntry, SyncDevice, SyncOptions};

use crate::allocations::AllocationCount;
use crate::report::{database_bytes, figure, rate, BoxError, Pair};

const BATCH_ROWS: u64 = 1_000;
const BATCHES: u64 = 100;
const APPLY_BATCH: usize = 1_000;
const WHERE_ROUNDS: u64 = 10;

/// `note` is synced; `plain_note`, the same table under another name, is the baseline.
fn registry() -> Result<Registry, BoxError> {
    let table = |name: &str| {
        CollectionDef::new(name)
            .field("id", FieldType::Uuid)
            .field("title", FieldType::Text)
            .optional_field("body", FieldType::Text)
            .field("stars", FieldType::Int)
            .primary_key(["id"])
    };
    Ok(Registry::builder()
        .collection(table("note"))
        .collection(table("plain_note"))
        .collection(table("twin_note"))
        .build()?)
}

fn note(i: u64) -> storex_core::Object {
    object! { "title" => format!("note {i}"), "body" => "body", "stars" => (i % 5) as i64 }
}

async fn sqlite(dir: &std::path::Path, name: &str) -> Result<Arc<dyn StorageBackend>, BoxError> {
    Ok(Arc::new(
        SeaOrmBackend::open_sqlite_file(dir.join(name)).await?,
    ))
}

/// `BATCHES` batches of `BATCH_ROWS` creates through each of two (storage, collection)
/// paths, timed in turns.
async fn batch_pair(first: (&Storage, &str), second: (&Storage, &str)) -> Result<Pair, BoxError> {
    let mut pair = Pair::default();
    for b in 0..BATCHES {
        let steps = |collection: &str| {
            (0..BATCH_ROWS)
                .map(|i| BatchStep::new(Operation::create(collection, note(b * BATCH_ROWS + i))))
                .collect::<Vec<_>>()
        };
        let (first_steps, second_steps) = (steps(first.1), steps(second.1));
        pair.turn(
            b,
            async {
                first.0.batch(first_steps).await?;
                Ok(())
            },
            async {
                second.0.batch(second_steps).await?;
                Ok(())
            },
        )
        .await?;
    }
    Ok(pair)
}

/// The entries of `device` not shared yet that `wanted` picks.
async fn unshared(
    device: &SyncDevice,
    wanted: impl Fn(&LogEntry) -> bool,
) -> Result<Vec<LogEntry>, BoxError> {
    let entries = device.log().unshared(u64::MAX >> 1).await?;
    Ok(entries.into_iter().filter(|e| wanted(e)).collect())
}

/// Integrates `entries` on `receiver` in batches of `APPLY_BATCH`; returns how long it took.
/// The batches are made before the clock starts: a device hands `integrate` the entries it
/// pulled, it does not copy them (copying them was 4% of the time measured). With `name`
/// (and the bench's `allocations` feature), prints the allocations made per entry as that.
async fn integrate_in_batches(
    receiver: &SyncDevice,
    entries: &[LogEntry],
    name: Option<&str>,
) -> Result<Duration, BoxError> {
    let batches: Vec<Vec<LogEntry>> = entries.chunks(APPLY_BATCH).map(<[_]>::to_vec).collect();
    let allocations = AllocationCount::start();
    let start = Instant::now();
    for batch in batches {
        receiver.integrate(batch).await?;
    }
    let took = start.elapsed();
    if let Some(name) = name {
        allocations.report(name, entries.len() as u64);
    }
    Ok(took)
}

/// Runs the suite with `ops` single writes per path.
pub(crate) async fn run(ops: u64) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let backend = sqlite(dir.path(), "a.db").await?;
    let options = SyncOptions::default()
        .exclude("plain_note")
        .exclude("twin_note");
    let device = SyncDevice::open(
        registry()?,
        backend.clone(),
        Clock::new(DeviceId::random()),
        options.clone(),
    )
    .await?;
    // The same tables without the logger: the baseline.
    let plain = Storage::builder_shared(with_sync_log(&registry()?)?, backend)
        .with(UuidPkMiddleware::new())
        .build()
        .await?;
    let logged = device.storage().clone();

    let in_own_transaction = |storage: Storage, op: Operation| async move {
        storage.batch(vec![BatchStep::new(op)]).await?;
        Ok::<(), BoxError>(())
    };
    let mut creates = Pair::default();
    let mut keys = Vec::with_capacity(ops as usize);
    for i in 0..ops {
        let (plain_id, logged_id) = (Uuid::now_v7(), Uuid::now_v7());
        let mut plain_note = note(i);
        plain_note.insert("id".into(), plain_id.into());
        let mut logged_note = note(i);
        logged_note.insert("id".into(), logged_id.into());
        keys.push((plain_id, logged_id));
        creates
            .turn(
                i,
                in_own_transaction(plain.clone(), Operation::create("plain_note", plain_note)),
                async {
                    logged.create("note", logged_note).await?;
                    Ok(())
                },
            )
            .await?;
    }
    let mut updates = Pair::default();
    for (i, (plain_id, logged_id)) in keys.iter().enumerate() {
        let changes = object! { "stars" => 9 };
        updates
            .turn(
                i as u64,
                in_own_transaction(
                    plain.clone(),
                    Operation::update_by_pk("plain_note", *plain_id, changes.clone()),
                ),
                async {
                    logged
                        .update_by_pk("note", *logged_id, changes.clone())
                        .await?;
                    Ok(())
                },
            )
            .await?;
    }
    // The same harness with the unlogged batch on both sides: how far apart two identical
    // paths read here (the resolution of the ratio below).
    // (In a table of their own: the where-writes below compare `plain_note` and `note`,
    // which must hold the same rows.)
    let twins = batch_pair((&plain, "twin_note"), (&plain, "twin_note")).await?;
    let batches = batch_pair((&plain, "plain_note"), (&logged, "note")).await?;
    // Where-clause writes: each round edits the notes with one star count (a fifth of them).
    let mut wheres = Pair::default();
    let mut edited = 0;
    for round in 0..WHERE_ROUNDS {
        let filter = Filter::all().eq("stars", (round % 5) as i64);
        let changes = object! { "body" => format!("edited {round}") };
        let matched = logged.count("note", filter.clone()).await?;
        let plain_matched = plain.count("plain_note", filter.clone()).await?;
        if matched != plain_matched {
            return Err(format!(
                "the where-writes compared would change {plain_matched} and {matched} rows"
            )
            .into());
        }
        edited += matched;
        wheres
            .turn(
                round,
                in_own_transaction(
                    plain.clone(),
                    Operation::update_where("plain_note", filter.clone(), changes.clone()),
                ),
                async {
                    logged
                        .update_where("note", filter.clone(), changes.clone())
                        .await?;
                    Ok(())
                },
            )
            .await?;
    }
    let labels = ("unlogged", "logged", "logged_time_vs_unlogged");
    creates.report_as("synclog", "create_single", ops, labels);
    updates.report_as("synclog", "update_single", ops, labels);
    twins.report_as(
        "synclog",
        "unlogged_batch_twins",
        BATCHES * BATCH_ROWS,
        ("first", "second", "second_time_vs_first"),
    );
    batches.report_as("synclog", "create_batch_1000", BATCHES * BATCH_ROWS, labels);
    wheres.report_as("synclog", "update_where", edited, labels);

    layout_floor(dir.path()).await?;

    // Reconcile + apply on a second device.
    let creates = unshared(&device, |e| e.op == storex_sync::EntryOp::Create).await?;
    let receiver = SyncDevice::open(
        registry()?,
        sqlite(dir.path(), "b.db").await?,
        Clock::new(DeviceId::random()),
        options,
    )
    .await?;
    let took = integrate_in_batches(
        &receiver,
        &creates,
        Some("synclog.apply_creates.allocations_per_entry"),
    )
    .await?;
    rate("synclog.apply_creates.entries", creates.len() as u64, took);

    // Changes to objects the receiver has: new updates made on the first device.
    logged
        .update_where("note", storex_core::Filter::all(), object! { "stars" => 1 })
        .await?;
    let updates = unshared(&device, |e| {
        e.op == storex_sync::EntryOp::Update && e.fields.get("stars") == Some(&1i64.into())
    })
    .await?;
    let took = integrate_in_batches(
        &receiver,
        &updates,
        Some("synclog.apply_updates.allocations_per_entry"),
    )
    .await?;
    rate("synclog.apply_updates.entries", updates.len() as u64, took);
    // Edits that differ from object to object (each note a title of its own), as a user's
    // edits do: no two set the same values.
    let notes = logged.find_many("note", Query::default()).await?;
    for (round, chunk) in notes.chunks(BATCH_ROWS as usize).enumerate() {
        let steps = chunk
            .iter()
            .enumerate()
            .map(|(i, note)| {
                let title = format!("edit {round}.{i}");
                BatchStep::new(Operation::update_by_pk(
                    "note",
                    Pk(vec![note["id"].clone()]),
                    object! { "title" => title },
                ))
            })
            .collect();
        logged.batch(steps).await?;
    }
    let edits = unshared(&device, |e| {
        e.op == storex_sync::EntryOp::Update && e.fields.contains_key("title")
    })
    .await?;
    let took = integrate_in_batches(
        &receiver,
        &edits,
        Some("synclog.apply_edits.allocations_per_entry"),
    )
    .await?;
    rate("synclog.apply_edits.entries", edits.len() as u64, took);
    // The where-clause edits, unmeasured, so that both devices can be compared.
    let rest = unshared(&device, |e| {
        e.op == storex_sync::EntryOp::Update && e.fields.contains_key("body")
    })
    .await?;
    integrate_in_batches(&receiver, &rest, None).await?;
    if device.digest("note").await? != receiver.digest("note").await? {
        return Err("the receiving device does not match the sender".into());
    }
    // What the receiver keeps to reconcile later changes, beside the notes themselves: its
    // database file (with its write-ahead log) per note received.
    let notes = receiver.storage().count("note", Filter::all()).await?;
    drop(receiver);
    let bytes = database_bytes(dir.path(), "b.db")?;
    figure(
        "synclog.receiver_database.bytes_per_note",
        bytes as f64 / notes.max(1) as f64,
        "bytes",
    );
    Ok(())
}

/// One multi-row `INSERT` of `rows` rows of `columns` into `table`, as a prepared statement.
fn insert_statement(
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<sea_orm::Value>>,
) -> sea_orm::Statement {
    let row = format!("({})", vec!["?"; columns.len()].join(", "));
    let sql = format!(
        "INSERT INTO \"{table}\" ({}) VALUES {}",
        columns
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", "),
        vec![row; rows.len()].join(", ")
    );
    sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Sqlite,
        sql,
        rows.into_iter().flatten(),
    )
}

/// The notes' rows of one batch and the log rows that go with them, ready to bind.
fn floor_rows(batch: u64) -> (Vec<Vec<sea_orm::Value>>, Vec<Vec<sea_orm::Value>>) {
    let device = Uuid::now_v7();
    let (mut notes, mut entries) = (Vec::new(), Vec::new());
    for i in batch * BATCH_ROWS..(batch + 1) * BATCH_ROWS {
        let id = Uuid::now_v7();
        let mut fields = note(i);
        fields.insert("id".into(), id.into());
        notes.push(vec![
            id.into(),
            format!("note {i}").into(),
            "body".into(),
            ((i % 5) as i64).into(),
        ]);
        entries.push(vec![
            Uuid::now_v7().into(),
            device.into(),
            // As the log writes them: `Hlc::clock_text`, and the key as canonical JSON.
            Hlc {
                millis: 1_700_000_000_000 + i,
                counter: 0,
                device: DeviceId(device),
            }
            .clock_text()
            .into(),
            "note".into(),
            storex_core::serde_json::to_string(&Pk::from(id))
                .unwrap_or_default()
                .into(),
            "create".into(),
            storex_core::serde_json::to_string(&fields)
                .unwrap_or_default()
                .into(),
            1i64.into(),
            false.into(),
            true.into(),
        ]);
    }
    (notes, entries)
}

/// Plain SQL, the notes alone against the notes with their log rows: the layout's floor.
async fn layout_floor(dir: &std::path::Path) -> Result<(), BoxError> {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    const NOTE_COLUMNS: [&str; 4] = ["id", "title", "body", "stars"];
    const LOG_COLUMNS: [&str; 10] = [
        "id",
        "device",
        "hlc",
        "collection",
        "pk",
        "op",
        "fields",
        "schema_version",
        "shared",
        "integrated",
    ];
    let backend = Arc::new(SeaOrmBackend::open_sqlite_file(dir.join("floor.db")).await?);
    // The tables as a device makes them (the log's with its indexes).
    let _tables = Storage::builder_shared(with_sync_log(&registry()?)?, backend.clone())
        .build()
        .await?;
    let db = backend.connection();
    let mut pair = Pair::default();
    for b in 0..BATCHES {
        let (plain_notes, _) = floor_rows(2 * b);
        let (notes, entries) = floor_rows(2 * b + 1);
        pair.turn(
            b,
            async {
                let txn = db.begin().await?;
                txn.execute_raw(insert_statement("plain_note", &NOTE_COLUMNS, plain_notes))
                    .await?;
                txn.commit().await?;
                Ok(())
            },
            async {
                let txn = db.begin().await?;
                txn.execute_raw(insert_statement("note", &NOTE_COLUMNS, notes))
                    .await?;
                // 10,000 values: within SQLite's 32,766 per statement.
                txn.execute_raw(insert_statement(
                    storex_sync::LOG_COLLECTION,
                    &LOG_COLUMNS,
                    entries,
                ))
                .await?;
                txn.commit().await?;
                Ok(())
            },
        )
        .await?;
    }
    pair.report_as(
        "synclog",
        "sql_floor_1000",
        BATCHES * BATCH_ROWS,
        (
            "notes_only",
            "notes_and_log_rows",
            "log_rows_time_vs_notes_only",
        ),
    );
    Ok(())
}
