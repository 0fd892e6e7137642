//! storex-core: the storage abstraction of storex.
//!
//! An app describes its collections in a [`Registry`], and talks to a [`Storage`]: a
//! middleware chain over a [`StorageBackend`]. Every operation is a plain serializable
//! [`Operation`] value, validated against the registry, passed through each [`Middleware`]
//! (first added runs first) and executed by the backend, or by an open [`Transaction`].
//!
//! ```text
//! app ─► Storage::execute ─► validate ─► middleware 1 ─► … ─► validate ─► backend / transaction
//! ```
//!
//! [`MemoryBackend`] is the reference backend; [`UuidPkMiddleware`] fills UUIDv7 keys so
//! objects made on two devices never collide. See `docs/ARCHITECTURE.md` for the whole design.

mod backend;
mod batch;
mod error;
mod memory;
mod middleware;
mod operation;
mod query;
mod registry;
mod storage;
mod uuid_pk;
mod validate;
mod value;

pub use backend::{BackendFeatures, BoxFuture, StorageBackend, Transaction};
pub use batch::BatchResolver;
pub use error::{error_chain, BoxError, Error, Result};
pub use memory::MemoryBackend;
pub use middleware::{Middleware, Next, Origin};
pub use operation::{BatchStep, Operation, Outcome, ReplaceTarget, Replacement};
pub use query::{Condition, Direction, Filter, Order, Predicate, Query};
pub use registry::{CollectionDef, FieldDef, IndexDef, Registry, RegistryBuilder, RelationDef};
pub use storage::{pk_filter, Storage, StorageBuilder, StorageTransaction};
pub use uuid_pk::UuidPkMiddleware;
pub use validate::{value_problem, MAX_IN_VALUES};
pub use value::{FieldType, Object, Pk, PkKey, Value};

/// Re-exported so apps and backends name the same versions.
pub use chrono;
/// Re-exported so apps and backends name the same versions.
pub use serde_json;
/// Re-exported so apps and backends name the same versions.
pub use uuid;
