use actix_web::{HttpRequest, HttpResponse, http::header, web};
use iot_proto::{
    session::v1::{CreateSessionRequest, RevokeSessionRequest, Session, revoke_session_request},
    storage::v1::{User, VerifyPasswordRequest},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    auth::{CurrentSession, removal_cookie, session_cookie},
    error::{ApiError, ApiResult},
    state::AppState,
    time::format_us,
};

#[derive(Debug, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

pub fn session_json(session: &Session) -> Value {
    json!({
        "user": {"id": session.user_id, "username": session.username, "is_admin": session.is_admin},
        "session_id": session.session_id,
        "csrf_token": session.csrf_token,
        "created_at": format_us(session.created_at_us),
        "idle_expires_at": format_us(session.idle_expires_at_us),
        "expires_at": format_us(session.absolute_expires_at_us),
    })
}

/// Checks the password with storage and opens a session; `Ok(None)` for wrong credentials.
pub async fn log_in(req: &HttpRequest, state: &AppState, username: String, password: String) -> ApiResult<Option<(String, Session)>> {
    let verified = state.storage.clone().verify_password(VerifyPasswordRequest { username, password }).await;
    let user: User = match verified {
        Ok(response) => {
            let response = response.into_inner();
            match (response.valid, response.user) {
                (true, Some(user)) => user,
                _ => return Ok(None),
            }
        }
        // Unknown or malformed usernames look exactly like a wrong password.
        Err(status) if matches!(status.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument) => return Ok(None),
        Err(status) => return Err(status.into()),
    };
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(256)
        .collect();
    let created = state
        .session
        .clone()
        .create_session(CreateSessionRequest { user_id: user.id, username: user.username, is_admin: user.is_admin, user_agent })
        .await?
        .into_inner();
    let session = created
        .session
        .ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("session service returned no session")))?;
    Ok(Some((created.token, session)))
}

pub async fn create(req: HttpRequest, state: web::Data<AppState>, body: web::Json<Credentials>) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let Some((token, session)) = log_in(&req, &state, body.username, body.password).await? else {
        return Err(ApiError::Unauthenticated);
    };
    let cookie = session_cookie(&req, &state, token, &session);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, "/api/v1/sessions/current"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .cookie(cookie)
        .json(session_json(&session)))
}

pub async fn current(session: CurrentSession) -> HttpResponse {
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(session_json(&session.session))
}

/// Logs the session out. Evicted from the session cache before the call, so that no request
/// is answered from it meanwhile, and after it, so that no validation answered before the
/// revocation can cache the session again (whatever the call's outcome).
pub async fn revoke(state: &AppState, session: &CurrentSession) -> ApiResult<()> {
    state.sessions.evict(&session.token);
    let revoked = state
        .session
        .clone()
        .revoke_session(RevokeSessionRequest { key: Some(revoke_session_request::Key::Token(session.token.clone())), user_id: 0 })
        .await;
    state.sessions.evict(&session.token);
    revoked?;
    Ok(())
}

pub async fn delete_current(req: HttpRequest, state: web::Data<AppState>, session: CurrentSession) -> ApiResult<HttpResponse> {
    revoke(&state, &session).await?;
    Ok(HttpResponse::NoContent().cookie(removal_cookie(&req, &state)).finish())
}
