//! Timestamps at the HTTP edge: RFC 3339 out. Parsing of query parameters lives in
//! `iot_query` (pure, fuzzed).

pub use iot_query::time::format_time as format_us;
