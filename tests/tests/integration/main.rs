//! The integration tests of storex-test: its suites run against the reference backends.
//!
//! One test binary for the crate (linking one per file cost disk and build time); each
//! module is one subject.

mod memory_conformance;
mod postgres_devices;
mod shared_log_suite_catches_faults;
mod suite_catches_faults;
