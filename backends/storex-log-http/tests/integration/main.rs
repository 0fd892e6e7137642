//! The integration tests of storex-log-http.
//!
//! One test binary for the crate (linking one per file cost disk and build time); each
//! module is one subject.

mod body_budget;
mod common;
mod conformance;
mod hostile_server;
mod load;
mod lost_reply;
mod scale_out;
mod security;
mod shutdown;
mod slow_link;
