use actix_web::HttpResponse;

pub async fn document() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(crate::routes::openapi::spec().to_string())
}

pub fn spec() -> serde_json::Value {
    serde_json::json!({"openapi": "3.1.0", "info": {"title": "IoT telemetry api", "version": env!("CARGO_PKG_VERSION")}, "paths": {}})
}
