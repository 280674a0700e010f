//! PSA-VLM progressive two-stage training: data (JSONL, images, balancing), tokenisation with
//! correct LLaVA masking, paper recipes, the shared optimisation loop for stage I (safety modules) and stage II
//! (activation-side LoRA), a frozen-encoder feature cache, atomic checkpoints with exact resume, and whole runs
//! from a TOML/JSON configuration with progress, metrics and a loss curve; and evaluation of a trained guard on
//! standard safety benchmarks with calibrated verdicts.
pub mod checkpoint;
pub mod clip;
pub mod data;
pub mod error;
pub mod eval;
pub mod feature_cache;
pub mod plot;
pub mod prepare;
pub mod recipe;
pub mod record;
pub mod run;
pub mod settings;
pub mod trainer;

pub use error::DataError;
pub use recipe::Recipe;
pub use run::{RunSummary, run};
pub use settings::TrainConfig;
