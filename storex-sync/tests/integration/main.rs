//! The integration tests of storex-sync.
//!
//! One test binary for the crate (linking one per file cost disk and build time); each
//! module is one subject.

mod bad_entries;
mod continuous;
mod convergence;
mod convergence_through_sync;
mod durability;
mod fast_sync;
mod key_runs;
mod log_lifecycle;
mod logging;
mod memory_shared_log;
mod reconcile_rules;
mod values;
