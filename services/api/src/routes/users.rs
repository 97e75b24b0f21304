use actix_web::{HttpRequest, HttpResponse, web};
use iot_proto::storage::v1::{CreateUserRequest, User};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    auth::optional_session,
    error::{ApiError, ApiResult},
    state::AppState,
    time::format_us,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    /// Only an admin may create another admin.
    #[serde(default)]
    pub is_admin: bool,
}

pub fn user_json(user: &User) -> Value {
    json!({
        "id": user.id,
        "username": user.username,
        "is_admin": user.is_admin,
        "created_at": format_us(user.created_at_us),
    })
}

/// The first user ever registered becomes admin and needs no session; after that, only an
/// admin session may register users.
pub async fn create(req: HttpRequest, state: web::Data<AppState>, body: web::Json<NewUser>) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let caller = optional_session(&req, &state).await?;
    let request = match &caller {
        Some(session) if session.is_admin() => CreateUserRequest {
            username: body.username,
            password: body.password,
            is_admin: body.is_admin,
            only_if_first: false,
        },
        Some(_) => return Err(ApiError::Forbidden("only an admin can register users".to_string())),
        None => CreateUserRequest { username: body.username, password: body.password, is_admin: true, only_if_first: true },
    };
    let first_registration = request.only_if_first;
    let user = match state.storage.clone().create_user(request).await {
        Ok(user) => user.into_inner(),
        Err(status) if first_registration && status.code() == tonic::Code::FailedPrecondition => {
            return Err(ApiError::Unauthenticated);
        }
        Err(status) => return Err(status.into()),
    };
    tracing::info!(user_id = user.id, username = %user.username, is_admin = user.is_admin, "user registered");
    Ok(HttpResponse::Created().json(user_json(&user)))
}
