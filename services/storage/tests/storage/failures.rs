use std::time::{Duration, Instant};

use iot_proto::storage::v1 as pb;
use iot_storage::{Application, Config};
use iot_testkit::{TestDatabase, eventually, proxy::TcpProxy};
use mysql_async::prelude::Queryable as _;
use tonic::Code;

use crate::helpers::{connect, reading, start};

/// MariaDB reached through a proxy that the test cuts: calls fail UNAVAILABLE quickly (no
/// hang, no panic), /readyz says 503, and after the restore the same process serves again.
#[tokio::test]
async fn database_going_away_gives_unavailable_then_recovers() {
    let db = TestDatabase::create().await;
    let proxy = TcpProxy::to_mysql().await;
    let mut config = Config::for_tests(proxy.url_via(&db.url));
    config.db_connect_timeout = 2.0;
    config.db_query_timeout = 5.0;
    let running = start(config).await;
    let mut client = connect(running.grpc_addr).await;
    let http = reqwest::Client::new();
    let readyz = format!("http://{}/readyz", running.metrics_addr);

    let owner = client
        .create_user(pb::CreateUserRequest {
            username: "u".into(),
            password: "password-1".into(),
            is_admin: false,
            only_if_first: false,
        })
        .await
        .unwrap()
        .into_inner();
    client
        .create_device(pb::CreateDeviceRequest {
            device_id: "dev".into(),
            owner_id: owner.id,
            name: "n".into(),
            attributes_json: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        client
            .write_readings(pb::WriteReadingsRequest {
                readings: vec![reading("dev", "m", 1, 1.0)]
            })
            .await
            .unwrap()
            .into_inner()
            .inserted,
        1
    );
    assert_eq!(http.get(&readyz).send().await.unwrap().status(), 200);

    proxy.cut();
    for attempt in 0..3 {
        let started = Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            client.get_device(pb::GetDeviceRequest {
                device_id: "dev".into(),
            }),
        )
        .await
        .expect("a call hung while the database was away");
        let status = result.expect_err("the database is cut off");
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "attempt {attempt}: {status:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(15));
        let write = tokio::time::timeout(
            Duration::from_secs(20),
            client.write_readings(pb::WriteReadingsRequest {
                readings: vec![reading("dev", "m", 2, 2.0)],
            }),
        )
        .await
        .expect("a write hung while the database was away");
        assert_eq!(
            write.expect_err("the database is cut off").code(),
            Code::Unavailable
        );
    }
    assert_eq!(http.get(&readyz).send().await.unwrap().status(), 503);

    proxy.restore();
    let device = eventually(
        "storage serves again after the database returns",
        Duration::from_secs(30),
        || {
            let mut client = client.clone();
            async move {
                client
                    .get_device(pb::GetDeviceRequest {
                        device_id: "dev".into(),
                    })
                    .await
                    .ok()
            }
        },
    )
    .await
    .into_inner();
    assert_eq!(device.owner_id, owner.id);
    let written = client
        .write_readings(pb::WriteReadingsRequest {
            readings: vec![reading("dev", "m", 2, 2.0)],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(written.inserted, 1);
    assert_eq!(http.get(&readyz).send().await.unwrap().status(), 200);
    running.shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

/// Two replicas starting together on a fresh database: both come up, each migration ran once.
#[tokio::test]
async fn concurrent_starts_migrate_once() {
    let db = TestDatabase::create().await;
    let (a, b, c) = tokio::join!(
        Application::build(Config::for_tests(&db.url)),
        Application::build(Config::for_tests(&db.url)),
        Application::build(Config::for_tests(&db.url)),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let mut conn = db.connect().await;
    let applied: Option<u64> = conn
        .query_first("SELECT COUNT(*) FROM __diesel_schema_migrations")
        .await
        .unwrap();
    assert_eq!(applied, Some(5));
    let mut tables: Vec<String> = conn
        .query("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY table_name")
        .await
        .unwrap();
    tables.sort();
    assert_eq!(
        tables,
        vec![
            "__diesel_schema_migrations",
            "device_metrics",
            "devices",
            "readings",
            "users"
        ]
    );
    drop((a, b, c));
}

/// A missing database is created (local runs point at a bare server).
#[tokio::test]
async fn a_missing_database_is_created() {
    let db = TestDatabase::create().await;
    let mut conn = db.connect().await;
    conn.query_drop(format!("DROP DATABASE `{}`", db.name))
        .await
        .unwrap();
    drop(conn);
    let running = start(Config::for_tests(&db.url)).await;
    let mut client = connect(running.grpc_addr).await;
    assert_eq!(
        client
            .count_users(pb::CountUsersRequest {})
            .await
            .unwrap()
            .into_inner()
            .count,
        0
    );
    let mut conn = db.connect().await;
    let collation: Option<String> = conn
        .query_first("SELECT default_collation_name FROM information_schema.schemata WHERE schema_name = DATABASE()")
        .await
        .unwrap();
    assert_eq!(collation.as_deref(), Some("utf8mb4_bin"));
    running.shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

/// With no database server at all, start fails with an error instead of hanging.
#[tokio::test]
async fn start_without_a_database_fails_in_bounded_time() {
    let proxy = TcpProxy::to_mysql().await;
    proxy.cut();
    let mut config = Config::for_tests(proxy.url_via("mysql://root@127.0.0.1:3306/iot_never"));
    config.db_connect_timeout = 1.0;
    config.db_startup_timeout = 2.0;
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), Application::build(config))
        .await
        .expect("start hung");
    assert!(result.is_err());
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// A database that stops answering without closing anything (a network partition, a hung
/// server): calls end UNAVAILABLE after the configured bounds instead of hanging, and the
/// service recovers once it answers again.
#[tokio::test]
async fn a_silent_database_gives_unavailable_within_the_bounds() {
    let db = TestDatabase::create().await;
    let proxy = TcpProxy::to_mysql().await;
    let mut config = Config::for_tests(proxy.url_via(&db.url));
    config.db_connect_timeout = 1.0;
    config.db_query_timeout = 1.5;
    let running = start(config).await;
    let mut client = connect(running.grpc_addr).await;
    assert_eq!(
        client
            .count_users(pb::CountUsersRequest {})
            .await
            .unwrap()
            .into_inner()
            .count,
        0
    );

    proxy.stall();
    for attempt in 0..3 {
        let started = Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            client.count_users(pb::CountUsersRequest {}),
        )
        .await
        .expect("a call hung on a silent database");
        let status = result.expect_err("the database is silent");
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "attempt {attempt}: {status:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "attempt {attempt} took {:?}",
            started.elapsed()
        );
    }

    proxy.restore();
    let count = eventually(
        "storage serves again after the database answers",
        Duration::from_secs(30),
        || {
            let mut client = client.clone();
            async move { client.count_users(pb::CountUsersRequest {}).await.ok() }
        },
    )
    .await
    .into_inner()
    .count;
    assert_eq!(count, 0);
    running.shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

/// On shutdown, /readyz turns 503 at once (load balancers stop sending work) while a call in
/// flight still completes; then the service stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_not_ready_and_drains_calls_in_flight() {
    let db = TestDatabase::create().await;
    let running = start(Config::for_tests(&db.url)).await;
    let mut client = connect(running.grpc_addr).await;
    let owner = client
        .create_user(pb::CreateUserRequest {
            username: "u".into(),
            password: "password-1".into(),
            is_admin: false,
            only_if_first: false,
        })
        .await
        .unwrap()
        .into_inner();
    client
        .create_device(pb::CreateDeviceRequest {
            device_id: "dev".into(),
            owner_id: owner.id,
            name: "n".into(),
            attributes_json: String::new(),
        })
        .await
        .unwrap();
    let batch: Vec<_> = (0..3_000)
        .map(|i| reading("dev", "m", i, i as f64))
        .collect();
    client
        .write_readings(pb::WriteReadingsRequest { readings: batch })
        .await
        .unwrap();

    // A stream of 30 small chunks that the client reads slowly keeps a call open.
    let mut request = crate::helpers::query("dev", "m", 0, 0, 100);
    request.limit = 100;
    let mut stream = client.stream_readings(request).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.readings.len(), 100);

    running.shutdown.cancel();
    let readyz = format!("http://{}/readyz", running.metrics_addr);
    let status = eventually(
        "/readyz reports the shutdown",
        Duration::from_secs(10),
        || {
            let readyz = readyz.clone();
            async move {
                let status = reqwest::get(&readyz).await.ok()?.status();
                (status == 503).then_some(status)
            }
        },
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        !running.task.is_finished(),
        "stopped before the call in flight finished"
    );

    let mut received = first.readings.len();
    while let Some(chunk) = stream.message().await.unwrap() {
        received += chunk.readings.len();
    }
    assert_eq!(received, 3_000, "the call in flight was cut short");
    tokio::time::timeout(Duration::from_secs(15), running.task)
        .await
        .expect("did not stop")
        .unwrap()
        .unwrap();
}
