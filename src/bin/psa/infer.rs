//! `psa classify | generate | batch | serve`: guarded inference from the command line.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use psa_vlm::core::{SafetyPolicy, Taxonomy};
use psa_vlm::device::parse_device;
use psa_vlm::import::LoadOptions;
use psa_vlm::models::{HostWeights, Precision};
use psa_vlm::pipeline::processor::{Template, load_image};
use psa_vlm::pipeline::saved_template;
use psa_vlm::pipeline::{GuardRequest, GuardedPipeline};

/// Where the model, its tokenizer, taxonomy and policy come from.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// PSA-VLM checkpoint directory.
    #[arg(long)]
    pub model_dir: PathBuf,
    /// tokenizer.json (default: MODEL_DIR/tokenizer.json).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Conversation template, the one used in training (`ref_inference` reproduces the reference's strings);
    /// default: the one the model directory records, else `llava_v1`.
    #[arg(long)]
    pub template: Option<String>,
    /// Taxonomy file (JSON/TOML; default: the paper's 4 levels, 7 types, 18 hints).
    #[arg(long)]
    pub taxonomy: Option<PathBuf>,
    /// Policy file (JSON/TOML; default: the reference rule).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Device: cpu, ndarray, wgpu, vulkan, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Dtype of the frozen weights (vision tower, projector, LLM): f32, f16 or bf16. The safety modules always
    /// compute in f32; half precision halves the memory of the base model.
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
    /// Where generation (prefill and decode steps) runs: `auto` (the host engine in f32 on a CPU device when
    /// `--dtype f32`, else the device), `device`, `host-f32`, or `host-q8_0` (8-bit weights: a quarter of the
    /// memory, faster decoding, logits move slightly).
    #[arg(long, value_enum, default_value_t = Decode::Auto)]
    pub decode: Decode,
    /// Where the vision tower runs: `auto` (the host engine on a CPU device when `--dtype f32`, else the device),
    /// `device`, or `host` (its weights packed once in host memory, f32).
    #[arg(long, value_enum, default_value_t = Vision::Auto)]
    pub vision: Vision,
    /// Load the directory without checking it against its manifest.json (for a hand-assembled directory; a warning
    /// says so). `psa seal` writes a manifest instead.
    #[arg(long)]
    pub allow_unverified: bool,
}

/// `--vision`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vision {
    /// Host engine on CPU devices, else the device.
    Auto,
    /// The model's device.
    Device,
    /// The host engine.
    Host,
}

impl Vision {
    /// Whether the tower runs on the host engine, given the device string and the weights' dtype.
    pub fn on_host(self, device: &str, dtype: Precision) -> bool {
        match self {
            Self::Auto => is_cpu(device) && dtype == Precision::F32,
            Self::Device => false,
            Self::Host => true,
        }
    }
}

/// Whether a `--device` string names a CPU backend.
fn is_cpu(device: &str) -> bool {
    matches!(device.trim().to_ascii_lowercase().as_str(), "cpu" | "flex" | "ndarray")
}

/// `--decode`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decode {
    /// Host decoder in f32 on CPU devices, else the device.
    Auto,
    /// The model's device.
    Device,
    /// Host decoder, f32 weights.
    HostF32,
    /// Host decoder, Q8_0 weights.
    #[value(name = "host-q8_0")]
    HostQ8_0,
}

impl Decode {
    /// The host decoder's weights, or `None` for the device, given the device string and the weights' dtype.
    pub fn host_weights(self, device: &str, dtype: Precision) -> Option<HostWeights> {
        match self {
            Self::Auto if is_cpu(device) && dtype == Precision::F32 => Some(HostWeights::F32),
            Self::Auto | Self::Device => None,
            Self::HostF32 => Some(HostWeights::F32),
            Self::HostQ8_0 => Some(HostWeights::Q8_0),
        }
    }
}

impl ModelArgs {
    /// Loads the pipeline with the taxonomy and policy applied.
    pub fn load(&self) -> Result<GuardedPipeline> {
        let device = parse_device(&self.device)?;
        let name =
            self.template.clone().or_else(|| saved_template(&self.model_dir)).unwrap_or_else(|| "llava_v1".into());
        let template = Template::by_name(&name)?;
        let mut opts = LoadOptions::default().with_precision(self.dtype);
        if self.allow_unverified {
            eprintln!(
                "psa: warning: {} is loaded without checking its manifest (--allow-unverified): a changed or \
                 corrupted file would go unnoticed",
                self.model_dir.display()
            );
            opts = opts.unverified();
        }
        let mut p =
            GuardedPipeline::load_with_options(&self.model_dir, self.tokenizer.clone(), template, &device, &opts)
                .with_context(|| format!("loading {}", self.model_dir.display()))?;
        if let Some(path) = &self.taxonomy {
            p = p.with_taxonomy(Taxonomy::from_file(path)?)?;
        }
        if let Some(path) = &self.policy {
            let policy = SafetyPolicy::from_file(path, &p.taxonomy)?;
            p = p.with_policy(policy)?;
        }
        Ok(p.with_host_vision(self.vision.on_host(&self.device, self.dtype))?)
    }

    /// [`load`](Self::load), with the decode engine `--decode` asks for (commands that generate).
    pub fn load_generating(&self) -> Result<GuardedPipeline> {
        Ok(self.load()?.with_host_decoder(self.decode.host_weights(&self.device, self.dtype))?)
    }
}

/// One image and question.
#[derive(Args, Debug)]
pub struct Ask {
    /// The image (PNG, JPEG, WebP or GIF).
    #[arg(long)]
    pub image: PathBuf,
    /// The question.
    #[arg(long, default_value = "Describe the image.")]
    pub question: String,
}

impl Ask {
    /// The request.
    pub fn request(&self) -> Result<GuardRequest> {
        Ok(GuardRequest { id: None, image: load_image(&self.image)?, question: self.question.clone(), policy: None })
    }
}
