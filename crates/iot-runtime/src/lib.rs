//! Shared service plumbing. A service's `main.rs` wires its config into these pieces
//! and its own server; nothing here knows about a particular service.

pub mod duration;
pub mod grpc;
pub mod logging;
pub mod ops;
pub mod shutdown;
pub mod telemetry;

pub use ops::{OpsServer, ReadinessCheck};
pub use shutdown::shutdown_signal;
pub use tokio_util::sync::CancellationToken;
