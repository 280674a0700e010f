//! `psa serve`: guarded inference over HTTP.
//!
//! - `POST /v1/classify`: `{"image": base64 or data URL, "question"?, "policy"?, "id"?}` → the verdict.
//! - `POST /v1/chat/completions`: OpenAI-style chat request with one `image_url` (a base64 data URL) in the user
//!   message → a `chat.completion` whose extra `psa` object carries the assessment, decision and timings.
//! - `GET /health`: 200 once a warm-up inference succeeded, 503 before (or when it failed).
//!
//! The operator owns the policy: per-request overrides (`policy`, `psa_policy`, `psa_guard: false`) are refused
//! with 403 unless the server allows them, and an optional bearer key guards the `/v1` routes. Every request is
//! bounded — body size and read time, declared and resized image pixels, question bytes and tokens, generated
//! tokens, total time — and at most `max_pending` requests are held at once; the next gets 503 at once. Images
//! are decoded and the model runs off the async runtime; requests that arrive together share one model pass.
mod api;
mod engine;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use psa_pipeline::processor::{ImageLimits, probe_image};
use psa_pipeline::{Finish, GuardRequest, GuardedPipeline, GuardedResponse, Verdict};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

pub use api::{ApiError, InputLimits};
pub use engine::{Batching, Readiness};

use api::{
    ApiJson, BodyLimits, ChatMessage, base64_bytes, check_question, decode_base64_image, image_from_bytes,
    question_and_image,
};
use engine::Engine;

/// A bearer key; only its SHA-256 is kept, and keys are compared in constant time.
#[derive(Clone)]
pub struct ApiKey([u8; 32]);

impl ApiKey {
    /// A key from its text (surrounding whitespace, a key file's final newline included, ignored); an empty key,
    /// or one with whitespace or control characters inside (a key file of several lines), is refused.
    pub fn new(key: &str) -> Result<Self, ApiKeyError> {
        let key = key.trim();
        if key.is_empty() {
            return Err(ApiKeyError::Empty);
        }
        if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ApiKeyError::Inner);
        }
        Ok(Self(Sha256::digest(key.as_bytes()).into()))
    }

    /// Whether `presented` is the key.
    pub fn verify(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.0.ct_eq(&digest).into()
    }
}

/// An API key that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// Empty or only whitespace.
    #[error("the API key is empty")]
    Empty,
    /// Whitespace or control characters inside the key: a client could never send it in one header.
    #[error("the API key holds whitespace or control characters (a key file must hold one key on one line)")]
    Inner,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Limits, security and batching of the server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Name reported as `model`.
    pub model_name: String,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Image and question limits.
    pub limits: InputLimits,
    /// Largest `max_tokens` a request may ask for (also the default).
    pub max_new_tokens: usize,
    /// Whether requests may bring their own policy or switch the guard off.
    pub allow_client_policy: bool,
    /// The bearer key the `/v1` routes require, if any.
    pub api_key: Option<ApiKey>,
    /// Most requests held at once (reading, queued or running); the next gets 503.
    pub max_pending: usize,
    /// How requests are grouped into model passes.
    pub batching: Batching,
    /// Longest time a request may take in all, after its headers.
    pub request_timeout: Duration,
    /// Longest time to receive a request's headers; also how long an idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// Longest time to receive a request's body.
    pub body_timeout: Duration,
    /// Most open connections; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// How long a shutdown waits for requests in progress; those still running then get 503.
    pub shutdown_grace: Duration,
    /// Most memory the images of requests in progress may take at once, decoded and held (each request
    /// reserves its image's share from its header before decoding; the others wait); bytes.
    pub max_image_memory: u64,
}

/// A server setting that would make the server unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server setting: {0}")]
pub struct ServeConfigError(String);

impl ServeConfig {
    /// Checks every setting lets well-formed requests through: positive timeouts, a body limit between 1 KiB and
    /// 1 GiB, positive counts, and an image memory that holds the largest accepted image.
    pub fn validate(&self) -> Result<(), ServeConfigError> {
        let bad = |what: String| Err(ServeConfigError(what));
        for (name, t) in [
            ("request timeout", self.request_timeout),
            ("header timeout", self.header_timeout),
            ("body timeout", self.body_timeout),
        ] {
            if t.is_zero() || t > Duration::from_secs(24 * 3600) {
                return bad(format!("the {name} must lie between 1 ms and a day, got {t:?}"));
            }
        }
        if !(1 << 10..=1 << 30).contains(&self.max_body_bytes) {
            return bad(format!("the body limit must lie in 1 KiB..=1 GiB, got {} bytes", self.max_body_bytes));
        }
        for (name, n) in [
            ("max_pending", self.max_pending),
            ("max_connections", self.max_connections),
            ("max_new_tokens", self.max_new_tokens),
            ("max_batch", self.batching.max_batch),
            ("max_question_bytes", self.limits.max_question_bytes),
            ("max_question_tokens", self.limits.max_question_tokens),
        ] {
            if n == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        let image = &self.limits.image;
        if image.max_side == 0 || image.max_pixels == 0 {
            return bad("the image limits must allow at least one pixel".into());
        }
        let largest = image.decode_memory_bound();
        if self.max_image_memory < largest {
            return bad(format!(
                "max_image_memory {} cannot hold one image at the pixel limit ({largest} bytes)",
                self.max_image_memory
            ));
        }
        Ok(())
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            model_name: "psa-vlm".into(),
            max_body_bytes: 8 << 20,
            limits: InputLimits {
                image: ImageLimits::new(4096, 4096 * 3072),
                max_resized_pixels: 4 << 20,
                max_question_bytes: 16 << 10,
                max_question_tokens: 1024,
            },
            max_new_tokens: 256,
            allow_client_policy: false,
            api_key: None,
            max_pending: 64,
            batching: Batching { max_batch: 8, window: Duration::from_millis(2) },
            request_timeout: Duration::from_secs(120),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 256,
            shutdown_grace: Duration::from_secs(10),
            max_image_memory: 1 << 30,
        }
    }
}

struct AppState {
    engine: Arc<Engine>,
    cfg: ServeConfig,
    pending: Arc<Semaphore>,
    /// The image memory, in KiB permits.
    images: Arc<Semaphore>,
    /// Turns true when the shutdown grace has run out: requests still in progress answer 503.
    aborting: tokio::sync::watch::Receiver<bool>,
}

impl BodyLimits for Arc<AppState> {
    fn max_body_bytes(&self) -> usize {
        self.cfg.max_body_bytes
    }
    fn body_timeout(&self) -> Duration {
        self.cfg.body_timeout
    }
}

impl AppState {
    /// Takes one of the `max_pending` places, once the body has been read (a client that stalls mid-body holds a
    /// connection, never a place); the next request gets 503 at once.
    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.pending.clone().try_acquire_owned().map_err(|_| {
            ApiError::busy(format!("the server is busy ({} requests pending); retry later", self.cfg.max_pending))
        })
    }

    /// Decodes a request's base64 image within the limits, after reserving its memory from the image budget
    /// (from its header, before any pixel is decoded; waits for other requests' images until `deadline`). The
    /// reservation is held until the request is answered.
    async fn image(
        self: &Arc<Self>,
        source: String,
        deadline: Instant,
    ) -> Result<(image::DynamicImage, tokio::sync::OwnedSemaphorePermit), ApiError> {
        let limits = self.cfg.limits;
        let (bytes, header) = blocking(move || {
            let bytes = base64_bytes(&source)?;
            let header =
                probe_image(&bytes, &limits.image).map_err(|e| ApiError::bad("invalid_image", e.to_string()))?;
            Ok((bytes, header))
        })
        .await?;
        let kib = header.memory().div_ceil(1024);
        let permits = u32::try_from(kib).map_err(|_| ApiError::internal())?;
        let wait = deadline.saturating_duration_since(Instant::now());
        let reserved = tokio::time::timeout(wait, self.images.clone().acquire_many_owned(permits)).await;
        let permit = match reserved {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(ApiError::internal()),
            Err(_) => return Err(ApiError::busy("the server's image memory stayed full; retry later".to_string())),
        };
        let s = self.clone();
        let image = blocking(move || image_from_bytes(&bytes, s.engine.pipeline(), &s.cfg.limits)).await?;
        Ok((image, permit))
    }

    fn client_policy_allowed(&self, what: &str) -> Result<(), ApiError> {
        if self.cfg.allow_client_policy {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "client_policy_disabled",
            format!("{what} is not accepted: this server applies its own policy (start it with --allow-client-policy)"),
        ))
    }

    fn policy(&self, patch: Option<&Value>) -> Result<Option<psa_core::SafetyPolicy>, ApiError> {
        let p = self.engine.pipeline();
        patch
            .map(|v| {
                p.policy.with_overrides(v, &p.taxonomy).map_err(|e| ApiError::bad("invalid_policy", e.to_string()))
            })
            .transpose()
    }
}

/// A loaded model behind the HTTP API.
pub struct Server {
    router: Router,
    cfg: ServeConfig,
    abort: tokio::sync::watch::Sender<bool>,
}

impl Server {
    /// Checks the settings, starts the model workers (the warm-up runs in the background) and builds the routes.
    pub fn new(pipeline: GuardedPipeline, cfg: ServeConfig) -> Result<Self, ServeConfigError> {
        cfg.validate()?;
        let engine = Engine::start(pipeline, cfg.batching);
        let pending = Arc::new(Semaphore::new(cfg.max_pending));
        let kib = usize::try_from(cfg.max_image_memory.div_ceil(1024)).unwrap_or(usize::MAX);
        let images = Arc::new(Semaphore::new(kib.min(Semaphore::MAX_PERMITS)));
        let (abort, aborting) = tokio::sync::watch::channel(false);
        let state = Arc::new(AppState { engine, cfg: cfg.clone(), pending, images, aborting });
        let api = Router::new()
            .route("/v1/classify", post(classify))
            .route("/v1/chat/completions", post(chat))
            .layer(middleware::from_fn_with_state(state.clone(), gate))
            // Bodies up to 4× the limit are read whole and refused with a JSON 413; larger ones are cut off by axum.
            .layer(DefaultBodyLimit::max(cfg.max_body_bytes.saturating_mul(4)));
        let router = Router::new().route("/health", get(health)).merge(api).with_state(state);
        Ok(Self { router, cfg, abort })
    }

    /// The routes, to mount in another axum application (without this server's connection limits).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves on `listener` until `shutdown` resolves, then lets requests in progress finish for at most
    /// `shutdown_grace`; those still running then answer 503 (`shutting_down`) before their connections close,
    /// and it returns. Says on stderr where it listens, with a warning first when the address is
    /// reachable from other machines and no key is set.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() && self.cfg.api_key.is_none() {
            eprintln!(
                "psa serve: warning: listening on {addr} without an API key; anyone who can reach it can use the \
                 model (use --api-key-file)"
            );
        }
        eprintln!("psa serve: listening on http://{addr} (ready once /health says so)");
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let connections = Arc::new(Semaphore::new(self.cfg.max_connections.max(1)));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(self.cfg.header_timeout);
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                p = connections.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
                () = &mut shutdown => break,
            };
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        eprintln!("psa serve: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let service = TowerToHyperService::new(self.router.clone());
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                let _ = connection.await;
                drop(permit);
            });
        }
        drop(listener);
        let closed = graceful.shutdown();
        tokio::pin!(closed);
        if tokio::time::timeout(self.cfg.shutdown_grace, &mut closed).await.is_err() {
            eprintln!("psa serve: requests still running after {:?}; answering them 503", self.cfg.shutdown_grace);
            let _ = self.abort.send(true);
            if tokio::time::timeout(ABORT_FLUSH, &mut closed).await.is_err() {
                eprintln!("psa serve: connections still open {ABORT_FLUSH:?} later; closing them");
            }
        }
        Ok(())
    }
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! { () = ctrl_c => {}, () = term => {} }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

/// How long the 503s of an aborted shutdown get to reach their clients.
const ABORT_FLUSH: Duration = Duration::from_secs(2);

/// The key of an `Authorization` header: the `Bearer` scheme in any case (RFC 9110 §11.1), then the token.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Authentication and readiness of the `/v1` routes, then the request time limit and the shutdown abort. The
/// pending-request bound is taken by the handlers after the body is read ([`AppState::admit`]).
async fn gate(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.cfg.api_key {
        let presented = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
        if !presented.is_some_and(|p| key.verify(p)) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "a valid `Authorization: Bearer` key is required",
            )
            .into_response();
        }
    }
    match state.engine.readiness() {
        Readiness::Ready => {}
        Readiness::WarmingUp => return ApiError::unavailable("the model is warming up; retry shortly").into_response(),
        Readiness::Failed(_) => return ApiError::unavailable("the model failed its warm-up").into_response(),
    }
    let mut aborting = state.aborting.clone();
    tokio::select! {
        r = tokio::time::timeout(state.cfg.request_timeout, next.run(request)) => match r {
            Ok(response) => response,
            Err(_) => ApiError::timeout().into_response(),
        },
        _ = aborting.wait_for(|a| *a) => {
            let mut response = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down; retry on another instance",
            )
            .into_response();
            response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            response
        }
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.engine.readiness() {
        Readiness::Ready => {
            let pending = state.cfg.max_pending - state.pending.available_permits();
            Json(json!({"status": "ready", "model": state.cfg.model_name, "pending": pending})).into_response()
        }
        Readiness::WarmingUp => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "warming_up"}))).into_response()
        }
        Readiness::Failed(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "failed", "error": reason}))).into_response()
        }
    }
}

/// A route's request body, checked as the route checks it up to the model: the JSON schema, the conversation
/// (chat), and strict base64 image decoding within `limits`. What the fuzz targets exercise.
pub fn check_body(chat: bool, body: &[u8], limits: &ImageLimits) -> Result<(), ApiError> {
    let invalid = |e: serde_json::Error| ApiError::bad("invalid_json", e.to_string());
    let image = if chat {
        let body: ChatBody = serde_json::from_slice(body).map_err(invalid)?;
        question_and_image(body.messages)?.1
    } else {
        serde_json::from_slice::<ClassifyBody>(body).map_err(invalid)?.image
    };
    decode_base64_image(&image, limits).map(|_| ())
}

/// Runs request preparation (image decoding, tokenizing) on the blocking pool, off the async runtime.
async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(job).await.map_err(|_| ApiError::internal())?
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
    let _place = state.admit()?;
    if body.policy.is_some() {
        state.client_policy_allowed("`policy`")?;
    }
    let deadline = Instant::now() + state.cfg.request_timeout;
    let question = body.question.unwrap_or_else(|| "Describe the image.".into());
    let s = state.clone();
    let (question, policy) = blocking(move || {
        check_question(&question, s.engine.pipeline(), &s.cfg.limits)?;
        Ok((question, s.policy(body.policy.as_ref())?))
    })
    .await?;
    let (image, _memory) = state.image(body.image, deadline).await?;
    let request = GuardRequest { id: body.id, image, question, policy };
    state.engine.classify(request, deadline).await.map(Json)
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

async fn chat(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<ChatBody>,
) -> Result<Json<ChatCompletion>, ApiError> {
    let _place = state.admit()?;
    if body.psa_policy.is_some() {
        state.client_policy_allowed("`psa_policy`")?;
    }
    if body.psa_guard == Some(false) {
        state.client_policy_allowed("`psa_guard: false`")?;
    }
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
    let deadline = Instant::now() + state.cfg.request_timeout;
    let model = body.model.clone().unwrap_or_else(|| state.cfg.model_name.clone());
    let s = state.clone();
    let (question, url, policy) = blocking(move || {
        let (question, url) = question_and_image(body.messages)?;
        check_question(&question, s.engine.pipeline(), &s.cfg.limits)?;
        Ok((question, url, s.policy(body.psa_policy.as_ref())?))
    })
    .await?;
    let (image, _memory) = state.image(url, deadline).await?;
    let p = state.engine.pipeline();
    let mut generation = p.generation_config(max_tokens);
    generation.temperature = body.temperature.unwrap_or(0.0);
    generation.top_p = body.top_p;
    generation.seed = body.seed.unwrap_or(generation.seed);
    let request = GuardRequest { id: None, image, question, policy };
    let guard = body.psa_guard.unwrap_or(true);
    let response = state.engine.chat(request, generation, guard, deadline).await?;
    Ok(Json(completion(response, model)))
}

fn completion(response: GuardedResponse, model: String) -> ChatCompletion {
    let finish = match response.finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::Refused => "content_filter",
        Finish::Cancelled => "cancelled",
    };
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    ChatCompletion {
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
    }
}
