//! Single parameter values and the Accept header: times, buckets, negotiation
//! (iot_fuzz::check_values).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        iot_fuzz::check_values(text);
    }
});
