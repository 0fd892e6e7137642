//! storex-test: conformance suites every backend runs, and shared fixtures.
//!
//! A backend crate proves itself by running the suite from its own
//! `tests/integration/conformance.rs`:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use storex_core::MemoryBackend;
//! storex_test::backend_suite(|| async { MemoryBackend::new() }).await;
//! # }
//! ```
//!
//! Each check runs on a fresh backend from the factory, through a [`storex_core::Storage`]
//! built on [`fixture_registry`] with [`storex_core::UuidPkMiddleware`]. A failing check
//! does not stop the others: the suite reports every failure by name.
//!
//! Shared logs run [`shared_log_suite`] the same way.

mod backend_suite;
pub mod damage;
pub mod devices;
mod fixtures;
pub mod flaky;
mod services;
mod shared_log_suite;
mod suite;
pub mod sync_scenarios;
pub mod transfer;

pub use backend_suite::{backend_suite, run_backend_suite};
pub use fixtures::fixture_registry;
pub use services::{
    firestore_emulator, fresh_postgres_database, postgres_url, role_without_ddl_rights,
};
pub use shared_log_suite::{run_shared_log_suite, shared_log_suite};
pub use suite::SuiteReport;
