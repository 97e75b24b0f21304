use actix_web::{HttpRequest, HttpResponse, http::header, web};
use futures::StreamExt;
use iot_proto::storage::v1::{
    AggregateReadingsRequest, DeleteReadingsRequest, LatestReadingsRequest, QueryReadingsRequest, ReadingPoint,
};
use iot_query::{AggregateParams, DeleteParams, Order, ReadingsParams};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    auth::CurrentSession,
    chart,
    error::{ApiError, ApiResult},
    negotiate::negotiate_request,
    routes::{devices::owned_device, pages},
    state::AppState,
    time::{Rfc3339Us, format_us},
};

pub const JSON: &str = "application/json";
pub const CSV: &str = "text/csv";
pub const PNG: &str = "image/png";
pub const HTML: &str = "text/html";
const OFFERED: &[&str] = &[JSON, CSV, PNG, HTML];

/// Points drawn at most in one chart (the newest ones in the range).
pub const CHART_POINTS: u32 = 10_000;

/// A reading in JSON, `{"metric", "ts" (RFC 3339), "value"}`, serialised straight from the
/// proto: a page of readings costs no `serde_json::Value` tree and no timestamp `String` per
/// reading.
struct PointBody<'a>(&'a ReadingPoint);

impl Serialize for PointBody<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut point = serializer.serialize_struct("Reading", 3)?;
        point.serialize_field("metric", &self.0.metric)?;
        let mut buf = [0u8; 27];
        match Rfc3339Us(self.0.ts_us).format_into(&mut buf) {
            Some(ts) => point.serialize_field("ts", ts)?,
            None => point.serialize_field("ts", &format_us(self.0.ts_us))?,
        }
        point.serialize_field("value", &self.0.value)?;
        point.end()
    }
}

fn points<S: serde::Serializer>(points: &&[ReadingPoint], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(points.iter().map(PointBody))
}

/// The body of a readings page (`next_cursor` null on the last page) or of the latest values
/// (no `next_cursor`). Keys in the order serde_json's sorted maps used to give them.
#[derive(Serialize)]
struct ReadingsBody<'a> {
    device_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<Option<&'a str>>,
    #[serde(serialize_with = "points")]
    readings: &'a [ReadingPoint],
}

/// The device id of a readings route, or 404 for one that cannot exist (without asking storage).
fn device_id(path: web::Path<String>) -> ApiResult<String> {
    let device_id = path.into_inner();
    if !iot_payload::is_valid_device_id(&device_id) {
        return Err(ApiError::NotFound);
    }
    Ok(device_id)
}

pub async fn query(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: CurrentSession,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    // Parameters and negotiation before touching storage: a 400 or 406 should not cost a query.
    let params = ReadingsParams::parse(req.query_string())?;
    let media = match params.format {
        Some(format) => format.media_type(),
        None => negotiate_request(&req, OFFERED)?,
    };
    let (metric, from_us, to_us) = params.range.to_storage();
    let request = QueryReadingsRequest {
        device_id: device_id(path)?,
        metric,
        from_us,
        to_us,
        limit: params.limit,
        cursor: params.cursor.clone().unwrap_or_default(),
        descending: params.order == Order::Desc,
        // Storage checks the owner in the statement that resolves the device: no GetDevice
        // round trip first, and another user's device is NOT_FOUND like a missing one.
        owner_id: session.owner_filter(),
    };
    let mut response = match media {
        CSV => return csv(&state, request).await,
        // The chart and the page show the device's name: those two fetch the device.
        PNG => {
            let device = owned_device(&state, &session, &request.device_id).await?;
            return png(&state, request, &device.name, params.width, params.height).await;
        }
        HTML => {
            let device = owned_device(&state, &session, &request.device_id).await?;
            let page = state.storage.clone().query_readings(request).await?.into_inner();
            pages::readings_page(&device, &page.readings, &page.next_cursor, &req)
        }
        _ => {
            let device_id = request.device_id.clone();
            let page = state.storage.clone().query_readings(request).await?.into_inner();
            HttpResponse::Ok().json(ReadingsBody {
                device_id: &device_id,
                next_cursor: Some((!page.next_cursor.is_empty()).then_some(page.next_cursor.as_str())),
                readings: &page.readings,
            })
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
    let device_id = device_id(path)?;
    let latest = state
        .storage
        .clone()
        .latest_readings(LatestReadingsRequest { device_id: device_id.clone(), owner_id: session.owner_filter() })
        .await?
        .into_inner();
    Ok(HttpResponse::Ok().json(ReadingsBody { device_id: &device_id, next_cursor: None, readings: &latest.readings }))
}

pub async fn aggregate(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: CurrentSession,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let params = AggregateParams::parse(req.query_string())?;
    let device_id = device_id(path)?;
    let (metric, from_us, to_us) = params.range().to_storage();
    let bucket_us = params.bucket_us;
    let owner_id = session.owner_filter();
    let response = state
        .storage
        .clone()
        .aggregate_readings(AggregateReadingsRequest { device_id: device_id.clone(), metric, from_us, to_us, bucket_us, owner_id })
        .await?
        .into_inner();
    let buckets: Vec<Value> = response
        .buckets
        .iter()
        .map(|b| json!({"start": format_us(b.start_us), "count": b.count, "min": b.min, "max": b.max, "avg": b.avg}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "device_id": device_id,
        "metric": params.metric,
        "bucket_seconds": bucket_us as f64 / 1e6,
        "buckets": buckets,
    })))
}

pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: CurrentSession,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let params = DeleteParams::parse(req.query_string())?;
    let device = owned_device(&state, &session, &path).await?;
    let (metric, from_us, to_us) = params.range.to_storage();
    let response = state
        .storage
        .clone()
        .delete_readings(DeleteReadingsRequest {
            device_id: device.device_id.clone(),
            metric,
            from_us,
            // Without `to`, everything from `from` on.
            to_us: if to_us == 0 { i64::MAX } else { to_us },
        })
        .await?
        .into_inner();
    Ok(HttpResponse::Ok().json(json!({"device_id": device.device_id, "deleted": response.deleted})))
}
