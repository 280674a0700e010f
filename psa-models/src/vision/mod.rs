//! Vision towers: CLIP and DINOv2 ViTs, selected by `config.json`'s `model_type`.
pub mod clip;
pub mod dinov2;
mod host;
mod interpolate;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde_json::Value;

pub use clip::{ClipVisionConfig, ClipVisionModel};
pub use dinov2::{Dinov2Config, Dinov2Model};
pub use host::HostVision;

use crate::error::ConfigError;

/// What a vision tower returns.
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// Embedding output (CLIP: after `pre_layrnorm`) followed by the output of each computed layer.
    pub hidden_states: Vec<Tensor<3>>,
    /// Output of the last encoder layer, before any final norm (CLIP) or after it (DINOv2), as in HF.
    pub last_hidden_state: Option<Tensor<3>>,
}

/// A vision tower configuration: CLIP or DINOv2.
#[derive(Debug, Clone, PartialEq)]
pub enum VisionConfig {
    /// `CLIPVisionModel` (`model_type` `clip_vision_model`).
    Clip(ClipVisionConfig),
    /// `Dinov2Model` (`model_type` `dinov2`).
    Dinov2(Dinov2Config),
}

impl VisionConfig {
    /// Reads a vision config from JSON, dispatching on `model_type`; a full `clip` config uses its `vision_config`.
    pub fn from_value(value: &Value) -> Result<Self, ConfigError> {
        let model_type = value.get("model_type").and_then(Value::as_str).unwrap_or("clip_vision_model");
        match model_type {
            "clip_vision_model" => {
                let cfg: ClipVisionConfig = parse(value, "clip vision config")?;
                cfg.validate()?;
                Ok(Self::Clip(cfg))
            }
            "clip" => {
                let vc = value
                    .get("vision_config")
                    .ok_or_else(|| ConfigError::Invalid("a `clip` config needs a `vision_config`".into()))?;
                let cfg: ClipVisionConfig = parse(vc, "clip vision config")?;
                cfg.validate()?;
                Ok(Self::Clip(cfg))
            }
            "dinov2" => {
                let cfg: Dinov2Config = parse(value, "dinov2 config")?;
                cfg.validate()?;
                Ok(Self::Dinov2(cfg))
            }
            other => Err(ConfigError::Unsupported {
                key: "vision_config.model_type",
                value: other.to_string(),
                hint: "supported: clip_vision_model, clip, dinov2",
            }),
        }
    }

    /// Number of encoder layers.
    pub fn num_layers(&self) -> usize {
        match self {
            Self::Clip(c) => c.num_hidden_layers,
            Self::Dinov2(c) => c.num_hidden_layers,
        }
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Clip(c) => c.hidden_size,
            Self::Dinov2(c) => c.hidden_size,
        }
    }

    /// Builds the tower with random weights.
    pub fn init(&self, device: &Device) -> Result<VisionTower, ConfigError> {
        Ok(match self {
            Self::Clip(c) => VisionTower::Clip(c.init(device)?),
            Self::Dinov2(c) => VisionTower::Dinov2(c.init(device)?),
        })
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value, what: &'static str) -> Result<T, ConfigError> {
    serde_json::from_value(v.clone()).map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))
}

/// A vision tower; the variant name is not part of checkpoint paths.
#[derive(Module, Debug)]
pub enum VisionTower {
    /// CLIP ViT.
    Clip(ClipVisionModel),
    /// DINOv2 ViT.
    Dinov2(Dinov2Model),
}

impl VisionTower {
    /// Runs the embeddings and the first `layers` encoder layers (all when `None`).
    ///
    /// # Shapes
    /// - `pixel_values`: `[batch, 3, height, width]`
    pub fn forward(&self, pixel_values: Tensor<4>, layers: Option<usize>) -> VisionOutput {
        match self {
            Self::Clip(m) => m.forward(pixel_values, layers),
            Self::Dinov2(m) => m.forward(pixel_values, layers),
        }
    }

    /// The encoder's input (`hidden_states[0]` of [`forward`](Self::forward)): `[batch, tokens, d]`.
    pub fn embed(&self, pixel_values: Tensor<4>) -> Tensor<3> {
        match self {
            Self::Clip(m) => m.embed(pixel_values),
            Self::Dinov2(m) => m.embeddings.forward(pixel_values),
        }
    }
}

/// Standard multi-head self-attention over `[batch, tokens, width]` given projected q, k, v (on all threads for
/// flex tensors, [`crate::cpu::self_attention`]).
pub(crate) fn self_attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize) -> Tensor<3> {
    crate::cpu::self_attention(q, k, v, heads, |q, k, v| {
        let [b, t, d] = q.dims();
        // Scores and probabilities in f32 whatever the weights' dtype.
        let dtype = q.dtype();
        let split = |x: Tensor<3>| crate::precision::to_f32(x.reshape([b, t, heads, d / heads]).swap_dims(1, 2));
        let out = burn::tensor::module::attention(split(q), split(k), split(v), None, None, Default::default());
        crate::precision::to_dtype(out.swap_dims(1, 2).reshape([b, t, d]), dtype)
    })
}
