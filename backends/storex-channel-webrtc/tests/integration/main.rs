//! The integration tests of storex-channel-webrtc.
//!
//! One test binary for the crate (linking one per file cost disk and build time); each
//! module is one subject.

mod channel;
mod common;
mod sqlite;
