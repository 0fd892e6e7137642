//! A deterministic digest of a collection's rows, for two devices to prove they agree.

use sha2::{Digest as _, Sha256};
use storex_core::{serde_json, Query, Storage};

use crate::error::Result;

/// The SHA-256 of every row of `collection` in primary-key order (each row as canonical
/// JSON, fields ordered by name), in hex. Equal data gives equal digests on any backend.
pub async fn collection_digest(storage: &Storage, collection: &str) -> Result<String> {
    let rows = storage.find_many(collection, Query::default()).await?;
    let mut hasher = Sha256::new();
    for row in &rows {
        hasher.update(serde_json::to_vec(row).unwrap_or_default());
        hasher.update(b"\n");
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
