//! The whole "topic + payload -> readings" entry point (`topic\npayload`), with the default and
//! tight limits (iot_fuzz::check_message).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iot_fuzz::check_message(data));
