//! Durations in flags and environment variables: `500ms`, `90s`, `15m`, `24h`, `30d` or a bare
//! number of seconds (used by every service's `value_parser`).

use std::time::Duration;

/// Parses `500ms`, `90s`, `15m`, `24h`, `30d` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration (e.g. 90s, 15m, 24h, 30d)"))?;
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown unit `{other}` in `{text}` (use ms, s, m, h or d)")),
    };
    value.checked_mul(millis_per_unit).map(Duration::from_millis).ok_or_else(|| format!("`{text}` is too long"))
}
