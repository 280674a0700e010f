//! PSA-VLM stage I: train the safety modules (tokens, C-Abstractor, head) on a frozen LLaVA.
//!
//! ```text
//! cargo run --release --example stage1 -- --model-dir path/to/psa-checkpoint --data train.jsonl \
//!     --eval heldout.jsonl --image-root images/ --out runs/s1 [--config run.toml] [--lr 1e-4 …]
//! ```
//! Writes `metrics.jsonl`, `loss.svg` and the trained safety modules in the reference naming
//! (`safety_modules.safetensors` + `config.json`). The same flags as `psa train stage1`.
#[path = "common/train.rs"]
mod train;

fn main() -> anyhow::Result<()> {
    train::run("stage1", "PSA-VLM stage I: train only the safety modules")
}
