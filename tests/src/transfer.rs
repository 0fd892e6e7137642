//! The fixture of the fast-sync transfer tests every channel runs: three collections (a UUID
//! key, a compound key, datetimes and floats), devices on SQLite files, a filler, and a
//! row-by-row comparison.

use std::path::Path;
use std::sync::Arc;

use storex_core::{
    object, BatchStep, CollectionDef, FieldType, Filter, Object, Operation, Query, Registry,
    StorageBackend,
};
use storex_seaorm::SeaOrmBackend;
use storex_sync::{Clock, DeviceId, SyncDevice, SyncOptions};

/// The collections the transfer tests move.
pub const COLLECTIONS: [&str; 3] = ["note", "tag", "event"];

/// `note` (UUID key, title), `tag` (compound key note + name), `event` (int key, datetime,
/// optional float).
pub fn three_collections() -> Registry {
    Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Uuid)
                .field("title", FieldType::Text)
                .primary_key(["id"]),
        )
        .collection(
            CollectionDef::new("tag")
                .field("note", FieldType::Int)
                .field("name", FieldType::Text)
                .primary_key(["note", "name"]),
        )
        .collection(
            CollectionDef::new("event")
                .field("id", FieldType::Int)
                .field("at", FieldType::DateTime)
                .optional_field("weight", FieldType::Float)
                .primary_key(["id"]),
        )
        .build()
        .expect("registry")
}

/// A device with a random id on a fresh SQLite file `name` in `dir`.
pub async fn sqlite_device(dir: &Path, name: &str, registry: Registry) -> SyncDevice {
    let backend: Arc<dyn StorageBackend> = Arc::new(
        SeaOrmBackend::open_sqlite_file(dir.join(name))
            .await
            .expect("open"),
    );
    SyncDevice::open(
        registry,
        backend,
        Clock::new(DeviceId::random()),
        SyncOptions::default(),
    )
    .await
    .expect("device")
}

/// Writes `notes` notes, as many tags and half as many events, numbered from `from`, in
/// batches of a thousand; event weights are `n / divisor`.
pub async fn fill(device: &SyncDevice, from: i64, notes: i64, divisor: f64) {
    let at = storex_core::chrono::Utc::now();
    for chunk in (from..from + notes).step_by(1_000) {
        let mut steps = Vec::with_capacity(2_500);
        for n in chunk..(chunk + 1_000).min(from + notes) {
            steps.push(BatchStep::new(Operation::create(
                "note",
                object! { "title" => format!("note {n}") },
            )));
            steps.push(BatchStep::new(Operation::create(
                "tag",
                object! { "note" => n, "name" => format!("t{}", n % 7) },
            )));
            if n % 2 == 0 {
                steps.push(BatchStep::new(Operation::create(
                    "event",
                    object! { "id" => n, "at" => at + storex_core::chrono::Duration::seconds(n), "weight" => n as f64 / divisor },
                )));
            }
        }
        device.storage().batch(steps).await.expect("write");
    }
}

/// Every row of `collection`, in key order.
pub async fn rows(device: &SyncDevice, collection: &str) -> Vec<Object> {
    device
        .storage()
        .find_many(collection, Query::default())
        .await
        .expect("rows")
}

/// How many rows `collection` holds.
pub async fn count(device: &SyncDevice, collection: &str) -> u64 {
    device
        .storage()
        .count(collection, Filter::all())
        .await
        .expect("count")
}

/// Panics unless every collection of `b` holds exactly `a`'s rows, compared row by row.
pub async fn assert_identical(a: &SyncDevice, b: &SyncDevice) {
    for collection in COLLECTIONS {
        let (a, b) = (rows(a, collection).await, rows(b, collection).await);
        assert_eq!(a.len(), b.len(), "{collection}");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(x == y, "{collection}: row {i} differs: {x:?} / {y:?}");
        }
    }
}
