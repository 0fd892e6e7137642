//! The integration tests of storex-app.
//!
//! One test binary for the crate (linking one per file cost disk and build time); each
//! module is one subject.

mod background;
mod common;
mod pairing;
mod sync_server;
mod synced_storage;
