//! Damaging rows of sync's own tables, for tests of what sync does with a row that does not
//! read (a disk fault, or a newer version's format after a downgrade).

use storex_core::uuid::Uuid;
use storex_core::{Filter, Object, Storage, Value};
use storex_sync::{LOG_COLLECTION, VERSIONS_COLLECTION};

/// Overwrites `field` of the client log's row `id` in `storage` with `value`.
pub async fn overwrite_log_row(storage: &Storage, id: Uuid, field: &str, value: Value) {
    overwrite(
        storage,
        LOG_COLLECTION,
        Filter::all().eq("id", id),
        field,
        value,
    )
    .await;
}

/// Overwrites the state of the versions index's row `object` in `storage` with `state`.
pub async fn overwrite_versions_row(storage: &Storage, object: &str, state: Value) {
    let filter = Filter::all().eq("object", object);
    overwrite(storage, VERSIONS_COLLECTION, filter, "state", state).await;
}

async fn overwrite(storage: &Storage, collection: &str, filter: Filter, field: &str, value: Value) {
    let mut changes = Object::new();
    changes.insert(field.to_owned(), value);
    let changed = storage
        .update_where(collection, filter, changes)
        .await
        .expect("overwritten");
    assert_eq!(changed, 1, "one row of {collection}");
}
