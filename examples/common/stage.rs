// Shared flags of the `stage1` and `stage2` examples (included with `#[path]`).
use std::path::PathBuf;

use clap::Args;
use psa_vlm::train::run::{RecipeOverrides, StageName, TrainConfig};

/// Flags common to both stages.
#[derive(Args, Debug)]
pub struct Common {
    /// PSA-VLM checkpoint directory (LLaVA + safety keys).
    #[arg(long, default_value = "fixtures/tiny_psa/model")]
    pub model_dir: PathBuf,
    /// tokenizer.json (default: <model-dir>/tokenizer.json).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Training label file (JSONL, reference or TRL schema).
    #[arg(long)]
    pub data: PathBuf,
    /// Held-out label file for level/type accuracy.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Directory image paths are relative to.
    #[arg(long, default_value = ".")]
    pub image_root: PathBuf,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Conversation template (use the same one at inference).
    #[arg(long, default_value = "llava_v1")]
    pub template: String,
    /// Skip (and count) samples whose image is missing or corrupt.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Directory of a disk cache of vision features (reused while the vision tower is unchanged).
    #[arg(long)]
    pub feature_cache: Option<PathBuf>,
    /// Save a checkpoint every N optimizer steps.
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Resume from a checkpoint folder.
    #[arg(long)]
    pub resume_from: Option<PathBuf>,
    /// Peak learning rate (default: the paper's 1e-5).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Epochs (default 3).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Micro-batch size (default 2).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Gradient accumulation (default 64: effective batch 128).
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Warm-up steps (default 20 / 300).
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Seed (default 42).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Dtype of the frozen base: f32, f16 or bf16 (the trained modules stay f32).
    #[arg(long, default_value = "f32")]
    pub dtype: psa_vlm::models::Precision,
    /// Recompute each LLM layer's activations in the backward pass instead of keeping them.
    #[arg(long)]
    pub activation_checkpointing: bool,
    /// Device: cpu, ndarray, wgpu, vulkan, cuda:N; a comma-separated list trains data-parallel over them.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl Common {
    /// The run configuration these flags describe.
    pub fn config(&self, stage: StageName) -> TrainConfig {
        TrainConfig {
            stage,
            model_dir: self.model_dir.clone(),
            tokenizer: self.tokenizer.clone(),
            data: self.data.clone(),
            eval: self.eval.clone(),
            image_root: self.image_root.clone(),
            out: self.out.clone(),
            template: Some(self.template.clone()),
            clean: None,
            skip_bad_images: self.skip_bad_images,
            feature_cache: self.feature_cache.clone(),
            checkpoint_every: self.checkpoint_every,
            resume_from: self.resume_from.clone(),
            recipe: RecipeOverrides {
                lr: self.lr,
                warmup_steps: self.warmup_steps,
                epochs: self.epochs,
                batch_size: self.batch_size,
                grad_accum: self.grad_accum,
                seed: self.seed,
                ..Default::default()
            },
            lora: None,
            train_safety: false,
            progress: true,
            dtype: self.dtype,
            activation_checkpointing: self.activation_checkpointing,
        }
    }
}
