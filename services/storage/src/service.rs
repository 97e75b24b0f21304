//! The gRPC surface: checks requests, runs the data-access functions on a pooled connection,
//! maps results to protos and errors to status codes, and records per-method metrics.

use std::{sync::Arc, time::Instant};

use base64::Engine as _;
use diesel_async::AsyncMysqlConnection;
use iot_proto::storage::v1::{
    self as pb, get_user_request, storage_service_server::StorageService,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    db::Db,
    devices::{self, DeviceRow},
    error::{Result, StorageError},
    metrics::Metrics,
    readings::{self, Cursor, DeviceKey, Selection},
    users::{self, Passwords, UserRow, micros},
    validate,
};

const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1000;
const DEFAULT_READINGS_LIMIT: u32 = 1000;
const MAX_READINGS_LIMIT: u32 = 10_000;

#[derive(Clone)]
pub struct StorageApi {
    db: Db,
    passwords: Arc<Passwords>,
    metrics: Arc<Metrics>,
    known_metrics: Arc<readings::KnownMetrics>,
    known_devices: Arc<readings::KnownDevices>,
    device_pks: Arc<readings::DevicePks>,
    /// Turns of WriteReadings at the database (Config::max_concurrent_writes).
    write_turns: Arc<tokio::sync::Semaphore>,
}

impl StorageApi {
    pub fn new(
        db: Db,
        passwords: Arc<Passwords>,
        metrics: Arc<Metrics>,
        max_concurrent_writes: usize,
    ) -> Self {
        Self {
            db,
            passwords,
            metrics,
            known_metrics: Arc::default(),
            known_devices: Arc::default(),
            device_pks: Arc::default(),
            write_turns: Arc::new(tokio::sync::Semaphore::new(max_concurrent_writes)),
        }
    }

    /// Waits for a turn to write readings, at most as long as the write itself may take.
    async fn write_turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        match tokio::time::timeout(self.db.query_timeout(), self.write_turns.acquire()).await {
            Ok(Ok(turn)) => Ok(turn),
            Ok(Err(closed)) => Err(StorageError::Unexpected(anyhow::anyhow!(
                "write turns: {closed}"
            ))),
            Err(_) => Err(StorageError::Unavailable(format!(
                "no turn to write readings within {:?}: earlier writes are still running",
                self.db.query_timeout()
            ))),
        }
    }

    async fn observe<T>(
        &self,
        method: &'static str,
        work: impl Future<Output = Result<T>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = work.await.map_err(Status::from);
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        self.metrics
            .observe(method, code, started.elapsed().as_secs_f64());
        result.map(Response::new)
    }
}

fn user_to_pb(row: &UserRow) -> pb::User {
    pb::User {
        id: row.id,
        username: row.username.clone(),
        is_admin: row.is_admin,
        created_at_us: micros(row.created_at),
    }
}

fn device_to_pb(row: DeviceRow) -> pb::Device {
    pb::Device {
        device_id: row.device_id,
        owner_id: row.owner_id,
        name: row.name,
        attributes_json: row.attributes_json,
        created_at_us: micros(row.created_at),
        updated_at_us: micros(row.updated_at),
    }
}

fn point_to_pb(point: readings::Point) -> pb::ReadingPoint {
    pb::ReadingPoint {
        metric: point.metric,
        ts_us: point.ts_us,
        value: point.value,
    }
}

fn encode_page_token(device_id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("d1:{device_id}"))
}

fn decode_page_token(token: &str) -> Result<String> {
    let invalid = || StorageError::invalid("page_token: not a token returned by this service");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let device_id = text.strip_prefix("d1:").ok_or_else(invalid)?;
    validate::device_id("page_token", device_id).map_err(|_| invalid())?;
    Ok(device_id.to_string())
}

/// A validated QueryReadings / StreamReadings request.
struct RangeRequest {
    device_id: String,
    metric: Option<String>,
    from_us: i64,
    to_us: i64,
    limit: usize,
    cursor: Option<Cursor>,
    descending: bool,
    /// Only this owner's device qualifies (`owner_id` of the request; `None` = any).
    owner: Option<u64>,
}

/// `owner_id` of a read request: 0 means any owner.
fn owner(owner_id: u64) -> Option<u64> {
    (owner_id != 0).then_some(owner_id)
}

fn range_request(request: &pb::QueryReadingsRequest) -> Result<RangeRequest> {
    validate::device_id("device_id", &request.device_id)?;
    let metric = if request.metric.is_empty() {
        None
    } else {
        validate::metric("metric", &request.metric)?;
        Some(request.metric.clone())
    };
    let to_us = validate::range(request.from_us, request.to_us)?;
    let limit = match request.limit {
        0 => DEFAULT_READINGS_LIMIT,
        n => n.min(MAX_READINGS_LIMIT),
    };
    let cursor = if request.cursor.is_empty() {
        None
    } else {
        Some(Cursor::decode(&request.cursor)?)
    };
    Ok(RangeRequest {
        device_id: request.device_id.clone(),
        metric,
        from_us: request.from_us,
        to_us,
        limit: limit as usize,
        cursor,
        descending: request.descending,
        owner: owner(request.owner_id),
    })
}

/// Which device and metrics a range read covers; NOT_FOUND for an unknown device or, when the
/// request names an owner, for another owner's device.
async fn selection(
    conn: &mut AsyncMysqlConnection,
    request: &RangeRequest,
    known_devices: &readings::KnownDevices,
) -> Result<Selection> {
    let (device, metrics) = match (&request.metric, request.owner) {
        // One metric of any owner's device: the page query itself resolves the device (see
        // DeviceKey), one statement in all.
        (Some(metric), None) => (
            DeviceKey::Id(request.device_id.clone()),
            vec![metric.clone()],
        ),
        // Otherwise one statement resolves the device, checks its owner and lists its metrics.
        (metric, owner) => {
            let device = readings::device_with_owner(conn, &request.device_id).await?;
            match &device {
                Some(device) => known_devices.remember(&request.device_id, device.clone()),
                None => known_devices.forget(&request.device_id),
            }
            let device = readings::readable(&request.device_id, device, owner)?;
            let metrics = match metric {
                Some(metric) => vec![metric.clone()],
                None => device.metrics,
            };
            (DeviceKey::Pk(device.pk), metrics)
        }
    };
    Ok(Selection {
        device,
        metrics,
        from_us: request.from_us,
        to_us: request.to_us,
        descending: request.descending,
    })
}

/// The page of a device read before, in one statement that also checks what is known about it
/// (`readings::checked_page`); `None` when the device is not known, or no longer as it was.
async fn known_device_page(
    conn: &mut AsyncMysqlConnection,
    request: &RangeRequest,
    known_devices: &readings::KnownDevices,
) -> Result<Option<(Vec<readings::Point>, bool)>> {
    // One metric of any owner's device is one statement without this (see `selection`).
    if request.metric.is_some() && request.owner.is_none() {
        return Ok(None);
    }
    let Some(known) = known_devices.get(&request.device_id) else {
        return Ok(None);
    };
    // Another owner's device takes the lookup, which answers as for a missing device.
    if request.owner.is_some_and(|owner| owner != known.owner_id) {
        return Ok(None);
    }
    let (metrics, check_metrics) = match &request.metric {
        Some(metric) => (vec![metric.clone()], false),
        None => (known.metrics.clone(), true),
    };
    let selection = Selection {
        device: DeviceKey::Pk(known.pk),
        metrics,
        from_us: request.from_us,
        to_us: request.to_us,
        descending: request.descending,
    };
    let page = readings::checked_page(
        conn,
        &request.device_id,
        &known,
        check_metrics,
        &selection,
        request.cursor.as_ref(),
        request.limit,
    )
    .await?;
    match page {
        readings::Checked::Page(points, more) => Ok(Some((points, more))),
        readings::Checked::Stale => {
            known_devices.forget(&request.device_id);
            Ok(None)
        }
    }
}

async fn query_page(
    conn: &mut AsyncMysqlConnection,
    request: &RangeRequest,
    known_devices: &readings::KnownDevices,
) -> Result<pb::QueryReadingsResponse> {
    let (points, more) = match known_device_page(conn, request, known_devices).await? {
        Some(page) => page,
        None => {
            let selection = selection(conn, request, known_devices).await?;
            let (points, more) =
                readings::page(conn, &selection, request.cursor.as_ref(), request.limit).await?;
            if points.is_empty() && matches!(selection.device, DeviceKey::Id(_)) {
                devices::pk(conn, &request.device_id).await?;
            }
            (points, more)
        }
    };
    let next_cursor = match (more, points.last()) {
        (true, Some(last)) => Cursor {
            ts_us: last.ts_us,
            metric: last.metric.clone(),
        }
        .encode(),
        _ => String::new(),
    };
    Ok(pb::QueryReadingsResponse {
        readings: points.into_iter().map(point_to_pb).collect(),
        next_cursor,
    })
}

#[tonic::async_trait]
impl StorageService for StorageApi {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let request = request.into_inner();
        self.observe("CreateUser", async {
            validate::username(&request.username)?;
            validate::password(&request.password)?;
            let hash = self.passwords.hash(request.password).await?;
            let row = self
                .db
                .run(async |conn| {
                    if request.only_if_first {
                        users::create_first(conn, &request.username, &hash).await
                    } else {
                        users::create(conn, &request.username, &hash, request.is_admin).await
                    }
                })
                .await?;
            tracing::info!(user_id = row.id, username = %row.username, is_admin = row.is_admin, "user created");
            Ok(user_to_pb(&row))
        })
        .await
    }

    async fn verify_password(
        &self,
        request: Request<pb::VerifyPasswordRequest>,
    ) -> Result<Response<pb::VerifyPasswordResponse>, Status> {
        let request = request.into_inner();
        self.observe("VerifyPassword", async {
            // A malformed username or password is simply "not valid", without a lookup, and
            // still pays for one hash so that its timing says nothing either.
            let well_formed =
                validate::username(&request.username).is_ok() && request.password.len() <= 1024;
            let row = if well_formed {
                self.db
                    .run(async |conn| users::by_username(conn, &request.username).await)
                    .await?
            } else {
                None
            };
            let valid = self
                .passwords
                .verify(
                    request.password,
                    row.as_ref().map(|r| r.password_hash.clone()),
                )
                .await?;
            Ok(pb::VerifyPasswordResponse {
                valid,
                user: row.filter(|_| valid).as_ref().map(user_to_pb),
            })
        })
        .await
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let request = request.into_inner();
        self.observe("GetUser", async {
            let row = match request.key {
                Some(get_user_request::Key::Id(id)) => self
                    .db
                    .run(async |conn| users::by_id(conn, id).await)
                    .await?
                    .ok_or_else(|| StorageError::not_found(format!("user {id} not found")))?,
                Some(get_user_request::Key::Username(username)) => {
                    validate::username(&username)?;
                    self.db
                        .run(async |conn| users::by_username(conn, &username).await)
                        .await?
                        .ok_or_else(|| {
                            StorageError::not_found(format!("user {username:?} not found"))
                        })?
                }
                None => return Err(StorageError::invalid("key: give an id or a username")),
            };
            Ok(user_to_pb(&row))
        })
        .await
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let request = request.into_inner();
        self.observe("DeleteUser", async {
            if request.id == 0 {
                return Err(StorageError::invalid("id: required"));
            }
            let deleted = self
                .db
                .run(async |conn| users::delete(conn, request.id).await)
                .await?;
            if !deleted {
                return Err(StorageError::not_found(format!(
                    "user {} not found",
                    request.id
                )));
            }
            tracing::info!(
                user_id = request.id,
                "user deleted with its devices and readings"
            );
            Ok(pb::DeleteUserResponse {})
        })
        .await
    }

    async fn count_users(
        &self,
        _request: Request<pb::CountUsersRequest>,
    ) -> Result<Response<pb::CountUsersResponse>, Status> {
        self.observe("CountUsers", async {
            let count = self.db.run(async |conn| users::count(conn).await).await?;
            Ok(pb::CountUsersResponse { count })
        })
        .await
    }

    async fn create_device(
        &self,
        request: Request<pb::CreateDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let request = request.into_inner();
        self.observe("CreateDevice", async {
            validate::device_id("device_id", &request.device_id)?;
            if request.owner_id == 0 {
                return Err(StorageError::invalid("owner_id: required"));
            }
            validate::device_name(&request.name)?;
            validate::attributes_json(&request.attributes_json)?;
            let row = self
                .db
                .run(async |conn| {
                    devices::create(
                        conn,
                        &request.device_id,
                        request.owner_id,
                        &request.name,
                        &request.attributes_json,
                    )
                    .await
                })
                .await?;
            tracing::info!(device_id = %row.device_id, owner_id = row.owner_id, "device created");
            Ok(device_to_pb(row))
        })
        .await
    }

    async fn get_device(
        &self,
        request: Request<pb::GetDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let request = request.into_inner();
        self.observe("GetDevice", async {
            validate::device_id("device_id", &request.device_id)?;
            let row = self
                .db
                .run(async |conn| devices::by_device_id(conn, &request.device_id).await)
                .await?
                .ok_or_else(|| {
                    StorageError::not_found(format!("device {:?} not found", request.device_id))
                })?;
            Ok(device_to_pb(row))
        })
        .await
    }

    async fn list_devices(
        &self,
        request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let request = request.into_inner();
        self.observe("ListDevices", async {
            let page_size = match request.page_size {
                0 => DEFAULT_PAGE_SIZE,
                n => n.min(MAX_PAGE_SIZE),
            };
            let after = if request.page_token.is_empty() {
                None
            } else {
                Some(decode_page_token(&request.page_token)?)
            };
            let owner = (request.owner_id != 0).then_some(request.owner_id);
            let (rows, more) = self
                .db
                .run(async |conn| {
                    devices::list(conn, owner, after.as_deref(), i64::from(page_size)).await
                })
                .await?;
            let next_page_token = match (more, rows.last()) {
                (true, Some(last)) => encode_page_token(&last.device_id),
                _ => String::new(),
            };
            Ok(pb::ListDevicesResponse {
                devices: rows.into_iter().map(device_to_pb).collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn update_device(
        &self,
        request: Request<pb::UpdateDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let request = request.into_inner();
        self.observe("UpdateDevice", async {
            validate::device_id("device_id", &request.device_id)?;
            if let Some(name) = &request.name {
                validate::device_name(name)?;
            }
            if let Some(attributes) = &request.attributes_json {
                validate::attributes_json(attributes)?;
            }
            let row = self
                .db
                .run(async |conn| {
                    devices::update(
                        conn,
                        &request.device_id,
                        request.name.as_deref(),
                        request.attributes_json.as_deref(),
                    )
                    .await
                })
                .await?;
            Ok(device_to_pb(row))
        })
        .await
    }

    async fn delete_device(
        &self,
        request: Request<pb::DeleteDeviceRequest>,
    ) -> Result<Response<pb::DeleteDeviceResponse>, Status> {
        let request = request.into_inner();
        self.observe("DeleteDevice", async {
            validate::device_id("device_id", &request.device_id)?;
            let deleted = self
                .db
                .run(async |conn| devices::delete(conn, &request.device_id).await)
                .await?;
            if !deleted {
                return Err(StorageError::not_found(format!(
                    "device {:?} not found",
                    request.device_id
                )));
            }
            tracing::info!(device_id = %request.device_id, "device deleted with its readings");
            Ok(pb::DeleteDeviceResponse {})
        })
        .await
    }

    async fn write_readings(
        &self,
        request: Request<pb::WriteReadingsRequest>,
    ) -> Result<Response<pb::WriteReadingsResponse>, Status> {
        let request = request.into_inner();
        self.observe("WriteReadings", async {
            readings::validate_batch(&request.readings)?;
            let _turn = self.write_turn().await?;
            let outcome = self
                .db
                .run(async |conn| {
                    readings::write(
                        conn,
                        &request.readings,
                        &self.known_metrics,
                        &self.device_pks,
                    )
                    .await
                })
                .await?;
            self.metrics.readings_inserted.inc_by(outcome.inserted);
            self.metrics.readings_duplicates.inc_by(outcome.duplicates);
            if !outcome.unknown_devices.is_empty() {
                let skipped = request
                    .readings
                    .iter()
                    .filter(|r| outcome.unknown_devices.binary_search(&r.device_id).is_ok())
                    .count();
                self.metrics.readings_unknown_device.inc_by(skipped as u64);
            }
            Ok(pb::WriteReadingsResponse {
                inserted: outcome.inserted,
                duplicates: outcome.duplicates,
                unknown_devices: outcome.unknown_devices,
            })
        })
        .await
    }

    async fn query_readings(
        &self,
        request: Request<pb::QueryReadingsRequest>,
    ) -> Result<Response<pb::QueryReadingsResponse>, Status> {
        let request = request.into_inner();
        self.observe("QueryReadings", async {
            let range = range_request(&request)?;
            self.db
                .run(async |conn| query_page(conn, &range, &self.known_devices).await)
                .await
        })
        .await
    }

    type StreamReadingsStream = ReceiverStream<Result<pb::ReadingsChunk, Status>>;

    async fn stream_readings(
        &self,
        request: Request<pb::QueryReadingsRequest>,
    ) -> Result<Response<Self::StreamReadingsStream>, Status> {
        let request = request.into_inner();
        self.observe("StreamReadings", async {
            let range = range_request(&request)?;
            let selection = self
                .db
                .run(async |conn| selection(conn, &range, &self.known_devices).await)
                .await?;
            // Two chunks in flight: the next page is read while the client takes the last one.
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let db = self.db.clone();
            // In the call's span, so that the page queries are traced as part of the call.
            tokio::spawn(tracing::Instrument::in_current_span(async move {
                let mut cursor = range.cursor;
                loop {
                    // A connection per page: a slow reader must not hold one for the whole stream.
                    let page = db
                        .run(async |conn| {
                            readings::page(conn, &selection, cursor.as_ref(), range.limit).await
                        })
                        .await;
                    match page {
                        Ok((points, more)) => {
                            cursor = points.last().map(|p| Cursor {
                                ts_us: p.ts_us,
                                metric: p.metric.clone(),
                            });
                            if !points.is_empty() {
                                let chunk = pb::ReadingsChunk {
                                    readings: points.into_iter().map(point_to_pb).collect(),
                                };
                                if tx.send(Ok(chunk)).await.is_err() {
                                    return; // the client went away
                                }
                            }
                            if !more {
                                return;
                            }
                        }
                        Err(error) => {
                            let _ = tx.send(Err(Status::from(error))).await;
                            return;
                        }
                    }
                }
            }));
            Ok(ReceiverStream::new(rx))
        })
        .await
    }

    async fn latest_readings(
        &self,
        request: Request<pb::LatestReadingsRequest>,
    ) -> Result<Response<pb::LatestReadingsResponse>, Status> {
        let request = request.into_inner();
        self.observe("LatestReadings", async {
            validate::device_id("device_id", &request.device_id)?;
            let points = self
                .db
                .run(async |conn| {
                    let (pk, metrics) = readings::readable_device(
                        conn,
                        &request.device_id,
                        owner(request.owner_id),
                    )
                    .await?;
                    readings::latest(conn, pk, &metrics).await
                })
                .await?;
            Ok(pb::LatestReadingsResponse {
                readings: points.into_iter().map(point_to_pb).collect(),
            })
        })
        .await
    }

    async fn aggregate_readings(
        &self,
        request: Request<pb::AggregateReadingsRequest>,
    ) -> Result<Response<pb::AggregateReadingsResponse>, Status> {
        let request = request.into_inner();
        self.observe("AggregateReadings", async {
            validate::device_id("device_id", &request.device_id)?;
            if request.metric.is_empty() {
                return Err(StorageError::invalid("metric: required for aggregates"));
            }
            validate::metric("metric", &request.metric)?;
            if request.bucket_us <= 0 {
                return Err(StorageError::invalid("bucket_us: must be greater than 0"));
            }
            let to_us = validate::range(request.from_us, request.to_us)?;
            let rows = self
                .db
                .run(async |conn| {
                    let pk =
                        devices::pk_of_owner(conn, &request.device_id, owner(request.owner_id))
                            .await?;
                    readings::aggregate(
                        conn,
                        pk,
                        &request.metric,
                        request.from_us,
                        to_us,
                        request.bucket_us,
                    )
                    .await
                })
                .await?;
            let buckets = rows
                .into_iter()
                .map(|b| pb::Bucket {
                    start_us: b.start_us,
                    count: u64::try_from(b.count).unwrap_or(0),
                    min: b.min,
                    max: b.max,
                    avg: b.avg,
                })
                .collect();
            Ok(pb::AggregateReadingsResponse { buckets })
        })
        .await
    }

    async fn delete_readings(
        &self,
        request: Request<pb::DeleteReadingsRequest>,
    ) -> Result<Response<pb::DeleteReadingsResponse>, Status> {
        let request = request.into_inner();
        self.observe("DeleteReadings", async {
            validate::device_id("device_id", &request.device_id)?;
            let metric = if request.metric.is_empty() {
                None
            } else {
                validate::metric("metric", &request.metric)?;
                Some(request.metric.as_str())
            };
            let to_us = validate::range(request.from_us, request.to_us)?;
            let deleted = self
                .db
                .run(async |conn| {
                    let pk = devices::pk(conn, &request.device_id).await?;
                    readings::delete(conn, pk, metric, request.from_us, to_us).await
                })
                .await?;
            Ok(pb::DeleteReadingsResponse { deleted })
        })
        .await
    }
}
