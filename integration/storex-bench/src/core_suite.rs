//! Suite `core`: creates and finds through a [`Storage`] on [`MemoryBackend`], with no
//! middleware (the baseline), with the UUID key middleware plus pass-through middleware, and
//! straight on the backend without a storage at all.
//!
//! Each configuration runs [`ROUNDS`] times, interleaved with the others on fresh backends in
//! a rotating order, and the best round counts, so allocator warm-up favours none of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use storex_core::uuid::Uuid;
use storex_core::{
    object, BoxFuture, CollectionDef, FieldType, MemoryBackend, Middleware, Next, Operation,
    Outcome, Query, Registry, Result, Storage, StorageBackend, UuidPkMiddleware,
};

use crate::report::{rate, ratio};

const ROUNDS: usize = 6;
const PASS_THROUGH_LINKS: usize = 3;

/// A middleware that only passes operations on: the cost of one link of the chain.
#[derive(Debug)]
struct PassThrough;

impl Middleware for PassThrough {
    fn process<'a>(&'a self, op: Operation, next: Next<'a>) -> BoxFuture<'a, Result<Outcome>> {
        next.run(op)
    }
}

fn registry() -> Result<Registry> {
    Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Uuid)
                .field("title", FieldType::Text)
                .field("stars", FieldType::Int)
                .primary_key(["id"]),
        )
        .build()
}

fn note(i: u64, id: Option<Uuid>) -> Operation {
    let mut object = object! { "title" => format!("note {i}"), "stars" => (i % 5) as i64 };
    if let Some(id) = id {
        object.insert("id".into(), id.into());
    }
    Operation::create("note", object)
}

#[derive(Clone, Copy)]
enum Config {
    BackendDirect,
    NoMiddleware,
    Chain,
}

#[derive(Default)]
struct Best {
    create: Option<Duration>,
    find: Option<Duration>,
}

impl Best {
    fn keep(&mut self, create: Duration, find: Duration) {
        self.create = Some(self.create.map_or(create, |d| d.min(create)));
        self.find = Some(self.find.map_or(find, |d| d.min(find)));
    }
}

async fn storage(registry: &Arc<Registry>, config: Config) -> Result<Storage> {
    let mut builder = Storage::builder(registry.clone(), MemoryBackend::new());
    if let Config::Chain = config {
        builder = builder.with(UuidPkMiddleware::new());
        for _ in 0..PASS_THROUGH_LINKS {
            builder = builder.with(PassThrough);
        }
    }
    builder.build().await
}

/// One round: `ops` creates, then a find by key of each; returns both durations. Without
/// the UUID middleware the loop makes the key itself, as an app would.
async fn round(registry: &Arc<Registry>, config: Config, ops: u64) -> Result<(Duration, Duration)> {
    if let Config::BackendDirect = config {
        let backend = MemoryBackend::new();
        backend.prepare(registry).await?;
        let start = Instant::now();
        let mut keys = Vec::with_capacity(ops as usize);
        for i in 0..ops {
            let key = Uuid::now_v7();
            keys.push(key);
            std::hint::black_box(backend.execute(note(i, Some(key))).await?);
        }
        let create = start.elapsed();
        let start = Instant::now();
        for key in &keys {
            let query = Query::new(storex_core::Filter::all().eq("id", *key));
            std::hint::black_box(backend.execute(Operation::find_one("note", query)).await?);
        }
        return Ok((create, start.elapsed()));
    }
    let storage = storage(registry, config).await?;
    let fill_keys = matches!(config, Config::Chain);
    let start = Instant::now();
    for i in 0..ops {
        let id = (!fill_keys).then(Uuid::now_v7);
        std::hint::black_box(storage.execute(note(i, id)).await?);
    }
    let create = start.elapsed();
    let stored: Vec<Uuid> = storage
        .find_many("note", Query::default())
        .await?
        .iter()
        .filter_map(|o| o["id"].as_uuid())
        .collect();
    let start = Instant::now();
    for key in stored {
        std::hint::black_box(storage.find_by_pk("note", key).await?);
    }
    Ok((create, start.elapsed()))
}

/// Runs the suite with `ops` operations per measurement.
pub(crate) async fn run(ops: u64) -> Result<()> {
    let registry = Arc::new(registry()?);
    let configs = [Config::BackendDirect, Config::NoMiddleware, Config::Chain];
    let mut best: [Best; 3] = Default::default();
    for r in 0..ROUNDS {
        // Rotate which configuration goes first: position in a round shifts the figures.
        for k in 0..configs.len() {
            let i = (r + k) % configs.len();
            let (create, find) = round(&registry, configs[i], ops).await?;
            best[i].keep(create, find);
        }
    }
    let mut rates = Vec::new();
    for (best, label) in
        best.iter()
            .zip(["backend_direct", "no_middleware", "uuid_pk_plus_3_links"])
    {
        let create = rate(
            &format!("core.create.{label}"),
            ops,
            best.create.unwrap_or_default(),
        );
        let find = rate(
            &format!("core.find_by_pk.{label}"),
            ops,
            best.find.unwrap_or_default(),
        );
        rates.push((create, find));
    }
    let [(direct_c, direct_f), (bare_c, bare_f), (chain_c, chain_f)] = rates[..] else {
        unreachable!("three configurations")
    };
    ratio(
        "core.create.no_middleware_vs_backend_direct",
        bare_c,
        direct_c,
    );
    ratio(
        "core.find_by_pk.no_middleware_vs_backend_direct",
        bare_f,
        direct_f,
    );
    ratio("core.create.chain_vs_no_middleware", chain_c, bare_c);
    ratio("core.find_by_pk.chain_vs_no_middleware", chain_f, bare_f);
    Ok(())
}
