//! Errors: [`Error`] for setting the API up and serving it, [`ApiError`] for one request
//! (a JSON body with a stable code; client errors are explained, internal ones are logged and
//! answered without their detail).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::net::SocketAddr;
use utoipa::ToSchema;

/// What can go wrong setting up or running the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting of `[api]` cannot work.
    #[error("api settings: {0}")]
    Config(String),
    /// The Kafka producer cannot be created from the settings.
    #[error("kafka producer: {source}")]
    Producer {
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The listen address cannot be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("serving: {source}")]
    Serve {
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One invalid field or record of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// Position in the request's array (absent for a single object).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The validation reason, as in dead letters and metrics (`bad_uuid`, `price_scale`, ...).
    pub reason: String,
    /// What is wrong, readable.
    pub detail: String,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code: `invalid`, `conflict`, `too_large`, `unsupported_media_type`,
    /// `unauthorized`, `forbidden`, `not_found`, `rate_limited`, `unavailable`, `internal`.
    pub error: String,
    /// What happened, readable.
    pub message: String,
    /// Each invalid field or record (400 and 409).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// An error answer of one request.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: code.into(),
                message: message.into(),
                errors: Vec::new(),
            },
        }
    }

    /// 400 with the invalid fields or records.
    pub fn invalid(message: impl Into<String>, errors: Vec<FieldError>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid", message);
        e.body.errors = errors;
        e
    }

    /// 409: ids sent before with other content.
    pub fn conflict(message: impl Into<String>, errors: Vec<FieldError>) -> Self {
        let mut e = Self::new(StatusCode::CONFLICT, "conflict", message);
        e.body.errors = errors;
        e
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 415.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    /// 429 (the caller adds `Retry-After`).
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
    }

    /// 401 (with `WWW-Authenticate: Bearer`).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503: a dependency (the broker, ClickHouse) did not answer in time. The detail is
    /// logged, the client is told which dependency.
    pub fn unavailable(dependency: &str, detail: &dyn std::fmt::Display) -> Self {
        tracing::warn!(dependency, error = %detail, "request failed: dependency unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{dependency} is not available; retry later"),
        )
    }

    /// 503 for a dependency that cannot be used at all (not configured).
    pub fn unavailable_msg(dependency: &str, message: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{dependency}: {message}"),
        )
    }

    /// 500: logged with its detail, answered without it.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }

    /// The status of the answer.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body of the answer.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The fallback route: 404 as JSON.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route {}", uri.path()))
}
