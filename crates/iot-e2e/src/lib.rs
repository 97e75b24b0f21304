//! End-to-end tests across the real service binaries (`tests/e2e`): every service runs as a
//! process of its own (the OpenTelemetry tracer is global per process), on free ports, against
//! the test's own MariaDB database, Redis key prefix and Mosquitto, exporting spans to an
//! in-test OTLP receiver (`iot_testkit::otlp`).
//!
//! - `traces`: one HTTP request to a readings endpoint is one trace across api, session and
//!   storage; one MQTT v5 message with a `traceparent` user property is followed through ingest
//!   into storage and the database.
//! - `metrics`: `/metrics` scraped before and after a known workload moves by exactly the
//!   workload, and every metric the Grafana dashboard queries is exported.
//!
//! The binaries must be built (`cargo build --workspace`, which `scripts/test.sh` runs).
