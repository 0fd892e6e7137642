//! Shared setup of the end-to-end sync tests: devices on SQLite files syncing through one
//! shared log, and helpers to write, sync and compare them.

#![allow(dead_code, unreachable_pub)] // each test file uses a different part of this

pub mod flaky;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use storex_core::{
    object, BoxFuture, CollectionDef, FieldType, Filter, Middleware, Next, Operation, Outcome,
    Registry, Result as CoreResult, StorageBackend, Value,
};
use storex_seaorm::SeaOrmBackend;
use storex_sync::{
    Clock, ContinuousOptions, ContinuousSync, SharedSyncLog, SyncDevice, SyncOptions, SyncReport,
    STATE_COLLECTION,
};

/// `note` (text key, title) and `photo` (text key, caption).
pub fn registry() -> Registry {
    Registry::builder()
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Text)
                .field("title", FieldType::Text)
                .primary_key(["id"]),
        )
        .collection(
            CollectionDef::new("photo")
                .field("id", FieldType::Text)
                .optional_field("caption", FieldType::Text)
                .primary_key(["id"]),
        )
        .build()
        .expect("valid registry")
}

/// Fails the next batch that stores the shared-log cursor, once armed.
#[derive(Debug, Default)]
pub struct FailCursorStore {
    armed: AtomicBool,
}

impl Middleware for FailCursorStore {
    fn process<'a>(&'a self, op: Operation, next: Next<'a>) -> BoxFuture<'a, CoreResult<Outcome>> {
        let stores_cursor = matches!(&op, Operation::Batch { steps }
            if steps.iter().any(|s| s.operation.collection() == Some(STATE_COLLECTION) && matches!(s.operation, Operation::UpdateByPk { .. })));
        if stores_cursor && self.armed.swap(false, Ordering::SeqCst) {
            return Box::pin(async {
                Err(storex_core::Error::Transaction {
                    problem: "injected failure before the cursor store".into(),
                })
            });
        }
        next.run(op)
    }
}

/// Devices of one user, each on its own SQLite file, around one shared log.
pub struct Devices {
    log: Arc<dyn SharedSyncLog>,
    dir: tempfile::TempDir,
    syncs: Vec<ContinuousSync>,
    saboteurs: Vec<Arc<FailCursorStore>>,
}

impl Devices {
    pub async fn new(log: Arc<dyn SharedSyncLog>) -> Self {
        Devices {
            log,
            dir: tempfile::tempdir().expect("temporary directory"),
            syncs: Vec::new(),
            saboteurs: Vec::new(),
        }
    }

    pub async fn add(&mut self) -> usize {
        self.add_with(ContinuousOptions::default()).await
    }

    pub async fn add_with(&mut self, options: ContinuousOptions) -> usize {
        let index = self.syncs.len();
        let id = self
            .log
            .create_device("ann")
            .await
            .expect("register device");
        let backend: Arc<dyn StorageBackend> = Arc::new(
            SeaOrmBackend::open_sqlite_file(self.dir.path().join(format!("device-{index}.db")))
                .await
                .expect("open"),
        );
        let saboteur = Arc::new(FailCursorStore::default());
        let device = SyncDevice::open(
            registry(),
            backend,
            Clock::new(id),
            SyncOptions::default().with_middleware(saboteur.clone()),
        )
        .await
        .expect("device");
        self.syncs
            .push(ContinuousSync::new(device, self.log.clone(), options));
        self.saboteurs.push(saboteur);
        index
    }

    pub fn device(&self, index: usize) -> &SyncDevice {
        self.syncs[index].device()
    }

    pub fn fail_next_cursor_store(&self, index: usize) {
        self.saboteurs[index].armed.store(true, Ordering::SeqCst);
    }

    pub async fn note(&self, index: usize, id: &str, title: &str) {
        self.device(index)
            .storage()
            .create("note", object! { "id" => id, "title" => title })
            .await
            .expect("create note");
    }

    pub async fn photo(&self, index: usize, id: &str) {
        self.device(index)
            .storage()
            .create("photo", object! { "id" => id, "caption" => "a photo" })
            .await
            .expect("create photo");
    }

    pub async fn set_title(&self, index: usize, id: &str, title: &str) {
        self.device(index)
            .storage()
            .update_by_pk("note", id, object! { "title" => title })
            .await
            .expect("update note");
    }

    pub async fn delete(&self, index: usize, id: &str) {
        self.device(index)
            .storage()
            .delete_by_pk("note", id)
            .await
            .expect("delete note");
    }

    pub async fn title(&self, index: usize, id: &str) -> Option<String> {
        self.device(index)
            .storage()
            .find_by_pk("note", id)
            .await
            .expect("find")
            .and_then(|row| row.get("title").and_then(Value::as_text).map(str::to_owned))
    }

    pub async fn count(&self, index: usize) -> u64 {
        self.device(index)
            .storage()
            .count("note", Filter::all())
            .await
            .expect("count")
    }

    pub async fn try_sync(&self, index: usize) -> storex_sync::Result<SyncReport> {
        self.syncs[index].sync_once().await
    }

    pub async fn sync(&self, index: usize) -> SyncReport {
        self.try_sync(index).await.expect("sync")
    }

    /// Two rounds over every device: everything reaches everyone.
    pub async fn sync_all(&self, indices: &[usize]) {
        for _ in 0..2 {
            for &i in indices {
                self.sync(i).await;
            }
        }
    }

    pub async fn assert_converged(&self, indices: &[usize]) {
        let first = self
            .device(indices[0])
            .digest("note")
            .await
            .expect("digest");
        for &i in indices {
            assert_eq!(
                self.device(i).digest("note").await.expect("digest"),
                first,
                "device {i} differs"
            );
        }
    }
}
