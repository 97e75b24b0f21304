//! Malformed requests are INVALID_ARGUMENT; a token that cannot exist is just unauthenticated.

use iot_proto::session::v1::{
    CreateSessionRequest, ListSessionsRequest, RevokeSessionRequest, RevokeUserSessionsRequest,
    revoke_session_request::Key,
};
use tonic::Code;

use crate::helpers::{code, spawn_app};

#[tokio::test]
async fn malformed_requests_are_invalid_arguments() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let create = |user_id: u64, username: &str| CreateSessionRequest {
        user_id,
        username: username.to_string(),
        is_admin: false,
        user_agent: String::new(),
    };
    assert_eq!(code(client.create_session(create(0, "alice")).await), Code::InvalidArgument);
    assert_eq!(code(client.create_session(create(7, "")).await), Code::InvalidArgument);
    assert_eq!(code(client.create_session(create(7, &"x".repeat(256))).await), Code::InvalidArgument);
    assert_eq!(code(client.create_session(create(7, "a\nb")).await), Code::InvalidArgument);
    assert_eq!(code(app.validate("").await), Code::InvalidArgument);
    assert_eq!(code(client.list_sessions(ListSessionsRequest { user_id: 0 }).await), Code::InvalidArgument);
    assert_eq!(
        code(client.revoke_session(RevokeSessionRequest { key: None, user_id: 7 }).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.revoke_session(RevokeSessionRequest { key: Some(Key::Token(String::new())), user_id: 0 }).await),
        Code::InvalidArgument
    );
    let id = "0123456789abcdef0123456789abcdef".to_string();
    assert_eq!(
        code(client.revoke_session(RevokeSessionRequest { key: Some(Key::SessionId(id.clone())), user_id: 0 }).await),
        Code::InvalidArgument,
        "revoking by id needs the owner"
    );
    assert_eq!(
        code(
            client
                .revoke_session(RevokeSessionRequest { key: Some(Key::SessionId("nothex".into())), user_id: 7 })
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.revoke_user_sessions(RevokeUserSessionsRequest { user_id: 0 }).await),
        Code::InvalidArgument
    );
    // Nothing was written.
    assert!(app.keys().await.is_empty());
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"session_grpc_requests_total{code="INVALID_ARGUMENT",method="CreateSession"} 4"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn garbage_and_unknown_tokens_are_unauthenticated() {
    let app = spawn_app().await;
    app.assert_rejected("not-a-token").await;
    app.assert_rejected(&"A".repeat(43)).await;
    app.assert_rejected(&"é".repeat(40)).await;
    app.assert_rejected(&"x".repeat(10_000)).await;
    // A real token of another deployment (prefix) is unknown here.
    let created = app.create(5, "eve").await;
    let other = crate::helpers::spawn_app().await;
    other.assert_rejected(&created.token).await;
    // Revoking an unknown token is not an error (logout with a stale cookie).
    assert!(!app.revoke(Key::Token("A".repeat(43)), 0).await.unwrap());
    assert!(!app.revoke(Key::Token("short".into()), 0).await.unwrap());
    app.assert_valid(&created.token).await;
    let metrics = app.metrics().await;
    assert!(metrics.contains("session_sessions_rejected_total 4"), "{metrics}");
}

#[tokio::test]
async fn long_user_agents_are_cut_not_refused() {
    let app = spawn_app().await;
    let created = app
        .client
        .clone()
        .create_session(CreateSessionRequest {
            user_id: 9,
            username: "ua".into(),
            is_admin: false,
            user_agent: "ü".repeat(1000),
        })
        .await
        .unwrap()
        .into_inner();
    let agent = created.session.unwrap().user_agent;
    assert!(agent.len() <= 512 && agent.len() >= 510, "{}", agent.len());
    assert_eq!(app.assert_valid(&created.token).await.user_agent, agent);
}
