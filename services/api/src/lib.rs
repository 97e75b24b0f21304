#![recursion_limit = "512"]
//! The api service: REST (JSON/CSV/PNG/HTML) over storage and session gRPC, server-rendered
//! pages, and a live Server-Sent Events stream fed by one MQTT subscription.

pub mod auth;
pub mod broker;
pub mod chart;
pub mod config;
pub mod error;
pub mod live;
pub mod middleware;
pub mod negotiate;
pub mod request_deadline;
pub mod routes;
pub mod session_cache;
pub mod state;
pub mod time;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use actix_http::{HttpService, Protocol, error::DispatchError};
use actix_service::{IntoServiceFactory, ServiceFactoryExt, fn_service, map_config};
use actix_web::{
    App,
    dev::AppConfig,
    http::StatusCode,
    middleware::{Compress, ErrorHandlers, from_fn},
    web,
};
use anyhow::Context;
use base64::Engine;
use iot_proto::{session::v1::session_service_client::SessionServiceClient, storage::v1::storage_service_client::StorageServiceClient};
use iot_runtime::{CancellationToken, OpsServer, ReadinessCheck};
use rand::RngCore;

pub use config::{Config, CookieSecure};

use crate::{
    error::ApiError,
    live::LiveHub,
    request_deadline::{DeadlineIo, HeadDeadline},
    state::{AppState, Metrics, endpoint, lazy_channel},
};

/// `bytes` random bytes from the OS-seeded CSPRNG, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// A bound, not yet running api. Tests bind port 0 and read `local_addr` back.
pub struct Application {
    pub local_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    server: actix_server::Server,
    ops: OpsServer,
    live_task: tokio::task::JoinHandle<()>,
    broker_task: Option<tokio::task::JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl Application {
    pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry)?;
        let storage_endpoint = endpoint(&config.storage_url).context("API_STORAGE_URL")?;
        let session_endpoint = endpoint(&config.session_url).context("API_SESSION_URL")?;
        let live = LiveHub::new();
        // Flag combinations and certificate files are checked here, before anything connects.
        config.broker.tls().client_config().context("MQTT TLS (API_MQTT_TLS, API_MQTT_CA_FILE, ...)")?;
        let live_task = live::spawn_subscriber(&config, live.clone(), metrics.clone(), shutdown.clone())?;
        let (broker, broker_task) = broker::BrokerAdmin::start(&config, &registry, shutdown.clone())?;
        let state = AppState {
            // These channels serve the readiness probe; every HTTP worker gets its own.
            storage: StorageServiceClient::new(lazy_channel(&storage_endpoint)),
            session: SessionServiceClient::new(lazy_channel(&session_endpoint)),
            sessions: Arc::new(session_cache::SessionCache::new(config.session_cache_ttl, config.session_cache_capacity)),
            config: Arc::new(config.clone()),
            metrics,
            live,
            broker,
            shutdown: shutdown.clone(),
        };
        let readiness = readiness_check(state.clone());
        let ops = OpsServer::start(config.metrics_addr, registry, readiness, shutdown.clone()).await?;

        let max_body = config.max_body_bytes;
        let app = move || {
            // Runs once per worker, on the worker's thread.
            let app_state = web::Data::new(state.for_worker(&storage_endpoint, &session_endpoint));
            App::new()
                .app_data(app_state)
                .app_data(
                    web::JsonConfig::default()
                        .limit(max_body)
                        .content_type(|mime| mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
                        .error_handler(|error, _| ApiError::from(error).into()),
                )
                .app_data(
                    web::FormConfig::default().limit(max_body).error_handler(|error, _| ApiError::from(error).into()),
                )
                .app_data(web::QueryConfig::default().error_handler(|error, _| ApiError::from(error).into()))
                .app_data(web::PathConfig::default().error_handler(|error, _| ApiError::from(error).into()))
                .app_data(web::PayloadConfig::new(max_body))
                .wrap(from_fn(middleware::csrf))
                .wrap(from_fn(middleware::body_deadline))
                .wrap(from_fn(middleware::json_accept))
                .wrap(ErrorHandlers::new().handler(StatusCode::METHOD_NOT_ALLOWED, middleware::method_not_allowed))
                .wrap(Compress::default())
                .wrap(from_fn(middleware::metrics))
                .wrap(from_fn(middleware::trace))
                .wrap(from_fn(request_deadline::track_requests))
                .configure(routes::configure)
                .default_service(web::to(middleware::not_found))
        };
        let listener = std::net::TcpListener::bind(config.listen_addr)
            .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
        let local_addr = listener.local_addr()?;
        // What actix-web's HttpServer builds (actix-web 4.18 `server.rs`, `listen`), with each
        // socket wrapped in a DeadlineIo: HttpServer cannot take another I/O type.
        let mut builder = actix_server::Server::build()
            .disable_signals()
            // Long-lived streams end on shutdown themselves; this bounds everything else.
            .shutdown_timeout(10);
        if config.workers > 0 {
            builder = builder.workers(config.workers);
        }
        let graceful_shutdown = builder.graceful_shutdown_signal();
        let head_deadline = HeadDeadline::new(config.client_request_timeout);
        let (keep_alive, client_request_timeout, client_disconnect_timeout) =
            (config.keep_alive, config.client_request_timeout, config.client_disconnect_timeout);
        let builder = builder.listen("iot-api-http", listener, move || {
            let graceful_shutdown = graceful_shutdown.clone();
            let head_deadline = head_deadline.clone();
            let host = local_addr.to_string();
            let http = HttpService::build()
                // Idle keep-alive connections close at once when a graceful stop begins.
                .graceful_shutdown_signal(move || {
                    let signal = graceful_shutdown.clone();
                    async move { signal.notified().await }
                })
                .keep_alive(keep_alive)
                .client_request_timeout(client_request_timeout)
                .client_disconnect_timeout(client_disconnect_timeout)
                .local_addr(local_addr)
                .on_connect_ext(|io: &DeadlineIo, data| {
                    data.insert(io.clock());
                })
                .finish(map_config(
                    app().into_factory().map_err(|error| error.error_response()),
                    // Host and address for URLs and connection info when a request names no
                    // host, as HttpServer sets them; AppConfig has no other public constructor.
                    move |_| AppConfig::__priv_test_new(false, host.clone(), local_addr),
                ));
            fn_service(move |socket: tokio::net::TcpStream| {
                let io = DeadlineIo::new(socket, head_deadline.clone());
                let peer = io.peer_addr();
                std::future::ready(Ok::<_, DispatchError>((io, Protocol::Http1, peer)))
            })
            .and_then(http)
        })?;
        let server = builder.run();
        tracing::info!(%local_addr, storage = %config.storage_url, session = %config.session_url, "api listening");
        Ok(Self { local_addr, ops_addr: ops.local_addr, server, ops, live_task, broker_task, shutdown })
    }

    /// Serves until the token given to `build` is cancelled, then drains in-flight requests.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let shutdown = self.shutdown.clone();
        let stopper = tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.stop(true).await;
        });
        self.server.await?;
        self.shutdown.cancel();
        let _ = stopper.await;
        let _ = self.live_task.await;
        if let Some(task) = self.broker_task {
            let _ = task.await;
        }
        self.ops.task.await?;
        Ok(())
    }
}

fn readiness_check(state: AppState) -> ReadinessCheck {
    use iot_proto::{session::v1::ValidateSessionRequest, storage::v1::CountUsersRequest};
    ReadinessCheck::new(move || {
        let state = state.clone();
        async move {
            let mut storage = state.storage.clone();
            tokio::time::timeout(Duration::from_secs(2), storage.count_users(CountUsersRequest {}))
                .await
                .map_err(|_| "storage: timeout".to_string())?
                .map_err(|s| format!("storage: {}", s.message()))?;
            // An unknown token is the cheapest call the session service answers.
            let mut session = state.session.clone();
            match tokio::time::timeout(Duration::from_secs(2), session.validate_session(ValidateSessionRequest { token: "readiness-probe".into() })).await {
                Err(_) => Err("session: timeout".to_string()),
                Ok(Ok(_)) => Ok(()),
                Ok(Err(s)) if matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::InvalidArgument) => Ok(()),
                Ok(Err(s)) => Err(format!("session: {}", s.message())),
            }
        }
    })
}

/// Runs until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Application::build(config, shutdown).await?.run_until_stopped().await
}
