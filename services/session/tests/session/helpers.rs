use std::{net::SocketAddr, time::Duration};

use iot_proto::session::v1::{
    CreateSessionRequest, CreateSessionResponse, RevokeSessionRequest, Session, ValidateSessionRequest,
    revoke_session_request::Key, session_service_client::SessionServiceClient,
};
use iot_runtime::CancellationToken;
use iot_session::{Application, Config};
use tonic::{Code, transport::Channel};

#[allow(dead_code)] // not every test module reads every field
pub struct TestApp {
    pub client: SessionServiceClient<Channel>,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub redis_url: String,
    pub prefix: String,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The service on ports of its own, on the shared test Redis, with a unique key prefix.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let prefix = format!("iot:test:{}:", iot_testkit::unique_suffix());
    let mut config = Config::with_defaults(iot_testkit::redis_url(), prefix);
    adjust(&mut config);
    let app = Application::build(config.clone()).await.unwrap();
    let grpc_addr = app.grpc_addr();
    let metrics_addr = app.metrics_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let client = SessionServiceClient::connect(format!("http://{grpc_addr}")).await.unwrap();
    TestApp {
        client,
        grpc_addr,
        metrics_addr,
        redis_url: config.redis_url,
        prefix: config.key_prefix,
        shutdown,
        task: Some(task),
    }
}

impl TestApp {
    pub async fn create(&self, user_id: u64, username: &str) -> CreateSessionResponse {
        self.client
            .clone()
            .create_session(CreateSessionRequest {
                user_id,
                username: username.to_string(),
                is_admin: false,
                user_agent: "integration-test/1.0".to_string(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn validate(&self, token: &str) -> Result<Session, tonic::Status> {
        self.client
            .clone()
            .validate_session(ValidateSessionRequest { token: token.to_string() })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn assert_valid(&self, token: &str) -> Session {
        self.validate(token).await.unwrap_or_else(|status| panic!("expected a valid session, got {status:?}"))
    }

    pub async fn assert_rejected(&self, token: &str) {
        let status = self.validate(token).await.expect_err("expected UNAUTHENTICATED, got a session");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }

    pub async fn revoke(&self, key: Key, user_id: u64) -> Result<bool, tonic::Status> {
        self.client
            .clone()
            .revoke_session(RevokeSessionRequest { key: Some(key), user_id })
            .await
            .map(|response| response.into_inner().revoked)
    }

    /// Every key under this test's prefix, for assertions on what is stored.
    pub async fn keys(&self) -> Vec<String> {
        let mut conn = redis_conn(&self.redis_url).await;
        let mut keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}*", self.prefix)).query_async(&mut conn).await.unwrap();
        keys.sort();
        keys
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics_addr)).await.unwrap().text().await.unwrap()
    }

    pub async fn readyz(&self) -> reqwest::StatusCode {
        reqwest::get(format!("http://{}/readyz", self.metrics_addr)).await.unwrap().status()
    }

    /// Signals shutdown (as SIGTERM would) without waiting.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Stops the service and waits for it (bounded), as SIGTERM would.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task).await.unwrap().unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // Leave nothing behind in the shared Redis (best effort: it may be a stopped private one).
        let url = self.redis_url.clone();
        let pattern = format!("{}*", self.prefix);
        let _ = std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(url) else { return };
            let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) else { return };
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn).unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        })
        .join();
    }
}

pub async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

pub fn code(result: Result<impl std::fmt::Debug, tonic::Status>) -> Code {
    match result {
        Ok(value) => panic!("expected an error status, got {value:?}"),
        Err(status) => status.code(),
    }
}

/// A user id no other test uses, so that per-user indexes never collide across tests.
pub fn user_id() -> u64 {
    rand::random::<u32>() as u64 + 1
}
