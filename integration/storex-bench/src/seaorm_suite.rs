//! Suite `seaorm`: rows per second through storex (a [`Storage`] with the UUID key
//! middleware on [`SeaOrmBackend`]) and through plain SeaORM, on the same SQLite file and
//! table: single creates, 1,000-row batches, finds by key, and reading every row. Ratios are
//! storex's time over plain SeaORM's (the target is at most 1.2).
//!
//! The two paths take turns operation by operation (who goes first is a pseudo-random bit of
//! the turn, not strict alternation, which let periodic costs fall on one side), so drift in
//! the machine or the file (WAL checkpoints, a growing table) falls on both alike. Both do
//! the same work: plain SeaORM makes the UUIDs itself and reads every row ordered by key, as
//! storex does.
//!
//! Last, what making the file durable costs after a 1,000-row batch (a sync does it before
//! each page it pushes): its median time, and that over the median time of the batch
//! itself, measured in the same rounds.

#![allow(unreachable_pub)] // SeaORM entities must be `pub` inside their modules.

use sea_orm::{
    ActiveValue::Set, ConnectionTrait, DatabaseConnection, EntityTrait, QueryOrder, Schema,
    TransactionTrait,
};
use storex_core::chrono::Utc;
use storex_core::uuid::Uuid;
use storex_core::{object, BatchStep, Operation, Query, Registry, Storage, UuidPkMiddleware};
use storex_seaorm::{collection_from_entity, SeaOrmBackend};

use std::time::{Duration, Instant};

use crate::report::{figure, BoxError, Pair};

const BATCH_ROWS: u64 = 1_000;
const BATCHES: u64 = 30;
const READ_ALL_ROUNDS: usize = 5;
const DURABLE_ROUNDS: u64 = 21;

mod note {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "note")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub title: String,
        pub body: Option<String>,
        pub stars: i64,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn plain_note(i: u64) -> note::ActiveModel {
    note::ActiveModel {
        id: Set(Uuid::now_v7()),
        title: Set(format!("note {i}")),
        body: Set(Some("body".into())),
        stars: Set((i % 5) as i64),
        created_at: Set(Utc::now()),
    }
}

fn storex_note(i: u64) -> storex_core::Object {
    object! { "title" => format!("note {i}"), "body" => "body", "stars" => (i % 5) as i64, "created_at" => Utc::now() }
}

async fn plain_batch(db: &DatabaseConnection, first: u64) -> Result<(), BoxError> {
    let txn = db.begin().await?;
    let rows = (0..BATCH_ROWS).map(|i| plain_note(first + i));
    note::Entity::insert_many(rows)
        .exec_without_returning(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}

async fn storex_batch(storage: &Storage, first: u64) -> Result<(), BoxError> {
    let steps = (0..BATCH_ROWS)
        .map(|i| BatchStep::new(Operation::create("note", storex_note(first + i))))
        .collect();
    storage.batch(steps).await?;
    Ok(())
}

/// Runs the suite with `ops` single creates and finds per path.
pub(crate) async fn run(ops: u64) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let backend = SeaOrmBackend::open_sqlite_file(dir.path().join("bench.db")).await?;
    let db = backend.connection().clone();
    let mut create = Schema::new(db.get_database_backend()).create_table_from_entity(note::Entity);
    db.execute(create.if_not_exists()).await?;
    let registry = Registry::builder()
        .collection(collection_from_entity(note::Entity)?)
        .build()?;
    let storage = Storage::builder(registry, backend)
        .with(UuidPkMiddleware::new())
        .build()
        .await?;

    let mut single = Pair::default();
    for i in 0..ops {
        let plain = async {
            note::Entity::insert(plain_note(i))
                .exec_without_returning(&db)
                .await?;
            Ok(())
        };
        let storex = async {
            storage.create("note", storex_note(i)).await?;
            Ok(())
        };
        single.turn(i, plain, storex).await?;
    }

    let mut batch = Pair::default();
    for b in 0..BATCHES {
        let first = ops + b * BATCH_ROWS;
        batch
            .turn(b, plain_batch(&db, first), storex_batch(&storage, first))
            .await?;
    }

    let ids: Vec<Uuid> = note::Entity::find()
        .all(&db)
        .await?
        .iter()
        .map(|n| n.id)
        .take(ops as usize)
        .collect();
    let mut find = Pair::default();
    for (turn, id) in ids.iter().enumerate() {
        let plain = async {
            std::hint::black_box(note::Entity::find_by_id(*id).one(&db).await?);
            Ok(())
        };
        let storex = async {
            std::hint::black_box(storage.find_by_pk("note", *id).await?);
            Ok(())
        };
        find.turn(turn as u64, plain, storex).await?;
    }

    let mut read_all = Pair::default();
    let mut rows = 0;
    for turn in 0..READ_ALL_ROUNDS {
        let plain = async {
            let all = note::Entity::find()
                .order_by_asc(note::Column::Id)
                .all(&db)
                .await?;
            rows = all.len() as u64;
            Ok(())
        };
        let storex = async {
            std::hint::black_box(storage.find_many("note", Query::default()).await?);
            Ok(())
        };
        read_all.turn(turn as u64, plain, storex).await?;
    }
    let expected = 2 * (ops + BATCHES * BATCH_ROWS);
    if rows != expected {
        return Err(format!("the table holds {rows} rows, expected {expected}").into());
    }

    single.report("seaorm", "create_single", ops);
    batch.report("seaorm", "create_batch_1000", BATCHES * BATCH_ROWS);
    find.report("seaorm", "find_by_pk", ops);
    read_all.report("seaorm", "read_all", rows * READ_ALL_ROUNDS as u64);

    let mut batches = Vec::new();
    let mut durable = Vec::new();
    for round in 0..DURABLE_ROUNDS {
        let first = 2 * (ops + BATCHES * BATCH_ROWS) + round * BATCH_ROWS;
        let start = Instant::now();
        storex_batch(&storage, first).await?;
        batches.push(start.elapsed());
        let start = Instant::now();
        storage.backend().make_durable().await?;
        durable.push(start.elapsed());
    }
    let (batch, durable) = (median(&mut batches), median(&mut durable));
    figure(
        "seaorm.make_durable_after_batch_1000",
        durable.as_secs_f64() * 1e3,
        "ms",
    );
    // Time over time: 0.1 means making durable adds a tenth of the batch's own time.
    figure(
        "seaorm.make_durable_vs_batch_1000",
        durable.as_secs_f64() / batch.as_secs_f64().max(f64::MIN_POSITIVE),
        "ratio",
    );
    Ok(())
}

/// The middle one of `times`.
fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}
