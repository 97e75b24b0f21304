//! Cross-cutting request handling: metrics, CSRF refusal, `Accept` checks for JSON routes,
//! and JSON bodies for actix's own 404/405.

use std::{
    cell::RefCell,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use actix_web::{
    Error, HttpMessage, HttpRequest, HttpResponse, ResponseError,
    body::{BoxBody, EitherBody, MessageBody},
    dev::{Payload, ServiceRequest, ServiceResponse},
    error::PayloadError,
    http::header,
    middleware::{ErrorHandlerResponse, Next},
    web,
};

use crate::{error::ApiError, negotiate::negotiate, state::AppState};

/// The route pattern of a request (`/api/v1/devices/{device_id}/readings`), looked up once by
/// [`trace`] and reused by [`metrics`]: actix finds it by matching the path against every
/// resource's regex again, which costs a few percent of the api's CPU per lookup.
#[derive(Clone)]
struct RoutePattern(Option<String>);

fn route_pattern(req: &ServiceRequest) -> Option<String> {
    if let Some(known) = req.extensions().get::<RoutePattern>() {
        return known.0.clone();
    }
    let pattern = req.match_pattern();
    req.extensions_mut().insert(RoutePattern(pattern.clone()));
    pattern
}

pub async fn metrics(req: ServiceRequest, next: Next<impl MessageBody>) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let method = req.method().to_string();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let pattern = route_pattern(&req);
    let result = next.call(req).await;
    if let Some(state) = state {
        let (route, status) = match &result {
            Ok(response) => (pattern.as_deref().unwrap_or("unmatched"), response.status()),
            Err(error) => ("unmatched", error.as_response_error().status_code()),
        };
        state.metrics.requests.with_label_values(&[route, &method, status.as_str()]).inc();
        state.metrics.latency.with_label_values(&[route, &method]).observe(started.elapsed().as_secs_f64());
    }
    result
}

/// The server span of one request (`iot_runtime::telemetry::http`), child of the caller's
/// `traceparent` if any. Handlers run inside it, so the gRPC client spans of their
/// storage/session calls become its children. Outermost but for the request clock
/// (`request_deadline::track_requests`), so it sees every request.
pub async fn trace(req: ServiceRequest, next: Next<impl MessageBody>) -> Result<ServiceResponse<impl MessageBody>, Error> {
    use iot_runtime::telemetry::http::{record_response, server_span};
    use tracing::Instrument;
    // actix-web 4 has its own header types: the headers go over as name/value pairs.
    let pattern = route_pattern(&req);
    let span = server_span(
        req.method().as_str(),
        req.path(),
        pattern.as_deref(),
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
/// A 405 must name the allowed methods (RFC 9110 §15.5.6; found by schemathesis): from the
/// OpenAPI document for the api, from the route table of the pages for them.
pub fn method_not_allowed<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let (req, _) = res.into_parts();
    let mut response = ApiError::MethodNotAllowed.error_response();
    let allowed = req.match_pattern().and_then(|pattern| {
        crate::routes::openapi::allowed_methods(&pattern).or_else(|| crate::routes::page_methods(&pattern).map(str::to_string))
    });
    if let Some(allowed) = allowed.and_then(|a| header::HeaderValue::from_str(&a).ok()) {
        response.headers_mut().insert(header::ALLOW, allowed);
    }
    Ok(ErrorHandlerResponse::Response(ServiceResponse::new(req, response).map_into_right_body()))
}

/// The error a body stream yields at its deadline (`ApiError::RequestTimeout`, 408).
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
pub struct BodyTimedOut(pub Duration);

/// The receiving end of a request body, shared between the handler's stream and the response.
type SharedPayload = Rc<RefCell<Payload>>;

/// A request body that ends with [`BodyTimedOut`] once its deadline has passed.
struct DeadlineBody {
    inner: SharedPayload,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    expired: bool,
}

impl futures::Stream for DeadlineBody {
    type Item = Result<web::Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.expired {
            return Poll::Ready(None);
        }
        // Data already here wins over the timer; the timer wins over waiting for more.
        let polled = Pin::new(&mut *self.inner.borrow_mut()).poll_next(cx);
        if let Poll::Ready(item) = polled {
            return Poll::Ready(item);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.expired = true;
            let error = std::io::Error::new(std::io::ErrorKind::TimedOut, BodyTimedOut(self.limit));
            return Poll::Ready(Some(Err(PayloadError::Io(error))));
        }
        Poll::Pending
    }
}

/// A response body that keeps the request body's receiving end alive until it has been sent.
///
/// actix drains a chunked request body the handler did not read (after a 401, 413 or 408)
/// before it reads the next request or closes, with no time limit: a client could keep
/// trickling chunks and hold the connection. While the receiving end is alive, actix closes
/// the connection after the response instead (bounded by --client-disconnect-timeout).
struct HoldPayload {
    body: BoxBody,
    _payload: SharedPayload,
}

impl MessageBody for HoldPayload {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> actix_web::body::BodySize {
        self.body.size()
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<web::Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

/// Bounds the time a request body may take to arrive (`--body-timeout`): actix's own
/// `client_request_timeout` covers only the head, and a body trickled byte by byte would
/// otherwise hold the connection (and the extractor waiting for it) indefinitely.
pub async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    let limit = req.app_data::<web::Data<AppState>>().map(|state| state.config.body_timeout);
    let mut held = None;
    if let (true, Some(limit)) = (has_body, limit) {
        let inner: SharedPayload = Rc::new(RefCell::new(req.take_payload()));
        held = Some(inner.clone());
        let body = DeadlineBody { inner, deadline: Box::pin(tokio::time::sleep(limit)), limit, expired: false };
        let stream: Pin<Box<dyn futures::Stream<Item = Result<web::Bytes, PayloadError>>>> = Box::pin(body);
        req.set_payload(Payload::from(stream));
    }
    let response = next.call(req).await?;
    Ok(response.map_body(|_, body| match held {
        Some(payload) => EitherBody::right(HoldPayload { body: body.boxed(), _payload: payload }),
        None => EitherBody::left(body),
    }))
}
