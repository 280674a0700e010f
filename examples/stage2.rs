//! PSA-VLM stage II: LoRA on the LLM's linear layers (safety modules frozen), LM loss only.
//!
//! ```text
//! cargo run --release --example stage2 -- --model-dir runs/psa-model --data train.jsonl --image-root images/ \
//!     --out runs/s2
//! ```
//! Writes `metrics.jsonl` and the adapters in the PEFT layout (`adapter/adapter_config.json`,
//! `adapter/adapter_model.safetensors`), loadable by PEFT on top of the same base model.
use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use psa_vlm::device::parse_device;
use psa_vlm::models::import::{LoadOptions, load_psa, save_peft_adapter};
use psa_vlm::models::lora::{LoraConfig, LoraTargets};
use psa_vlm::models::processor::{ImageProcessorConfig, Template, TextProcessor};
use psa_vlm::models::vision::VisionConfig;
use psa_vlm::train::Recipe;
use psa_vlm::train::data::{LabelSpace, read_jsonl};
use psa_vlm::train::trainer::{prepare, train_stage2};

#[derive(Parser, Debug)]
#[command(about = "PSA-VLM stage II: LoRA fine-tuning of the LLM")]
struct Args {
    /// PSA-VLM checkpoint directory (after stage I).
    #[arg(long)]
    model_dir: PathBuf,
    /// tokenizer.json (default: <model-dir>/tokenizer.json).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Training label file (JSONL).
    #[arg(long)]
    data: PathBuf,
    /// Directory image paths are relative to.
    #[arg(long, default_value = ".")]
    image_root: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "runs/stage2")]
    out: PathBuf,
    /// Conversation template (the same one must be used at inference).
    #[arg(long, default_value = "llava_v1")]
    template: String,
    /// LoRA rank (paper: 256).
    #[arg(long, default_value_t = 256)]
    rank: usize,
    /// LoRA alpha (paper: 16).
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// LoRA dropout (paper: 0.05).
    #[arg(long, default_value_t = 0.05)]
    dropout: f64,
    /// Target projections: `all-linear` or a comma-separated list such as `q_proj,v_proj`.
    #[arg(long, default_value = "all-linear")]
    targets: String,
    /// Skip (and count) samples whose image is missing or corrupt.
    #[arg(long)]
    skip_bad_images: bool,
    /// Recipe overrides (defaults: the paper's stage II).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Device string.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut recipe = Recipe::stage2();
    recipe.lr = args.lr.unwrap_or(recipe.lr);
    recipe.epochs = args.epochs.unwrap_or(recipe.epochs);
    recipe.batch_size = args.batch_size.unwrap_or(recipe.batch_size);
    recipe.grad_accum = args.grad_accum.unwrap_or(recipe.grad_accum);
    let targets = if args.targets == "all-linear" {
        LoraTargets::AllLinear(args.targets.clone())
    } else {
        LoraTargets::Names(args.targets.split(',').map(|s| s.trim().to_string()).collect())
    };
    let lora = LoraConfig { r: args.rank, lora_alpha: args.alpha, lora_dropout: args.dropout, target_modules: targets };
    lora.validate().map_err(anyhow::Error::msg)?;
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
    let samples = read_jsonl(&args.data, &args.image_root, labels)?;
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
        "prepared {} samples ({} skipped, {} truncated)",
        report.prepared,
        report.skipped_images.len(),
        report.truncated
    );
    std::fs::create_dir_all(&args.out)?;
    let mut log = std::fs::File::create(args.out.join("metrics.jsonl"))?;
    let pad = cfg.llava.pad_token_id.unwrap_or(0);
    let (model, metrics) = train_stage2(model, &lora, &train, &recipe, pad, &Default::default(), |m| {
        eprintln!(
            "step {:>4} epoch {} lr {:.2e} LM loss {:.4} {:.1} samples/s",
            m.step, m.epoch, m.lr, m.lm_loss, m.samples_per_s
        );
        let _ = writeln!(log, "{}", serde_json::to_string(m).unwrap_or_default());
    })?;
    eprintln!("{} optimizer steps", metrics.len());
    let adapter = args.out.join("adapter");
    save_peft_adapter(&model.llava.language_model, &lora, true, &adapter)?;
    println!("PEFT adapter written to {}", adapter.display());
    Ok(())
}
