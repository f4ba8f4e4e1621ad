//! Errors as the HTTP API shows them: `{"error": {"code": "...", "message": "..."}}`
//! with the status codes of DESIGN.md §7.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ringkv_cluster::coordinator::CoordinatorError;

/// An answer that is not a success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("key not found")]
    NotFound,
    /// Worded once, by the coordinator's error.
    #[error("{}", CoordinatorError::QuorumUnavailable { acked: *acked, required: *required, write: *write })]
    QuorumUnavailable {
        acked: u8,
        required: u8,
        write: bool,
    },
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Internal(String),
    /// Valid, but not possible in the cluster's state now (a topology change).
    #[error("{0}")]
    Conflict(String),
    /// A node id no member has.
    #[error("{0}")]
    UnknownNode(String),
    /// The key holds another type than the request is about: bytes under
    /// `/v1/crdt`, a CRDT under `/v1/kv`, or another CRDT type.
    #[error("{0}")]
    WrongType(String),
    /// The node is at one of its limits on concurrent work (say, the bytes of request
    /// bodies it buffers at once): retry later, or on another node.
    #[error("{0}")]
    Overloaded(String),
    /// The client stopped sending a request body it had started.
    #[error("{0}")]
    Timeout(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::QuorumUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Corrupt(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::UnknownNode(_) => StatusCode::NOT_FOUND,
            ApiError::WrongType(_) => StatusCode::CONFLICT,
            ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::TooLarge(_) => "too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::NotFound => "not_found",
            ApiError::QuorumUnavailable { .. } => "quorum_unavailable",
            ApiError::Corrupt(_) => "corrupt_record",
            ApiError::Internal(_) => "internal",
            ApiError::Conflict(_) => "conflict",
            ApiError::UnknownNode(_) => "unknown_node",
            ApiError::WrongType(_) => "wrong_type",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Timeout(_) => "request_timeout",
        }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest(message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::warn!(code = self.code(), "request failed: {self}");
        }
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        (self.status(), Json(body)).into_response()
    }
}
