use std::{
    process::{Command, Stdio},
    time::Duration,
};

use iot_proto::storage::v1 as pb;
use iot_testkit::{ChildGuard, TestDatabase, free_port};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::connect;

/// The real binary: configured from flags and environment, ops endpoints, gRPC health
/// SERVING for the server and the storage service, clean exit 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_health_metrics_and_stops_on_sigterm() {
    let db = TestDatabase::create().await;
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("storage.log");
    let grpc_port = free_port();
    let metrics_port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_iot-storage"))
        .arg("--grpc-addr")
        .arg(format!("127.0.0.1:{grpc_port}"))
        .env("STORAGE_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("STORAGE_DATABASE_URL", &db.url)
        .env("STORAGE_DB_POOL_SIZE", "4")
        .env("LOG_FORMAT", "json")
        .stdout(std::fs::File::create(&log_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(Some(child));
    let grpc_addr = std::net::SocketAddr::from(([127, 0, 0, 1], grpc_port));
    child.wait_listening(grpc_addr, Duration::from_secs(30)).await;

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{metrics_port}");
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "iot.storage.v1.StorageService"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }

    // Reflection, as grpcurl uses it: the storage and health services are listed.
    {
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut reflection = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("unexpected reflection answer {answer:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.contains(&"iot.storage.v1.StorageService".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"grpc.health.v1.Health".to_string()),
            "{names:?}"
        );
    }

    let mut client = connect(grpc_addr).await;
    assert_eq!(
        client
            .count_users(pb::CountUsersRequest {})
            .await
            .unwrap()
            .into_inner()
            .count,
        0
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"storage_grpc_requests_total{code="OK",method="CountUsers"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("storage_grpc_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("storage_db_pool_max_size 4"), "{metrics}");
    assert!(metrics.contains("storage_db_pool_size"), "{metrics}");
    assert!(
        metrics.contains("storage_readings_inserted_total 0"),
        "{metrics}"
    );
    drop(client);
    drop(health);

    // Off the runtime thread: the client side of open connections must keep running while the
    // server drains them.
    let clean = tokio::task::spawn_blocking(move || child.terminate(Duration::from_secs(15)))
        .await
        .unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        clean,
        "iot-storage did not exit 0 on SIGTERM; its log:\n{log}"
    );
    assert!(log.contains("storage gRPC server listening"), "{log}");
}

/// `--migrate-only` (the chart's pre-upgrade Job): migrates a fresh database, listens on
/// nothing, exits 0; running it again finds nothing to do and exits 0 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_only_migrates_and_exits() {
    use mysql_async::prelude::Queryable;
    let db = TestDatabase::create().await;
    for _ in 0..2 {
        let status = Command::new(env!("CARGO_BIN_EXE_iot-storage"))
            .arg("--migrate-only")
            .env("STORAGE_DATABASE_URL", &db.url)
            // Ports another process holds must not matter: nothing is bound in this mode.
            .env("STORAGE_GRPC_ADDR", "127.0.0.1:1")
            .env("STORAGE_METRICS_ADDR", "127.0.0.1:1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "--migrate-only exited with {status}");
    }
    let mut conn = db.connect().await;
    let tables: Vec<String> = conn.query("SHOW TABLES").await.unwrap();
    for table in ["users", "devices", "readings", "device_metrics"] {
        assert!(tables.iter().any(|t| t == table), "table {table} missing after --migrate-only: {tables:?}");
    }
}
