use actix_web::{HttpRequest, HttpResponse, http::header, web};
use futures::StreamExt;
use iot_proto::storage::v1::{
    AggregateReadingsRequest, DeleteReadingsRequest, LatestReadingsRequest, QueryReadingsRequest, ReadingPoint,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    auth::CurrentSession,
    chart,
    error::{ApiError, ApiResult},
    negotiate::negotiate_request,
    routes::{devices::owned_device, pages},
    state::AppState,
    time::{format_us, parse_duration_us, parse_opt},
};

pub const JSON: &str = "application/json";
pub const CSV: &str = "text/csv";
pub const PNG: &str = "image/png";
pub const HTML: &str = "text/html";
const OFFERED: &[&str] = &[JSON, CSV, PNG, HTML];

pub const MAX_LIMIT: u32 = 10_000;
/// Points drawn at most in one chart (the newest ones in the range).
pub const CHART_POINTS: u32 = 10_000;

#[derive(Debug, Deserialize)]
pub struct ReadingsQuery {
    pub metric: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// `asc` (default) or `desc`.
    pub order: Option<String>,
    /// Chart size in pixels (image/png).
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Overrides `Accept`: json, csv, png or html (handy for links and `<img>`).
    pub format: Option<String>,
}

pub fn point_json(point: &ReadingPoint) -> Value {
    json!({"metric": point.metric, "ts": format_us(point.ts_us), "value": point.value})
}

struct Range {
    metric: String,
    from_us: i64,
    to_us: i64,
}

fn range(metric: Option<&str>, from: Option<&str>, to: Option<&str>) -> ApiResult<Range> {
    let metric = metric.unwrap_or("").to_string();
    if !metric.is_empty() && !iot_payload::is_valid_metric_name(&metric) {
        return Err(ApiError::Unprocessable("metric must match [A-Za-z0-9_.:/-]{1,64}".to_string()));
    }
    let from_us = parse_opt("from", from)?.unwrap_or(0);
    let to_us = parse_opt("to", to)?.unwrap_or(0);
    if to_us != 0 && to_us <= from_us {
        return Err(ApiError::Unprocessable("`to` must be later than `from`".to_string()));
    }
    Ok(Range { metric, from_us, to_us })
}

fn format_param(format: &str) -> ApiResult<&'static str> {
    match format {
        "json" => Ok(JSON),
        "csv" => Ok(CSV),
        "png" => Ok(PNG),
        "html" => Ok(HTML),
        other => Err(ApiError::BadRequest(format!("format must be json, csv, png or html, got {other:?}"))),
    }
}

pub async fn query(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: CurrentSession,
    path: web::Path<String>,
    query: web::Query<ReadingsQuery>,
) -> ApiResult<HttpResponse> {
    let query = query.into_inner();
    // Negotiate before touching storage: a 406 should not cost a query.
    let media = match query.format.as_deref() {
        Some(format) => format_param(format)?,
        None => negotiate_request(&req, OFFERED)?,
    };
    let device = owned_device(&state, &session, &path).await?;
    let range = range(query.metric.as_deref(), query.from.as_deref(), query.to.as_deref())?;
    let limit = query.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::Unprocessable(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    let descending = match query.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(other) => return Err(ApiError::BadRequest(format!("order must be asc or desc, got {other:?}"))),
    };
    let request = QueryReadingsRequest {
        device_id: device.device_id.clone(),
        metric: range.metric.clone(),
        from_us: range.from_us,
        to_us: range.to_us,
        limit,
        cursor: query.cursor.clone().unwrap_or_default(),
        descending,
    };
    let mut response = match media {
        CSV => return csv(&state, request).await,
        PNG => {
            let (width, height) = chart::size(query.width, query.height)?;
            return png(&state, request, &device.name, width, height).await;
        }
        _ => {
            let page = state.storage.clone().query_readings(request).await?.into_inner();
            if media == HTML {
                pages::readings_page(&device, &page.readings, &page.next_cursor, &req)
            } else {
                let next = (!page.next_cursor.is_empty()).then_some(page.next_cursor);
                HttpResponse::Ok().json(json!({
                    "device_id": device.device_id,
                    "readings": page.readings.iter().map(point_json).collect::<Vec<_>>(),
                    "next_cursor": next,
                }))
            }
        }
    };
    response.headers_mut().insert(header::VARY, header::HeaderValue::from_static("Accept"));
    Ok(response)
}

/// Streams every reading in the range from storage's StreamReadings, chunk by chunk, so a
/// large export never sits in memory.
async fn csv(state: &AppState, mut request: QueryReadingsRequest) -> ApiResult<HttpResponse> {
    request.limit = 1000;
    request.cursor = String::new();
    let stream = state.storage.clone().stream_readings(request).await?.into_inner();
    let header_row = futures::stream::once(async { Ok::<_, ApiError>(web::Bytes::from_static(b"metric,ts,value\n")) });
    let rows = stream.map(|chunk| match chunk {
        Ok(chunk) => {
            let mut out = String::with_capacity(chunk.readings.len() * 48);
            for point in chunk.readings {
                // Metric names are [A-Za-z0-9_.:/-]: no quoting needed.
                out.push_str(&format!("{},{},{}\n", point.metric, format_us(point.ts_us), point.value));
            }
            Ok(web::Bytes::from(out))
        }
        Err(status) => {
            tracing::warn!(%status, "CSV export interrupted");
            Err(ApiError::from(status))
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8; header=present")
        .insert_header((header::VARY, "Accept"))
        .streaming(header_row.chain(rows)))
}

async fn png(state: &AppState, mut request: QueryReadingsRequest, title: &str, width: u32, height: u32) -> ApiResult<HttpResponse> {
    // The newest CHART_POINTS readings of the range, drawn oldest to newest.
    request.descending = true;
    request.limit = CHART_POINTS;
    request.cursor = String::new();
    let mut points = state.storage.clone().query_readings(request).await?.into_inner().readings;
    points.reverse();
    let title = title.to_string();
    let image = tokio::task::spawn_blocking(move || chart::render_png(&title, &points, width, height))
        .await
        .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("chart task failed: {e}")))??;
    Ok(HttpResponse::Ok()
        .content_type(PNG)
        .insert_header((header::VARY, "Accept"))
        .insert_header((header::CACHE_CONTROL, "private, no-cache"))
        // Already compressed; gzip would only cost CPU.
        .insert_header((header::CONTENT_ENCODING, "identity"))
        .body(image))
}

pub async fn latest(state: web::Data<AppState>, session: CurrentSession, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let device = owned_device(&state, &session, &path).await?;
    let latest = state
        .storage
        .clone()
        .latest_readings(LatestReadingsRequest { device_id: device.device_id.clone() })
        .await?
        .into_inner();
    Ok(HttpResponse::Ok().json(json!({
        "device_id": device.device_id,
        "readings": latest.readings.iter().map(point_json).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
pub struct AggregateQuery {
    pub metric: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// Bucket width: `30s`, `5m`, `1h`, `1d` or seconds. Default 1h.
    pub bucket: Option<String>,
}

pub async fn aggregate(
    state: web::Data<AppState>,
    session: CurrentSession,
    path: web::Path<String>,
    query: web::Query<AggregateQuery>,
) -> ApiResult<HttpResponse> {
    let query = query.into_inner();
    let device = owned_device(&state, &session, &path).await?;
    let range = range(query.metric.as_deref(), query.from.as_deref(), query.to.as_deref())?;
    if range.metric.is_empty() {
        return Err(ApiError::Unprocessable("`metric` is required".to_string()));
    }
    let bucket_us = parse_duration_us("bucket", query.bucket.as_deref().unwrap_or("1h"))?;
    let response = state
        .storage
        .clone()
        .aggregate_readings(AggregateReadingsRequest {
            device_id: device.device_id.clone(),
            metric: range.metric.clone(),
            from_us: range.from_us,
            to_us: range.to_us,
            bucket_us,
        })
        .await?
        .into_inner();
    let buckets: Vec<Value> = response
        .buckets
        .iter()
        .map(|b| json!({"start": format_us(b.start_us), "count": b.count, "min": b.min, "max": b.max, "avg": b.avg}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "device_id": device.device_id,
        "metric": range.metric,
        "bucket_seconds": bucket_us as f64 / 1e6,
        "buckets": buckets,
    })))
}

#[derive(Debug, Deserialize)]
pub struct DeleteQuery {
    pub metric: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

pub async fn delete(
    state: web::Data<AppState>,
    session: CurrentSession,
    path: web::Path<String>,
    query: web::Query<DeleteQuery>,
) -> ApiResult<HttpResponse> {
    let query = query.into_inner();
    let device = owned_device(&state, &session, &path).await?;
    let range = range(query.metric.as_deref(), query.from.as_deref(), query.to.as_deref())?;
    let response = state
        .storage
        .clone()
        .delete_readings(DeleteReadingsRequest {
            device_id: device.device_id.clone(),
            metric: range.metric,
            from_us: range.from_us,
            // Without `to`, everything from `from` on.
            to_us: if range.to_us == 0 { i64::MAX } else { range.to_us },
        })
        .await?
        .into_inner();
    Ok(HttpResponse::Ok().json(json!({"device_id": device.device_id, "deleted": response.deleted})))
}
