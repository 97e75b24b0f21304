//! End-to-end tests across the service binaries (see the crate documentation).

#![allow(clippy::unwrap_used)]

mod metrics;
mod stack;
mod traces;
