//! The integration tests of storex-seaorm.
//!
//! One test binary for the crate (linking one per file cost disk and build time); each
//! module is one subject.

mod batches;
mod clustered;
mod conformance;
mod crash;
mod durable;
mod existing_entities;
mod indexes;
mod introspected_schema;
mod lost_transactions;
mod query_bounds;
mod refused_writes;
mod snapshot;
mod where_keys;
