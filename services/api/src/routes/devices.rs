use std::hash::{DefaultHasher, Hash, Hasher};

use actix_web::{HttpRequest, HttpResponse, http::header, web};
use iot_proto::storage::v1::{
    CreateDeviceRequest, DeleteDeviceRequest, Device, GetDeviceRequest, ListDevicesRequest, UpdateDeviceRequest,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{
    auth::CurrentSession,
    broker::BrokerProvisioning,
    error::{ApiError, ApiResult},
    state::AppState,
    time::format_us,
};

pub fn device_json(device: &Device) -> Value {
    let attributes = if device.attributes_json.is_empty() {
        Value::Object(Map::new())
    } else {
        serde_json::from_str(&device.attributes_json).unwrap_or(Value::Null)
    };
    json!({
        "device_id": device.device_id,
        "name": device.name,
        "owner_id": device.owner_id,
        "attributes": attributes,
        "created_at": format_us(device.created_at_us),
        "updated_at": format_us(device.updated_at_us),
        "topic": telemetry_topic(&device.device_id),
    })
}

pub fn telemetry_topic(device_id: &str) -> String {
    format!("devices/{device_id}/telemetry")
}

/// The device if it exists and the caller may see it. Someone else's device is NOT_FOUND,
/// not FORBIDDEN: its existence is not the caller's business.
pub async fn owned_device(state: &AppState, session: &CurrentSession, device_id: &str) -> ApiResult<Device> {
    if !iot_payload::is_valid_device_id(device_id) {
        return Err(ApiError::NotFound);
    }
    let device =
        state.storage.clone().get_device(GetDeviceRequest { device_id: device_id.to_string() }).await?.into_inner();
    if !session.may_access(device.owner_id) {
        return Err(ApiError::NotFound);
    }
    Ok(device)
}

pub async fn list(req: HttpRequest, state: web::Data<AppState>, session: CurrentSession) -> ApiResult<HttpResponse> {
    let query = iot_query::DeviceListParams::parse(req.query_string())?;
    let response = state
        .storage
        .clone()
        .list_devices(ListDevicesRequest {
            owner_id: session.owner_filter(),
            page_size: query.page_size,
            page_token: query.page_token.unwrap_or_default(),
        })
        .await?
        .into_inner();
    let next = (!response.next_page_token.is_empty()).then_some(response.next_page_token);
    Ok(HttpResponse::Ok().json(json!({
        "devices": response.devices.iter().map(device_json).collect::<Vec<_>>(),
        "next_page_token": next,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    pub device_id: String,
    pub name: String,
    #[serde(default)]
    pub attributes: Option<Map<String, Value>>,
}

fn attributes_string(attributes: Option<Map<String, Value>>) -> String {
    attributes.filter(|a| !a.is_empty()).map(|a| Value::Object(a).to_string()).unwrap_or_default()
}

fn validate_name(name: &str) -> ApiResult<()> {
    let len = name.chars().count();
    if name.trim().is_empty() || len > 255 {
        return Err(ApiError::Unprocessable("name must be 1 to 255 characters".to_string()));
    }
    Ok(())
}

pub fn new_device_password() -> String {
    crate::random_token(18)
}

fn mqtt_json(state: &AppState, device_id: &str, password: &str, provisioning: BrokerProvisioning) -> Value {
    json!({
        "host": state.config.public_mqtt_host,
        "port": state.config.public_mqtt_port,
        "username": device_id,
        "password": password,
        "client_id": device_id,
        "topic": telemetry_topic(device_id),
        // False when the api runs without a provisioning account: the broker does not check these.
        "broker_enforced": provisioning.enforced(),
    })
}

/// Creates a device and its MQTT credentials. Shared by the JSON API and the HTML form.
///
/// Storage first: it decides whether the id is free (409 otherwise) before the broker is
/// touched, so a duplicate can never reset another device's password. When the broker then
/// fails (down: 503; no answer: 504), the device is deleted again: a device nobody can
/// connect as is worse than none. A broker command that still ran after that leaves an
/// account without a device (password unknown to anyone, data refused by ingest); creating
/// the device again resets it, since provisioning is idempotent.
pub async fn create_device(state: &AppState, session: &CurrentSession, body: NewDevice) -> ApiResult<(Device, Value)> {
    if !iot_payload::is_valid_device_id(&body.device_id) {
        return Err(ApiError::Unprocessable("device_id must match [A-Za-z0-9_-]{1,64}".to_string()));
    }
    validate_name(&body.name)?;
    let device = state
        .storage
        .clone()
        .create_device(CreateDeviceRequest {
            device_id: body.device_id,
            owner_id: session.user_id(),
            name: body.name,
            attributes_json: attributes_string(body.attributes),
        })
        .await?
        .into_inner();
    let password = new_device_password();
    let provisioning = match state.broker.provision(&device.device_id, &password).await {
        Ok(p) => p,
        Err(error) => {
            let rollback = state.storage.clone().delete_device(DeleteDeviceRequest { device_id: device.device_id.clone() }).await;
            if let Err(status) = rollback {
                // Left in storage without broker credentials; rotating them repairs it.
                tracing::error!(device_id = %device.device_id, %status, "could not roll back a device whose credentials were not provisioned");
            }
            return Err(error.into());
        }
    };
    let mut body = device_json(&device);
    body["mqtt"] = mqtt_json(state, &device.device_id, &password, provisioning);
    tracing::info!(device_id = %device.device_id, owner_id = device.owner_id, "device created");
    Ok((device, body))
}

pub async fn create(state: web::Data<AppState>, session: CurrentSession, body: web::Json<NewDevice>) -> ApiResult<HttpResponse> {
    let (device, body) = create_device(&state, &session, body.into_inner()).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/devices/{}", device.device_id)))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body))
}

fn etag_of(body: &[u8]) -> String {
    let mut hasher = DefaultHasher::new();
    body.hash(&mut hasher);
    format!("\"{:016x}\"", hasher.finish())
}

fn if_none_match_hits(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        }))
}

pub async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: CurrentSession,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let device = owned_device(&state, &session, &path).await?;
    let body = device_json(&device).to_string();
    let etag = etag_of(body.as_bytes());
    if if_none_match_hits(&req, &etag) {
        return Ok(HttpResponse::NotModified().insert_header((header::ETAG, etag)).finish());
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "private, no-cache"))
        .content_type("application/json")
        .body(body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceDevice {
    pub name: String,
    #[serde(default)]
    pub attributes: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchDevice {
    pub name: Option<String>,
    /// `null` clears the attributes.
    #[serde(default, deserialize_with = "double_option")]
    pub attributes: Option<Option<Map<String, Value>>>,
}

fn double_option<'de, D>(deserializer: D) -> Result<Option<Option<Map<String, Value>>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<Map<String, Value>>::deserialize(deserializer).map(Some)
}

async fn update(state: &AppState, device_id: String, name: Option<String>, attributes: Option<String>) -> ApiResult<HttpResponse> {
    if let Some(name) = &name {
        validate_name(name)?;
    }
    let device = state
        .storage
        .clone()
        .update_device(UpdateDeviceRequest { device_id, name, attributes_json: attributes })
        .await?
        .into_inner();
    let body = device_json(&device).to_string();
    Ok(HttpResponse::Ok().insert_header((header::ETAG, etag_of(body.as_bytes()))).content_type("application/json").body(body))
}

pub async fn replace(
    state: web::Data<AppState>,
    session: CurrentSession,
    path: web::Path<String>,
    body: web::Json<ReplaceDevice>,
) -> ApiResult<HttpResponse> {
    let device = owned_device(&state, &session, &path).await?;
    let body = body.into_inner();
    update(&state, device.device_id, Some(body.name), Some(attributes_string(body.attributes))).await
}

pub async fn patch(
    state: web::Data<AppState>,
    session: CurrentSession,
    path: web::Path<String>,
    body: web::Json<PatchDevice>,
) -> ApiResult<HttpResponse> {
    let device = owned_device(&state, &session, &path).await?;
    let body = body.into_inner();
    update(&state, device.device_id, body.name, body.attributes.map(attributes_string)).await
}

pub async fn delete(state: web::Data<AppState>, session: CurrentSession, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let device = owned_device(&state, &session, &path).await?;
    // Broker first: if it is down the request fails and the device stays whole (retry later).
    // The other order would leave a working broker login for a device the owner can no longer
    // see or delete. If storage then fails, the device remains without credentials until they
    // are rotated.
    state.broker.revoke(&device.device_id).await?;
    state.storage.clone().delete_device(DeleteDeviceRequest { device_id: device.device_id.clone() }).await?;
    tracing::info!(device_id = %device.device_id, "device deleted");
    Ok(HttpResponse::NoContent().finish())
}

pub async fn rotate_credentials(
    state: web::Data<AppState>,
    session: CurrentSession,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let device = owned_device(&state, &session, &path).await?;
    let password = new_device_password();
    // Replaces the broker's password (and disconnects a client logged in with the old one);
    // also provisions a device created while the api ran without a provisioning account.
    let provisioning = state.broker.provision(&device.device_id, &password).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"device_id": device.device_id, "mqtt": mqtt_json(&state, &device.device_id, &password, provisioning)})))
}
