//! The one place where failures become HTTP responses, including gRPC status codes from
//! storage/session and actix's own extractor errors.

use actix_web::{
    HttpResponse, ResponseError,
    error::{JsonPayloadError, PathError, PayloadError, QueryPayloadError, UrlencodedError},
    http::{StatusCode, header},
};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("authentication required")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("none of the acceptable media types can be produced; offered: {0}")]
    NotAcceptable(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the request body did not arrive within {0:?}")]
    RequestTimeout(std::time::Duration),
    #[error("a backend service is unavailable: {0}")]
    Unavailable(String),
    #[error("a backend service did not answer in time")]
    Timeout,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unprocessable(_) => "unprocessable",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound => "not_found",
            Self::Conflict(_) => "conflict",
            Self::NotAcceptable(_) => "not_acceptable",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout(_) => "request_timeout",
            Self::Unavailable(_) => "unavailable",
            Self::Timeout => "timeout",
            Self::Unexpected(_) => "internal",
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => Self::Unprocessable(message),
            Code::NotFound => Self::NotFound,
            Code::AlreadyExists => Self::Conflict(message),
            Code::FailedPrecondition | Code::Aborted => Self::Conflict(message),
            Code::Unauthenticated => Self::Unauthenticated,
            Code::PermissionDenied => Self::Forbidden(message),
            Code::Unavailable | Code::ResourceExhausted => Self::Unavailable(message),
            Code::DeadlineExceeded | Code::Cancelled => Self::Timeout,
            _ => Self::Unexpected(anyhow::anyhow!("backend error {:?}: {message}", status.code())),
        }
    }
}

impl From<JsonPayloadError> for ApiError {
    fn from(error: JsonPayloadError) -> Self {
        match error {
            JsonPayloadError::OverflowKnownLength { limit, .. } | JsonPayloadError::Overflow { limit } => {
                Self::PayloadTooLarge(limit)
            }
            JsonPayloadError::Payload(error) if let Some(limit) = body_timed_out(&error) => Self::RequestTimeout(limit),
            JsonPayloadError::ContentType => {
                Self::UnsupportedMediaType("the request body must be application/json".to_string())
            }
            JsonPayloadError::Deserialize(e) if e.is_data() => Self::Unprocessable(e.to_string()),
            other => Self::BadRequest(other.to_string()),
        }
    }
}

impl From<UrlencodedError> for ApiError {
    fn from(error: UrlencodedError) -> Self {
        match error {
            UrlencodedError::Overflow { limit, .. } => Self::PayloadTooLarge(limit),
            UrlencodedError::Payload(error) if let Some(limit) = body_timed_out(&error) => Self::RequestTimeout(limit),
            UrlencodedError::ContentType => Self::UnsupportedMediaType(
                "the request body must be application/x-www-form-urlencoded".to_string(),
            ),
            other => Self::BadRequest(other.to_string()),
        }
    }
}

/// The limit, when `error` is the body deadline of `middleware::body_deadline`.
fn body_timed_out(error: &PayloadError) -> Option<std::time::Duration> {
    match error {
        PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            io.get_ref().and_then(|inner| inner.downcast_ref::<crate::middleware::BodyTimedOut>()).map(|t| t.0)
        }
        _ => None,
    }
}

impl From<QueryPayloadError> for ApiError {
    fn from(error: QueryPayloadError) -> Self {
        Self::BadRequest(format!("invalid query parameters: {error}"))
    }
}

impl From<iot_query::QueryError> for ApiError {
    fn from(error: iot_query::QueryError) -> Self {
        match error {
            iot_query::QueryError::Malformed(message) => Self::BadRequest(message),
            iot_query::QueryError::Invalid(message) => Self::Unprocessable(message),
        }
    }
}

impl From<PathError> for ApiError {
    fn from(error: PathError) -> Self {
        Self::BadRequest(format!("invalid path: {error}"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        // Internal details go to the log, not to the client.
        let message = match self {
            Self::Unexpected(error) => {
                tracing::error!(error = ?error, "request failed");
                "internal error".to_string()
            }
            Self::Unavailable(message) => {
                tracing::warn!(%message, "backend unavailable");
                self.to_string()
            }
            other => other.to_string(),
        };
        let mut response = HttpResponse::build(status);
        if matches!(status, StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE) {
            // The rest of the body (slow, or too large to read) may still be on its way: the
            // connection cannot be reused, and waiting for that rest would let a client hold it.
            response.force_close();
        }
        if status == StatusCode::UNAUTHORIZED {
            // No standard scheme for cookie auth; tells clients where to get one.
            response.insert_header((header::WWW_AUTHENTICATE, "Cookie realm=\"iot\", form-action=\"/api/v1/sessions\""));
        }
        response.json(json!({"error": {"code": self.code(), "message": message}}))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
