//! Integration tests of the storage service against the real MariaDB: each test gets its own
//! database and its own service instance on port 0, and talks to it through the gRPC client.

#![allow(clippy::unwrap_used)]

mod devices;
mod failures;
mod helpers;
mod process;
mod readings;
mod traces;
mod users;
