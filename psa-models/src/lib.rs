//! LLaVA-1.5 and PSA-VLM on Burn 0.22: CLIP and DINOv2 vision towers, the LLaVA projector and merge, a LLaMA
//! decoder with KV cache and LoRA, generation, and the PSA-VLM model around the safety modules of `psa-core`.
//! Models only: weight files are read by `psa-import`, images and text by `psa-pipeline`.
//!
//! Every model is written against [`burn::tensor::Device`], so one build runs on every backend compiled in.
pub mod activation;
pub mod config;
pub mod cpu;
pub mod error;
pub mod generate;
pub mod host_abstractor;
pub mod llama;
pub mod llava;
pub mod lora;
pub mod loss;
pub mod mask;
pub mod precision;
pub mod psa;
pub mod vision;

pub use config::{LlavaConfig, SelectStrategy};
pub use error::{ConfigError, ModelError, UnsupportedDtype};
pub use generate::{FinishReason, Generation, GenerationConfig, generate, generate_with};
pub use host_abstractor::HostAbstractor;
pub use llama::{HostDecoder, HostLmLoss, HostWeights, KvCache, LlamaConfig, LlamaForCausalLM};
pub use llava::{LlavaForConditionalGeneration, MergedInputs, MultiModalProjector};
pub use mask::PaddingMask;
pub use precision::Precision;
pub use psa::{ConceptLabels, LmEngine, LmPass, Passes, PsaConfig, PsaInput, PsaOutput, PsaVlm, VisionInput};
pub use vision::HostVision;
