//! Cross-cutting request handling: metrics, CSRF refusal, `Accept` checks for JSON routes,
//! and JSON bodies for actix's own 404/405.

use std::time::Instant;

use actix_web::{
    Error, HttpRequest, HttpResponse, ResponseError,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::header,
    middleware::{ErrorHandlerResponse, Next},
    web,
};

use crate::{error::ApiError, negotiate::negotiate, state::AppState};

pub async fn metrics(req: ServiceRequest, next: Next<impl MessageBody>) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let method = req.method().to_string();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let result = next.call(req).await;
    if let Some(state) = state {
        let (route, status) = match &result {
            Ok(response) => (
                response.request().match_pattern().unwrap_or_else(|| "unmatched".to_string()),
                response.status(),
            ),
            Err(error) => ("unmatched".to_string(), error.as_response_error().status_code()),
        };
        state.metrics.requests.with_label_values(&[&route, &method, status.as_str()]).inc();
        state.metrics.latency.with_label_values(&[&route, &method]).observe(started.elapsed().as_secs_f64());
    }
    result
}

/// The server span of one request (`iot_runtime::telemetry::http`), child of the caller's
/// `traceparent` if any. Handlers run inside it, so the gRPC client spans of their
/// storage/session calls become its children. Outermost, so it sees every request.
pub async fn trace(req: ServiceRequest, next: Next<impl MessageBody>) -> Result<ServiceResponse<impl MessageBody>, Error> {
    use iot_runtime::telemetry::http::{record_response, server_span};
    use tracing::Instrument;
    // actix-web 4 has its own header types: the headers go over as name/value pairs.
    let span = server_span(
        req.method().as_str(),
        req.path(),
        req.match_pattern().as_deref(),
        req.headers().iter().map(|(name, value)| (name.as_str(), value.as_bytes())),
    );
    let result = next.call(req).instrument(span.clone()).await;
    let status = match &result {
        Ok(response) => response.status(),
        Err(error) => error.as_response_error().status_code(),
    };
    record_response(&span, status.as_u16());
    result
}

pub async fn csrf(req: ServiceRequest, next: Next<impl MessageBody>) -> Result<ServiceResponse<impl MessageBody>, Error> {
    if let Some(reason) = crate::auth::cross_site_reason(&req) {
        tracing::info!(path = %req.path(), %reason, "refused a cross-site state-changing request");
        return Err(ApiError::Forbidden(format!("cross-site request refused: {reason}")).into());
    }
    next.call(req).await
}

/// Routes under /api/v1 answer JSON only; readings and the stream negotiate for themselves.
pub async fn json_accept(req: ServiceRequest, next: Next<impl MessageBody>) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let path = req.path();
    let negotiates_itself = path.ends_with("/readings") || path.ends_with("/stream");
    if path.starts_with("/api/v1/") && !negotiates_itself {
        let accept = req.headers().get(header::ACCEPT).map(|v| v.to_str().unwrap_or("\u{0}"));
        negotiate(accept, &["application/json"])?;
    }
    next.call(req).await
}

pub async fn not_found(_req: HttpRequest) -> HttpResponse {
    ApiError::NotFound.error_response()
}

/// actix answers 405 itself (a resource without a route for the method) with an empty body.
pub fn method_not_allowed<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let (req, _) = res.into_parts();
    let response = ApiError::MethodNotAllowed.error_response();
    Ok(ErrorHandlerResponse::Response(ServiceResponse::new(req, response).map_into_right_body()))
}
