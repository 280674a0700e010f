//! PSA-VLM stage I: train the safety modules (tokens, C-Abstractor, head) on a frozen LLaVA.
//!
//! ```text
//! cargo run --release --example stage1 -- --data train.jsonl --eval heldout.jsonl --image-root images/ \
//!     --out runs/s1 [--model-dir path/to/psa-checkpoint]
//! ```
//! Writes `metrics.jsonl`, `loss.svg` and the trained safety modules in the reference naming
//! (`safety_modules.safetensors` + `config.json`). The same run from a file: `psa train stage1 --config run.toml`.
#[path = "common/stage.rs"]
mod stage_common;

use anyhow::Result;
use clap::Parser;
use psa_vlm::device::parse_devices;
use psa_vlm::train::run::StageName;

#[derive(Parser, Debug)]
#[command(about = "PSA-VLM stage I: train only the safety modules")]
struct Args {
    #[command(flatten)]
    common: stage_common::Common,
    /// Clean samples kept by stage-I balancing (the paper: 3000).
    #[arg(long, default_value_t = 3000)]
    clean: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut cfg = args.common.config(StageName::Stage1);
    cfg.clean = Some(args.clean);
    let summary = psa_vlm::train::run(&cfg, &parse_devices(&args.common.device)?)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
