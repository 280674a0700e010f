//! `LlavaConfig` mirror (transformers `models/llava/configuration_llava.py`) and config-file reading.
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::activation::Activation;
use crate::error::ConfigError;
use crate::llama::LlamaConfig;
use crate::vision::VisionConfig;

/// Which vision tokens LLaVA keeps (`vision_feature_select_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectStrategy {
    /// Drop the CLS token (`default`).
    Default,
    /// Keep every token (`full`).
    Full,
}

/// A LLaVA configuration: vision tower, projector, language model and the image placeholder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaConfig {
    /// Vision tower.
    pub vision: VisionConfig,
    /// Language model.
    pub text: LlamaConfig,
    /// Id of the `<image>` placeholder token.
    pub image_token_index: u32,
    /// Padding id.
    pub pad_token_id: Option<u32>,
    /// Hidden-state index whose features are projected (negative counts from the end).
    pub vision_feature_layer: i64,
    /// Token selection.
    pub select_strategy: SelectStrategy,
    /// Projector activation.
    pub projector_act: Activation,
    /// Whether the projector's linears have biases.
    pub projector_bias: bool,
}

#[derive(Deserialize)]
struct RawLlava {
    vision_config: Value,
    text_config: Value,
    #[serde(default = "image_token")]
    image_token_index: u32,
    #[serde(default)]
    image_token_id: Option<u32>,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default = "minus_two")]
    vision_feature_layer: Value,
    #[serde(default = "default_strategy")]
    vision_feature_select_strategy: String,
    #[serde(default = "gelu")]
    projector_hidden_act: String,
    #[serde(default = "yes")]
    multimodal_projector_bias: bool,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
}

fn image_token() -> u32 {
    32000
}
fn minus_two() -> Value {
    Value::from(-2)
}
fn default_strategy() -> String {
    "default".into()
}
fn gelu() -> String {
    "gelu".into()
}
fn yes() -> bool {
    true
}

/// Reads and parses a JSON file.
/// Checks that each `(name, value, most)` lies in `1..=most`: a zero size divides by zero and an absurd one
/// allocates without bound, so both are refused before anything is built.
pub(crate) fn check_sizes(what: &str, sizes: &[(&str, usize, usize)]) -> Result<(), ConfigError> {
    match sizes.iter().find(|(_, v, most)| *v == 0 || v > most) {
        Some((name, value, most)) => {
            Err(ConfigError::Invalid(format!("{what} {name} = {value} must lie in 1..={most}")))
        }
        None => Ok(()),
    }
}

/// Checks a normalisation epsilon is finite and in (0, 1): zero or a negative value makes a norm divide by zero or
/// take the root of a negative number (burn-nn panics on it), so it is refused with the key named.
pub(crate) fn check_epsilon(what: &str, name: &str, eps: f64) -> Result<(), ConfigError> {
    if eps.is_finite() && eps > 0.0 && eps < 1.0 {
        return Ok(());
    }
    Err(ConfigError::Invalid(format!("{what} {name} = {eps} must lie in (0, 1)")))
}

/// Reads a JSON file, naming it on failure.
pub fn read_json(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), what: "JSON file", source })
}

/// Parses a typed config from a JSON value, naming the file on failure.
pub fn parse<T: serde::de::DeserializeOwned>(value: &Value, path: &Path, what: &'static str) -> Result<T, ConfigError> {
    serde_json::from_value(value.clone()).map_err(|source| ConfigError::Parse { path: path.into(), what, source })
}

impl LlavaConfig {
    /// LLaVA-1.5-7B (`llava-hf/llava-1.5-7b-hf`).
    pub fn llava_1_5_7b() -> Self {
        Self {
            vision: VisionConfig::Clip(crate::vision::ClipVisionConfig::vit_l_14_336()),
            text: LlamaConfig::vicuna_7b(),
            image_token_index: 32000,
            pad_token_id: Some(32001),
            vision_feature_layer: -2,
            select_strategy: SelectStrategy::Default,
            projector_act: Activation::Gelu,
            projector_bias: true,
        }
    }

    /// Parses a LLaVA `config.json` value.
    pub fn from_value(value: &Value, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawLlava = parse(value, path, "LLaVA config")?;
        let vision = VisionConfig::from_value(&raw.vision_config)?;
        let mut text: LlamaConfig = parse(&raw.text_config, path, "LLaVA text_config")?;
        if let Some(tie) = raw.tie_word_embeddings.filter(|_| raw.text_config.get("tie_word_embeddings").is_none()) {
            text.tie_word_embeddings = tie;
        }
        text.validate()?;
        let vision_feature_layer = raw.vision_feature_layer.as_i64().ok_or_else(|| ConfigError::Unsupported {
            key: "vision_feature_layer",
            value: raw.vision_feature_layer.to_string(),
            hint: "a single layer index is supported",
        })?;
        let select_strategy = match raw.vision_feature_select_strategy.as_str() {
            "default" => SelectStrategy::Default,
            "full" => SelectStrategy::Full,
            other => {
                return Err(ConfigError::Unsupported {
                    key: "vision_feature_select_strategy",
                    value: other.into(),
                    hint: "supported: default, full",
                });
            }
        };
        let cfg = Self {
            vision,
            text,
            image_token_index: raw.image_token_id.unwrap_or(raw.image_token_index),
            pad_token_id: raw.pad_token_id,
            vision_feature_layer,
            select_strategy,
            projector_act: Activation::from_hf(&raw.projector_hidden_act, "projector_hidden_act")?,
            projector_bias: raw.multimodal_projector_bias,
        };
        cfg.feature_layer_index()?;
        Ok(cfg)
    }

    /// The `config.json` value [`from_value`](Self::from_value) reads back (llava-hf keys, `model_type` on both parts).
    pub fn to_value(&self) -> Value {
        let tagged = |mut v: Value, model_type: &str| {
            if let Some(o) = v.as_object_mut() {
                o.insert("model_type".into(), Value::from(model_type));
            }
            v
        };
        let vision = match &self.vision {
            VisionConfig::Clip(c) => tagged(serde_json::to_value(c).unwrap_or_default(), "clip_vision_model"),
            VisionConfig::Dinov2(c) => tagged(serde_json::to_value(c).unwrap_or_default(), "dinov2"),
        };
        serde_json::json!({
            "model_type": "llava",
            "vision_config": vision,
            "text_config": tagged(serde_json::to_value(&self.text).unwrap_or_default(), "llama"),
            "image_token_index": self.image_token_index,
            "pad_token_id": self.pad_token_id,
            "vision_feature_layer": self.vision_feature_layer,
            "vision_feature_select_strategy": match self.select_strategy {
                SelectStrategy::Default => "default",
                SelectStrategy::Full => "full",
            },
            "projector_hidden_act": self.projector_act.hf_name(),
            "multimodal_projector_bias": self.projector_bias,
        })
    }

    /// Reads `config.json` from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join("config.json");
        Self::from_value(&read_json(&path)?, &path)
    }

    /// The hidden-state index `vision_feature_layer` resolves to (0 = embeddings).
    pub fn feature_layer_index(&self) -> Result<usize, ConfigError> {
        let count = self.vision.num_layers() as i64 + 1;
        let idx =
            if self.vision_feature_layer < 0 { count + self.vision_feature_layer } else { self.vision_feature_layer };
        if !(0..count).contains(&idx) {
            return Err(ConfigError::Invalid(format!(
                "vision_feature_layer {} is out of range for {} hidden states",
                self.vision_feature_layer, count
            )));
        }
        Ok(idx as usize)
    }
}
