//! Tracing for tonic clients and servers: W3C trace context in gRPC metadata, a server span
//! per call (parent taken from the caller's metadata while the span is built) and a client
//! span per outgoing call (its context injected into the request).
//!
//! Server: `Server::builder().layer(GrpcServerTraceLayer::new())` — or, for spans without the
//! status code, `Server::builder().trace_fn(server_span)`.
//! Client: `FooClient::new(traced_channel(channel, &uri))` (client span + injection) or
//! `FooClient::with_interceptor(channel, TraceContextInterceptor)` (injection of the current
//! span only).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context as TaskContext, Poll},
};

use http_body::{Body, Frame, SizeHint};
use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tower::{
    Layer, Service,
    layer::util::{Identity, Stack},
};
use tracing::{Instrument, Span, field::Empty};

use super::{Context, OpenTelemetrySpanExt};

/// Services whose calls get no span by default: probes call them every few seconds.
pub const UNTRACED_SERVICES: &[&str] =
    &["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// Injector into tonic request/response metadata.
pub struct MetadataInjector<'a>(pub &'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(&value)) {
            self.0.insert(key, value);
        }
    }
}

/// Extractor over tonic metadata (ASCII entries only).
pub struct MetadataExtractor<'a>(pub &'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                KeyRef::Ascii(key) => Some(key.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Writes `cx` into gRPC metadata.
pub fn inject_metadata(cx: &Context, metadata: &mut MetadataMap) {
    super::inject_with(cx, &mut MetadataInjector(metadata));
}

/// The caller's context from gRPC metadata; `None` without a valid `traceparent`.
pub fn extract_metadata(metadata: &MetadataMap) -> Option<Context> {
    let cx = super::extract_with(&MetadataExtractor(metadata));
    super::remote_span_context(&cx).is_some().then_some(cx)
}

/// Client interceptor: puts the current span's context into every request's metadata.
/// Creates no span of its own (use [`traced_channel`] for a client span).
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        inject_metadata(&super::current_context(), request.metadata_mut());
        Ok(request)
    }
}

/// `("pkg.Service", "Method")` from a gRPC request path `/pkg.Service/Method`.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some((service, method))
}

/// The server span of one call: `otel.name` `pkg.Service/Method`, kind server, `rpc.system`,
/// `rpc.service`, `rpc.method`, the peer address, and `rpc.grpc.status_code` left to be
/// recorded. Its parent is the caller's span from the `traceparent` metadata, set here while
/// the span is being built. Usable directly as tonic's `Server::builder().trace_fn(server_span)`.
pub fn server_span<B>(request: &http::Request<B>) -> Span {
    let path = request.uri().path();
    let (service, method) = split_path(path).unwrap_or(("unknown", path));
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = super::semconv::RPC_SYSTEM_GRPC,
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        error.type = Empty,
        trace_id = Empty,
        network.peer.address = Empty,
        network.peer.port = Empty,
    );
    if let Some(peer) =
        request.extensions().get::<tonic::transport::server::TcpConnectInfo>().and_then(|info| info.remote_addr())
    {
        span.record("network.peer.address", tracing::field::display(peer.ip()));
        span.record("network.peer.port", i64::from(peer.port()));
    }
    if let Some(parent) = super::http::extract_header_map(request.headers()) {
        super::set_parent(&span, parent);
    }
    super::record_trace_id(&span);
    span
}

/// The client span of one outgoing call (kind client, `rpc.*`, `server.address`/`server.port`
/// from the request URI); its parent is the current span.
pub fn client_span<B>(request: &http::Request<B>) -> Span {
    let path = request.uri().path();
    let (service, method) = split_path(path).unwrap_or(("unknown", path));
    let span = tracing::info_span!(
        "grpc.client",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "client",
        otel.status_code = Empty,
        rpc.system = super::semconv::RPC_SYSTEM_GRPC,
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        error.type = Empty,
        server.address = Empty,
        server.port = Empty,
    );
    if let Some(host) = request.uri().host() {
        span.record("server.address", host);
    }
    if let Some(port) = request.uri().port_u16() {
        span.record("server.port", i64::from(port));
    }
    span
}

/// Which side a span is on: it decides which status codes mark the span as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

/// Records a gRPC status code on a span made by [`server_span`] or [`client_span`]. On a
/// server span only codes that mean the server failed are errors (semantic conventions).
fn record_status(span: &Span, side: Side, code: i32) {
    span.record("rpc.grpc.status_code", i64::from(code));
    let error = match side {
        Side::Client => code != 0,
        // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS
        Side::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    };
    if error {
        span.record("otel.status_code", "error");
        span.record("error.type", code_name(code));
    }
}

/// Canonical upper-case name of a gRPC status code.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "_OTHER",
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A tonic server builder with [`GrpcServerTraceLayer`] (health and reflection untraced).
pub type TracedServer = tonic::transport::Server<Stack<GrpcServerTraceLayer, Identity>>;
/// What [`TracedServer::add_service`] returns, to keep in a struct between build and serve.
pub type TracedRouter = tonic::transport::server::Router<Stack<GrpcServerTraceLayer, Identity>>;

/// `Server::builder().layer(GrpcServerTraceLayer::new())`: a server span per call.
pub fn traced_server() -> TracedServer {
    tonic::transport::Server::builder().layer(GrpcServerTraceLayer::new())
}

/// Tower layer for tonic servers: a server span per call (see [`server_span`]) that the
/// handler runs in, closed when the response body ends, with `rpc.grpc.status_code` from the
/// response headers (errors) or trailers (success, streams).
#[derive(Debug, Clone)]
pub struct GrpcServerTraceLayer {
    untraced: Arc<[String]>,
}

impl Default for GrpcServerTraceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcServerTraceLayer {
    /// Traces every service except health and reflection ([`UNTRACED_SERVICES`]).
    pub fn new() -> Self {
        Self::untraced(UNTRACED_SERVICES.iter().copied())
    }

    /// Traces every service, health and reflection included.
    pub fn all() -> Self {
        Self::untraced(std::iter::empty())
    }

    /// Traces every service except these (full names, e.g. `grpc.health.v1.Health`).
    pub fn untraced<'a>(services: impl IntoIterator<Item = &'a str>) -> Self {
        Self { untraced: services.into_iter().map(str::to_string).collect() }
    }
}

impl<S> Layer<S> for GrpcServerTraceLayer {
    type Service = GrpcServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcServerTrace { inner, untraced: self.untraced.clone() }
    }
}

/// The service made by [`GrpcServerTraceLayer`].
#[derive(Debug, Clone)]
pub struct GrpcServerTrace<S> {
    inner: S,
    untraced: Arc<[String]>,
}

impl<S, B, ResBody> Service<http::Request<B>> for GrpcServerTrace<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body + Unpin + Send + 'static,
{
    type Response = http::Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let untraced = split_path(request.uri().path())
            .is_some_and(|(service, _)| self.untraced.iter().any(|name| name == service));
        let span = if untraced { Span::none() } else { server_span(&request) };
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(traced_response(response, span, Side::Server))
    }
}

async fn traced_response<F, ResBody, E>(
    response: F,
    span: Span,
    side: Side,
) -> Result<http::Response<TracedBody<ResBody>>, E>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    match response.instrument(span.clone()).await {
        Ok(response) => {
            // A trailers-only response (every unary error) carries the status in its headers;
            // otherwise it comes in the trailers at the end of the body.
            let status_known = match grpc_status(response.headers()) {
                Some(code) => {
                    record_status(&span, side, code);
                    true
                }
                None => false,
            };
            Ok(response.map(|body| TracedBody { inner: body, span, side, status_known }))
        }
        Err(error) => {
            span.record("otel.status_code", "error");
            span.record("error.type", "transport");
            Err(error)
        }
    }
}

/// A response body that records the gRPC status from the trailers and keeps the call's span
/// open until the body is finished (or dropped).
#[derive(Debug)]
pub struct TracedBody<B> {
    inner: B,
    span: Span,
    side: Side,
    status_known: bool,
}

impl<B: Body + Unpin> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if !this.status_known {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                        record_status(&this.span, this.side, code);
                        this.status_known = true;
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    this.span.record("otel.status_code", "error");
                    this.span.record("error.type", "body");
                    this.status_known = true;
                }
                Poll::Ready(None) | Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Tower layer for tonic clients: a client span per call (see [`client_span`]) whose context
/// is injected into the request headers, closed when the response body ends.
#[derive(Debug, Clone, Default)]
pub struct GrpcClientTraceLayer {
    server: Option<Arc<(String, Option<u16>)>>,
}

impl GrpcClientTraceLayer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Names the server in `server.address`/`server.port`. tonic fills in the request URI's
    /// authority only inside the channel, below this layer, so it must be told.
    pub fn with_server(uri: &http::Uri) -> Self {
        Self { server: uri.host().map(|host| Arc::new((host.to_string(), uri.port_u16()))) }
    }
}

impl<S> Layer<S> for GrpcClientTraceLayer {
    type Service = GrpcClientTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcClientTrace { inner, server: self.server.clone() }
    }
}

/// A channel with client spans: `FooClient::new(traced_channel(channel, endpoint.uri()))`.
pub fn traced_channel<S>(channel: S, server: &http::Uri) -> GrpcClientTrace<S> {
    GrpcClientTraceLayer::with_server(server).layer(channel)
}

/// The service made by [`GrpcClientTraceLayer`] / [`traced_channel`].
#[derive(Debug, Clone)]
pub struct GrpcClientTrace<S> {
    inner: S,
    server: Option<Arc<(String, Option<u16>)>>,
}

impl<S, B, ResBody> Service<http::Request<B>> for GrpcClientTrace<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body + Unpin + Send + 'static,
{
    type Response = http::Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let span = client_span(&request);
        if let Some(server) = &self.server
            && request.uri().host().is_none()
        {
            span.record("server.address", server.0.as_str());
            if let Some(port) = server.1 {
                span.record("server.port", i64::from(port));
            }
        }
        super::http::inject_header_map(&span.context(), request.headers_mut());
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(traced_response(response, span, Side::Client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/iot.session.v1.SessionService/CreateSession"),
            Some(("iot.session.v1.SessionService", "CreateSession"))
        );
        assert_eq!(split_path("/nope"), None);
        assert_eq!(split_path("//Method"), None);
        assert_eq!(split_path("/a/b/c"), None);
    }

    #[test]
    fn metadata_round_trip() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut metadata = MetadataMap::new();
        metadata.insert("traceparent", MetadataValue::from_static(parent));
        let cx = extract_metadata(&metadata).expect("valid");
        let mut out = MetadataMap::new();
        inject_metadata(&cx, &mut out);
        assert_eq!(out.get("traceparent").and_then(|v| v.to_str().ok()), Some(parent));
        assert!(extract_metadata(&MetadataMap::new()).is_none());
    }
}
