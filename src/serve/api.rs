//! Request parsing and validation for the server: JSON bodies read within a size and time limit, images decoded
//! strictly within pixel limits, chat messages reduced to one question and one image, and JSON errors.
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use image::DynamicImage;
use psa_pipeline::processor::{ImageLimits, decode_image};
use psa_pipeline::{GuardedPipeline, PipelineError, QuestionLimits, TextError};
use serde::Deserialize;
use serde_json::json;

/// A refused or failed request: a status and a JSON body `{"error": {"message", "type", "code"}}`. Server errors
/// never carry internal details (those go to the server's log).
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: bool,
}

impl ApiError {
    /// A 400 with a code and a message.
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// An error with any status.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: false }
    }

    /// 503: the server cannot take the request now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 503 with `Retry-After: 1`: the server's bounds are full now.
    pub fn busy(message: impl Into<String>) -> Self {
        Self { retry_after: true, ..Self::unavailable(message) }
    }

    /// 500, without details.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the model failed on this request")
    }

    /// 504: the request ran past the server's time limit.
    pub fn timeout() -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", "the request took longer than the server's time limit")
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            s if s.is_server_error() => "server_error",
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "permission_error",
            _ => "invalid_request_error",
        };
        let body = json!({"error": {"message": self.message, "type": kind, "code": self.code}});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// What [`ApiJson`] needs of the server's settings.
pub trait BodyLimits {
    /// Largest body, bytes.
    fn max_body_bytes(&self) -> usize;
    /// Longest time to receive the body.
    fn body_timeout(&self) -> Duration;
}

/// A JSON body, read whole (within the time limit) before it is judged, so a refused request never leaves unread
/// bytes that would reset the connection before the client sees the error.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: BodyLimits + Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(is_json);
        let read = tokio::time::timeout(state.body_timeout(), Bytes::from_request(req, &()));
        let bytes = read
            .await
            .map_err(|_| {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", "the request body arrived too slowly")
            })?
            .map_err(|e| ApiError::new(e.status(), "body_too_large", e.body_text()))?;
        let limit = state.max_body_bytes();
        if bytes.len() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body has {} bytes; the limit is {limit}", bytes.len()),
            ));
        }
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a request with `Content-Type: application/json`",
            ));
        }
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            let status = if e.is_data() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::BAD_REQUEST };
            ApiError::new(status, "invalid_json", format!("invalid JSON body: {e}"))
        })
    }
}

/// Whether a `Content-Type` value is JSON: the media type `application/json` exactly (any case), parameters such
/// as `; charset=utf-8` allowed; `application/jsonfoo` is not JSON.
fn is_json(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    media.eq_ignore_ascii_case("application/json")
}

/// Limits on what one request may ask of the model.
#[derive(Debug, Clone, Copy)]
pub struct InputLimits {
    /// Declared image size, checked before decoding.
    pub image: ImageLimits,
    /// Pixels of the intermediate resize (an extreme aspect ratio resizes to a huge image).
    pub max_resized_pixels: u64,
    /// Question length in bytes, checked before tokenizing.
    pub max_question_bytes: usize,
    /// Question length in tokens.
    pub max_question_tokens: usize,
}

/// Decodes image bytes strictly within the limits, as RGB8.
pub fn image_from_bytes(bytes: &[u8], p: &GuardedPipeline, limits: &InputLimits) -> Result<DynamicImage, ApiError> {
    let image = decode_image(bytes, &limits.image).map_err(|e| ApiError::bad("invalid_image", e.to_string()))?;
    let resized = p.images.resized_pixels(image.height() as usize, image.width() as usize);
    if resized > limits.max_resized_pixels {
        return Err(ApiError::bad(
            "invalid_image",
            format!(
                "a {}×{} image resizes to {resized} pixels; this server's limit is {} (an extreme aspect ratio)",
                image.width(),
                image.height(),
                limits.max_resized_pixels
            ),
        ));
    }
    // Keep only RGB8: the smallest form the processor reads, so a queued request holds 3 bytes a pixel.
    Ok(match image {
        DynamicImage::ImageRgb8(_) => image,
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    })
}

/// Decodes a base64 image (raw or `data:image/...;base64,` URL) strictly within the declared-size limits.
pub fn decode_base64_image(source: &str, limits: &ImageLimits) -> Result<DynamicImage, ApiError> {
    decode_image(&base64_bytes(source)?, limits).map_err(|e| ApiError::bad("invalid_image", e.to_string()))
}

/// The bytes of a base64 image, raw or in a `data:image/...;base64,` URL; remote URLs are refused.
pub fn base64_bytes(source: &str) -> Result<Vec<u8>, ApiError> {
    let payload = if let Some(rest) = source.strip_prefix("data:") {
        let (meta, data) =
            rest.split_once(',').ok_or_else(|| ApiError::bad("invalid_image", "data URL without a comma"))?;
        if !meta.ends_with(";base64") {
            return Err(ApiError::bad("invalid_image", "only base64 data URLs are accepted"));
        }
        data
    } else if source.starts_with("http://") || source.starts_with("https://") {
        return Err(ApiError::bad("invalid_image", "remote image URLs are not fetched; send the image as base64"));
    } else {
        source
    };
    base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| ApiError::bad("invalid_image", format!("image is not valid base64: {e}")))
}

/// Checks a question as the pipeline checks it ([`GuardedPipeline::check_question_within`]) under this server's
/// limits: bytes, special tokens, then tokens.
pub fn check_question(question: &str, p: &GuardedPipeline, limits: &InputLimits) -> Result<(), ApiError> {
    let bounds = QuestionLimits { max_bytes: limits.max_question_bytes, max_tokens: limits.max_question_tokens };
    p.check_question_within(question, &bounds).map_err(|e| match e {
        PipelineError::Text(t) => question_error(&t),
        other => ApiError::bad("invalid_question", other.to_string()),
    })
}

/// The 400 of a question the pipeline refuses: `question_too_long`, else `invalid_question`.
pub fn question_error(e: &TextError) -> ApiError {
    let code = if matches!(e, TextError::QuestionTooLong(_)) { "question_too_long" } else { "invalid_question" };
    ApiError::bad(code, e.to_string())
}

/// One part of an OpenAI message's content.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageUrl {
    url: String,
    #[serde(default)]
    detail: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One chat message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    role: String,
    content: Content,
}

/// The question and the image URL of a one-turn chat request.
pub fn question_and_image(messages: Vec<ChatMessage>) -> Result<(String, String), ApiError> {
    let [message] = <[ChatMessage; 1]>::try_from(messages).map_err(|m| {
        ApiError::bad(
            "unsupported_conversation",
            format!("exactly one user message is supported (got {}); system prompts come from the template", m.len()),
        )
    })?;
    if message.role != "user" {
        return Err(ApiError::bad(
            "unsupported_conversation",
            format!("the message role must be user, not {:?}", message.role),
        ));
    }
    let parts = match message.content {
        Content::Text(text) => vec![Part::Text { text }],
        Content::Parts(parts) => parts,
    };
    let mut text = Vec::new();
    let mut images = Vec::new();
    for part in parts {
        match part {
            Part::Text { text: t } => text.push(t),
            Part::ImageUrl { image_url } => {
                if let Some(d) = image_url.detail.as_deref().filter(|d| !["auto", "low", "high"].contains(d)) {
                    return Err(ApiError::bad("invalid_image", format!("detail must be auto, low or high, not {d:?}")));
                }
                images.push(image_url.url)
            }
        }
    }
    let [url] = <[String; 1]>::try_from(images).map_err(|i| {
        ApiError::bad("missing_image", format!("exactly one image_url part is needed, got {}", i.len()))
    })?;
    Ok((text.join("\n"), url))
}
