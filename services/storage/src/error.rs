//! The storage error type and its one mapping to gRPC status codes.

use deadpool::managed::{PoolError, TimeoutType};
use diesel::result::{DatabaseErrorKind, Error as DieselError};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The database cannot be reached or is overloaded right now; the caller may retry.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

impl StorageError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }
}

/// mysql_async reports a lost or refused connection as a driver or I/O error, and diesel-async
/// folds those into `DatabaseErrorKind::Unknown` with only the text left, so the text is all
/// there is to tell "the database is gone" from "the query is wrong".
fn is_connection_failure(message: &str) -> bool {
    const MARKERS: &[&str] = &[
        "Input/output error",
        "Driver error",
        "Connection to the server is closed",
        "Server shutdown in progress",
        "Connection was killed",
        "Lost connection",
        "gone away",
        "Pool was disconnected",
        "Too many connections",
    ];
    MARKERS.iter().any(|marker| message.contains(marker))
}

/// Conflicts that succeed when retried; the caller is told UNAVAILABLE, which clients retry.
fn is_transient_conflict(message: &str) -> bool {
    message.contains("Deadlock found") || message.contains("Lock wait timeout")
}

impl From<DieselError> for StorageError {
    fn from(error: DieselError) -> Self {
        match &error {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                Self::AlreadyExists(info.message().to_string())
            }
            DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, info) => {
                Self::FailedPrecondition(info.message().to_string())
            }
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                Self::Unavailable(info.message().to_string())
            }
            DieselError::DatabaseError(_, info) if is_connection_failure(info.message()) => {
                Self::Unavailable(info.message().to_string())
            }
            DieselError::DatabaseError(_, info) if is_transient_conflict(info.message()) => {
                Self::Unavailable(info.message().to_string())
            }
            DieselError::BrokenTransactionManager => Self::Unavailable(error.to_string()),
            DieselError::NotFound => Self::NotFound("not found".to_string()),
            _ => Self::Unexpected(anyhow::Error::new(error)),
        }
    }
}

impl From<diesel::ConnectionError> for StorageError {
    fn from(error: diesel::ConnectionError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

impl From<PoolError<diesel_async::pooled_connection::PoolError>> for StorageError {
    fn from(error: PoolError<diesel_async::pooled_connection::PoolError>) -> Self {
        match error {
            PoolError::Timeout(TimeoutType::Wait) => {
                Self::Unavailable("timed out waiting for a free database connection".to_string())
            }
            PoolError::Timeout(TimeoutType::Create) => {
                Self::Unavailable("timed out connecting to the database".to_string())
            }
            PoolError::Timeout(TimeoutType::Recycle) => {
                Self::Unavailable("timed out checking a pooled database connection".to_string())
            }
            PoolError::Backend(error) => Self::Unavailable(error.to_string()),
            PoolError::Closed => Self::Unavailable("the connection pool is closed".to_string()),
            PoolError::PostCreateHook(error) => Self::Unavailable(error.to_string()),
            PoolError::NoRuntimeSpecified => {
                Self::Unexpected(anyhow::anyhow!("connection pool built without a runtime"))
            }
        }
    }
}

impl From<tokio::task::JoinError> for StorageError {
    fn from(error: tokio::task::JoinError) -> Self {
        Self::Unexpected(anyhow::Error::new(error))
    }
}

impl From<StorageError> for tonic::Status {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::InvalidArgument(message) => tonic::Status::invalid_argument(message),
            StorageError::NotFound(message) => tonic::Status::not_found(message),
            StorageError::AlreadyExists(message) => tonic::Status::already_exists(message),
            StorageError::FailedPrecondition(message) => {
                tonic::Status::failed_precondition(message)
            }
            StorageError::Unavailable(message) => {
                tracing::warn!(%message, "database unavailable");
                tonic::Status::unavailable(format!("database unavailable: {message}"))
            }
            StorageError::Unexpected(error) => {
                // The detail goes to the log, not to the caller.
                tracing::error!(error = format!("{error:#}"), "unexpected storage error");
                tonic::Status::internal("internal storage error")
            }
        }
    }
}
