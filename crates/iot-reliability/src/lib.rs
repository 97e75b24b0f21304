//! Reliability checks of the whole stack: the fault suite ([`faults`]) and the soak
//! ([`soak`]). `tests/` runs short forms in CI; the `iot-reliability` binary runs the long
//! forms for `scripts/reliability`, which renders docs/reliability.md.

pub mod faults;
pub mod soak;
pub mod stack;
