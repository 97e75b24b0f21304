//! Property tests of helm/iot-telemetry, rendered with the real helm for the default values
//! and every ci/*-values.yaml. One test binary; modules by concern.
#![allow(clippy::unwrap_used)]

mod alignment;
mod broker;
mod lint;
mod network;
mod secrets;
mod workloads;
