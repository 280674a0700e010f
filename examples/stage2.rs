//! PSA-VLM stage II: LoRA on the LLM's linear layers (safety modules frozen), LM loss only.
//!
//! ```text
//! cargo run --release --example stage2 -- --model-dir path/to/stage1-model --data train.jsonl \
//!     --image-root images/ --out runs/s2 [--lora-r 256 --lora-alpha 16 --lora-dropout 0.05 --lora-targets all-linear]
//! ```
//! Writes `metrics.jsonl`, `loss.svg` and the adapters in the PEFT layout (`adapter/`). The same flags as
//! `psa train stage2`.
#[path = "common/train.rs"]
mod train;

fn main() -> anyhow::Result<()> {
    train::run("stage2", "PSA-VLM stage II: LoRA fine-tuning of the LLM")
}
