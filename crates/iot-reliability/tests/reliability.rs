//! Short forms of the fault suite and the soak (CI). Long forms: scripts/reliability.

use std::time::Duration;

use iot_reliability::{faults, soak};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_the_broker_acknowledged_survives_every_fault_and_the_api_recovers() {
    let report = faults::run(&faults::FaultOptions {
        devices: 4,
        rate_per_device: 40.0,
        settle: Duration::from_secs(3),
        down_for: Duration::from_secs(2),
    })
    .await
    .unwrap();
    println!("{}", faults::markdown(&report, &[]));
    for phase in &report.phases {
        assert_eq!(phase.lost, 0, "{}: {} acknowledged messages not stored", phase.name, phase.lost);
        if let Some(ms) = phase.api_recovery_ms {
            assert!(ms < 30_000, "{}: the api answered again only after {ms} ms", phase.name);
            // Redis persistence is on here: the user stays logged in through every fault.
            assert_eq!(phase.api_status_after, Some(200), "{}", phase.name);
        }
        if phase.name != "cool-down" {
            assert!(phase.acked > 0, "{}: nothing was acknowledged", phase.name);
        }
    }
    assert_eq!(report.phantom_rows, 0);
    assert_eq!(report.incomplete, 0);
    let published: u64 = report.phases.iter().map(|p| p.published).sum();
    let acked: u64 = report.phases.iter().map(|p| p.acked).sum();
    assert_eq!(acked, published, "devices could not get every message acknowledged in the end");
}

#[tokio::test]
async fn users_stay_logged_in_across_a_redis_restart_only_with_redis_persistence() {
    let (with, without) =
        tokio::join!(faults::sessions_across_redis_restart(true), faults::sessions_across_redis_restart(false));
    let (with, without) = (with.unwrap(), without.unwrap());
    assert_eq!(with.status_after_restart, 200, "persistent Redis: the session should survive");
    assert_eq!(without.status_after_restart, 401, "Redis without persistence: the session is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_keeps_memory_and_connections_flat() {
    let report = soak::run(&soak::SoakOptions {
        devices: 4,
        rate_per_device: 25.0,
        warmup: Duration::from_secs(8),
        duration: Duration::from_secs(15),
        api_clients: 2,
    })
    .await
    .unwrap();
    println!("{}", soak::markdown(&report));
    assert!(report.api_requests > 100, "api traffic did not flow: {report:?}");
    assert_eq!(report.api_errors, 0);
    assert!(report.end.readings_stored > report.start.readings_stored);
    assert!(report.start.mariadb_threads_connected > 0 && report.start.broker_tcp_connections > 0, "{report:?}");
    assert!(report.flat, "{:?}", report.not_flat);
}
