use std::{net::SocketAddr, time::Duration};

use iot_proto::storage::v1::{self as pb, storage_service_client::StorageServiceClient};
use iot_runtime::CancellationToken;
use iot_storage::{Application, Config};
use iot_testkit::TestDatabase;
use mysql_async::prelude::Queryable as _;
use tonic::transport::Channel;

pub type Client = StorageServiceClient<Channel>;

#[allow(dead_code)] // not every test module reads every handle
pub struct TestApp {
    pub client: Client,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    // Last: the database is dropped after the service has been told to stop.
    pub db: TestDatabase,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct Running {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Builds and starts the service in this process.
pub async fn start(config: Config) -> Running {
    iot_runtime::logging::init("iot-storage-test", iot_runtime::logging::LogFormat::Text);
    let app = Application::build(config).await.unwrap();
    let grpc_addr = app.grpc_addr();
    let metrics_addr = app.metrics_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    Running {
        grpc_addr,
        metrics_addr,
        shutdown,
        task,
    }
}

pub async fn connect(addr: SocketAddr) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    StorageServiceClient::new(channel)
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// `spawn_app` with the test configuration changed by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let db = TestDatabase::create().await;
    let mut config = Config::for_tests(&db.url);
    configure(&mut config);
    let running = start(config).await;
    TestApp {
        client: connect(running.grpc_addr).await,
        grpc_addr: running.grpc_addr,
        metrics_addr: running.metrics_addr,
        shutdown: running.shutdown,
        task: Some(running.task),
        db,
    }
}

impl TestApp {
    pub async fn user(&mut self, username: &str) -> pb::User {
        self.client
            .create_user(pb::CreateUserRequest {
                username: username.to_string(),
                password: "correct horse battery".to_string(),
                is_admin: false,
                only_if_first: false,
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn device(&mut self, owner_id: u64, device_id: &str) -> pb::Device {
        self.client
            .create_device(pb::CreateDeviceRequest {
                device_id: device_id.to_string(),
                owner_id,
                name: format!("Device {device_id}"),
                attributes_json: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn write(&mut self, readings: Vec<pb::Reading>) -> pb::WriteReadingsResponse {
        self.client
            .write_readings(pb::WriteReadingsRequest { readings })
            .await
            .unwrap()
            .into_inner()
    }

    /// A number read straight from the database, for assertions on what is stored.
    pub async fn count(&self, sql: &str) -> u64 {
        let mut conn = self.db.connect().await;
        let n: Option<u64> = conn.query_first(sql).await.unwrap();
        n.unwrap()
    }
}

pub fn reading(device_id: &str, metric: &str, ts_us: i64, value: f64) -> pb::Reading {
    pb::Reading {
        device_id: device_id.to_string(),
        metric: metric.to_string(),
        ts_us,
        value,
    }
}

pub fn code<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> tonic::Code {
    match result {
        Ok(response) => panic!("expected an error, got {:?}", response.into_inner()),
        Err(status) => status.code(),
    }
}

pub fn query(
    device_id: &str,
    metric: &str,
    from_us: i64,
    to_us: i64,
    limit: u32,
) -> pb::QueryReadingsRequest {
    pb::QueryReadingsRequest {
        device_id: device_id.to_string(),
        metric: metric.to_string(),
        from_us,
        to_us,
        limit,
        cursor: String::new(),
        descending: false,
        owner_id: 0,
    }
}
