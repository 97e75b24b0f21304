//! An in-test OTLP trace receiver: a tonic server implementing
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export` on a free port of 127.0.0.1.
//! Point a service at it with `OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint()` (as a
//! subprocess: the global tracer is per process), then wait for the spans:
//!
//! ```ignore
//! let receiver = OtlpReceiver::start().await;
//! // ... start the service with OTEL_EXPORTER_OTLP_ENDPOINT = receiver.endpoint(), call it ...
//! let spans = receiver
//!     .wait_for_spans(|spans| spans.iter().any(|s| s.trace_id == trace_id), Duration::from_secs(20))
//!     .await;
//! ```

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
};
use tokio::sync::{Notify, oneshot};
use tonic::{Request, Response, Status};

/// One exported span, flattened for assertions. Ids are lowercase hex; attribute values are
/// rendered as strings (integers in decimal, booleans as `true`/`false`).
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    pub name: String,
    /// OTLP `SpanKind`: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// The `service.name` resource attribute of the process that exported it.
    pub service_name: String,
    pub attributes: BTreeMap<String, String>,
    /// All resource attributes.
    pub resource: BTreeMap<String, String>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    /// Span ids of the span's links (`trace_id:span_id`).
    pub links: Vec<String>,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
}

impl CollectedSpan {
    pub const KIND_INTERNAL: i32 = 1;
    pub const KIND_SERVER: i32 = 2;
    pub const KIND_CLIENT: i32 = 3;
    pub const KIND_PRODUCER: i32 = 4;
    pub const KIND_CONSUMER: i32 = 5;

    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Shared {
    spans: Mutex<Vec<CollectedSpan>>,
    arrived: Notify,
}

struct Collector(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut collected = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
            let service_name = resource.get("service.name").cloned().unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    let status = span.status.unwrap_or_default();
                    collected.push(CollectedSpan {
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
                        name: span.name,
                        kind: span.kind,
                        service_name: service_name.clone(),
                        attributes: attributes(&span.attributes),
                        resource: resource.clone(),
                        status_code: status.code,
                        status_message: status.message,
                        links: span
                            .links
                            .iter()
                            .map(|link| format!("{}:{}", hex(&link.trace_id), hex(&link.span_id)))
                            .collect(),
                        start_time_unix_nano: span.start_time_unix_nano,
                        end_time_unix_nano: span.end_time_unix_nano,
                    });
                }
            }
        }
        self.0.spans.lock().unwrap().extend(collected);
        self.0.arrived.notify_waiters();
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// The receiver; stops serving when dropped.
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: oneshot::Sender<()>,
}

impl OtlpReceiver {
    /// Starts serving on a free port; returns once it accepts connections.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(
                // Collectors accept gzip; exporters send it with OTEL_EXPORTER_OTLP_COMPRESSION=gzip.
                TraceServiceServer::new(Collector(shared.clone()))
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            });
        tokio::spawn(async move {
            if let Err(error) = server.await {
                eprintln!("OTLP test receiver failed: {error}");
            }
        });
        Self { addr, shared, _stop: stop }
    }

    /// `http://127.0.0.1:{port}`, the value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.shared.spans.lock().unwrap().clone()
    }

    /// The spans of one trace received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<CollectedSpan> {
        self.spans().into_iter().filter(|span| span.trace_id == trace_id).collect()
    }

    /// Waits until `predicate` holds for the spans received so far and returns them; panics
    /// after `timeout`, listing what did arrive.
    pub async fn wait_for_spans(
        &self,
        predicate: impl Fn(&[CollectedSpan]) -> bool,
        timeout: Duration,
    ) -> Vec<CollectedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so that an export between the look and the wait is not missed.
            let arrived = self.shared.arrived.notified();
            let spans = self.spans();
            if predicate(&spans) {
                return spans;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let spans = self.spans();
                if predicate(&spans) {
                    return spans;
                }
                panic!(
                    "spans awaited for {timeout:?} did not arrive; received {} spans:\n{}",
                    spans.len(),
                    describe(&spans)
                );
            }
        }
    }
}

/// One line per span (`service name trace/span<-parent attributes`), for failure messages.
pub fn describe(spans: &[CollectedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "  [{}] {} {}/{} <- {} {:?}",
                s.service_name,
                s.name,
                s.trace_id,
                s.span_id,
                s.parent_span_id.as_deref().unwrap_or("-"),
                s.attributes
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A fresh remote parent: `(trace_id, span_id)` as lowercase hex (32 and 16 digits), never zero.
pub fn random_parent() -> (String, String) {
    use rand::Rng as _;
    let mut rng = rand::rng();
    let trace: [u8; 16] = rng.random();
    let span: [u8; 8] = rng.random();
    // An all-zero id is invalid; make the first byte non-zero.
    let (mut trace, mut span) = (trace, span);
    trace[0] |= 1;
    span[0] |= 1;
    (hex(&trace), hex(&span))
}

/// The W3C `traceparent` value of a sampled span.
pub fn traceparent(trace_id: &str, span_id: &str) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(render).unwrap_or_default())).collect()
}

fn render(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => hex(b),
        Some(Value::ArrayValue(a)) => format!("[{}]", a.values.iter().map(render).collect::<Vec<_>>().join(",")),
        Some(Value::KvlistValue(kv)) => format!("{:?}", attributes(&kv.values)),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
