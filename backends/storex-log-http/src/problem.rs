//! [`ApiError`]: every failure the server answers with, as a status and a JSON
//! [`ErrorBody`](crate::api::ErrorBody) with a stable code; and [`JsonBody`], a JSON extractor
//! whose rejections (bad JSON, wrong types, oversized bodies) answer the same way.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use storex_core::uuid::Uuid;
use storex_sync::SharedLogError;

use crate::api::{ErrorBody, ErrorDetail};

/// A failed request: status, stable code, message and the numbers some codes carry.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    detail: Box<ErrorDetail>,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            detail: Box::new(ErrorDetail {
                code: code.to_owned(),
                message: message.into(),
                cursor: None,
                compacted_through: None,
                log_end: None,
                other: None,
            }),
            retry_after_secs: None,
        }
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn rate_limited(retry_after_secs: u64) -> Self {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; retry in {retry_after_secs} s"),
        );
        error.retry_after_secs = Some(retry_after_secs);
        error
    }

    /// A request refused because the server holds as many request bodies as it takes (503)
    /// or its user does (429); retried after `retry_after_secs`.
    pub(crate) fn busy(status: StatusCode, message: String, retry_after_secs: u64) -> Self {
        let mut error = ApiError::new(status, "busy", message);
        error.retry_after_secs = Some(retry_after_secs);
        error
    }

    /// A database or other internal failure: logged in full, answered briefly.
    pub(crate) fn unavailable(what: &str, error: &dyn std::error::Error) -> Self {
        tracing::error!(error = %error, "{what}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{what}; try again later"),
        )
    }
}

impl From<SharedLogError> for ApiError {
    fn from(error: SharedLogError) -> Self {
        let message = error.to_string();
        match error {
            SharedLogError::UnknownDevice { .. } => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unknown_device", message)
            }
            SharedLogError::CursorCompacted {
                cursor,
                compacted_through,
            } => {
                let mut e = ApiError::new(StatusCode::GONE, "cursor_compacted", message);
                e.detail.cursor = Some(cursor);
                e.detail.compacted_through = Some(compacted_through);
                e
            }
            SharedLogError::CursorAhead {
                cursor,
                log_end,
                compacted_through,
            } => {
                let mut e = ApiError::new(StatusCode::CONFLICT, "cursor_ahead", message);
                e.detail.cursor = Some(cursor);
                e.detail.log_end = Some(log_end);
                e.detail.compacted_through = Some(compacted_through);
                e
            }
            SharedLogError::WrongDevice { other, .. } => {
                let mut e = ApiError::new(StatusCode::FORBIDDEN, "wrong_device", message);
                e.detail.other = Some(other.0);
                e
            }
            SharedLogError::Unauthorized { .. } => ApiError::unauthorized(message),
            SharedLogError::Invalid { .. } => ApiError::invalid(message),
            SharedLogError::DeviceRefused { .. } => {
                ApiError::new(StatusCode::CONFLICT, "device_refused", message)
            }
            other => ApiError::unavailable("the shared log failed", &other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: *self.detail,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"storex\""),
            );
        }
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A JSON request body; bad JSON, wrong types, a wrong content type and oversized bodies
/// become [`ApiError`]s.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// An optional JSON request body: none when the body is empty; otherwise a [`JsonBody`],
/// whose content type must say JSON (a body without it is refused, not taken for none).
#[derive(Debug)]
pub(crate) struct OptionalJsonBody<T>(pub(crate) Option<T>);

impl<S, T> FromRequest<S> for OptionalJsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(|r| body_rejection(r.status(), r.body_text()))?;
        if bytes.is_empty() {
            return Ok(OptionalJsonBody(None));
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        let JsonBody(value) = JsonBody::from_request(req, state).await?;
        Ok(OptionalJsonBody(Some(value)))
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    body_rejection(rejection.status(), rejection.body_text())
}

/// How much of a refused body's description an answer carries: a decoding error quotes
/// what it refused (a string where a number belongs, say), which a hostile body makes
/// several times larger than itself.
const MAX_REJECTION_TEXT: usize = 512;

/// The error for a request body axum refused with `status`, saying `text` (its first
/// [`MAX_REJECTION_TEXT`] bytes).
fn body_rejection(status: StatusCode, mut text: String) -> ApiError {
    if text.len() > MAX_REJECTION_TEXT {
        let mut end = MAX_REJECTION_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("… (cut)");
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "invalid_request",
    };
    let status = if status.is_client_error() {
        status
    } else {
        StatusCode::BAD_REQUEST
    };
    ApiError::new(status, code, text)
}

/// Parses a device id from a path segment.
pub(crate) fn parse_device(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text)
        .map_err(|e| ApiError::invalid(format!("`{text}` is not a device id: {e}")))
}
