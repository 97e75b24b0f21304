//! The api's query strings (readings, aggregate, delete, device list): bounds and a
//! parse/serialize round trip (iot_fuzz::check_query). Query strings are text: other bytes are
//! skipped, as actix never hands them over.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(query) = std::str::from_utf8(data) {
        iot_fuzz::check_query(query);
    }
});
