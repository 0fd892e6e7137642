//! The contract: devices that have applied the same set of entries, in any order, batching
//! and with duplicates, hold the same data; and that data is what applying every entry in
//! timestamp order gives (so no write that should win is lost).
//!
//! Each case runs 3 to 5 devices on MemoryBackend with skewed manual clocks, random writes
//! (creates that may collide on a key, puts, updates and deletes by key and by filter) and
//! random deliveries of entries between devices (subsets, shuffled, split into batches,
//! repeated), then delivers everything everywhere and compares.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use storex_core::{
    object, CollectionDef, FieldType, Filter, MemoryBackend, Object, Query, Registry, Value,
};
use storex_sync::{Clock, DeviceId, EntryOp, LogEntry, ManualClock, SyncDevice, SyncOptions};

const CASES: u32 = 1_000;

pub(super) fn registry() -> Registry {
    registry_of(&["item"])
}

/// Collections named `names`, each of the shape of `item`.
pub(super) fn registry_of(names: &[&str]) -> Registry {
    names
        .iter()
        .fold(Registry::builder(), |builder, name| {
            builder.collection(
                CollectionDef::new(*name)
                    .field("id", FieldType::Int)
                    .field("a", FieldType::Text)
                    .optional_field("b", FieldType::Int)
                    .optional_field("c", FieldType::Bool)
                    .primary_key(["id"]),
            )
        })
        .build()
        .expect("valid registry")
}

#[derive(Clone, Debug)]
pub(super) enum Write {
    Create {
        id: i64,
        a: u8,
        b: Option<i64>,
    },
    /// Create, or replace every field (`c` becomes null).
    Put {
        id: i64,
        a: u8,
        b: Option<i64>,
    },
    Update {
        id: i64,
        a: Option<u8>,
        b: Option<Option<i64>>,
        c: Option<bool>,
    },
    Delete {
        id: i64,
    },
    UpdateWhereB {
        b: i64,
        a: u8,
    },
    DeleteWhereC {
        c: bool,
    },
}

#[derive(Clone, Debug)]
enum Action {
    Write {
        device: usize,
        write: Write,
        tick: u64,
    },
    Deliver {
        from: usize,
        to: usize,
        mask: u64,
        batch: usize,
        repeat: bool,
        seed: u64,
    },
}

pub(super) fn write() -> impl Strategy<Value = Write> {
    let id = 0i64..6;
    prop_oneof![
        3 => (id.clone(), any::<u8>(), proptest::option::of(0i64..3)).prop_map(|(id, a, b)| Write::Create { id, a, b }),
        2 => (id.clone(), any::<u8>(), proptest::option::of(0i64..3)).prop_map(|(id, a, b)| Write::Put { id, a, b }),
        3 => (id.clone(), proptest::option::of(any::<u8>()), proptest::option::of(proptest::option::of(0i64..3)), proptest::option::of(any::<bool>()))
            .prop_map(|(id, a, b, c)| Write::Update { id, a, b, c }),
        1 => id.prop_map(|id| Write::Delete { id }),
        1 => (0i64..3, any::<u8>()).prop_map(|(b, a)| Write::UpdateWhereB { b, a }),
        1 => any::<bool>().prop_map(|c| Write::DeleteWhereC { c }),
    ]
}

fn action(devices: usize) -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0..devices, write(), 0u64..3).prop_map(|(device, write, tick)| Action::Write { device, write, tick }),
        1 => (0..devices, 0..devices, any::<u64>(), 1usize..6, any::<bool>(), any::<u64>())
            .prop_map(|(from, to, mask, batch, repeat, seed)| Action::Deliver { from, to, mask, batch, repeat, seed }),
    ]
}

fn scenario() -> impl Strategy<Value = (Vec<u64>, Vec<Action>, u64)> {
    (3usize..=5).prop_flat_map(|devices| {
        (
            proptest::collection::vec(0u64..600_000, devices), // clock skew, up to ten minutes
            proptest::collection::vec(action(devices), 5..40),
            any::<u64>(),
        )
    })
}

/// A small deterministic shuffle, so a failing case replays exactly.
pub(super) fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (seed >> 33) as usize % (i + 1);
        items.swap(i, j);
    }
}

pub(super) async fn apply_write(device: &SyncDevice, write: &Write) {
    apply_write_in(device, "item", write).await;
}

/// [`apply_write`] to `collection`.
pub(super) async fn apply_write_in(device: &SyncDevice, collection: &str, write: &Write) {
    let s = device.storage();
    // Writes may fail (a create of a key that exists here); a failed write logs nothing.
    let _ = match write {
        Write::Create { id, a, b } => s
            .create(
                collection,
                object! { "id" => *id, "a" => format!("a{a}"), "b" => *b },
            )
            .await
            .map(|_| 1),
        Write::Put { id, a, b } => s
            .put(
                collection,
                object! { "id" => *id, "a" => format!("p{a}"), "b" => *b },
            )
            .await
            .map(|_| 1),
        Write::Update { id, a, b, c } => {
            let mut changes = Object::new();
            if let Some(a) = a {
                changes.insert("a".into(), Value::from(format!("a{a}")));
            }
            if let Some(b) = b {
                changes.insert("b".into(), Value::from(*b));
            }
            if let Some(c) = c {
                changes.insert("c".into(), Value::from(*c));
            }
            if changes.is_empty() {
                return;
            }
            s.update_by_pk(collection, *id, changes).await
        }
        Write::Delete { id } => s.delete_by_pk(collection, *id).await,
        Write::UpdateWhereB { b, a } => {
            s.update_where(
                collection,
                Filter::all().eq("b", *b),
                object! { "a" => format!("w{a}") },
            )
            .await
        }
        Write::DeleteWhereC { c } => s.delete_where(collection, Filter::all().eq("c", *c)).await,
    };
}

pub(super) async fn known_entries(device: &SyncDevice) -> Vec<LogEntry> {
    device
        .log()
        .all()
        .await
        .expect("log")
        .entries
        .into_iter()
        .filter(|s| s.integrated)
        .map(|s| s.entry)
        .collect()
}

pub(super) async fn deliver(to: &SyncDevice, mut entries: Vec<LogEntry>, batch: usize, seed: u64) {
    shuffle(&mut entries, seed);
    for chunk in entries.chunks(batch.max(1)) {
        let report = to.integrate(chunk.to_vec()).await.expect("integrate");
        assert!(
            report.held.is_empty(),
            "nothing is held here: {:?}",
            report.held
        );
    }
}

/// The reference: every entry applied in timestamp order, one at a time.
pub(super) fn sequential_model(entries: Vec<LogEntry>) -> BTreeMap<i64, Object> {
    sequential_model_in(entries, "item")
}

/// [`sequential_model`] of the entries of `collection`.
pub(super) fn sequential_model_in(
    mut entries: Vec<LogEntry>,
    collection: &str,
) -> BTreeMap<i64, Object> {
    let registry = registry_of(&[collection]);
    let def = registry.collection(collection).expect("collection");
    entries.retain(|e| e.collection == collection);
    entries.sort_by_key(|e| e.hlc);
    let mut state: BTreeMap<i64, Object> = BTreeMap::new();
    for e in entries {
        let id = e.pk.single().and_then(Value::as_int).expect("int key");
        match e.op {
            EntryOp::Create => {
                let object = def
                    .fields()
                    .iter()
                    .map(|f| {
                        (
                            f.name.clone(),
                            e.fields.get(&f.name).cloned().unwrap_or(Value::Null),
                        )
                    })
                    .collect();
                state.insert(id, object);
            }
            EntryOp::Update => {
                if let Some(object) = state.get_mut(&id) {
                    object.extend(e.fields);
                }
            }
            EntryOp::Delete => {
                state.remove(&id);
            }
        }
    }
    state
}

pub(super) async fn rows(device: &SyncDevice) -> BTreeMap<i64, Object> {
    rows_in(device, "item").await
}

/// [`rows`] of `collection`.
pub(super) async fn rows_in(device: &SyncDevice, collection: &str) -> BTreeMap<i64, Object> {
    device
        .storage()
        .find_many(collection, Query::default())
        .await
        .expect("rows")
        .into_iter()
        .map(|o| (o["id"].as_int().expect("int key"), o))
        .collect()
}

async fn run(skews: Vec<u64>, actions: Vec<Action>, final_seed: u64) {
    let base = 1_700_000_000_000u64;
    let mut walls = Vec::new();
    let mut devices = Vec::new();
    for skew in &skews {
        let wall = ManualClock::new(base + skew);
        let clock = Clock::with_wall_clock(DeviceId::random(), wall.clone())
            .with_max_drift(Duration::from_secs(3600));
        let device = SyncDevice::open(
            registry(),
            Arc::new(MemoryBackend::new()),
            clock,
            SyncOptions::default(),
        )
        .await
        .expect("open");
        walls.push(wall);
        devices.push(device);
    }
    for action in &actions {
        match action {
            Action::Write {
                device,
                write,
                tick,
            } => {
                walls[*device].advance(Duration::from_millis(*tick));
                apply_write(&devices[*device], write).await;
            }
            Action::Deliver {
                from,
                to,
                mask,
                batch,
                repeat,
                seed,
            } => {
                if from == to {
                    continue;
                }
                let entries: Vec<LogEntry> = known_entries(&devices[*from])
                    .await
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| mask >> (i % 64) & 1 == 1)
                    .map(|(_, e)| e)
                    .collect();
                deliver(&devices[*to], entries.clone(), *batch, *seed).await;
                if *repeat {
                    deliver(&devices[*to], entries, batch + 1, seed.rotate_left(7)).await;
                }
            }
        }
    }
    // Everything everywhere, in a different order for each device.
    let mut all: HashMap<_, LogEntry> = HashMap::new();
    for device in &devices {
        for e in known_entries(device).await {
            all.insert(e.id, e);
        }
    }
    let all: Vec<LogEntry> = all.into_values().collect();
    for (i, device) in devices.iter().enumerate() {
        deliver(
            device,
            all.clone(),
            3 + i,
            final_seed.wrapping_add(i as u64),
        )
        .await;
    }
    let expected = sequential_model(all);
    let digest = devices[0].digest("item").await.expect("digest");
    for (i, device) in devices.iter().enumerate() {
        assert_eq!(
            rows(device).await,
            expected,
            "device {i} differs from the sequential model"
        );
        assert_eq!(
            device.digest("item").await.expect("digest"),
            digest,
            "device {i} digest"
        );
    }
}

proptest! {
    // Seeds that once failed are kept in tests/convergence.proptest-regressions and run first.
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/integration/convergence.proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn devices_that_saw_the_same_entries_hold_the_same_data((skews, actions, seed) in scenario()) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(run(skews, actions, seed));
    }
}
