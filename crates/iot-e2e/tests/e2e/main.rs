//! End-to-end tests across the service binaries (see the crate documentation).

#![allow(clippy::unwrap_used)]

mod stack;
mod metrics;
mod traces;
