//! The integration tests of the `storex` command.
//!
//! One test binary for the crate (linking one per file cost disk and build time); each
//! module is one subject.

mod cli;
mod migrate;
mod serve;
