//! The standard gRPC health service and server reflection, so that grpcurl,
//! grpc_health_probe and Kubernetes `grpc:` probes work against every gRPC server.

use tonic_health::{pb::health_server::HealthServer, server::HealthReporter};

#[derive(Debug, thiserror::Error)]
#[error("cannot build the gRPC reflection service: {0}")]
pub struct ReflectionError(#[from] tonic_reflection::server::Error);

/// Health reporter and service. Every service starts NOT_SERVING for "" (the whole server)
/// until the caller says otherwise.
pub fn health() -> (HealthReporter, HealthServer<impl tonic_health::pb::health_server::Health>) {
    tonic_health::server::health_reporter()
}

/// Reflection (v1 and v1alpha: grpcurl still asks for v1alpha) over the project's packages
/// and the health service.
pub fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
        tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
    ),
    ReflectionError,
> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(iot_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(iot_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok((v1, v1alpha))
}
