//! Devices of one user on SQLite files, syncing through one shared log, with helpers to
//! write, sync and compare them: the setup of the end-to-end sync scenarios.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use storex_core::{
    object, BoxFuture, CollectionDef, FieldType, Filter, Middleware, Next, Operation, Outcome,
    Registry, Result as CoreResult, StorageBackend, Value,
};
use storex_seaorm::SeaOrmBackend;
use storex_sync::{
    Clock, ContinuousOptions, ContinuousSync, SharedSyncLog, SyncDevice, SyncOptions, SyncReport,
    STATE_COLLECTION, VERSIONS_COLLECTION,
};

/// `note` (text key, title) and `photo` (text key, caption).
/// The registry of the scenarios.
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

/// Fails the next batch that stores the shared-log cursor, or the next that stores rows of
/// the versions index, once armed.
#[derive(Debug, Default)]
pub struct Saboteur {
    cursor_store: AtomicBool,
    versions_store: AtomicBool,
}

impl Middleware for Saboteur {
    fn process<'a>(&'a self, op: Operation, next: Next<'a>) -> BoxFuture<'a, CoreResult<Outcome>> {
        let Operation::Batch { steps } = &op else {
            return next.run(op);
        };
        let stores = |collection: &str| {
            steps
                .iter()
                .filter(|s| s.operation.collection() == Some(collection))
                .map(|s| &s.operation)
                .collect::<Vec<_>>()
        };
        let stores_cursor = stores(STATE_COLLECTION)
            .iter()
            .any(|op| matches!(op, Operation::UpdateByPk { .. }));
        let stores_versions = !stores(VERSIONS_COLLECTION).is_empty();
        let failing = (stores_cursor && self.cursor_store.swap(false, Ordering::SeqCst))
            || (stores_versions && self.versions_store.swap(false, Ordering::SeqCst));
        if failing {
            return Box::pin(async {
                Err(storex_core::Error::Transaction {
                    problem: "injected failure of a sync store".into(),
                })
            });
        }
        next.run(op)
    }
}

/// Devices of one user, each on its own SQLite file, around one shared log.
#[derive(Debug)]
pub struct Devices {
    log: Arc<dyn SharedSyncLog>,
    dir: tempfile::TempDir,
    syncs: Vec<ContinuousSync>,
    saboteurs: Vec<Arc<Saboteur>>,
}

impl Devices {
    /// No devices yet, around `log`.
    pub async fn new(log: Arc<dyn SharedSyncLog>) -> Self {
        Devices {
            log,
            dir: tempfile::tempdir().expect("temporary directory"),
            syncs: Vec::new(),
            saboteurs: Vec::new(),
        }
    }

    /// Adds a device with default options; returns its index.
    pub async fn add(&mut self) -> usize {
        self.add_with(ContinuousOptions::default()).await
    }

    /// Adds a device with `options`; returns its index.
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
        let saboteur = Arc::new(Saboteur::default());
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

    /// Syncs the device at `index` with other `options` from now on (as after a restart).
    pub fn resubscribe(&mut self, index: usize, options: ContinuousOptions) {
        let device = self.syncs[index].device().clone();
        self.syncs[index] = ContinuousSync::new(device, self.log.clone(), options);
    }

    /// The device at `index`.
    pub fn device(&self, index: usize) -> &SyncDevice {
        self.syncs[index].device()
    }

    /// Makes the device's next cursor store fail (and with it the whole page).
    pub fn fail_next_cursor_store(&self, index: usize) {
        self.saboteurs[index]
            .cursor_store
            .store(true, Ordering::SeqCst);
    }

    /// Makes the device's next write of rows of the versions index fail (and with it the
    /// whole batch).
    pub fn fail_next_versions_store(&self, index: usize) {
        self.saboteurs[index]
            .versions_store
            .store(true, Ordering::SeqCst);
    }

    /// Creates a note.
    pub async fn note(&self, index: usize, id: &str, title: &str) {
        self.device(index)
            .storage()
            .create("note", object! { "id" => id, "title" => title })
            .await
            .expect("create note");
    }

    /// Creates a photo.
    pub async fn photo(&self, index: usize, id: &str) {
        self.device(index)
            .storage()
            .create("photo", object! { "id" => id, "caption" => "a photo" })
            .await
            .expect("create photo");
    }

    /// Changes a note's title.
    pub async fn set_title(&self, index: usize, id: &str, title: &str) {
        self.device(index)
            .storage()
            .update_by_pk("note", id, object! { "title" => title })
            .await
            .expect("update note");
    }

    /// Deletes a note.
    pub async fn delete(&self, index: usize, id: &str) {
        self.device(index)
            .storage()
            .delete_by_pk("note", id)
            .await
            .expect("delete note");
    }

    /// A note's title, if the note exists.
    pub async fn title(&self, index: usize, id: &str) -> Option<String> {
        self.device(index)
            .storage()
            .find_by_pk("note", id)
            .await
            .expect("find")
            .and_then(|row| row.get("title").and_then(Value::as_text).map(str::to_owned))
    }

    /// How many notes the device has.
    pub async fn count(&self, index: usize) -> u64 {
        self.device(index)
            .storage()
            .count("note", Filter::all())
            .await
            .expect("count")
    }

    /// How many payloads the device keeps in its quarantine.
    pub async fn quarantined(&self, index: usize) -> u64 {
        self.device(index)
            .storage()
            .count(storex_sync::QUARANTINE_COLLECTION, Filter::all())
            .await
            .expect("count the quarantine")
    }

    /// One sync of the device.
    pub async fn try_sync(&self, index: usize) -> storex_sync::Result<SyncReport> {
        self.syncs[index].sync_once().await
    }

    /// One sync of the device, which must succeed.
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

    /// Panics unless every device holds the same notes.
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
