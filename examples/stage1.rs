//! PSA-VLM stage I: train the safety modules (tokens, C-Abstractor, head) on a frozen LLaVA.
//!
//! ```text
//! cargo run --release --example stage1 -- --model-dir path/to/psa-checkpoint --data train.jsonl \
//!     --eval heldout.jsonl --image-root images/ --out runs/s1 [--config run.toml] [--lr 1e-4 …]
//! ```
//! Writes `metrics.jsonl`, `loss.svg` and the trained safety modules in the reference naming
//! (`safety_modules.safetensors` + `config.json`). The same flags as `psa train stage1`.
use anyhow::Result;
use clap::Parser;
use psa_vlm::device::parse_devices;
use psa_vlm::train::settings::TrainArgs;

#[derive(Parser, Debug)]
#[command(about = "PSA-VLM stage I: train only the safety modules")]
struct Args {
    #[command(flatten)]
    settings: TrainArgs,
    /// Device: cpu, ndarray, wgpu, vulkan, cuda:N; a comma-separated list trains data-parallel over them.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cfg = args.settings.resolve("stage1")?;
    let summary = psa_vlm::train::run(&cfg, &parse_devices(&args.device)?)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
