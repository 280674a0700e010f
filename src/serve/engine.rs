//! The model side of the server: two worker threads share one loaded pipeline, one for classify requests and one
//! for chat requests, so a classification never waits behind a long generation. Each worker takes what has queued
//! (up to a batch limit, waiting a short window for more) and runs it as one model pass. A batch that fails is
//! retried one request at a time, so one bad request never fails the others; a panic becomes a plain 500.
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::{DynamicImage, RgbImage};
use psa_models::{GenerationConfig, ModelError};
use psa_pipeline::{GuardRequest, GuardedPipeline, GuardedResponse, Verdict};
use psa_pipeline::{PipelineError, TextError};
use tokio::sync::oneshot;

use super::api::{ApiError, question_error};

/// Where the model stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// The warm-up inference is running.
    WarmingUp,
    /// The warm-up succeeded: requests are served.
    Ready,
    /// The warm-up failed (the reason); every request gets 503.
    Failed(String),
}

/// How the workers batch.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most requests in one model pass.
    pub max_batch: usize,
    /// How long a worker waits for more requests after the first.
    pub window: Duration,
}

struct Job<W, T> {
    work: W,
    deadline: Instant,
    reply: oneshot::Sender<Result<T, ApiError>>,
}

struct ChatWork {
    request: GuardRequest,
    generation: GenerationConfig,
    guard: bool,
}

type ClassifyJob = Job<GuardRequest, Verdict>;
type ChatJob = Job<ChatWork, GuardedResponse>;

/// The loaded pipeline and its two request lanes.
pub struct Engine {
    pipeline: Arc<GuardedPipeline>,
    classify: Sender<ClassifyJob>,
    chat: Sender<ChatJob>,
    state: Arc<(AtomicU8, Mutex<Option<String>>)>,
}

const WARMING: u8 = 0;
const READY: u8 = 1;
const FAILED: u8 = 2;

impl Engine {
    /// Starts the workers; the classify worker first runs a warm-up (the model directory's canary, then one
    /// classification, which must give a valid verdict, and one generated token on a grey image) and only then
    /// reports ready.
    pub fn start(pipeline: GuardedPipeline, batching: Batching) -> Arc<Self> {
        let pipeline = Arc::new(pipeline);
        let (classify, classify_rx) = channel::<ClassifyJob>();
        let (chat, chat_rx) = channel::<ChatJob>();
        let state = Arc::new((AtomicU8::new(WARMING), Mutex::new(None)));
        let (p, s) = (pipeline.clone(), state.clone());
        std::thread::spawn(move || {
            match catch_unwind(AssertUnwindSafe(|| warm_up(&p))) {
                Ok(Ok(())) => s.0.store(READY, Ordering::SeqCst),
                outcome => {
                    let reason = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => "the model panicked on a test input".to_string(),
                    };
                    eprintln!("psa serve: warm-up failed: {reason}");
                    *s.1.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                    s.0.store(FAILED, Ordering::SeqCst);
                    return;
                }
            }
            serve_lane(&classify_rx, batching, |jobs| run_classify(&p, jobs));
        });
        let p = pipeline.clone();
        std::thread::spawn(move || serve_lane(&chat_rx, batching, |jobs| run_chat(&p, jobs)));
        Arc::new(Self { pipeline, classify, chat, state })
    }

    /// The pipeline (tokenizer, processors and policy are read by the request handlers).
    pub fn pipeline(&self) -> &GuardedPipeline {
        &self.pipeline
    }

    /// Where the model stands.
    pub fn readiness(&self) -> Readiness {
        match self.state.0.load(Ordering::SeqCst) {
            WARMING => Readiness::WarmingUp,
            READY => Readiness::Ready,
            _ => Readiness::Failed(self.state.1.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default()),
        }
    }

    /// Classifies one request; waits at most until `deadline`.
    pub async fn classify(&self, request: GuardRequest, deadline: Instant) -> Result<Verdict, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.classify.send(Job { work: request, deadline, reply }).map_err(|_| ApiError::unavailable("stopped"))?;
        wait(rx, deadline).await
    }

    /// Answers one chat request; waits at most until `deadline`.
    pub async fn chat(
        &self,
        request: GuardRequest,
        generation: GenerationConfig,
        guard: bool,
        deadline: Instant,
    ) -> Result<GuardedResponse, ApiError> {
        let (reply, rx) = oneshot::channel();
        let work = ChatWork { request, generation, guard };
        self.chat.send(Job { work, deadline, reply }).map_err(|_| ApiError::unavailable("stopped"))?;
        wait(rx, deadline).await
    }
}

async fn wait<T>(rx: oneshot::Receiver<Result<T, ApiError>>, deadline: Instant) -> Result<T, ApiError> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, rx).await {
        Ok(Ok(result)) => result,
        // The worker drops a job whose deadline passed before it ran.
        Ok(Err(_)) if Instant::now() >= deadline => Err(ApiError::timeout()),
        Ok(Err(_)) => Err(ApiError::internal()),
        Err(_) => Err(ApiError::timeout()),
    }
}

fn warm_up(p: &GuardedPipeline) -> Result<(), PipelineError> {
    p.check_canary()?;
    let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128])));
    let request = GuardRequest { id: None, image, question: "Describe the image.".into(), policy: None };
    let verdict = p.classify(std::slice::from_ref(&request))?.remove(0);
    // A model whose verdicts are all invalid (a zeroed head, a flattening temperature) would refuse every request:
    // it is not ready, and /health says why.
    if let Some(fault) = verdict.assessment.fault(&p.taxonomy) {
        return Err(PipelineError::Canary(format!("the warm-up image gets no valid verdict ({fault})")));
    }
    p.respond(&[request], &p.generation_config(1), false)?;
    Ok(())
}

/// Serves a lane until every sender is gone.
fn serve_lane<W, T>(rx: &Receiver<Job<W, T>>, batching: Batching, mut run: impl FnMut(Vec<Job<W, T>>)) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let until = Instant::now() + batching.window;
        while batch.len() < batching.max_batch.max(1) {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(job) => batch.push(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        // Jobs whose client left or whose deadline passed are not computed.
        let now = Instant::now();
        batch.retain(|j| !gone(&j.reply, j.deadline, now));
        if !batch.is_empty() {
            run(batch);
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// Whether a request is no longer worth computing at `now`: its client left or its deadline passed.
fn gone<T>(reply: &Reply<T>, deadline: Instant, now: Instant) -> bool {
    reply.is_closed() || now >= deadline
}

/// The model call of a lane: the works of a batch, and whether work `i` may stop (its client left or its deadline
/// passed).
type Run<'a, W, T> = dyn Fn(&[W], &dyn Fn(usize) -> bool) -> Result<Vec<T>, PipelineError> + 'a;

/// Runs `f` over the batch; on failure (error or panic) of a batch of several, runs each request alone.
fn run_batch<W, T>(works: &[W], replies: Vec<Reply<T>>, deadlines: &[Instant], f: &Run<'_, W, T>) {
    let is_gone = |i: usize| gone(&replies[i], deadlines[i], Instant::now());
    let outcome = catch_unwind(AssertUnwindSafe(|| f(works, &is_gone)));
    match outcome {
        Ok(Ok(outs)) if outs.len() == replies.len() => {
            for (reply, out) in replies.into_iter().zip(outs) {
                let _ = reply.send(Ok(out));
            }
        }
        _ if replies.len() > 1 => {
            for (i, reply) in replies.into_iter().enumerate() {
                if gone(&reply, deadlines[i], Instant::now()) {
                    continue;
                }
                run_batch(&works[i..=i], vec![reply], &deadlines[i..=i], f);
            }
        }
        Ok(Err(e)) => send_all(replies, model_error(e)),
        _ => {
            eprintln!("psa serve: the model failed on a request (panic)");
            send_all(replies, ApiError::internal());
        }
    }
}

fn send_all<T>(replies: Vec<Reply<T>>, e: ApiError) {
    for reply in replies {
        let _ = reply.send(Err(e.clone()));
    }
}

fn model_error(e: PipelineError) -> ApiError {
    match e {
        PipelineError::Model(m @ ModelError::TooLong { .. }) => ApiError::bad("context_length_exceeded", m.to_string()),
        PipelineError::Text(t @ (TextError::UserText(_) | TextError::QuestionTooLong(_))) => question_error(&t),
        other => {
            eprintln!("psa serve: model error: {other}");
            ApiError::internal()
        }
    }
}

fn run_classify(p: &GuardedPipeline, jobs: Vec<ClassifyJob>) {
    let deadlines: Vec<Instant> = jobs.iter().map(|j| j.deadline).collect();
    let (works, replies): (Vec<GuardRequest>, Vec<_>) = jobs.into_iter().map(|j| (j.work, j.reply)).unzip();
    run_batch(&works, replies, &deadlines, &|requests: &[GuardRequest], _| p.classify(requests));
}

/// One model pass's worth of chat requests: they share sampling settings and the guard flag.
struct ChatGroup {
    generation: GenerationConfig,
    guard: bool,
    requests: Vec<GuardRequest>,
    replies: Vec<Reply<GuardedResponse>>,
    deadlines: Vec<Instant>,
}

fn run_chat(p: &GuardedPipeline, jobs: Vec<ChatJob>) {
    let mut groups: Vec<ChatGroup> = Vec::new();
    for Job { work, reply, deadline } in jobs {
        let ChatWork { request, generation, guard } = work;
        match groups.iter_mut().find(|g| g.generation == generation && g.guard == guard) {
            Some(g) => {
                g.requests.push(request);
                g.replies.push(reply);
                g.deadlines.push(deadline);
            }
            None => groups.push(ChatGroup {
                generation,
                guard,
                requests: vec![request],
                replies: vec![reply],
                deadlines: vec![deadline],
            }),
        }
    }
    for g in groups {
        // Generation stops for a request whose client left or whose deadline passed: its reply is not read.
        let run = |requests: &[GuardRequest], gone: &dyn Fn(usize) -> bool| {
            p.respond_until(requests, &g.generation, g.guard, gone)
        };
        run_batch(&g.requests, g.replies, &g.deadlines, &run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_pass_sees_a_request_gone_once_its_client_left_or_its_deadline_passed() {
        let far = Instant::now() + Duration::from_secs(60);
        let seen = Mutex::new(Vec::new());
        let record = |works: &[u32], gone: &dyn Fn(usize) -> bool| {
            seen.lock().unwrap().push((0..works.len()).map(gone).collect::<Vec<_>>());
            Ok(works.to_vec())
        };
        // The first client has left (its receiver dropped); the second waits.
        let (left, rx_left) = oneshot::channel::<Result<u32, ApiError>>();
        let (waiting, mut rx_waiting) = oneshot::channel();
        drop(rx_left);
        run_batch(&[1, 2], vec![left, waiting], &[far, far], &record);
        assert_eq!(seen.lock().unwrap().pop(), Some(vec![true, false]));
        assert_eq!(rx_waiting.try_recv().map(|r| r.ok()), Ok(Some(2)));
        // A deadline that has passed makes its request gone too.
        let (late, _rx_late) = oneshot::channel();
        run_batch(&[3], vec![late], &[Instant::now()], &record);
        assert_eq!(seen.lock().unwrap().pop(), Some(vec![true]));
    }
}
