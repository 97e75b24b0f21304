//! Integration tests of the session service against a real Redis. Each test has its own key
//! prefix (tests run in parallel against the shared Redis); outage tests start a private
//! `redis-server`.

#![allow(clippy::unwrap_used)]

mod expiry;
mod helpers;
mod lifecycle;
mod outage;
mod process;
mod traces;
mod validation;
