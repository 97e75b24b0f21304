//! Ingest against a real Mosquitto, the real storage binary and a real MariaDB database.
//! `iot-storage` must be built in the same target directory (`cargo nextest run --workspace`
//! does that; with `-p iot-ingest` run `cargo build -p iot-storage` first).

#![allow(clippy::unwrap_used)]

mod helpers;
mod delivery;
mod rejects;
mod replicas;
