//! `psa serve`: guarded inference over HTTP (axum).
//!
//! - `POST /v1/classify`: `{"image": base64 or data URL, "question"?, "policy"?, "id"?}` → the verdict.
//! - `POST /v1/chat/completions`: OpenAI-style chat request with one `image_url` (a base64 data URL) in the user
//!   message → a `chat.completion` whose extra `psa` object carries the assessment, decision and timings.
//!   `psa_policy` (a JSON merge patch over the server's policy) and `psa_guard: false` adjust one request.
//! - `GET /health`.
//!
//! Requests are validated (body size, content type, unknown fields, image format and size, token limits) and
//! refused with a 4xx JSON error `{"error": {"message", "type", "code"}}`. The model runs on a blocking thread,
//! one request at a time.
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use image::{DynamicImage, ImageReader, Limits};
use psa_models::{Finish, GuardRequest, GuardedPipeline, GuardedResponse, Verdict};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Limits and defaults of the server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Name reported as `model`.
    pub model_name: String,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Largest decoded image side, pixels.
    pub max_image_side: u32,
    /// Largest `max_tokens` a request may ask for (also the default).
    pub max_new_tokens: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self { model_name: "psa-vlm".into(), max_body_bytes: 8 << 20, max_image_side: 4096, max_new_tokens: 256 }
    }
}

struct AppState {
    pipeline: Mutex<GuardedPipeline>,
    cfg: ServeConfig,
}

/// A refused request.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = if self.status.is_server_error() { "server_error" } else { "invalid_request_error" };
        let body = json!({"error": {"message": self.message, "type": kind, "code": self.code}});
        (self.status, Json(body)).into_response()
    }
}

/// A JSON body, read whole before it is judged (so a refused request never leaves unread bytes that would reset
/// the connection before the client sees the error).
struct ApiJson<T>(T);

impl<T: serde::de::DeserializeOwned> FromRequest<Arc<AppState>> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        let bytes = Bytes::from_request(req, state).await.map_err(|e| ApiError {
            status: e.status(),
            code: "body_too_large",
            message: e.body_text(),
        })?;
        let limit = state.cfg.max_body_bytes;
        if bytes.len() > limit {
            return Err(ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "body_too_large",
                message: format!("the request body has {} bytes; the limit is {limit}", bytes.len()),
            });
        }
        if !json {
            return Err(ApiError {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: "unsupported_media_type",
                message: "expected a request with `Content-Type: application/json`".into(),
            });
        }
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            let status = if e.is_data() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::BAD_REQUEST };
            ApiError { status, code: "invalid_json", message: format!("invalid JSON body: {e}") }
        })
    }
}

/// The router over a loaded pipeline.
pub fn router(pipeline: GuardedPipeline, cfg: ServeConfig) -> Router {
    let limit = cfg.max_body_bytes;
    let state = Arc::new(AppState { pipeline: Mutex::new(pipeline), cfg });
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/classify", post(classify))
        .route("/v1/chat/completions", post(chat))
        // Bodies up to 4× the limit are read whole and refused with a JSON 413; larger ones are cut off by axum.
        .layer(DefaultBodyLimit::max(limit.saturating_mul(4)))
        .with_state(state)
}

/// Serves `router` on `listener` until the process is interrupted.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

/// Decodes a base64 image (raw or `data:image/...;base64,` URL) within the size limits.
pub fn decode_image(source: &str, max_side: u32) -> Result<DynamicImage, ApiError> {
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
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| ApiError::bad("invalid_image", format!("image is not valid base64: {e}")))?;
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::bad("invalid_image", format!("image: {e}")))?;
    if reader.format().is_none() {
        return Err(ApiError::bad("invalid_image", "image format not recognised (PNG or JPEG expected)"));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    reader.limits(limits);
    reader.decode().map_err(|e| ApiError::bad("invalid_image", format!("image cannot be decoded: {e}")))
}

fn policy_for(p: &GuardedPipeline, patch: Option<&Value>) -> Result<Option<psa_core::SafetyPolicy>, ApiError> {
    patch
        .map(|v| p.policy.with_overrides(v, &p.taxonomy).map_err(|e| ApiError::bad("invalid_policy", e.to_string())))
        .transpose()
}

async fn run_blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    job: impl FnOnce(&GuardedPipeline) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let pipeline = state.pipeline.lock().unwrap_or_else(|e| e.into_inner());
        job(&pipeline)
    })
    .await
    .map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "internal",
        message: e.to_string(),
    })?
}

fn model_error(e: psa_models::pipeline::PipelineError) -> ApiError {
    match e {
        psa_models::pipeline::PipelineError::Model(m @ psa_models::ModelError::TooLong { .. }) => {
            ApiError::bad("context_length_exceeded", m.to_string())
        }
        other => ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message: other.to_string() },
    }
}

/// `POST /v1/classify` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyBody {
    image: String,
    #[serde(default)]
    question: Option<String>,
    #[serde(default)]
    policy: Option<Value>,
    #[serde(default)]
    id: Option<String>,
}

async fn classify(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<ClassifyBody>,
) -> Result<Json<Verdict>, ApiError> {
    let image = decode_image(&body.image, state.cfg.max_image_side)?;
    run_blocking(&state, move |p| {
        let policy = policy_for(p, body.policy.as_ref())?;
        let question = body.question.unwrap_or_else(|| "Describe the image.".into());
        let request = GuardRequest { id: body.id, image, question, policy };
        let mut verdicts = p.classify(&[request]).map_err(model_error)?;
        verdicts.pop().ok_or_else(|| ApiError::bad("internal", "no verdict"))
    })
    .await
    .map(Json)
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatMessage {
    role: String,
    content: Content,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatBody {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    psa_policy: Option<Value>,
    #[serde(default)]
    psa_guard: Option<bool>,
}

#[derive(Debug, Serialize)]
struct ChatCompletion {
    id: String,
    object: &'static str,
    created: u64,
    model: String,
    choices: Vec<Value>,
    usage: Value,
    psa: GuardedResponse,
}

/// The question and the single image of a one-turn chat request.
fn question_and_image(messages: Vec<ChatMessage>, max_side: u32) -> Result<(String, DynamicImage), ApiError> {
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
    Ok((text.join("\n"), decode_image(&url, max_side)?))
}

async fn chat(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<ChatBody>,
) -> Result<Json<ChatCompletion>, ApiError> {
    if body.stream == Some(true) {
        return Err(ApiError::bad("unsupported_parameter", "stream is not supported"));
    }
    let limit = state.cfg.max_new_tokens;
    let max_tokens = body.max_completion_tokens.or(body.max_tokens).unwrap_or(limit);
    if max_tokens == 0 || max_tokens > limit {
        return Err(ApiError::bad("invalid_max_tokens", format!("max_tokens must lie in 1..={limit}")));
    }
    if body.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t))
        || body.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p))
    {
        return Err(ApiError::bad("invalid_sampling", "temperature must lie in [0, 2] and top_p in [0, 1]"));
    }
    let (question, image) = question_and_image(body.messages, state.cfg.max_image_side)?;
    let model = body.model.unwrap_or_else(|| state.cfg.model_name.clone());
    let response = run_blocking(&state, move |p| {
        let policy = policy_for(p, body.psa_policy.as_ref())?;
        let mut generation = p.generation_config(max_tokens);
        generation.temperature = body.temperature.unwrap_or(0.0);
        generation.top_p = body.top_p;
        generation.seed = body.seed.unwrap_or(generation.seed);
        let request = GuardRequest { id: None, image, question, policy };
        let mut out = p.respond(&[request], &generation, body.psa_guard.unwrap_or(true)).map_err(model_error)?;
        out.pop().ok_or_else(|| ApiError::bad("internal", "no response"))
    })
    .await?;
    let finish = match response.finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::Refused => "content_filter",
    };
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(Json(ChatCompletion {
        id: format!("chatcmpl-{created}-{:x}", response.timings.total_ms.to_bits()),
        object: "chat.completion",
        created,
        model,
        choices: vec![json!({
            "index": 0,
            "message": {"role": "assistant", "content": response.answer},
            "finish_reason": finish,
        })],
        usage: json!({
            "prompt_tokens": response.prompt_tokens,
            "completion_tokens": response.completion_tokens,
            "total_tokens": response.prompt_tokens + response.completion_tokens,
        }),
        psa: response,
    }))
}
