//! Errors a client sees: an HTTP status and a JSON body `{"error": "..."}`
//! whose message the page shows as it is.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for a `Retry-After` header (503 only).
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, message: String) -> Self {
        ApiError { status, message, retry_after: None }
    }
    pub fn bad_request(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: String) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn too_large(message: String) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }
    pub fn internal(message: String) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    pub fn busy(retry_after: u32) -> Self {
        let msg = "every session is busy; try again in a moment".to_string();
        ApiError { retry_after: Some(retry_after), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, msg) }
    }
}

/// A runtime error met while starting a session (the request was checked
/// already, so what is left is the prompt not fitting, or a bug).
impl From<edgelm_runtime::Error> for ApiError {
    fn from(e: edgelm_runtime::Error) -> Self {
        use edgelm_runtime::ErrorKind;
        match e.kind() {
            ErrorKind::PromptTooLong => Self::too_large(format!("{e}; use a shorter prompt")),
            ErrorKind::UnknownDomain => Self::not_found(e.to_string()),
            ErrorKind::InvalidArgument => Self::bad_request(e.to_string()),
            _ => Self::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut res = (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(s) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}
