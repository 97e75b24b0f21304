//! Sliding idle expiry and the absolute lifetime, with short timeouts. The waits are bounded
//! and generous; what is asserted is the order of events, not speed.

use std::time::{Duration, Instant};

use iot_proto::session::v1::ListSessionsRequest;
use sha2::{Digest, Sha256};

use crate::helpers::{redis_conn, spawn_app_with};

#[tokio::test]
async fn validation_slides_the_idle_expiry_and_untouched_sessions_expire() {
    let app = spawn_app_with(|config| {
        config.idle_timeout = Duration::from_secs(2);
        config.absolute_lifetime = Duration::from_secs(3600);
    })
    .await;
    let kept = app.create(11, "kept").await;
    let idle = app.create(11, "idle").await;
    let started = Instant::now();
    let first = app.assert_valid(&kept.token).await;
    assert!(first.idle_expires_at_us - first.last_seen_us <= 2_000_000);

    // Keep one session busy for well past its idle timeout (2 s).
    let mut last = first;
    while started.elapsed() < Duration::from_millis(4500) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let session = app.assert_valid(&kept.token).await;
        assert!(session.last_seen_us > last.last_seen_us, "last_seen moves forward");
        assert!(session.idle_expires_at_us > last.idle_expires_at_us, "idle expiry slides");
        last = session;
    }
    app.assert_rejected(&idle.token).await;
    app.assert_valid(&kept.token).await;

    // The expired one is gone from the list and from the user's index.
    let list = app.client.clone().list_sessions(ListSessionsRequest { user_id: 11 }).await.unwrap().into_inner();
    assert_eq!(list.sessions.len(), 1);
    assert_eq!(list.sessions[0].username, "kept");
    let mut conn = redis_conn(&app.redis_url).await;
    let index_len: i64 = redis::cmd("HLEN").arg(format!("{}u:11", app.prefix)).query_async(&mut conn).await.unwrap();
    assert_eq!(index_len, 1, "expired entries pruned from the index");

    // Left alone, the busy one expires too. (Watch its key, not ValidateSession: validating slides it.)
    let key = format!("{}s:{}", app.prefix, hex::encode(Sha256::digest(kept.token.as_bytes())));
    iot_testkit::eventually("the idle session to expire", Duration::from_secs(15), || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move {
            let exists: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.unwrap();
            (!exists).then_some(())
        }
    })
    .await;
    app.assert_rejected(&kept.token).await;
}

#[tokio::test]
async fn the_absolute_lifetime_wins_over_sliding() {
    let app = spawn_app_with(|config| {
        config.idle_timeout = Duration::from_secs(2);
        config.absolute_lifetime = Duration::from_secs(3);
    })
    .await;
    let created = app.create(12, "busy").await;
    let session = created.session.unwrap();
    assert_eq!(session.absolute_expires_at_us - session.created_at_us, 3_000_000);
    let started = Instant::now();
    let mut valid_after_idle_timeout = false;
    let mut rejected_at = None;
    // Validate every 300 ms: idle expiry never hits, only the absolute lifetime can end it.
    while started.elapsed() < Duration::from_secs(20) {
        match app.validate(&created.token).await {
            Ok(session) => {
                assert!(session.idle_expires_at_us <= session.absolute_expires_at_us, "never slid past the lifetime");
                if started.elapsed() > Duration::from_millis(2200) {
                    valid_after_idle_timeout = true;
                }
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unauthenticated);
                rejected_at = Some(started.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let rejected_at = rejected_at.expect("the session outlived its absolute lifetime");
    assert!(valid_after_idle_timeout, "sliding kept it alive beyond the idle timeout (rejected at {rejected_at:?})");
    // Still gone afterwards, and no key left behind for it.
    app.assert_rejected(&created.token).await;
    let keys = app.keys().await;
    assert!(keys.iter().all(|key| !key.contains(":s:")), "{keys:?}");
}
