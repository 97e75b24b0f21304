//! The api's query parameters as pure functions: raw query string in, typed and bounded
//! values out, and back (`to_query_string`) for links and round-trip checks.
//!
//! No actix and no I/O, so that `fuzz/` can drive these functions directly. The api maps
//! [`QueryError::Malformed`] to 400 and [`QueryError::Invalid`] to 422.
//!
//! | parameter | accepted | default |
//! |---|---|---|
//! | `metric` | `[A-Za-z0-9_.:/-]{1,64}`; empty means none | none (all metrics) |
//! | `from`, `to` | RFC 3339 or epoch milliseconds, 1970-01-01 ..= 9999-12-31; `to` later than `from` | unbounded |
//! | `limit` | 1..=[`MAX_LIMIT`] | 1000 |
//! | `cursor` | opaque `next_cursor` of the previous page; empty means none | none |
//! | `order` | `asc`, `desc` | `asc` |
//! | `width` x `height` | [`MIN_CHART`]..=[`MAX_CHART`] pixels | 800 x 400 |
//! | `format` | `json`, `csv`, `png`, `html` | from `Accept` |
//! | `bucket` | positive duration: `N` (seconds), `Nms`, `Ns`, `Nm`, `Nh`, `Nd` | `1h` |
//! | `page_size` | 1..=[`MAX_PAGE_SIZE`] | 100 |
//! | `page_token` | opaque; empty means none | none |
//!
//! Unknown parameters are ignored; a parameter given twice is malformed.

pub mod accept;
pub mod time;

use serde::{Deserialize, Serialize};

pub use accept::negotiate;
pub use time::{format_time, parse_bucket, parse_time};

/// Largest `limit` of a readings page.
pub const MAX_LIMIT: u32 = 10_000;
/// `limit` when none is given.
pub const DEFAULT_LIMIT: u32 = 1000;
/// Largest `page_size` of a device list.
pub const MAX_PAGE_SIZE: u32 = 1000;
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Chart sizes in pixels (width, height).
pub const DEFAULT_CHART: (u32, u32) = (800, 400);
pub const MIN_CHART: (u32, u32) = (200, 150);
pub const MAX_CHART: (u32, u32) = (4000, 3000);
/// `bucket` when none is given: one hour.
pub const DEFAULT_BUCKET_US: i64 = 3_600_000_000;

/// Why a query string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Not parsable at all (a number that is not one, an unknown enum value): HTTP 400.
    #[error("{0}")]
    Malformed(String),
    /// Well-formed but outside what the api accepts (a limit of 0, `to` before `from`): HTTP 422.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, QueryError>;

/// Representation asked for with `format=` (it overrides `Accept`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Png,
    Html,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Json, Format::Csv, Format::Png, Format::Html];

    pub fn media_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv",
            Format::Png => "image/png",
            Format::Html => "text/html",
        }
    }

    pub fn param(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Png => "png",
            Format::Html => "html",
        }
    }

    pub fn from_param(value: &str) -> Result<Self> {
        Format::ALL
            .into_iter()
            .find(|f| f.param() == value)
            .ok_or_else(|| {
                QueryError::Malformed(format!(
                    "format must be json, csv, png or html, got {value:?}"
                ))
            })
    }
}

/// `order=`: readings oldest first (default) or newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

impl Order {
    pub fn param(self) -> &'static str {
        match self {
            Order::Asc => "asc",
            Order::Desc => "desc",
        }
    }
}

/// A metric filter and a time range `[from, to)` in microseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Range {
    pub metric: Option<String>,
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
}

impl Range {
    fn parse(metric: Option<String>, from: Option<&str>, to: Option<&str>) -> Result<Self> {
        let metric = metric.filter(|m| !m.is_empty());
        if let Some(metric) = &metric
            && !iot_payload::is_valid_metric_name(metric)
        {
            return Err(QueryError::Invalid(
                "metric must match [A-Za-z0-9_.:/-]{1,64}".to_string(),
            ));
        }
        let from_us = time::parse_opt("from", from)?;
        let to_us = time::parse_opt("to", to)?;
        // `to` is checked whenever it is given: storage reads a 0 as "no upper bound", so
        // `to=0` used to return everything (found by fuzz/ query_params).
        if let Some(to) = to_us
            && to <= from_us.unwrap_or(time::MIN_TIME_US)
        {
            return Err(QueryError::Invalid(
                "`to` must be later than `from`".to_string(),
            ));
        }
        Ok(Self {
            metric,
            from_us,
            to_us,
        })
    }

    /// The storage protocol's encoding: `from_us` 0 for "from the beginning", `to_us` 0 for
    /// "no upper bound", metric "" for "every metric".
    pub fn to_storage(&self) -> (String, i64, i64) {
        (
            self.metric.clone().unwrap_or_default(),
            self.from_us.unwrap_or(0),
            self.to_us.unwrap_or(0),
        )
    }

    fn write(&self, out: &mut Vec<(&'static str, String)>) {
        if let Some(metric) = &self.metric {
            out.push(("metric", metric.clone()));
        }
        if let Some(from) = self.from_us {
            out.push(("from", format_time(from)));
        }
        if let Some(to) = self.to_us {
            out.push(("to", format_time(to)));
        }
    }
}

fn decode<'a, T: Deserialize<'a>>(query: &'a str) -> Result<T> {
    serde_urlencoded::from_str(query)
        .map_err(|e| QueryError::Malformed(format!("invalid query parameters: {e}")))
}

fn encode(pairs: &[(&'static str, String)]) -> String {
    // Encoding a list of string pairs cannot fail (the error is for unsupported value types).
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

#[derive(Debug, Deserialize, Serialize, Default)]
struct RawReadings {
    metric: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
    order: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    format: Option<String>,
}

/// `GET /api/v1/devices/{id}/readings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadingsParams {
    pub range: Range,
    pub limit: u32,
    pub cursor: Option<String>,
    pub order: Order,
    /// Chart size in pixels, used for `image/png`.
    pub width: u32,
    pub height: u32,
    pub format: Option<Format>,
}

impl ReadingsParams {
    pub fn parse(query: &str) -> Result<Self> {
        let raw: RawReadings = decode(query)?;
        let format = raw.format.as_deref().map(Format::from_param).transpose()?;
        let range = Range::parse(raw.metric, raw.from.as_deref(), raw.to.as_deref())?;
        let limit = raw.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(QueryError::Invalid(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            )));
        }
        let order = match raw.order.as_deref() {
            None | Some("asc") => Order::Asc,
            Some("desc") => Order::Desc,
            Some(other) => {
                return Err(QueryError::Malformed(format!(
                    "order must be asc or desc, got {other:?}"
                )));
            }
        };
        let (width, height) = chart_size(raw.width, raw.height)?;
        Ok(Self {
            range,
            limit,
            cursor: raw.cursor.filter(|c| !c.is_empty()),
            order,
            width,
            height,
            format,
        })
    }

    /// A query string that [`ReadingsParams::parse`] reads back as `self` (defaults included).
    pub fn to_query_string(&self) -> String {
        let mut out = Vec::new();
        self.range.write(&mut out);
        out.push(("limit", self.limit.to_string()));
        if let Some(cursor) = &self.cursor {
            out.push(("cursor", cursor.clone()));
        }
        out.push(("order", self.order.param().to_string()));
        out.push(("width", self.width.to_string()));
        out.push(("height", self.height.to_string()));
        if let Some(format) = self.format {
            out.push(("format", format.param().to_string()));
        }
        encode(&out)
    }
}

/// Chart size within [`MIN_CHART`]..=[`MAX_CHART`], [`DEFAULT_CHART`] where not given.
pub fn chart_size(width: Option<u32>, height: Option<u32>) -> Result<(u32, u32)> {
    let width = width.unwrap_or(DEFAULT_CHART.0);
    let height = height.unwrap_or(DEFAULT_CHART.1);
    if !(MIN_CHART.0..=MAX_CHART.0).contains(&width)
        || !(MIN_CHART.1..=MAX_CHART.1).contains(&height)
    {
        return Err(QueryError::Invalid(format!(
            "chart size must be between {}x{} and {}x{} pixels",
            MIN_CHART.0, MIN_CHART.1, MAX_CHART.0, MAX_CHART.1
        )));
    }
    Ok((width, height))
}

#[derive(Debug, Deserialize, Default)]
struct RawAggregate {
    metric: Option<String>,
    from: Option<String>,
    to: Option<String>,
    bucket: Option<String>,
}

/// `GET /api/v1/devices/{id}/readings/aggregate`: one metric (required) in buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateParams {
    pub metric: String,
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    pub bucket_us: i64,
}

impl AggregateParams {
    pub fn parse(query: &str) -> Result<Self> {
        let raw: RawAggregate = decode(query)?;
        let range = Range::parse(raw.metric, raw.from.as_deref(), raw.to.as_deref())?;
        let Some(metric) = range.metric else {
            return Err(QueryError::Invalid("`metric` is required".to_string()));
        };
        let bucket_us = match raw.bucket.as_deref() {
            Some(bucket) => parse_bucket("bucket", bucket)?,
            None => DEFAULT_BUCKET_US,
        };
        Ok(Self {
            metric,
            from_us: range.from_us,
            to_us: range.to_us,
            bucket_us,
        })
    }

    pub fn range(&self) -> Range {
        Range {
            metric: Some(self.metric.clone()),
            from_us: self.from_us,
            to_us: self.to_us,
        }
    }

    pub fn to_query_string(&self) -> String {
        let mut out = Vec::new();
        self.range().write(&mut out);
        out.push(("bucket", time::format_bucket(self.bucket_us)));
        encode(&out)
    }
}

#[derive(Debug, Deserialize, Default)]
struct RawRange {
    metric: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// `DELETE /api/v1/devices/{id}/readings`: a range; without one, everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteParams {
    pub range: Range,
}

impl DeleteParams {
    pub fn parse(query: &str) -> Result<Self> {
        let raw: RawRange = decode(query)?;
        Ok(Self {
            range: Range::parse(raw.metric, raw.from.as_deref(), raw.to.as_deref())?,
        })
    }

    pub fn to_query_string(&self) -> String {
        let mut out = Vec::new();
        self.range.write(&mut out);
        encode(&out)
    }
}

#[derive(Debug, Deserialize, Default)]
struct RawDeviceList {
    page_size: Option<u32>,
    page_token: Option<String>,
}

/// `GET /api/v1/devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceListParams {
    pub page_size: u32,
    pub page_token: Option<String>,
}

impl DeviceListParams {
    pub fn parse(query: &str) -> Result<Self> {
        let raw: RawDeviceList = decode(query)?;
        let page_size = raw.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
        if page_size == 0 || page_size > MAX_PAGE_SIZE {
            return Err(QueryError::Invalid(format!(
                "page_size must be between 1 and {MAX_PAGE_SIZE}"
            )));
        }
        Ok(Self {
            page_size,
            page_token: raw.page_token.filter(|t| !t.is_empty()),
        })
    }

    pub fn to_query_string(&self) -> String {
        let mut out = vec![("page_size", self.page_size.to_string())];
        if let Some(token) = &self.page_token {
            out.push(("page_token", token.clone()));
        }
        encode(&out)
    }
}

#[cfg(test)]
mod tests;
