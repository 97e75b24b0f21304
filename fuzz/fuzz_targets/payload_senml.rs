//! iot_payload::parse on arbitrary payload bytes: properties and a serialize/parse round trip
//! (iot_fuzz::check_payload). Seeds: fuzz/seeds/payload_senml.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iot_fuzz::check_payload(data));
