//! `psa eval` and `psa calibrate`: measure a trained guard on a safety benchmark, and fit its temperatures.
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use psa_vlm::core::{Action, SafetyPolicy};
use psa_vlm::device::parse_device;
use psa_vlm::pipeline::GuardedPipeline;
use psa_vlm::pipeline::processor::{Template, TextProcessor};
use psa_vlm::train::eval::{
    EvalOptions, Format, Judge, JudgeStyle, LlmJudge, LocalLm, PhraseMatch, ReadOptions, RefusalPhrases, ScoreJudge,
    evaluate, fit_calibration, read_benchmark, write_report,
};
use psa_vlm::train::record::RunRecord;

use crate::infer::ModelArgs;

/// Which benchmark to read.
#[derive(Args, Debug)]
pub struct Data {
    /// Benchmark format: vlguard, mm-safetybench, figstep, harmbench, jailbreakv, jsonl, reference-jsonl.
    #[arg(long)]
    pub format: String,
    /// The benchmark file (MM-SafetyBench: its root folder with `processed_questions/` and `imgs/`).
    #[arg(long)]
    pub data: PathBuf,
    /// Folder image paths are relative to (default: the format's usual place beside the data).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Skip (and list) entries whose image file is missing.
    #[arg(long)]
    pub skip_missing_images: bool,
    /// Evaluate only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
}

impl Data {
    fn read(&self) -> Result<(Format, psa_vlm::train::eval::EvalSet)> {
        let format = Format::parse(&self.format)?;
        let opts = ReadOptions { image_root: self.image_root.clone(), skip_missing_images: self.skip_missing_images };
        let mut set = read_benchmark(format, &self.data, &opts)?;
        if let Some(n) = self.limit {
            set.items.truncate(n);
        }
        Ok((format, set))
    }
}

/// `psa eval` options.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: Data,
    /// Output folder for report.json, report.md and the plots.
    #[arg(long, default_value = "runs/eval")]
    pub out: PathBuf,
    /// Policies whose answers are generated and judged, comma-separated: `hint` (the paper's mechanism), `refuse`,
    /// `allow` (no guard, the baseline); empty for classifier metrics only.
    #[arg(long, default_value = "hint,refuse", value_delimiter = ',')]
    pub policies: Vec<String>,
    /// Refusal phrases, one per line, matched at the start of answers (default: the GCG/VLGuard openers).
    #[arg(long)]
    pub refusal_phrases: Option<PathBuf>,
    /// Match the refusal phrases anywhere in an answer instead of at its start (the older, looser rule).
    #[arg(long)]
    pub phrases_anywhere: bool,
    /// The LLM judges' model: a LLaMA-architecture GGUF file, or `self` for the evaluated model's own LLM (which
    /// then grades its own answers). Without it only the refusal phrases judge, and the report says so.
    #[arg(long)]
    pub judge_model: Option<String>,
    /// LLM judges run with --judge-model, comma-separated: `harmbench`, `llama-guard`, `refusal`.
    #[arg(long, default_value = "harmbench,llama-guard", value_delimiter = ',')]
    pub judges: Vec<String>,
    /// The LLM judges' chat template (default: the evaluated model's).
    #[arg(long)]
    pub judge_template: Option<String>,
    /// Also score every answer 1–10 with the paper's rubrics (needs --judge-model; items need a rubric, as the
    /// `reference-jsonl` and `jsonl` formats give).
    #[arg(long)]
    pub paper_scores: bool,
    /// Tokens per evaluated answer.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Requests per model pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Skip (and list) items whose image cannot be decoded.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// The named policies, each the pipeline's policy with its default action replaced.
fn policies(base: &SafetyPolicy, names: &[String]) -> Result<Vec<(String, SafetyPolicy)>> {
    names
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| {
            let action = match n.as_str() {
                "hint" => Action::Hint,
                "refuse" => Action::Refuse,
                "allow" => Action::Allow,
                other => bail!("unknown policy {other:?}: expected hint, refuse or allow"),
            };
            let mut p = SafetyPolicy { default_action: action, ..base.clone() };
            if action == Action::Allow {
                p.rules.clear();
            }
            Ok((n.clone(), p))
        })
        .collect()
}

/// The judge model named by `--judge-model`: a GGUF file, or `self`.
fn judge_lm(a: &EvalArgs, p: &GuardedPipeline, which: &str) -> Result<LocalLm> {
    let device = parse_device(&a.model.device)?;
    let template = match &a.judge_template {
        Some(name) => Template::by_name(name)?,
        None => p.template.clone(),
    };
    if which == "self" {
        let host = a.model.decode.host_weights(&a.model.device, a.model.dtype);
        let text = TextProcessor::new(p.text.tokenizer().clone(), "<image>")?;
        let lm = LocalLm::new(p.model.llava.language_model.clone(), &p.config.llava.text, text, template);
        let label = format!("{} (the evaluated model's own LLM, grading its own answers)", a.model.model_dir.display());
        return Ok(LocalLm { label, ..lm }.with_host_decoder(host)?);
    }
    let path = Path::new(which);
    if path.extension().is_none_or(|e| e != "gguf") {
        bail!("--judge-model {which}: expected a .gguf file or `self`");
    }
    // A GGUF judge is dequantised to f32, so the host engine takes it on a CPU device.
    let host = a.model.decode.host_weights(&a.model.device, psa_vlm::models::Precision::F32);
    Ok(LocalLm::from_gguf(path, template, &device)?.with_host_decoder(host)?)
}

/// Runs `psa eval`.
pub fn run(a: &EvalArgs) -> Result<()> {
    let p = a.model.load()?;
    let (format, set) = a.data.read()?;
    eprintln!(
        "psa eval: {} items from {} ({} skipped while reading)",
        set.items.len(),
        a.data.data.display(),
        set.skipped.len()
    );
    let mut phrases = match &a.refusal_phrases {
        Some(path) => RefusalPhrases::from_file(path)?,
        None => RefusalPhrases::default(),
    };
    if a.phrases_anywhere {
        phrases = phrases.matching(PhraseMatch::Anywhere);
    }
    let mut llm_judges = Vec::new();
    let mut scorer = None;
    match &a.judge_model {
        Some(which) => {
            let lm = std::sync::Arc::new(judge_lm(a, &p, which)?);
            for name in a.judges.iter().filter(|n| !n.is_empty()) {
                let style = JudgeStyle::parse(name)?;
                llm_judges.push(LlmJudge { lm: lm.clone(), style, prompt: style.prompt().to_string() });
            }
            if a.paper_scores {
                scorer = Some(ScoreJudge { lm });
            }
        }
        None if a.paper_scores => bail!("--paper-scores needs --judge-model"),
        None => {}
    }
    let mut judges: Vec<&dyn Judge> = vec![&phrases];
    judges.extend(llm_judges.iter().map(|j| j as &dyn Judge));
    let opts = EvalOptions {
        batch_size: a.batch_size,
        policies: policies(&p.policy, &a.policies)?,
        generation: p.generation_config(a.max_new_tokens),
        judges,
        scorer: scorer.as_ref(),
        skip_bad_images: a.skip_bad_images,
        progress: !a.quiet,
    };
    let report = evaluate(&p, format.name(), &set, &opts)?;
    let mut written = write_report(&report, &p.taxonomy, &a.out)?;
    written.push(eval_record(a, &report)?.write(&a.out)?);
    let summary = serde_json::json!({
        "items": report.items,
        "harmful": report.harmful,
        "skipped": report.skipped.len(),
        "risk_auroc": report.classifier.risk_auroc,
        "recall": report.classifier.recall,
        "false_positive_rate": report.classifier.false_positive_rate,
        "risk_ece": report.classifier.risk_ece,
        "responses": report.responses.iter().map(|r| serde_json::json!({
            "policy": r.policy, "asr": r.asr, "over_refusal": r.over_refusal,
            "asr_by_judge": r.by_judge.iter().map(|j| j.asr).collect::<Vec<_>>(),
            "mean_score": r.mean_score,
        })).collect::<Vec<_>>(),
        "judges": report.judges.len(),
        "written": written,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

/// The evaluation's `run.json`: the command's settings, the judges, and digests of the benchmark file, the model
/// directory, the phrase list and the judge model.
fn eval_record(a: &EvalArgs, report: &psa_vlm::train::eval::EvalReport) -> Result<RunRecord> {
    let settings = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>(),
        "format": a.data.format, "data": a.data.data, "image_root": a.data.image_root, "limit": a.data.limit,
        "model_dir": a.model.model_dir, "device": a.model.device, "policies": a.policies,
        "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size, "decoding": "greedy",
        "judges": report.judges, "scorer": report.scorer, "judge_model": a.judge_model,
    });
    // Greedy decoding in file order: evaluation draws nothing at random, so the record has no seed or sampler.
    let mut record =
        RunRecord::new("eval", None, settings).input("data", &a.data.data)?.input("model", &a.model.model_dir)?;
    if let Some(path) = &a.refusal_phrases {
        record = record.input("refusal phrases", path)?;
    }
    if let Some(path) = a.judge_model.as_deref().filter(|m| *m != "self") {
        record = record.input("judge model", Path::new(path))?;
    }
    Ok(record)
}

/// A model directory and a labelled validation split (`psa calibrate`, `psa canary`).
#[derive(Args, Debug)]
pub struct ValidationArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Labelled validation split (the project's JSONL; never the test data).
    #[arg(long)]
    pub data: PathBuf,
    /// Folder image paths are relative to (default: the data file's folder).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Requests per model pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
}

impl ValidationArgs {
    /// The loaded pipeline and the split's items.
    fn load(&self) -> Result<(GuardedPipeline, Vec<psa_vlm::train::eval::EvalItem>)> {
        let p = self.model.load()?;
        let opts = ReadOptions { image_root: self.image_root.clone(), skip_missing_images: false };
        Ok((p, read_benchmark(Format::Jsonl, &self.data, &opts)?.items))
    }
}

/// `psa canary` options.
#[derive(Args, Debug)]
pub struct CanaryArgs {
    #[command(flatten)]
    pub split: ValidationArgs,
    /// Harmful items and benign items to keep (the ones judged most surely).
    #[arg(long, default_value_t = 2)]
    pub per_class: usize,
}

/// Runs `psa canary`: chooses held-out items the guard judges rightly and most surely, and stores them with their
/// verdicts as the model directory's canary (rewriting its manifest).
pub fn canary(a: &CanaryArgs) -> Result<()> {
    let (p, items) = a.split.load()?;
    let inputs = psa_vlm::train::eval::choose_canary(&p, &items, a.per_class, a.split.batch_size)?;
    if !inputs.iter().any(|i| i.risky) || inputs.iter().all(|i| i.risky) {
        bail!("{}: the guard judges no harmful or no benign item rightly; a canary needs both", a.split.data.display());
    }
    let dir = &a.split.model.model_dir;
    let written = psa_vlm::pipeline::add_canary(dir, &inputs, p.template.clone(), &p.model.llava.device())?;
    println!("{}", serde_json::to_string_pretty(&written)?);
    Ok(())
}

/// Runs `psa calibrate`: fits the temperatures and writes `calibration.json` into the model directory.
pub fn calibrate(a: &ValidationArgs) -> Result<()> {
    let (p, items) = a.load()?;
    let fit = fit_calibration(&p, &items, a.batch_size)?;
    let path: &Path = &a.model.model_dir.join("calibration.json");
    fit.calibration.save(path)?;
    // The directory changed on purpose: its canary's verdicts are taken anew under the new temperatures (the
    // argmax, all a canary's level and type check reads, does not move) and its manifest is written anew.
    let dir = &a.model.model_dir;
    match psa_vlm::pipeline::Canary::load(dir)? {
        Some(canary) => {
            psa_vlm::pipeline::add_canary(dir, &canary.inputs(), p.template.clone(), &p.model.llava.device())?;
        }
        None => {
            psa_vlm::import::manifest::write_manifest(dir)?;
        }
    }
    println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "fit": fit, "written": path }))?);
    Ok(())
}
