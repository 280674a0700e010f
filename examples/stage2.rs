//! PSA-VLM stage II: LoRA on the LLM's linear layers (safety modules frozen), LM loss only.
//!
//! ```text
//! cargo run --release --example stage2 -- --data train.jsonl --image-root images/ --out runs/s2 \
//!     [--model-dir path/to/stage1-model] [--rank 256 --alpha 16 --dropout 0.05 --targets all-linear]
//! ```
//! Writes `metrics.jsonl`, `loss.svg` and the adapters in the PEFT layout (`adapter/`).
#[path = "common/stage.rs"]
mod stage_common;

use anyhow::Result;
use clap::Parser;
use psa_vlm::device::parse_devices;
use psa_vlm::models::lora::{LoraConfig, LoraTargets};
use psa_vlm::train::run::StageName;

#[derive(Parser, Debug)]
#[command(about = "PSA-VLM stage II: LoRA fine-tuning of the LLM")]
struct Args {
    #[command(flatten)]
    common: stage_common::Common,
    /// LoRA rank (paper: 256).
    #[arg(long, default_value_t = 256)]
    rank: usize,
    /// LoRA alpha (paper: 16).
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// LoRA dropout (paper: 0.05).
    #[arg(long, default_value_t = 0.05)]
    dropout: f64,
    /// `all-linear` or a comma-separated list such as `q_proj,v_proj` (never lm_head).
    #[arg(long, default_value = "all-linear")]
    targets: String,
    /// Also train the safety modules (the reference keeps them frozen).
    #[arg(long)]
    train_safety: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let targets = if args.targets == "all-linear" {
        LoraTargets::AllLinear(args.targets.clone())
    } else {
        LoraTargets::Names(args.targets.split(',').map(|s| s.trim().to_string()).collect())
    };
    let lora = LoraConfig { r: args.rank, lora_alpha: args.alpha, lora_dropout: args.dropout, target_modules: targets };
    lora.validate().map_err(anyhow::Error::msg)?;
    let mut cfg = args.common.config(StageName::Stage2);
    cfg.lora = Some(lora);
    cfg.train_safety = args.train_safety;
    let summary = psa_vlm::train::run(&cfg, &parse_devices(&args.common.device)?)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
