//! `psa batch`: guarded answers for a JSONL file of requests, written as JSONL, resumable.
//!
//! Input lines: `{"id": "...", "image": "path", "question": "...", "policy"?: {merge patch}}`, image paths
//! relative to an image root. Each output line is a [`GuardedResponse`] (with the request's `id`). Ids already in
//! the output are skipped, so an interrupted run continues where it stopped; a torn last line from a crash is cut
//! and a last line without its newline gets one. The output is locked for the run, so two runs never interleave.
//! A request the model fails on is retried alone and then named by `file:line` and id (an error, or a listed skip).
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use psa_models::GenerationConfig;
use psa_pipeline::PipelineError;
use psa_pipeline::{GuardRequest, GuardedPipeline, GuardedResponse};
use serde::Deserialize;
use serde_json::Value;

/// How to run a batch.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Requests per model pass.
    pub batch_size: usize,
    /// Apply the policy (else answer every prompt as asked, still reporting the assessment).
    pub guard: bool,
    /// Skip and report requests whose image is missing or corrupt, or that the model refuses (a prompt longer than
    /// its context, say), instead of stopping.
    pub skip_bad: bool,
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
    /// `file:line (id): reason` of each skipped request.
    pub skipped: Vec<String>,
    /// Whether the output's last line was repaired (a torn line cut, or a missing newline added).
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
    /// The output file is being written by another run.
    #[error("{}: another run holds this output file; wait for it or choose another output", .path.display())]
    Locked {
        /// The output file.
        path: PathBuf,
    },
    /// The model directory's canary failed: the model is not run on any request.
    #[error("{0}")]
    Canary(String),
    /// Input and output are the same file.
    #[error("{}: the input and the output are the same file", .path.display())]
    SameFile {
        /// The file.
        path: PathBuf,
    },
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

/// Ids already answered in `output`; cuts a torn final line (no newline, not JSON) and ends a whole final line
/// that lost its newline, so the next answer starts on a line of its own.
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
                    if i + 1 == lines.len() && !raw.ends_with('\n') {
                        let mut f = std::fs::OpenOptions::new().append(true).open(output).map_err(io(output))?;
                        f.write_all(b"\n").map_err(io(output))?;
                        repaired = true;
                    }
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

/// Whether two paths name one file (the output may not exist yet: then its directory and name are compared).
fn same_file(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| {
        p.canonicalize().ok().or_else(|| {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            Some(dir.canonicalize().ok()?.join(p.file_name()?))
        })
    };
    canonical(a).is_some_and(|x| Some(x) == canonical(b))
}

/// The file an input line's image names, which must lie inside `root`: a relative path without `..`, that
/// resolves (symbolic links followed) to a file under the root.
fn image_path(root: &Path, image: &Path) -> Result<PathBuf, String> {
    use std::path::Component;
    if !image.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(format!("image path {} must be relative to the image root, without `..`", image.display()));
    }
    let path = root.join(image);
    let outside = || format!("image path {} leaves the image root {}", image.display(), root.display());
    let (real_root, real) = (root.canonicalize(), path.canonicalize());
    match (real_root, real) {
        (Ok(r), Ok(p)) if p.starts_with(&r) => Ok(p),
        (Ok(_), Ok(_)) => Err(outside()),
        // A missing file is reported by the image loader, naming the path.
        _ => Ok(path),
    }
}

/// One input line: its number, the request and its policy.
type InputLine = (usize, Line, Option<psa_core::SafetyPolicy>);

/// Reads and checks every input line (a UTF-8 byte-order mark is accepted).
fn read_input(pipeline: &GuardedPipeline, input: &Path) -> Result<Vec<InputLine>, BatchError> {
    let text = std::fs::read_to_string(input).map_err(io(input))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
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
    Ok(lines)
}

/// Answers a chunk (`numbers[i]` is the input line of `requests[i]`); when the pass fails, answers each request
/// alone so one bad request fails only itself.
fn answer_chunk(
    pipeline: &GuardedPipeline,
    numbers: &[usize],
    requests: &[GuardRequest],
    opts: &BatchOptions,
) -> Vec<(usize, Result<GuardedResponse, PipelineError>)> {
    if requests.is_empty() {
        return Vec::new();
    }
    match pipeline.respond(requests, &opts.generation, opts.guard) {
        Ok(answers) => numbers.iter().copied().zip(answers.into_iter().map(Ok)).collect(),
        Err(e) if requests.len() == 1 => vec![(numbers[0], Err(e))],
        Err(_) => numbers
            .iter()
            .zip(requests)
            .map(|(n, r)| {
                let one = pipeline.respond(std::slice::from_ref(r), &opts.generation, opts.guard);
                let none = || PipelineError::Model(psa_models::ModelError::Input("no answer".into()));
                (*n, one.and_then(|mut a| a.pop().ok_or_else(none)))
            })
            .collect(),
    }
}

/// Answers every request of `input` not yet in `output`, appending one JSON line per answer.
pub fn run_batch(
    pipeline: &GuardedPipeline,
    input: &Path,
    output: &Path,
    opts: &BatchOptions,
) -> Result<BatchReport, BatchError> {
    if same_file(input, output) {
        return Err(BatchError::SameFile { path: output.into() });
    }
    pipeline.check_canary().map_err(|e| BatchError::Canary(e.to_string()))?;
    let mut lines = read_input(pipeline, input)?;
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(output).map_err(io(output))?;
    match out.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(BatchError::Locked { path: output.into() }),
        Err(std::fs::TryLockError::Error(e)) => return Err(io(output)(e)),
    }
    let (done, repaired_output) = done_ids(output)?;
    let mut report = BatchReport { total: lines.len(), repaired_output, ..Default::default() };
    lines.retain(|(_, l, _)| !done.contains(&l.id));
    report.already_done = report.total - lines.len();
    let bar = if opts.progress { ProgressBar::new(lines.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} requests {elapsed_precise} ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let ids: std::collections::HashMap<usize, &str> = lines.iter().map(|(n, l, _)| (*n, l.id.as_str())).collect();
    let skip = |n: usize, reason: String, report: &mut BatchReport| {
        let what = format!("{}:{n} (id {:?}): {reason}", input.display(), ids[&n]);
        if opts.skip_bad {
            report.skipped.push(what);
            Ok(())
        } else {
            Err(BatchError::Line { path: input.into(), line: n, reason: format!("id {:?}: {reason}", ids[&n]) })
        }
    };
    for chunk in lines.chunks(opts.batch_size.max(1)) {
        let (mut numbers, mut requests) = (Vec::with_capacity(chunk.len()), Vec::with_capacity(chunk.len()));
        for (n, line, policy) in chunk {
            let image = pipeline
                .check_question(&line.question)
                .map_err(|e| e.to_string())
                .and_then(|()| image_path(&opts.image_root, &line.image))
                .and_then(|path| psa_pipeline::processor::load_image(&path).map_err(|e| e.to_string()));
            match image {
                Ok(image) => {
                    numbers.push(*n);
                    let (id, question) = (Some(line.id.clone()), line.question.clone());
                    requests.push(GuardRequest { id, image, question, policy: policy.clone() });
                }
                Err(e) => skip(*n, e, &mut report)?,
            }
        }
        let mut buf = String::new();
        let mut failure = None;
        for (n, answer) in answer_chunk(pipeline, &numbers, &requests, opts) {
            let result = match answer {
                Ok(a) => serde_json::to_string(&a)
                    .map(|json| {
                        buf.push_str(&json);
                        buf.push('\n');
                        report.answered += 1;
                    })
                    .map_err(|e| BatchError::Line { path: output.into(), line: 0, reason: e.to_string() }),
                Err(e) => skip(n, e.to_string(), &mut report),
            };
            if let Err(e) = result {
                failure = Some(e);
                break;
            }
        }
        // The answers before a failure are kept: a rerun resumes after them.
        out.write_all(buf.as_bytes()).and_then(|_| out.flush()).map_err(io(output))?;
        if let Some(e) = failure {
            return Err(e);
        }
        bar.inc(chunk.len() as u64);
        bar.set_message(format!("{} skipped", report.skipped.len()));
    }
    bar.finish();
    Ok(report)
}
