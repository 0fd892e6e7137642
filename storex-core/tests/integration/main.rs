//! The integration tests of storex-core.
//!
//! One test binary for the crate (linking one per file cost disk and build time); each
//! module is one subject.

mod middleware;
mod validation;
