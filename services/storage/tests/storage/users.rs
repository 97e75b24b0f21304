use iot_proto::storage::v1::{self as pb, get_user_request::Key};
use tonic::Code;

use crate::helpers::{code, spawn_app};

fn create(username: &str, password: &str) -> pb::CreateUserRequest {
    pb::CreateUserRequest {
        username: username.into(),
        password: password.into(),
        is_admin: false,
        only_if_first: false,
    }
}

#[tokio::test]
async fn create_get_count_and_delete_users() {
    let mut app = spawn_app().await;
    let before = chrono_now_us();
    let alice = app
        .client
        .create_user(create("alice", "password-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(alice.id > 0);
    assert_eq!(alice.username, "alice");
    assert!(!alice.is_admin);
    assert!(
        alice.created_at_us >= before - 1_000_000
            && alice.created_at_us <= chrono_now_us() + 1_000_000
    );
    let mut admin_request = create("root@example.org", "password-2");
    admin_request.is_admin = true;
    let admin = app
        .client
        .create_user(admin_request)
        .await
        .unwrap()
        .into_inner();
    assert!(admin.is_admin);
    assert_ne!(admin.id, alice.id);

    let by_id = app
        .client
        .get_user(pb::GetUserRequest {
            key: Some(Key::Id(alice.id)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id, alice);
    let by_name = app
        .client
        .get_user(pb::GetUserRequest {
            key: Some(Key::Username("alice".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_name, alice);
    assert_eq!(
        app.client
            .count_users(pb::CountUsersRequest {})
            .await
            .unwrap()
            .into_inner()
            .count,
        2
    );

    // The hash, not the password, is stored, and it is Argon2id.
    let mut conn = app.db.connect().await;
    let hash: Option<String> = mysql_async::prelude::Queryable::query_first(
        &mut conn,
        "SELECT password_hash FROM users WHERE username = 'alice'",
    )
    .await
    .unwrap();
    let hash = hash.unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("password-1"));

    app.client
        .delete_user(pb::DeleteUserRequest { id: alice.id })
        .await
        .unwrap();
    assert_eq!(
        code(
            app.client
                .get_user(pb::GetUserRequest {
                    key: Some(Key::Id(alice.id))
                })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            app.client
                .delete_user(pb::DeleteUserRequest { id: alice.id })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        app.client
            .count_users(pb::CountUsersRequest {})
            .await
            .unwrap()
            .into_inner()
            .count,
        1
    );
}

fn chrono_now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

#[tokio::test]
async fn duplicate_usernames_are_refused_whatever_their_case() {
    let mut app = spawn_app().await;
    app.client
        .create_user(create("Alice", "password-1"))
        .await
        .unwrap();
    assert_eq!(
        code(app.client.create_user(create("Alice", "password-2")).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(app.client.create_user(create("alice", "password-2")).await),
        Code::AlreadyExists
    );
    assert_eq!(
        app.client
            .count_users(pb::CountUsersRequest {})
            .await
            .unwrap()
            .into_inner()
            .count,
        1
    );
}

#[tokio::test]
async fn verify_password_accepts_only_the_right_password() {
    let mut app = spawn_app().await;
    let bob = app
        .client
        .create_user(create("bob", "s3cret-pass"))
        .await
        .unwrap()
        .into_inner();
    let verify = |username: &str, password: &str| pb::VerifyPasswordRequest {
        username: username.into(),
        password: password.into(),
    };
    let ok = app
        .client
        .verify_password(verify("bob", "s3cret-pass"))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.valid);
    assert_eq!(ok.user, Some(bob));
    for (username, password) in [
        ("bob", "s3cret-pas"),
        ("bob", "S3cret-pass"),
        ("nobody", "s3cret-pass"),
        ("bad name!", "x"),
        ("", ""),
    ] {
        let answer = app
            .client
            .verify_password(verify(username, password))
            .await
            .unwrap()
            .into_inner();
        assert!(!answer.valid, "{username}/{password} must not verify");
        assert_eq!(answer.user, None);
    }
}

#[tokio::test]
async fn only_if_first_creates_exactly_one_admin_under_concurrency() {
    let app = spawn_app().await;
    let mut calls = Vec::new();
    for i in 0..6 {
        let mut client = app.client.clone();
        calls.push(tokio::spawn(async move {
            client
                .create_user(pb::CreateUserRequest {
                    username: format!("first{i}"),
                    password: "password-x".into(),
                    is_admin: false,
                    only_if_first: true,
                })
                .await
        }));
    }
    let mut created = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(user) => created.push(user.into_inner()),
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        }
    }
    assert_eq!(created.len(), 1, "{created:?}");
    assert!(created[0].is_admin);
    let mut client = app.client.clone();
    let again = client
        .create_user(pb::CreateUserRequest {
            username: "late".into(),
            password: "password-x".into(),
            is_admin: false,
            only_if_first: true,
        })
        .await;
    assert_eq!(code(again), Code::FailedPrecondition);
    assert_eq!(
        client
            .count_users(pb::CountUsersRequest {})
            .await
            .unwrap()
            .into_inner()
            .count,
        1
    );
}

#[tokio::test]
async fn bad_user_requests_are_invalid_arguments() {
    let mut app = spawn_app().await;
    for (username, password) in [
        ("", "password-1"),
        ("has space", "password-1"),
        ("slash/name", "password-1"),
        (&"x".repeat(65) as &str, "password-1"),
        ("short", "1234567"),
        ("long", &"p".repeat(1025) as &str),
    ] {
        let result = app.client.create_user(create(username, password)).await;
        assert_eq!(code(result), Code::InvalidArgument, "{username:?}");
    }
    assert_eq!(
        code(app.client.get_user(pb::GetUserRequest { key: None }).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            app.client
                .get_user(pb::GetUserRequest {
                    key: Some(Key::Username("no such".into()))
                })
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            app.client
                .get_user(pb::GetUserRequest {
                    key: Some(Key::Username("nosuch".into()))
                })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            app.client
                .delete_user(pb::DeleteUserRequest { id: 0 })
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        app.client
            .count_users(pb::CountUsersRequest {})
            .await
            .unwrap()
            .into_inner()
            .count,
        0
    );
}
