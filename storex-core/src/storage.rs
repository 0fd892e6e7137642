//! [`Storage`]: the app's entry point, a registry plus a middleware chain over a backend.
//!
//! ```
//! use storex_core::{object, CollectionDef, FieldType, MemoryBackend, Registry, Storage, UuidPkMiddleware};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> storex_core::Result<()> {
//! let registry = Registry::builder()
//!     .collection(
//!         CollectionDef::new("note")
//!             .field("id", FieldType::Uuid)
//!             .field("title", FieldType::Text)
//!             .primary_key(["id"]),
//!     )
//!     .build()?;
//! // The first middleware added runs first (outermost).
//! let storage = Storage::builder(registry, MemoryBackend::new())
//!     .with(UuidPkMiddleware::new())
//!     .build()
//!     .await?;
//! let pk = storage.create("note", object! { "title" => "hello" }).await?;
//! let found = storage.find_by_pk("note", pk).await?.expect("just created");
//! assert_eq!(found["title"].as_text(), Some("hello"));
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::backend::{StorageBackend, Transaction};
use crate::error::{Error, Result};
use crate::middleware::{Middleware, Next, Origin};
use crate::operation::{BatchStep, Operation, Outcome};
use crate::query::{Filter, Query};
use crate::registry::Registry;
use crate::validate::{validate, Stage};
use crate::value::{Object, Pk, Value};

struct Inner {
    registry: Arc<Registry>,
    backend: Arc<dyn StorageBackend>,
    chain: Vec<Arc<dyn Middleware>>,
}

/// A registry and a middleware chain over a backend. Cheap to clone; clones share all.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("backend", &self.inner.backend.name())
            .field("chain", &self.inner.chain)
            .finish()
    }
}

/// Builds a [`Storage`]; see [`Storage::builder`].
pub struct StorageBuilder {
    registry: Arc<Registry>,
    backend: Arc<dyn StorageBackend>,
    chain: Vec<Arc<dyn Middleware>>,
}

impl fmt::Debug for StorageBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageBuilder")
            .field("backend", &self.backend.name())
            .field("chain", &self.chain)
            .finish()
    }
}

impl StorageBuilder {
    /// Appends a middleware; the first added runs first (outermost).
    pub fn with(mut self, middleware: impl Middleware) -> Self {
        self.chain.push(Arc::new(middleware));
        self
    }

    /// Appends a shared middleware.
    pub fn with_arc(mut self, middleware: Arc<dyn Middleware>) -> Self {
        self.chain.push(middleware);
        self
    }

    /// Prepares the backend for the registry (creating tables where needed) and returns
    /// the storage.
    pub async fn build(self) -> Result<Storage> {
        self.backend.prepare(&self.registry).await?;
        Ok(Storage {
            inner: Arc::new(Inner {
                registry: self.registry,
                backend: self.backend,
                chain: self.chain,
            }),
        })
    }
}

impl Storage {
    /// Starts building a storage for `registry` on `backend`.
    pub fn builder(
        registry: impl Into<Arc<Registry>>,
        backend: impl StorageBackend,
    ) -> StorageBuilder {
        Self::builder_shared(registry, Arc::new(backend))
    }

    /// Like [`Storage::builder`], for a backend that is already shared.
    pub fn builder_shared(
        registry: impl Into<Arc<Registry>>,
        backend: Arc<dyn StorageBackend>,
    ) -> StorageBuilder {
        StorageBuilder {
            registry: registry.into(),
            backend,
            chain: Vec::new(),
        }
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn StorageBackend> {
        &self.inner.backend
    }

    /// Runs `op` through the chain as the app's own operation.
    pub async fn execute(&self, op: Operation) -> Result<Outcome> {
        self.execute_as(op, Origin::App).await
    }

    /// Runs `op` through the chain on behalf of `origin`.
    pub async fn execute_as(&self, op: Operation, origin: Origin) -> Result<Outcome> {
        self.run(op, origin, None).await
    }

    async fn run(
        &self,
        mut op: Operation,
        origin: Origin,
        tx: Option<&dyn Transaction>,
    ) -> Result<Outcome> {
        let inner = &*self.inner;
        validate(&inner.registry, &mut op, Stage::Entry)?;
        Next::new(&inner.chain, &*inner.backend, tx, &inner.registry, origin)
            .run(op)
            .await
    }

    /// Opens a transaction: operations run through it pass the whole chain and commit or
    /// roll back together. Dropping it without commit rolls back.
    pub async fn begin(&self) -> Result<StorageTransaction> {
        self.supports_transactions()?;
        let tx = self.inner.backend.begin().await?;
        Ok(StorageTransaction::new(self.clone(), tx))
    }

    /// Opens a transaction whose reads all see one snapshot of the data (see
    /// [`StorageBackend::begin_snapshot`]), for reading everything consistently. It only
    /// reads: a write in it fails with [`Error::InvalidOperation`] on every backend (on
    /// SQLite such a transaction takes no lock until it writes, so a write there could not
    /// be ordered with the others).
    pub async fn begin_snapshot(&self) -> Result<StorageTransaction> {
        self.supports_transactions()?;
        let tx = self.inner.backend.begin_snapshot().await?;
        let mut tx = StorageTransaction::new(self.clone(), tx);
        tx.reads_only = true;
        Ok(tx)
    }

    /// Opens a transaction for applying other devices' changes while the app's own
    /// transactions may be open (see [`StorageBackend::begin_isolated`]).
    pub async fn begin_isolated(&self) -> Result<StorageTransaction> {
        self.supports_transactions()?;
        let tx = self.inner.backend.begin_isolated().await?;
        Ok(StorageTransaction::new(self.clone(), tx))
    }

    fn supports_transactions(&self) -> Result<()> {
        let backend = &self.inner.backend;
        if backend.features().transactions {
            Ok(())
        } else {
            Err(Error::Unsupported {
                backend: backend.name(),
                what: "transactions".into(),
            })
        }
    }

    /// Creates an object and returns its key.
    pub async fn create(&self, collection: &str, object: Object) -> Result<Pk> {
        created_pk(self.execute(Operation::create(collection, object)).await?)
    }

    /// Creates the object, or replaces the object with its key (see [`Operation::Put`]);
    /// returns its key.
    pub async fn put(&self, collection: &str, object: Object) -> Result<Pk> {
        match self.execute(Operation::put(collection, object)).await? {
            Outcome::Put { pk } => Ok(pk),
            other => Err(other.unexpected("put")),
        }
    }

    /// The object with key `pk`, if any.
    pub async fn find_by_pk(&self, collection: &str, pk: impl Into<Pk>) -> Result<Option<Object>> {
        let filter = pk_filter(&self.inner.registry, collection, pk.into())?;
        self.find_one(collection, Query::new(filter)).await
    }

    /// The first object `query` finds.
    pub async fn find_one(&self, collection: &str, query: Query) -> Result<Option<Object>> {
        self.execute(Operation::find_one(collection, query))
            .await?
            .into_found()
    }

    /// Every object `query` finds.
    pub async fn find_many(&self, collection: &str, query: Query) -> Result<Vec<Object>> {
        self.execute(Operation::find_many(collection, query))
            .await?
            .into_objects()
    }

    /// The values of `fields` of every object `query` finds: per object, one value per field,
    /// in the order of `fields` (see [`Operation::FindValues`]).
    pub async fn find_values(
        &self,
        collection: &str,
        query: Query,
        fields: &[&str],
    ) -> Result<Vec<Vec<Value>>> {
        let op = Operation::find_values(collection, query, fields.iter().copied());
        self.execute(op).await?.into_values()
    }

    /// How many objects `filter` matches.
    pub async fn count(&self, collection: &str, filter: Filter) -> Result<u64> {
        count_of(self.execute(Operation::count(collection, filter)).await?)
    }

    /// Updates the object with key `pk`; returns how many were updated (0 or 1).
    pub async fn update_by_pk(
        &self,
        collection: &str,
        pk: impl Into<Pk>,
        changes: Object,
    ) -> Result<u64> {
        count_of(
            self.execute(Operation::update_by_pk(collection, pk, changes))
                .await?,
        )
    }

    /// Updates every object `filter` matches; returns how many.
    pub async fn update_where(
        &self,
        collection: &str,
        filter: Filter,
        changes: Object,
    ) -> Result<u64> {
        count_of(
            self.execute(Operation::update_where(collection, filter, changes))
                .await?,
        )
    }

    /// Deletes the object with key `pk`; returns how many were deleted (0 or 1).
    pub async fn delete_by_pk(&self, collection: &str, pk: impl Into<Pk>) -> Result<u64> {
        count_of(
            self.execute(Operation::delete_by_pk(collection, pk))
                .await?,
        )
    }

    /// Deletes every object `filter` matches; returns how many.
    pub async fn delete_where(&self, collection: &str, filter: Filter) -> Result<u64> {
        count_of(
            self.execute(Operation::delete_where(collection, filter))
                .await?,
        )
    }

    /// Updates every object `filter` matches; returns their keys, in no particular order.
    pub async fn update_where_returning_pks(
        &self,
        collection: &str,
        filter: Filter,
        changes: Object,
    ) -> Result<Vec<Pk>> {
        pks_of(
            "update_where_returning_pks",
            self.execute(Operation::update_where_returning_pks(
                collection, filter, changes,
            ))
            .await?,
        )
    }

    /// Deletes every object `filter` matches; returns their keys, in no particular order.
    pub async fn delete_where_returning_pks(
        &self,
        collection: &str,
        filter: Filter,
    ) -> Result<Vec<Pk>> {
        pks_of(
            "delete_where_returning_pks",
            self.execute(Operation::delete_where_returning_pks(collection, filter))
                .await?,
        )
    }

    /// Applies `steps` atomically; returns one outcome per step.
    pub async fn batch(&self, steps: Vec<BatchStep>) -> Result<Vec<Outcome>> {
        match self.execute(Operation::Batch { steps }).await? {
            Outcome::Batch(outcomes) => Ok(outcomes),
            other => Err(other.unexpected("batch")),
        }
    }
}

/// A filter selecting the object with key `pk` of `collection`.
pub fn pk_filter(registry: &Registry, collection: &str, pk: Pk) -> Result<Filter> {
    let def = registry.collection(collection)?;
    if pk.0.len() != def.pk_fields().len() {
        return Err(Error::invalid_operation(
            collection,
            format!(
                "its primary key has {} field(s), the key given has {}",
                def.pk_fields().len(),
                pk.0.len()
            ),
        ));
    }
    Ok(def
        .pk_fields()
        .iter()
        .zip(pk.0)
        .fold(Filter::all(), |filter, (field, value)| {
            filter.eq(field.clone(), value)
        }))
}

fn created_pk(outcome: Outcome) -> Result<Pk> {
    match outcome {
        Outcome::Created { pk } => Ok(pk),
        other => Err(other.unexpected("create")),
    }
}

fn count_of(outcome: Outcome) -> Result<u64> {
    outcome.count().ok_or_else(|| outcome.unexpected("count"))
}

fn pks_of(operation: &'static str, outcome: Outcome) -> Result<Vec<Pk>> {
    match outcome {
        Outcome::UpdatedPks { pks } | Outcome::DeletedPks { pks } => Ok(pks),
        other => Err(other.unexpected(operation)),
    }
}

/// An open transaction on a [`Storage`]; operations pass the whole chain.
pub struct StorageTransaction {
    storage: Storage,
    tx: Box<dyn Transaction>,
    /// Whether a write of the app's ([`Origin::App`]) succeeded in it.
    app_wrote: AtomicBool,
    /// Whether it is a snapshot, for reads only ([`Storage::begin_snapshot`]).
    reads_only: bool,
}

impl fmt::Debug for StorageTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageTransaction")
            .field("tx", &self.tx)
            .finish()
    }
}

impl StorageTransaction {
    fn new(storage: Storage, tx: Box<dyn Transaction>) -> Self {
        StorageTransaction {
            storage,
            tx,
            app_wrote: AtomicBool::new(false),
            reads_only: false,
        }
    }

    /// Runs `op` through the chain inside this transaction, as the app's own operation.
    pub async fn execute(&self, op: Operation) -> Result<Outcome> {
        self.execute_as(op, Origin::App).await
    }

    /// Runs `op` through the chain inside this transaction on behalf of `origin`.
    pub async fn execute_as(&self, op: Operation, origin: Origin) -> Result<Outcome> {
        if self.reads_only && op.is_write() {
            return Err(Error::invalid_operation(
                op.collection().unwrap_or_default(),
                "a snapshot transaction (`Storage::begin_snapshot`) only reads: write in one \
                 from `Storage::begin`",
            ));
        }
        let app_write = origin == Origin::App && op.is_write();
        let outcome = self.storage.run(op, origin, Some(&*self.tx)).await?;
        if app_write {
            self.app_wrote.store(true, Ordering::Relaxed);
        }
        Ok(outcome)
    }

    /// Makes every write durable and visible. If the app wrote in this transaction, each
    /// middleware of the chain is then told ([`Middleware::app_transaction_committed`]).
    pub async fn commit(self) -> Result<()> {
        let StorageTransaction {
            storage,
            tx,
            app_wrote,
            ..
        } = self;
        tx.commit().await?;
        if app_wrote.into_inner() {
            for middleware in &storage.inner.chain {
                middleware.app_transaction_committed();
            }
        }
        Ok(())
    }

    /// Undoes every write.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await
    }
}
