//! `psa eval` and `psa calibrate`: measure a trained guard on a safety benchmark, and fit its temperatures.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use psa_vlm::core::{Action, SafetyPolicy};
use psa_vlm::device::parse_device;
use psa_vlm::import::LoadOptions;
use psa_vlm::import::gguf::{GgufFile, gguf_tokenizer, load_llama_gguf};
use psa_vlm::models::GenerationConfig;
use psa_vlm::pipeline::GuardedPipeline;
use psa_vlm::pipeline::processor::{Template, TextProcessor};
use psa_vlm::train::eval::{
    EvalOptions, Format, JUDGE_PROMPT, Judge, LlmJudge, ReadOptions, RefusalPhrases, evaluate, fit_calibration,
    read_benchmark, write_report,
};

use crate::infer::ModelArgs;

/// Which benchmark to read.
#[derive(Args, Debug)]
pub struct Data {
    /// Benchmark format: vlguard, mm-safetybench, figstep, harmbench, jailbreakv, jsonl.
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
    /// Judge of the answers: `phrases` (refusal-phrase list) or `llm`.
    #[arg(long, default_value = "phrases")]
    pub judge: String,
    /// Refusal phrases, one per line (default: the GCG/VLGuard list).
    #[arg(long)]
    pub refusal_phrases: Option<PathBuf>,
    /// The LLM judge's model: a LLaMA-architecture GGUF file (default: the evaluated model's own LLM).
    #[arg(long)]
    pub judge_model: Option<PathBuf>,
    /// The LLM judge's chat template (default: the evaluated model's).
    #[arg(long)]
    pub judge_template: Option<String>,
    /// The LLM judge's prompt file, with `{question}` and `{answer}`.
    #[arg(long)]
    pub judge_prompt: Option<PathBuf>,
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

fn llm_judge(a: &EvalArgs, p: &GuardedPipeline) -> Result<LlmJudge> {
    let device = parse_device(&a.model.device)?;
    let prompt = match &a.judge_prompt {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        None => JUDGE_PROMPT.to_string(),
    };
    let template = match &a.judge_template {
        Some(name) => Template::by_name(name)?,
        None => p.template.clone(),
    };
    let (lm, text, config, label) = match &a.judge_model {
        None => {
            let lm = p.model.llava.language_model.clone();
            let text = TextProcessor::new(p.text.tokenizer().clone(), "<image>")?;
            (
                lm,
                text,
                p.config.llava.text.clone(),
                format!("{} (the evaluated model's LLM)", a.model.model_dir.display()),
            )
        }
        Some(path) if path.extension().is_some_and(|e| e == "gguf") => {
            let (lm, config, _) = load_llama_gguf(path, &device, &LoadOptions::default())?;
            let (tokenizer, _) = gguf_tokenizer(&GgufFile::open(path)?)?;
            let text = psa_vlm::pipeline::assemble::image_text_processor(tokenizer, config.vocab_size as u32)?;
            (lm, text, config, path.display().to_string())
        }
        Some(other) => bail!("--judge-model {}: expected a .gguf file", other.display()),
    };
    let generation = GenerationConfig {
        max_new_tokens: 4,
        eos_token_ids: config.eos_token_id.as_ref().map(|e| e.to_vec()).unwrap_or_default(),
        pad_token_id: config
            .pad_token_id
            .or(config.eos_token_id.as_ref().and_then(|e| e.to_vec().first().copied()))
            .unwrap_or(0),
        ..Default::default()
    };
    Ok(LlmJudge {
        lm,
        text,
        template,
        prompt,
        generation,
        max_positions: config.max_position_embeddings,
        label,
        device,
    })
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
    let judge: Box<dyn Judge> = match a.judge.as_str() {
        "phrases" => Box::new(match &a.refusal_phrases {
            Some(path) => RefusalPhrases::from_file(path)?,
            None => RefusalPhrases::default(),
        }),
        "llm" => Box::new(llm_judge(a, &p)?),
        other => bail!("unknown judge {other:?}: expected phrases or llm"),
    };
    let opts = EvalOptions {
        batch_size: a.batch_size,
        policies: policies(&p.policy, &a.policies)?,
        generation: p.generation_config(a.max_new_tokens),
        judge: Some(judge.as_ref()),
        skip_bad_images: a.skip_bad_images,
        progress: !a.quiet,
    };
    let report = evaluate(&p, format.name(), &set, &opts)?;
    let written = write_report(&report, &p.taxonomy, &a.out)?;
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
        })).collect::<Vec<_>>(),
        "written": written,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

/// `psa calibrate` options.
#[derive(Args, Debug)]
pub struct CalibrateArgs {
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

/// Runs `psa calibrate`: fits the temperatures and writes `calibration.json` into the model directory.
pub fn calibrate(a: &CalibrateArgs) -> Result<()> {
    let p = a.model.load()?;
    let opts = ReadOptions { image_root: a.image_root.clone(), skip_missing_images: false };
    let set = read_benchmark(Format::Jsonl, &a.data, &opts)?;
    let fit = fit_calibration(&p, &set.items, a.batch_size)?;
    let path: &Path = &a.model.model_dir.join("calibration.json");
    fit.calibration.save(path)?;
    println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "fit": fit, "written": path }))?);
    Ok(())
}
