//! `GET /openapi.json`: hand-written OpenAPI 3.1 document of every route. The test suite
//! checks that each path the service routes is described here.

use actix_web::{HttpResponse, http::header};
use serde_json::{Value, json};

pub async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(spec().to_string())
}

fn error(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn json_response(description: &str, schema: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn json_body(schema: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn time_param(name: &str, description: &str) -> Value {
    query(name, &format!("{description}: RFC 3339 timestamp or epoch milliseconds"), json!({"type": "string"}))
}

fn with_common(mut responses: Value, auth: bool) -> Value {
    let map = responses.as_object_mut().map(std::mem::take).unwrap_or_default();
    let mut map = map;
    if auth {
        map.insert("401".into(), error("No valid session cookie"));
    }
    map.insert("406".into(), error("None of the acceptable media types can be produced"));
    map.insert("503".into(), error("A backend service is unavailable"));
    Value::Object(map)
}

fn op(tag: &str, summary: &str, auth: bool, extra: Value, responses: Value) -> Value {
    let mut responses = with_common(responses, auth);
    if extra.get("requestBody").is_some()
        && let Some(map) = responses.as_object_mut()
    {
        // Every JSON body can be unparsable, too slow, too large or not JSON at all.
        for (status, description) in [
            ("400", "Body is not valid JSON"),
            ("408", "Body not received within API_BODY_TIMEOUT"),
            ("413", "Body larger than API_MAX_BODY_BYTES"),
            ("415", "Body is not JSON"),
        ] {
            map.entry(status).or_insert_with(|| error(description));
        }
    }
    let mut op = json!({"tags": [tag], "summary": summary, "responses": responses});
    if !auth {
        op["security"] = json!([]);
    }
    if let (Some(op_map), Some(extra_map)) = (op.as_object_mut(), extra.as_object()) {
        for (k, v) in extra_map {
            op_map.insert(k.clone(), v.clone());
        }
    }
    op
}

pub fn spec() -> Value {
    let device_param = json!({"$ref": "#/components/parameters/DeviceId"});
    let range_params = vec![
        query("metric", "Only this metric", json!({"type": "string", "pattern": "^[A-Za-z0-9_.:/-]{1,64}$"})),
        time_param("from", "Inclusive start"),
        time_param("to", "Exclusive end"),
    ];
    let mut readings_params = vec![device_param.clone()];
    readings_params.extend(range_params.clone());
    readings_params.extend([
        query("limit", "Page size (JSON/HTML), 1..=10000, default 1000", json!({"type": "integer", "minimum": 1, "maximum": 10000})),
        query("cursor", "next_cursor of the previous page", json!({"type": "string"})),
        query("order", "asc (default) or desc", json!({"enum": ["asc", "desc"]})),
        query("width", "PNG width in pixels (200..=4000, default 800)", json!({"type": "integer", "minimum": 200, "maximum": 4000})),
        query("height", "PNG height in pixels (150..=3000, default 400)", json!({"type": "integer", "minimum": 150, "maximum": 3000})),
        query("format", "Overrides Accept", json!({"enum": ["json", "csv", "png", "html"]})),
    ]);
    let mut delete_params = vec![device_param.clone()];
    delete_params.extend(range_params.clone());
    let mut aggregate_params = vec![device_param.clone()];
    aggregate_params.extend(range_params);
    // Required here (422 without it).
    aggregate_params[1]["required"] = json!(true);
    aggregate_params.push(query(
        "bucket",
        "Bucket width: 30s, 5m, 1h, 1d, 500ms or seconds (default 1h)",
        json!({"type": "string", "pattern": "^[0-9]+(ms|s|m|h|d)?$"}),
    ));

    let cross_site = error("Cross-site request (Origin / Sec-Fetch-Site) with the session cookie");
    let readings_get = op(
        "readings",
        "Readings of a device; representation by Accept (json default, text/csv streamed, image/png chart, text/html)",
        true,
        json!({"parameters": readings_params}),
        json!({
            "200": {"description": "Readings", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ReadingsPage"}},
                "text/csv": {"schema": {"type": "string"}, "example": "metric,ts,value\ntemperature,2026-01-01T00:00:00Z,21.5\n"},
                "image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}},
                "text/html": {"schema": {"type": "string"}}
            }},
            "400": error("Malformed parameter"),
            "404": error("No such device (or not yours)"),
            "422": error("Invalid parameter values")
        }),
    );
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "IoT telemetry api",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Devices, readings and live streams. Authenticate with POST /api/v1/sessions; the `sid` cookie it sets authenticates the rest. State-changing requests carrying the cookie are refused (403) when Origin or Sec-Fetch-Site shows another site. Errors are {\"error\":{\"code\",\"message\"}}."
        },
        "security": [{"sessionCookie": []}],
        "paths": {
            "/api/v1/users": {"post": op("users", "Register a user. The first user needs no session and becomes admin; later ones need an admin session.", false,
                json!({"requestBody": json_body("NewUser")}),
                json!({"201": json_response("Registered", "User"), "401": error("Users exist and there is no session"), "403": error("Not an admin, or cross-site"),
                       "409": error("Username taken"), "413": error("Body too large"), "415": error("Not JSON"), "422": error("Invalid username or password")}))},
            "/api/v1/sessions": {"post": op("sessions", "Log in; sets the HttpOnly, SameSite=Lax `sid` cookie (Secure behind TLS)", false,
                json!({"requestBody": json_body("Credentials")}),
                json!({"201": {"description": "Logged in", "headers": {"Set-Cookie": {"schema": {"type": "string"}}},
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Session"}}}},
                       "401": error("Wrong username or password"), "415": error("Not JSON"), "422": error("Malformed body")}))},
            "/api/v1/sessions/current": {
                "get": op("sessions", "The logged-in user and the session's CSRF token", true, json!({}), json!({"200": json_response("Session", "Session")})),
                "delete": op("sessions", "Log out (revokes the session, clears the cookie)", true, json!({}), json!({"204": {"description": "Logged out"}, "403": cross_site.clone()}))
            },
            "/api/v1/devices": {
                "get": op("devices", "Your devices (admins: all), paginated", true,
                    json!({"parameters": [query("page_size", "1..=1000, default 100", json!({"type": "integer", "minimum": 1, "maximum": 1000})), query("page_token", "next_page_token of the previous page", json!({"type": "string"}))]}),
                    json!({"200": json_response("Devices", "DeviceList"), "400": error("Malformed parameter"), "422": error("page_size out of range or page_token not one this api gave out")})),
                "post": op("devices", "Create a device and its MQTT credentials (the password is shown only here)", true,
                    json!({"requestBody": json_body("NewDevice")}),
                    json!({"201": {"description": "Created", "headers": {"Location": {"schema": {"type": "string"}}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreatedDevice"}}}},
                           "403": cross_site.clone(), "409": error("Device id taken"), "413": error("Body too large"), "415": error("Not JSON"), "422": error("Invalid device id or name")}))
            },
            "/api/v1/devices/{device_id}": {
                "parameters": [device_param.clone()],
                "get": op("devices", "One device (ETag; If-None-Match gives 304)", true, json!({}),
                    json!({"200": json_response("Device", "Device"), "304": {"description": "Not modified"}, "404": error("No such device (or not yours)")})),
                "put": op("devices", "Replace name and attributes", true, json!({"requestBody": json_body("ReplaceDevice")}),
                    json!({"200": json_response("Updated", "Device"), "403": cross_site.clone(), "404": error("No such device"), "415": error("Not JSON"), "422": error("Invalid")})),
                "patch": op("devices", "Change name and/or attributes (application/json or application/merge-patch+json)", true, json!({"requestBody": json_body("PatchDevice")}),
                    json!({"200": json_response("Updated", "Device"), "403": cross_site.clone(), "404": error("No such device"), "415": error("Not JSON"), "422": error("Invalid")})),
                "delete": op("devices", "Delete a device, its readings and its credentials", true, json!({}),
                    json!({"204": {"description": "Deleted"}, "403": cross_site.clone(), "404": error("No such device")}))
            },
            "/api/v1/devices/{device_id}/credentials": {"post": op("devices", "Rotate the device's MQTT password", true,
                json!({"parameters": [device_param.clone()]}),
                json!({"200": {"description": "New credentials", "content": {"application/json": {"schema": {"type": "object", "properties": {"device_id": {"type": "string"}, "mqtt": {"$ref": "#/components/schemas/MqttCredentials"}}}}}},
                       "403": cross_site.clone(), "404": error("No such device")}))},
            "/api/v1/devices/{device_id}/readings": {
                "get": readings_get.clone(),
                "delete": op("readings", "Delete readings in a range (all when no range is given)", true, json!({"parameters": delete_params}),
                    json!({"200": {"description": "Deleted", "content": {"application/json": {"schema": {"type": "object", "properties": {"device_id": {"type": "string"}, "deleted": {"type": "integer"}}}}}},
                           "400": error("Malformed parameter"), "403": cross_site, "404": error("No such device"), "422": error("Invalid parameter values")}))
            },
            "/api/v1/devices/{device_id}/readings/latest": {
                "get": op("readings", "The newest reading of every metric", true, json!({"parameters": [device_param.clone()]}),
                    json!({"200": json_response("Latest readings", "LatestReadings"), "404": error("No such device")})),
            },
            "/api/v1/devices/{device_id}/readings/aggregate": {
                "get": op("readings", "min/max/avg/count per time bucket of one metric", true, json!({"parameters": aggregate_params.clone()}),
                    json!({"200": json_response("Buckets", "Aggregate"), "400": error("Malformed parameter"), "404": error("No such device"), "422": error("metric missing or invalid")})),
            },
            "/api/v1/devices/{device_id}/stream": {"get": op("readings", "Server-Sent Events: `event: reading` with {metric, ts, ts_us, value} for each new reading; comment heartbeats every 15 s", true,
                json!({"parameters": [device_param]}),
                json!({"200": {"description": "Event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}, "404": error("No such device")}))},
            "/openapi.json": {"get": op("meta", "This document", false, json!({}), json!({"200": {"description": "OpenAPI 3.1 document", "content": {"application/json": {}}}}))}
        },
        "components": {
            "securitySchemes": {"sessionCookie": {"type": "apiKey", "in": "cookie", "name": "sid"}},
            "parameters": {"DeviceId": {"name": "device_id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "NewUser": {"type": "object", "required": ["username", "password"], "additionalProperties": false, "properties": {
                    "username": {"type": "string", "pattern": "^[A-Za-z0-9_.@-]{1,64}$"}, "password": {"type": "string", "minLength": 8, "maxLength": 1024},
                    "is_admin": {"type": "boolean", "description": "Only an admin may set this"}}},
                "User": {"type": "object", "properties": {"id": {"type": "integer"}, "username": {"type": "string"}, "is_admin": {"type": "boolean"}, "created_at": {"type": "string", "format": "date-time"}}},
                "Credentials": {"type": "object", "required": ["username", "password"], "properties": {"username": {"type": "string"}, "password": {"type": "string"}}},
                "Session": {"type": "object", "properties": {
                    "user": {"type": "object", "properties": {"id": {"type": "integer"}, "username": {"type": "string"}, "is_admin": {"type": "boolean"}}},
                    "session_id": {"type": "string"}, "csrf_token": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"},
                    "idle_expires_at": {"type": "string", "format": "date-time"}, "expires_at": {"type": "string", "format": "date-time"}}},
                "Device": {"type": "object", "properties": {"device_id": {"type": "string"}, "name": {"type": "string"}, "owner_id": {"type": "integer"},
                    "attributes": {"type": "object"}, "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"},
                    "topic": {"type": "string"}}},
                "DeviceList": {"type": "object", "properties": {"devices": {"type": "array", "items": {"$ref": "#/components/schemas/Device"}}, "next_page_token": {"type": ["string", "null"]}}},
                "NewDevice": {"type": "object", "required": ["device_id", "name"], "additionalProperties": false, "properties": {
                    "device_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, "name": {"type": "string", "minLength": 1, "maxLength": 255}, "attributes": {"type": "object"}}},
                "ReplaceDevice": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {"name": {"type": "string"}, "attributes": {"type": "object"}}},
                "PatchDevice": {"type": "object", "additionalProperties": false, "properties": {"name": {"type": "string"}, "attributes": {"type": ["object", "null"]}}},
                "MqttCredentials": {"type": "object", "properties": {"host": {"type": "string"}, "port": {"type": "integer"}, "username": {"type": "string"},
                    "password": {"type": "string"}, "client_id": {"type": "string"}, "topic": {"type": "string"},
                    "broker_enforced": {"type": "boolean", "description": "false when the api runs without a broker provisioning account (API_MQTT_ADMIN_USERNAME): the broker does not check these credentials"}}},
                "CreatedDevice": {"allOf": [{"$ref": "#/components/schemas/Device"}, {"type": "object", "properties": {"mqtt": {"$ref": "#/components/schemas/MqttCredentials"}}}]},
                "Reading": {"type": "object", "properties": {"metric": {"type": "string"}, "ts": {"type": "string", "format": "date-time"}, "value": {"type": "number"}}},
                "ReadingsPage": {"type": "object", "properties": {"device_id": {"type": "string"}, "readings": {"type": "array", "items": {"$ref": "#/components/schemas/Reading"}}, "next_cursor": {"type": ["string", "null"]}}},
                "LatestReadings": {"type": "object", "properties": {"device_id": {"type": "string"}, "readings": {"type": "array", "items": {"$ref": "#/components/schemas/Reading"}}}},
                "Aggregate": {"type": "object", "properties": {"device_id": {"type": "string"}, "metric": {"type": "string"}, "bucket_seconds": {"type": "number"},
                    "buckets": {"type": "array", "items": {"type": "object", "properties": {"start": {"type": "string", "format": "date-time"}, "count": {"type": "integer"},
                        "min": {"type": "number"}, "max": {"type": "number"}, "avg": {"type": "number"}}}}}}
            }
        }
    });
    // HEAD answers exactly as GET does, without the body: same parameters and statuses.
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            if let Some(mut head) = item.get("get").cloned() {
                head["summary"] = json!("Headers of GET");
                item["head"] = head;
            }
        }
    }
    doc
}

/// The methods the document gives `pattern` (an actix route pattern such as
/// `/api/v1/devices/{device_id}`), for the `Allow` header of a 405.
pub fn allowed_methods(pattern: &str) -> Option<String> {
    use std::sync::LazyLock;
    static PATHS: LazyLock<Value> = LazyLock::new(|| spec()["paths"].clone());
    let methods: Vec<String> = PATHS
        .get(pattern)?
        .as_object()?
        .keys()
        .filter(|k| matches!(k.as_str(), "get" | "head" | "post" | "put" | "patch" | "delete"))
        .map(|k| k.to_ascii_uppercase())
        .collect();
    (!methods.is_empty()).then(|| methods.join(", "))
}
