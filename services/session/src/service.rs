//! The gRPC `SessionService`: request validation, metrics, and the one place where errors
//! become `tonic::Status`.

use std::{future::Future, time::Instant};

use iot_proto::session::v1::{
    CreateSessionRequest, CreateSessionResponse, ListSessionsRequest, ListSessionsResponse, RevokeSessionRequest,
    RevokeSessionResponse, RevokeUserSessionsRequest, RevokeUserSessionsResponse, Session, ValidateSessionRequest,
    revoke_session_request::Key, session_service_server::SessionService,
};
use tonic::{Code, Request, Response, Status};

use crate::{
    metrics::Metrics,
    store::{NewSession, RevokeOutcome, SessionStore, StoreError, StoredSession},
    token,
};

/// Longest username accepted (the storage service's limit is lower; this only bounds Redis).
const MAX_USERNAME_BYTES: usize = 255;
/// User agents are informational (shown in a session list); longer ones are cut, not refused.
const MAX_USER_AGENT_BYTES: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    InvalidArgument(&'static str),
    #[error("no valid session (unknown, expired or revoked)")]
    Unauthenticated,
    #[error("{0}")]
    NotFound(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::InvalidArgument(message) => Status::invalid_argument(message),
            ServiceError::Unauthenticated => Status::unauthenticated(error.to_string()),
            ServiceError::NotFound(message) => Status::not_found(message),
            ServiceError::Store(store @ (StoreError::Unavailable(_) | StoreError::Timeout(_))) => {
                tracing::warn!(error = %store, "session store unavailable");
                Status::unavailable(store.to_string())
            }
            ServiceError::Store(store) => {
                tracing::error!(error = %store, "session store failed");
                Status::internal("internal error in the session store")
            }
        }
    }
}

#[derive(Clone)]
pub struct SessionGrpc {
    store: SessionStore,
    metrics: Metrics,
}

impl SessionGrpc {
    pub fn new(store: SessionStore, metrics: Metrics) -> Self {
        Self { store, metrics }
    }

    async fn observed<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<T, ServiceError>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = call.await.map_err(Status::from);
        let code = code_name(result.as_ref().map_or_else(Status::code, |_| Code::Ok));
        self.metrics.requests.with_label_values(&[method, code]).inc();
        self.metrics.duration.with_label_values(&[method, code]).observe(started.elapsed().as_secs_f64());
        tracing::debug!(method, code, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "gRPC call");
        result.map(Response::new)
    }

    async fn create(&self, request: CreateSessionRequest) -> Result<CreateSessionResponse, ServiceError> {
        require_user(request.user_id)?;
        if request.username.is_empty() {
            return Err(ServiceError::InvalidArgument("username must not be empty"));
        }
        if request.username.len() > MAX_USERNAME_BYTES || request.username.chars().any(char::is_control) {
            return Err(ServiceError::InvalidArgument("username is too long or contains control characters"));
        }
        let new = NewSession {
            user_id: request.user_id,
            username: request.username,
            is_admin: request.is_admin,
            user_agent: truncate(request.user_agent, MAX_USER_AGENT_BYTES),
        };
        let (token, session) = self.store.create(new).await?;
        self.metrics.created.inc();
        tracing::info!(user_id = session.user_id, session_id = %session.session_id, "session created");
        Ok(CreateSessionResponse { token, session: Some(to_proto(session)) })
    }

    async fn validate(&self, request: ValidateSessionRequest) -> Result<Session, ServiceError> {
        if request.token.is_empty() {
            return Err(ServiceError::InvalidArgument("token must not be empty"));
        }
        // A token of the wrong shape is just another unknown token: same answer, no Redis round trip.
        let found =
            if token::is_well_formed(&request.token) { self.store.validate(&request.token).await? } else { None };
        match found {
            Some(session) => {
                self.metrics.validated.inc();
                Ok(to_proto(session))
            }
            None => {
                self.metrics.rejected.inc();
                Err(ServiceError::Unauthenticated)
            }
        }
    }

    async fn list(&self, request: ListSessionsRequest) -> Result<ListSessionsResponse, ServiceError> {
        require_user(request.user_id)?;
        let sessions = self.store.list(request.user_id).await?;
        Ok(ListSessionsResponse { sessions: sessions.into_iter().map(to_proto).collect() })
    }

    async fn revoke(&self, request: RevokeSessionRequest) -> Result<RevokeSessionResponse, ServiceError> {
        let revoked = match request.key {
            None => return Err(ServiceError::InvalidArgument("either token or session_id must be set")),
            Some(Key::Token(token)) => {
                if token.is_empty() {
                    return Err(ServiceError::InvalidArgument("token must not be empty"));
                }
                if !token::is_well_formed(&token) {
                    false
                } else {
                    let owner = (request.user_id != 0).then_some(request.user_id);
                    match self.store.revoke_token(&token, owner).await? {
                        RevokeOutcome::Revoked => true,
                        RevokeOutcome::NotFound => false,
                        RevokeOutcome::WrongOwner => {
                            return Err(ServiceError::NotFound("no such session for this user"));
                        }
                    }
                }
            }
            Some(Key::SessionId(session_id)) => {
                if request.user_id == 0 {
                    return Err(ServiceError::InvalidArgument("user_id is required to revoke by session_id"));
                }
                if !token::is_session_id(&session_id) {
                    return Err(ServiceError::InvalidArgument("session_id must be 32 lowercase hex characters"));
                }
                if !self.store.revoke_id(request.user_id, &session_id).await? {
                    return Err(ServiceError::NotFound("no such session for this user"));
                }
                true
            }
        };
        if revoked {
            self.metrics.revoked.inc();
        }
        Ok(RevokeSessionResponse { revoked })
    }

    async fn revoke_user(
        &self,
        request: RevokeUserSessionsRequest,
    ) -> Result<RevokeUserSessionsResponse, ServiceError> {
        require_user(request.user_id)?;
        let revoked = self.store.revoke_user(request.user_id).await?;
        self.metrics.revoked.inc_by(revoked);
        tracing::info!(user_id = request.user_id, revoked, "all sessions of a user revoked");
        Ok(RevokeUserSessionsResponse { revoked })
    }
}

#[tonic::async_trait]
impl SessionService for SessionGrpc {
    async fn create_session(
        &self,
        request: Request<CreateSessionRequest>,
    ) -> Result<Response<CreateSessionResponse>, Status> {
        self.observed("CreateSession", self.create(request.into_inner())).await
    }

    async fn validate_session(&self, request: Request<ValidateSessionRequest>) -> Result<Response<Session>, Status> {
        self.observed("ValidateSession", self.validate(request.into_inner())).await
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        self.observed("ListSessions", self.list(request.into_inner())).await
    }

    async fn revoke_session(
        &self,
        request: Request<RevokeSessionRequest>,
    ) -> Result<Response<RevokeSessionResponse>, Status> {
        self.observed("RevokeSession", self.revoke(request.into_inner())).await
    }

    async fn revoke_user_sessions(
        &self,
        request: Request<RevokeUserSessionsRequest>,
    ) -> Result<Response<RevokeUserSessionsResponse>, Status> {
        self.observed("RevokeUserSessions", self.revoke_user(request.into_inner())).await
    }
}

fn require_user(user_id: u64) -> Result<(), ServiceError> {
    if user_id == 0 { Err(ServiceError::InvalidArgument("user_id must be set (non-zero)")) } else { Ok(()) }
}

fn truncate(mut text: String, max_bytes: usize) -> String {
    if text.len() > max_bytes {
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn to_proto(session: StoredSession) -> Session {
    Session {
        session_id: session.session_id,
        user_id: session.user_id,
        username: session.username,
        is_admin: session.is_admin,
        created_at_us: session.created_at_us,
        last_seen_us: session.last_seen_us,
        idle_expires_at_us: session.idle_expires_at_us,
        absolute_expires_at_us: session.absolute_expires_at_us,
        csrf_token: session.csrf_token,
        user_agent: session.user_agent,
    }
}

/// Canonical gRPC code names, as grpc-go and most dashboards label them.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_char_boundary() {
        assert_eq!(truncate("héllo".to_string(), 2), "h");
        assert_eq!(truncate("abc".to_string(), 10), "abc");
    }
}
