//! PSA-VLM stage II: LoRA on the LLM's linear layers (safety modules frozen), LM loss only.
//!
//! ```text
//! cargo run --release --example stage2 -- --model-dir path/to/stage1-model --data train.jsonl \
//!     --image-root images/ --out runs/s2 [--lora-r 256 --lora-alpha 16 --lora-dropout 0.05 --lora-targets all-linear]
//! ```
//! Writes `metrics.jsonl`, `loss.svg` and the adapters in the PEFT layout (`adapter/`). The same flags as
//! `psa train stage2`.
use anyhow::Result;
use clap::Parser;
use psa_vlm::device::parse_devices;
use psa_vlm::train::settings::TrainArgs;

#[derive(Parser, Debug)]
#[command(about = "PSA-VLM stage II: LoRA fine-tuning of the LLM")]
struct Args {
    #[command(flatten)]
    settings: TrainArgs,
    /// Device: cpu, ndarray, wgpu, vulkan, cuda:N; a comma-separated list trains data-parallel over them.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cfg = args.settings.resolve("stage2")?;
    let summary = psa_vlm::train::run(&cfg, &parse_devices(&args.device)?)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
