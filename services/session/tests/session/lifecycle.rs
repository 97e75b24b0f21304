//! Create, validate, list, revoke: the happy paths and the owner checks.

use base64::{Engine, engine::general_purpose};
use iot_proto::session::v1::{ListSessionsRequest, RevokeUserSessionsRequest, revoke_session_request::Key};
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::helpers::{code, redis_conn, spawn_app, user_id};

#[tokio::test]
async fn create_then_validate_returns_the_session() {
    let app = spawn_app().await;
    let uid = user_id();
    let created = app.create(uid, "alice").await;
    let session = created.session.unwrap();
    // 256 bits in base64url without padding.
    assert_eq!(created.token.len(), 43);
    assert!(general_purpose::URL_SAFE_NO_PAD.decode(&created.token).unwrap().len() == 32);
    assert_eq!(session.user_id, uid);
    assert_eq!(session.username, "alice");
    assert!(!session.is_admin);
    assert_eq!(session.user_agent, "integration-test/1.0");
    assert_eq!(session.session_id.len(), 32);
    assert!(!created.token.contains(&session.session_id));
    assert!(session.csrf_token.len() >= 43);
    assert_ne!(session.csrf_token, created.token);
    assert!(session.created_at_us > 1_600_000_000_000_000, "microseconds since the epoch");
    assert_eq!(session.absolute_expires_at_us - session.created_at_us, 30 * 24 * 3600 * 1_000_000);
    assert_eq!(session.idle_expires_at_us - session.created_at_us, 24 * 3600 * 1_000_000);

    let validated = app.assert_valid(&created.token).await;
    assert_eq!(validated.session_id, session.session_id);
    assert_eq!(validated.user_id, uid);
    assert_eq!(validated.username, "alice");
    assert_eq!(validated.csrf_token, session.csrf_token);
    assert_eq!(validated.created_at_us, session.created_at_us);
    assert_eq!(validated.absolute_expires_at_us, session.absolute_expires_at_us);
    assert!(validated.last_seen_us >= session.last_seen_us);
    assert!(validated.idle_expires_at_us >= session.idle_expires_at_us);

    // Two sessions of the same user are distinct.
    let other = app.create(uid, "alice").await;
    assert_ne!(other.token, created.token);
    assert_ne!(other.session.unwrap().session_id, session.session_id);

    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"session_grpc_requests_total{code="OK",method="CreateSession"} 2"#), "{metrics}");
    assert!(metrics.contains("session_sessions_created_total 2"), "{metrics}");
    assert!(metrics.contains("session_sessions_validated_total 1"), "{metrics}");
    assert_eq!(app.readyz().await, reqwest::StatusCode::OK);
}

#[tokio::test]
async fn admin_flag_round_trips() {
    let app = spawn_app().await;
    let created = app
        .client
        .clone()
        .create_session(iot_proto::session::v1::CreateSessionRequest {
            user_id: 1,
            username: "root".into(),
            is_admin: true,
            user_agent: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(created.session.unwrap().is_admin);
    assert!(app.assert_valid(&created.token).await.is_admin);
}

#[tokio::test]
async fn the_token_is_not_stored_in_redis_in_any_form() {
    let app = spawn_app().await;
    let created = app.create(user_id(), "bob").await;
    app.assert_valid(&created.token).await;
    let raw = general_purpose::URL_SAFE_NO_PAD.decode(&created.token).unwrap();
    let forms = [
        created.token.clone(),
        general_purpose::STANDARD.encode(&raw),
        general_purpose::STANDARD_NO_PAD.encode(&raw),
        hex::encode(&raw),
        hex::encode(&raw).to_uppercase(),
    ];
    let hash = hex::encode(Sha256::digest(created.token.as_bytes()));

    let keys = app.keys().await;
    assert_eq!(keys.len(), 2, "one session and one user index: {keys:?}");
    assert!(keys.contains(&format!("{}s:{hash}", app.prefix)), "session keyed by the SHA-256 of the token: {keys:?}");
    let mut conn = redis_conn(&app.redis_url).await;
    let mut everything = Vec::new();
    for key in &keys {
        everything.push(key.as_bytes().to_vec());
        let entries: Vec<Vec<u8>> = redis::cmd("HGETALL").arg(key).query_async(&mut conn).await.unwrap();
        everything.extend(entries);
    }
    assert!(everything.len() > 10);
    for item in &everything {
        for form in &forms {
            assert!(
                !item.windows(form.len()).any(|window| window == form.as_bytes()),
                "Redis holds the token in some form: {:?}",
                String::from_utf8_lossy(item)
            );
        }
        assert!(!item.windows(raw.len()).any(|window| window == raw.as_slice()), "Redis holds the raw token bytes");
    }
}

#[tokio::test]
async fn list_shows_a_users_live_sessions_newest_first() {
    let app = spawn_app().await;
    let (alice, bob) = (user_id(), user_id() + 1);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.create(alice, "alice").await.session.unwrap().session_id);
    }
    let bobs = app.create(bob, "bob").await;

    let list = app.client.clone().list_sessions(ListSessionsRequest { user_id: alice }).await.unwrap().into_inner();
    assert_eq!(list.sessions.len(), 3);
    let listed: Vec<_> = list.sessions.iter().map(|s| s.session_id.clone()).collect();
    for id in &ids {
        assert!(listed.contains(id), "{id} missing from {listed:?}");
    }
    assert!(list.sessions.windows(2).all(|w| w[0].created_at_us >= w[1].created_at_us), "newest first");
    assert!(list.sessions.iter().all(|s| s.user_id == alice && s.username == "alice"));
    assert!(!listed.contains(&bobs.session.unwrap().session_id));

    let list = app.client.clone().list_sessions(ListSessionsRequest { user_id: bob }).await.unwrap().into_inner();
    assert_eq!(list.sessions.len(), 1);
    let list =
        app.client.clone().list_sessions(ListSessionsRequest { user_id: bob + 1000 }).await.unwrap().into_inner();
    assert!(list.sessions.is_empty());
}

#[tokio::test]
async fn revoking_one_session_leaves_the_others_valid() {
    let app = spawn_app().await;
    let uid = user_id();
    let first = app.create(uid, "carol").await;
    let second = app.create(uid, "carol").await;
    let third = app.create(uid, "carol").await;

    // Logout: by token.
    assert!(app.revoke(Key::Token(first.token.clone()), 0).await.unwrap());
    app.assert_rejected(&first.token).await;
    app.assert_valid(&second.token).await;
    app.assert_valid(&third.token).await;
    // Logging out twice is harmless.
    assert!(!app.revoke(Key::Token(first.token.clone()), 0).await.unwrap());

    // From a session list: by public id, with the owner.
    let second_id = second.session.unwrap().session_id;
    assert!(app.revoke(Key::SessionId(second_id.clone()), uid).await.unwrap());
    app.assert_rejected(&second.token).await;
    app.assert_valid(&third.token).await;
    assert_eq!(code(app.revoke(Key::SessionId(second_id), uid).await), Code::NotFound);

    let list = app.client.clone().list_sessions(ListSessionsRequest { user_id: uid }).await.unwrap().into_inner();
    assert_eq!(list.sessions.len(), 1);
    assert_eq!(list.sessions[0].session_id, third.session.unwrap().session_id);
    let metrics = app.metrics().await;
    assert!(metrics.contains("session_sessions_revoked_total 2"), "{metrics}");
    assert!(
        metrics.contains(r#"session_grpc_requests_total{code="UNAUTHENTICATED",method="ValidateSession"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn another_user_cannot_revoke_a_session() {
    let app = spawn_app().await;
    let (owner, intruder) = (user_id(), user_id() + 1);
    let victim = app.create(owner, "dave").await;
    app.create(intruder, "mallory").await;
    let victim_id = victim.session.clone().unwrap().session_id;

    assert_eq!(code(app.revoke(Key::SessionId(victim_id.clone()), intruder).await), Code::NotFound);
    assert_eq!(code(app.revoke(Key::Token(victim.token.clone()), intruder).await), Code::NotFound);
    app.assert_valid(&victim.token).await;
    let revoked = app
        .client
        .clone()
        .revoke_user_sessions(RevokeUserSessionsRequest { user_id: intruder })
        .await
        .unwrap()
        .into_inner()
        .revoked;
    assert_eq!(revoked, 1, "only the intruder's own session");
    app.assert_valid(&victim.token).await;

    // The owner can, with the same request.
    assert!(app.revoke(Key::SessionId(victim_id), owner).await.unwrap());
    app.assert_rejected(&victim.token).await;
}

#[tokio::test]
async fn revoke_all_of_a_users_sessions() {
    let app = spawn_app().await;
    let (erin, frank) = (user_id(), user_id() + 1);
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(app.create(erin, "erin").await.token);
    }
    let franks = app.create(frank, "frank").await;

    let response = app.client.clone().revoke_user_sessions(RevokeUserSessionsRequest { user_id: erin }).await.unwrap();
    assert_eq!(response.into_inner().revoked, 3);
    for token in &tokens {
        app.assert_rejected(token).await;
    }
    app.assert_valid(&franks.token).await;
    let list = app.client.clone().list_sessions(ListSessionsRequest { user_id: erin }).await.unwrap().into_inner();
    assert!(list.sessions.is_empty());
    let response = app.client.clone().revoke_user_sessions(RevokeUserSessionsRequest { user_id: erin }).await.unwrap();
    assert_eq!(response.into_inner().revoked, 0);
    // Nothing of erin's is left in Redis; frank's session and index remain.
    assert_eq!(app.keys().await.len(), 2);
    // A new login after "log out everywhere" works.
    let fresh = app.create(erin, "erin").await;
    app.assert_valid(&fresh.token).await;
}
