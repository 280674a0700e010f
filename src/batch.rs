//! `psa batch`: guarded answers for a JSONL file of requests, written as JSONL, resumable.
//!
//! Input lines: `{"id": "...", "image": "path", "question": "...", "policy"?: {merge patch}}`, image paths
//! relative to an image root. Each output line is a [`GuardedResponse`] (with the request's `id`). Ids already in
//! the output are skipped, so an interrupted run continues where it stopped; a torn last line from a crash is cut.
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use psa_models::pipeline::PipelineError;
use psa_models::{GenerationConfig, GuardRequest, GuardedPipeline, GuardedResponse};
use serde::Deserialize;
use serde_json::Value;

/// How to run a batch.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Requests per model pass.
    pub batch_size: usize,
    /// Apply the policy (else answer every prompt as asked, still reporting the assessment).
    pub guard: bool,
    /// Skip and report requests whose image is missing or undecodable instead of stopping.
    pub skip_bad_images: bool,
    /// Directory image paths are relative to.
    pub image_root: PathBuf,
    /// Sampling and length.
    pub generation: GenerationConfig,
    /// Show a progress bar.
    pub progress: bool,
}

/// What a batch run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BatchReport {
    /// Requests in the input.
    pub total: usize,
    /// Requests already answered in the output before this run.
    pub already_done: usize,
    /// Requests answered by this run.
    pub answered: usize,
    /// `file:line: reason` of each skipped request.
    pub skipped: Vec<String>,
    /// Whether a torn last output line was removed.
    pub repaired_output: bool,
}

/// Why a batch stopped.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Reading or writing a file.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A bad input or output line.
    #[error("{}:{line}: {reason}", .path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The model failed.
    #[error(transparent)]
    Model(#[from] PipelineError),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    image: PathBuf,
    question: String,
    #[serde(default)]
    policy: Option<Value>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BatchError + '_ {
    move |source| BatchError::Io { path: path.into(), source }
}

/// Ids already answered in `output`; cuts a torn final line (no newline, not JSON).
fn done_ids(output: &Path) -> Result<(HashSet<String>, bool), BatchError> {
    let text = match std::fs::read_to_string(output) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((HashSet::new(), false)),
        Err(e) => return Err(io(output)(e)),
    };
    let mut ids = HashSet::new();
    let mut repaired = false;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, raw) in lines.iter().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(raw) {
            Ok(v) => match v.get("id").and_then(Value::as_str) {
                Some(id) => {
                    ids.insert(id.to_string());
                }
                None => {
                    return Err(BatchError::Line { path: output.into(), line: i + 1, reason: "no \"id\"".into() });
                }
            },
            Err(_) if i + 1 == lines.len() && !raw.ends_with('\n') => {
                let keep = text.len() - raw.len();
                let f = std::fs::OpenOptions::new().write(true).open(output).map_err(io(output))?;
                f.set_len(keep as u64).map_err(io(output))?;
                repaired = true;
            }
            Err(e) => return Err(BatchError::Line { path: output.into(), line: i + 1, reason: e.to_string() }),
        }
    }
    Ok((ids, repaired))
}

/// Answers every request of `input` not yet in `output`, appending one JSON line per answer.
pub fn run_batch(
    pipeline: &GuardedPipeline,
    input: &Path,
    output: &Path,
    opts: &BatchOptions,
) -> Result<BatchReport, BatchError> {
    let text = std::fs::read_to_string(input).map_err(io(input))?;
    let mut lines = Vec::new();
    let mut seen = HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| BatchError::Line { path: input.into(), line: i + 1, reason };
        let line: Line = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        if !seen.insert(line.id.clone()) {
            return Err(bad(format!("duplicate id {:?}", line.id)));
        }
        let policy = match &line.policy {
            Some(patch) => {
                Some(pipeline.policy.with_overrides(patch, &pipeline.taxonomy).map_err(|e| bad(e.to_string()))?)
            }
            None => None,
        };
        lines.push((i + 1, line, policy));
    }
    let (done, repaired_output) = done_ids(output)?;
    let mut report = BatchReport { total: lines.len(), repaired_output, ..Default::default() };
    lines.retain(|(_, l, _)| !done.contains(&l.id));
    report.already_done = report.total - lines.len();
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(output).map_err(io(output))?;
    let bar = if opts.progress { ProgressBar::new(lines.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} requests {elapsed_precise} ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for chunk in lines.chunks(opts.batch_size.max(1)) {
        let mut requests = Vec::with_capacity(chunk.len());
        for (n, line, policy) in chunk {
            let path = opts.image_root.join(&line.image);
            match psa_models::processor::load_image(&path) {
                Ok(image) => requests.push(GuardRequest {
                    id: Some(line.id.clone()),
                    image,
                    question: line.question.clone(),
                    policy: policy.clone(),
                }),
                Err(e) if opts.skip_bad_images => report.skipped.push(format!("{}:{n}: {e}", input.display())),
                Err(e) => return Err(BatchError::Line { path: input.into(), line: *n, reason: e.to_string() }),
            }
        }
        if !requests.is_empty() {
            let answers: Vec<GuardedResponse> = pipeline.respond(&requests, &opts.generation, opts.guard)?;
            let mut buf = String::new();
            for a in &answers {
                let json = serde_json::to_string(a).map_err(|e| BatchError::Line {
                    path: output.into(),
                    line: 0,
                    reason: e.to_string(),
                })?;
                buf.push_str(&json);
                buf.push('\n');
            }
            out.write_all(buf.as_bytes()).and_then(|_| out.flush()).map_err(io(output))?;
            report.answered += answers.len();
        }
        bar.inc(chunk.len() as u64);
        bar.set_message(format!("{} skipped", report.skipped.len()));
    }
    bar.finish();
    Ok(report)
}
