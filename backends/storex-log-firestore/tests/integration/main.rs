//! The integration tests of storex-log-firestore.
//!
//! One test binary for the crate (linking one per file cost disk and build time); each
//! module is one subject.

mod common;
mod conformance;
mod limits;
mod removal;
