//! End-to-end tests of the api over real HTTP, against real storage (MariaDB), session
//! (Redis) processes and a private Mosquitto.
#![allow(clippy::unwrap_used)]

mod auth;
mod browser;
mod devices;
mod errors;
mod helpers;
mod hostile_input;
mod hostile_sessions;
mod live;
mod pages;
mod readings;
mod request_deadline;
mod schemathesis;
mod resilience;
mod security;
mod traces;
