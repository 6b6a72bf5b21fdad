//! [`ApiJson`]: the JSON body extractor that fails in the documented shape.

use crate::http::error::ApiError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use warder_core::ErrorCode;

/// A JSON request body of type `T` (or a documented error), and a JSON answer.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonDataError(e) => {
                    ApiError::new(ErrorCode::InvalidInput, e.body_text())
                }
                JsonRejection::JsonSyntaxError(e) => {
                    ApiError::new(ErrorCode::InvalidJson, e.body_text())
                }
                JsonRejection::MissingJsonContentType(_) => ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    "expected Content-Type: application/json",
                ),
                JsonRejection::BytesRejection(e) if e.status() == 413 => {
                    ApiError::new(ErrorCode::PayloadTooLarge, "request body too large")
                }
                other => ApiError::new(ErrorCode::BadRequest, other.body_text()),
            }),
        }
    }
}

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
