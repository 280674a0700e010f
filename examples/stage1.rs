//! PSA-VLM stage I: train the safety modules (tokens, C-Abstractor, head) on a frozen LLaVA.
//!
//! ```text
//! cargo run --release --example stage1 -- --model-dir fixtures/tiny_psa/model \
//!     --tokenizer fixtures/tiny_tokenizer/tokenizer.json --data train.jsonl --image-root images/ --out runs/s1
//! ```
//! Writes `metrics.jsonl` (one line per optimizer step) and the trained safety modules in the reference naming
//! (`safety_modules.safetensors` + `config.json`).
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use psa_vlm::device::parse_device;
use psa_vlm::models::import::{LoadOptions, load_psa, save_safety_modules};
use psa_vlm::models::processor::{ImageProcessorConfig, Template, TextProcessor};
use psa_vlm::models::vision::VisionConfig;
use psa_vlm::train::Recipe;
use psa_vlm::train::data::{Balance, LabelSpace, balance, read_jsonl};
use psa_vlm::train::trainer::{concept_accuracy, prepare, train_stage1};

#[derive(Parser, Debug)]
#[command(about = "PSA-VLM stage I: train only the safety modules")]
struct Args {
    /// PSA-VLM checkpoint directory (a LLaVA base with safety keys, or fresh safety modules).
    #[arg(long)]
    model_dir: PathBuf,
    /// tokenizer.json (default: <model-dir>/tokenizer.json).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Training label file (JSONL, reference or TRL schema).
    #[arg(long)]
    data: PathBuf,
    /// Held-out label file for level/type accuracy.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Directory image paths are relative to.
    #[arg(long, default_value = ".")]
    image_root: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "runs/stage1")]
    out: PathBuf,
    /// Conversation template (the same one must be used at inference).
    #[arg(long, default_value = "llava_v1")]
    template: String,
    /// Clean samples kept by stage-I balancing (0 = keep all).
    #[arg(long, default_value_t = 3000)]
    clean: usize,
    /// Skip (and count) samples whose image is missing or corrupt instead of failing.
    #[arg(long)]
    skip_bad_images: bool,
    /// Recipe overrides (defaults: the paper's stage I).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    grad_accum: Option<usize>,
    #[arg(long)]
    warmup_steps: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Device string.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut recipe = Recipe::stage1();
    recipe.lr = args.lr.unwrap_or(recipe.lr);
    recipe.epochs = args.epochs.unwrap_or(recipe.epochs);
    recipe.batch_size = args.batch_size.unwrap_or(recipe.batch_size);
    recipe.grad_accum = args.grad_accum.unwrap_or(recipe.grad_accum);
    recipe.warmup_steps = args.warmup_steps.unwrap_or(recipe.warmup_steps);
    recipe.seed = args.seed.unwrap_or(recipe.seed);
    let device = parse_device(&args.device)?.autodiff();
    device.seed(recipe.seed);
    let (model, cfg, _) = load_psa(&args.model_dir, &device, &LoadOptions::default())?;
    let tokenizer = args.tokenizer.clone().unwrap_or_else(|| args.model_dir.join("tokenizer.json"));
    let text = TextProcessor::from_file(&tokenizer, "<image>")?;
    let template = Template::by_name(&args.template)?;
    let images = match &cfg.llava.vision {
        VisionConfig::Clip(c) => ImageProcessorConfig::clip(c.image_size),
        VisionConfig::Dinov2(_) => ImageProcessorConfig::dinov2(),
    }
    .build()?;
    let labels = LabelSpace { levels: cfg.safety.num_levels, types: cfg.safety.num_types };
    let mut samples = read_jsonl(&args.data, &args.image_root, labels)?;
    if args.clean > 0 {
        samples =
            balance(samples, psa_vlm::core::Taxonomy::default().safe_type, Balance { clean: args.clean, seed: 42 });
    }
    let pad = cfg.llava.pad_token_id.unwrap_or(0);
    let (train, report) = prepare(
        &model,
        &samples,
        &args.data,
        &images,
        &text,
        &template,
        recipe.max_len,
        args.skip_bad_images,
        &device,
    )?;
    eprintln!(
        "prepared {} samples ({} skipped, {} truncated), vision {:.1}s",
        report.prepared,
        report.skipped_images.len(),
        report.truncated,
        report.vision_seconds
    );
    std::fs::create_dir_all(&args.out)?;
    let mut log = std::fs::File::create(args.out.join("metrics.jsonl"))?;
    let (model, metrics) = train_stage1(model, &train, &recipe, pad, &Default::default(), |m| {
        eprintln!(
            "step {:>4} epoch {} lr {:.2e} loss {:.4} (lm {:.4}, level {:.4}, type {:.4}) {:.1} samples/s",
            m.step, m.epoch, m.lr, m.loss, m.lm_loss, m.ce_level, m.ce_type, m.samples_per_s
        );
        let _ = writeln!(log, "{}", serde_json::to_string(m).unwrap_or_default());
    })?;
    eprintln!("{} optimizer steps", metrics.len());
    if let Some(eval) = &args.eval {
        let held = read_jsonl(eval, &args.image_root, labels)?;
        let (held, _) =
            prepare(&model, &held, eval, &images, &text, &template, recipe.max_len, args.skip_bad_images, &device)?;
        let (level, risk_type) = concept_accuracy(&model, &held, recipe.batch_size)?;
        println!("held-out accuracy: level {:.1} %, type {:.1} %", level * 100.0, risk_type * 100.0);
    }
    let (weights, _) =
        save_safety_modules(&model.safety, &cfg.safety, &args.out).context("saving the safety modules")?;
    println!("safety modules written to {}", weights.display());
    Ok(())
}
