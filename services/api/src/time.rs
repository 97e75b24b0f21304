//! Timestamps at the HTTP edge: RFC 3339 out. Parsing of query parameters lives in
//! `iot_query` (pure, fuzzed).

use chrono::{DateTime, SecondsFormat, Utc};

/// RFC 3339 in UTC with `Z`, fractional seconds only as far as needed (0, 3 or 6 digits):
/// what chrono's `to_rfc3339_opts(SecondsFormat::AutoSi, true)` gives, without its allocation.
pub fn format_us(us: i64) -> String {
    Rfc3339Us(us).to_string()
}

/// [`format_us`] as a `Display`, so that serializers can write it without an intermediate
/// `String` (a readings response formats one per reading).
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339Us(pub i64);

/// Microseconds of 0000-01-01T00:00:00Z and of 10000-01-01T00:00:00Z: the four-digit years,
/// which the fast path handles; anything else goes through chrono.
const FAST_MIN_US: i64 = -62_167_219_200_000_000;
const FAST_END_US: i64 = 253_402_300_800_000_000;

impl Rfc3339Us {
    /// The text in `buf`, or `None` outside the four-digit years (then use `Display`).
    pub fn format_into(self, buf: &mut [u8; 27]) -> Option<&str> {
        let us = self.0;
        if !(FAST_MIN_US..FAST_END_US).contains(&us) {
            return None;
        }
        let secs = us.div_euclid(1_000_000);
        let frac = us.rem_euclid(1_000_000);
        let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        // Every value below is non-negative and fits its width (year 0..=9999).
        let digits = |buf: &mut [u8; 27], at: usize, width: usize, mut value: u64| {
            for i in (at..at + width).rev() {
                buf[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        *buf = *b"0000-00-00T00:00:00.000000Z";
        digits(buf, 0, 4, year as u64);
        digits(buf, 5, 2, u64::from(month));
        digits(buf, 8, 2, u64::from(day));
        digits(buf, 11, 2, (sod / 3600) as u64);
        digits(buf, 14, 2, (sod / 60 % 60) as u64);
        digits(buf, 17, 2, (sod % 60) as u64);
        let len = if frac == 0 {
            19
        } else if frac % 1000 == 0 {
            digits(buf, 20, 3, (frac / 1000) as u64);
            23
        } else {
            digits(buf, 20, 6, frac as u64);
            26
        };
        buf[len] = b'Z';
        std::str::from_utf8(&buf[..=len]).ok()
    }
}

impl std::fmt::Display for Rfc3339Us {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut buf = [0u8; 27];
        if let Some(text) = self.format_into(&mut buf) {
            return f.write_str(text);
        }
        match DateTime::<Utc>::from_timestamp_micros(self.0) {
            Some(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            None => write!(f, "{}", self.0),
        }
    }
}

/// (year, month, day) of a day number counted from 1970-01-01, proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn formats_like_chrono_auto_si() {
        let chrono = |us: i64| {
            DateTime::<Utc>::from_timestamp_micros(us).map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        };
        let mut samples = vec![
            0,
            1,
            -1,
            999_999,
            1_000,
            1_767_225_600_000_000,
            1_767_225_600_123_000,
            1_767_225_600_123_456,
            951_782_400_000_000, // 2000-02-29
            4_107_542_399_999_999, // 2100-02-28T23:59:59.999999
            FAST_MIN_US,
            FAST_MIN_US - 1,
            FAST_END_US - 1,
            FAST_END_US,
            i64::MAX,
            i64::MIN,
        ];
        // A deterministic spread over the four-digit years, with every fraction shape.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let us = FAST_MIN_US + (x % (FAST_END_US - FAST_MIN_US) as u64) as i64;
            samples.extend([us, us - us % 1_000_000, us - us % 1000]);
        }
        for us in samples {
            let expected = chrono(us).unwrap_or_else(|| us.to_string());
            assert_eq!(format_us(us), expected, "{us}");
        }
    }
}
