//! Input rules shared by the RPCs. Each returns INVALID_ARGUMENT text that names the field.

use crate::error::{Result, StorageError};

/// 9999-12-31T23:59:59.999999Z, the end of what calendars and DATETIME can show.
pub const MAX_TS_US: i64 = 253_402_300_799_999_999;

fn all_chars(value: &str, allowed: impl Fn(u8) -> bool) -> bool {
    value.bytes().all(allowed)
}

pub fn device_id(field: &str, value: &str) -> Result<()> {
    if value.is_empty()
        || value.len() > 64
        || !all_chars(value, |b| {
            b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
        })
    {
        return Err(StorageError::invalid(format!(
            "{field}: {value:?} is not a device id ([A-Za-z0-9_-]{{1,64}})"
        )));
    }
    Ok(())
}

pub fn metric(field: &str, value: &str) -> Result<()> {
    if value.is_empty()
        || value.len() > 64
        || !all_chars(value, |b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-')
        })
    {
        return Err(StorageError::invalid(format!(
            "{field}: {value:?} is not a metric name ([A-Za-z0-9_.:/-]{{1,64}})"
        )));
    }
    Ok(())
}

pub fn username(value: &str) -> Result<()> {
    if value.is_empty()
        || value.len() > 64
        || !all_chars(value, |b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-')
        })
    {
        return Err(StorageError::invalid(format!(
            "username: {value:?} is not a valid username ([A-Za-z0-9_.@-]{{1,64}})"
        )));
    }
    Ok(())
}

pub fn password(value: &str) -> Result<()> {
    if value.len() < 8 || value.len() > 1024 {
        return Err(StorageError::invalid(
            "password: must be 8 to 1024 bytes long",
        ));
    }
    Ok(())
}

pub fn device_name(value: &str) -> Result<()> {
    let chars = value.chars().count();
    if chars == 0 || chars > 255 {
        return Err(StorageError::invalid(
            "name: must be 1 to 255 characters long",
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(StorageError::invalid(
            "name: must not contain control characters",
        ));
    }
    Ok(())
}

/// "" (unset) or a JSON object of at most 64 KiB; stored as given.
pub fn attributes_json(value: &str) -> Result<()> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 65_535 {
        return Err(StorageError::invalid("attributes_json: larger than 64 KiB"));
    }
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(StorageError::invalid(
            "attributes_json: must be a JSON object",
        )),
        Err(e) => Err(StorageError::invalid(format!(
            "attributes_json: invalid JSON: {e}"
        ))),
    }
}

pub fn reading_ts(field: &str, ts_us: i64) -> Result<()> {
    if !(0..=MAX_TS_US).contains(&ts_us) {
        return Err(StorageError::invalid(format!(
            "{field}: {ts_us} is outside 1970-01-01 .. 9999-12-31 (microseconds since the epoch)"
        )));
    }
    Ok(())
}

pub fn value(field: &str, value: f64) -> Result<()> {
    if !value.is_finite() {
        return Err(StorageError::invalid(format!(
            "{field}: {value} is not a finite number"
        )));
    }
    Ok(())
}

/// `[from_us, to_us)` with 0 meaning "no upper bound"; returns the effective exclusive end.
pub fn range(from_us: i64, to_us: i64) -> Result<i64> {
    let to = if to_us == 0 { i64::MAX } else { to_us };
    if to <= from_us {
        return Err(StorageError::invalid(format!(
            "to_us ({to_us}) must be greater than from_us ({from_us}), or 0 for no upper bound"
        )));
    }
    Ok(to)
}
