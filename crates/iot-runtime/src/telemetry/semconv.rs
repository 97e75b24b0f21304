//! OpenTelemetry semantic-convention attribute names used by the services, in one place.
//!
//! In `tracing` macros write the same names as dotted field names
//! (`info_span!("redis", db.system = "redis")`): macros cannot take these constants as
//! names. Use the constants with `OpenTelemetrySpanExt::set_attribute`, in tests and
//! wherever names are built at run time. Older names (`db.system`, `db.operation`,
//! `rpc.grpc.status_code`) are what most backends still group by; newer ones are set next to
//! them where the project does so (`db.system.name`, `db.operation.name`).

// tracing-opentelemetry's special fields
/// Span name in OpenTelemetry (overrides the `tracing` span name).
pub const OTEL_NAME: &str = "otel.name";
/// `server`, `client`, `producer`, `consumer` or `internal`.
pub const OTEL_KIND: &str = "otel.kind";
/// `ok` or `error`.
pub const OTEL_STATUS_CODE: &str = "otel.status_code";
pub const OTEL_STATUS_DESCRIPTION: &str = "otel.status_description";

// resource
pub const SERVICE_NAME: &str = "service.name";

// general
pub const ERROR_TYPE: &str = "error.type";
pub const SERVER_ADDRESS: &str = "server.address";
pub const SERVER_PORT: &str = "server.port";
pub const CLIENT_ADDRESS: &str = "client.address";
pub const CLIENT_PORT: &str = "client.port";
pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
pub const NETWORK_PEER_PORT: &str = "network.peer.port";
pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";

// RPC (gRPC)
pub const RPC_SYSTEM: &str = "rpc.system";
pub const RPC_SERVICE: &str = "rpc.service";
pub const RPC_METHOD: &str = "rpc.method";
pub const RPC_GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";
/// Value of [`RPC_SYSTEM`] for gRPC.
pub const RPC_SYSTEM_GRPC: &str = "grpc";

// HTTP server
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
pub const HTTP_ROUTE: &str = "http.route";
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
pub const URL_PATH: &str = "url.path";
pub const URL_QUERY: &str = "url.query";
pub const URL_SCHEME: &str = "url.scheme";
pub const USER_AGENT_ORIGINAL: &str = "user_agent.original";

// database
pub const DB_SYSTEM: &str = "db.system";
pub const DB_SYSTEM_NAME: &str = "db.system.name";
pub const DB_OPERATION: &str = "db.operation";
pub const DB_OPERATION_NAME: &str = "db.operation.name";
pub const DB_NAMESPACE: &str = "db.namespace";
pub const DB_COLLECTION_NAME: &str = "db.collection.name";
pub const DB_QUERY_SUMMARY: &str = "db.query.summary";
pub const DB_QUERY_TEXT: &str = "db.query.text";
pub const DB_RESPONSE_RETURNED_ROWS: &str = "db.response.returned_rows";
/// Values of [`DB_SYSTEM`].
pub const DB_SYSTEM_REDIS: &str = "redis";
pub const DB_SYSTEM_MARIADB: &str = "mariadb";
pub const DB_SYSTEM_MYSQL: &str = "mysql";

// messaging (MQTT)
pub const MESSAGING_SYSTEM: &str = "messaging.system";
pub const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
pub const MESSAGING_DESTINATION_SUBSCRIPTION_NAME: &str = "messaging.destination.subscription.name";
/// `publish`, `create`, `receive`, `process` or `settle`.
pub const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
pub const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
pub const MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
pub const MESSAGING_MESSAGE_BODY_SIZE: &str = "messaging.message.body.size";
pub const MESSAGING_BATCH_MESSAGE_COUNT: &str = "messaging.batch.message_count";
pub const MESSAGING_CLIENT_ID: &str = "messaging.client.id";
/// Value of [`MESSAGING_SYSTEM`] for MQTT (not in the registry's enum; the conventional value).
pub const MESSAGING_SYSTEM_MQTT: &str = "mqtt";
