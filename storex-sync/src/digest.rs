//! A deterministic digest of a collection's rows, for two devices to prove they agree.

use sha2::{Digest as _, Sha256};
use storex_core::{serde_json, Query, Storage};

use crate::error::Result;

/// The SHA-256 of every row of `collection` in primary-key order (each row as canonical
/// JSON, fields ordered by name), in hex. Equal data gives equal digests on any backend.
///
/// The rows are put in storex's own key order (text by bytes) before hashing: a database
/// sorts text by its collation, and an adopted PostgreSQL table may have another than the
/// SQLite file of the device it is compared with.
pub async fn collection_digest(storage: &Storage, collection: &str) -> Result<String> {
    let def = storage.registry().collection(collection)?;
    let rows = storage.find_many(collection, Query::default()).await?;
    let mut hasher = Sha256::new();
    for row in Query::default().apply(def, &rows) {
        hasher.update(serde_json::to_vec(row).unwrap_or_default());
        hasher.update(b"\n");
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use storex_core::{
        object, BoxFuture, CollectionDef, FieldType, MemoryBackend, Middleware, Next, Operation,
        Outcome, Registry, StorageBackend,
    };

    use super::*;

    /// Gives found objects back in reverse order, as a database with another collation might.
    #[derive(Debug)]
    struct OtherCollation;

    impl Middleware for OtherCollation {
        fn process<'a>(
            &'a self,
            op: Operation,
            next: Next<'a>,
        ) -> BoxFuture<'a, storex_core::Result<Outcome>> {
            Box::pin(async move {
                match next.run(op).await? {
                    Outcome::FoundMany(mut objects) => {
                        objects.reverse();
                        Ok(Outcome::FoundMany(objects))
                    }
                    other => Ok(other),
                }
            })
        }
    }

    #[tokio::test]
    async fn the_digest_does_not_depend_on_the_order_the_database_returns_rows_in() {
        let registry = Registry::builder()
            .collection(
                CollectionDef::new("tag")
                    .field("name", FieldType::Text)
                    .primary_key(["name"]),
            )
            .build()
            .expect("registry");
        let backend: Arc<dyn StorageBackend> = Arc::new(MemoryBackend::new());
        let storage = Storage::builder_shared(registry.clone(), backend.clone())
            .build()
            .await
            .expect("storage");
        for name in ["Zebra", "apple", "Äpfel", "banana"] {
            storage
                .create("tag", object! { "name" => name })
                .await
                .expect("create");
        }
        let reordered = Storage::builder_shared(registry, backend)
            .with(OtherCollation)
            .build()
            .await
            .expect("storage");
        assert_eq!(
            collection_digest(&reordered, "tag").await.expect("digest"),
            collection_digest(&storage, "tag").await.expect("digest")
        );
    }
}
