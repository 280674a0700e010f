//! `LlamaConfig` mirror (transformers `models/llama/configuration_llama.py`).
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ConfigError;

/// One id or a list of ids, as `eos_token_id` may be written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

/// `LlamaConfig`, key for key; unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// SwiGLU width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); equals `num_attention_heads` when absent.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; `hidden_size / num_attention_heads` when absent.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "rms_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base (transformers ≤ 4.x).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// RoPE scaling; only absent or `default` is supported.
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// RoPE parameters (transformers 5.x: `{"rope_type": .., "rope_theta": ..}`).
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// Position limit.
    #[serde(default = "max_pos")]
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// MLP activation (`silu` for LLaMA).
    #[serde(default = "silu")]
    pub hidden_act: String,
    /// Biases on q/k/v/o.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Beginning-of-sequence id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id(s).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// Padding id.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

fn rms_eps() -> f64 {
    1e-6
}
fn max_pos() -> usize {
    2048
}
fn silu() -> String {
    "silu".into()
}

impl LlamaConfig {
    /// Vicuna-7B v1.5 (LLaMA-2 7B) with the llava-hf vocabulary of 32064.
    pub fn vicuna_7b() -> Self {
        Self {
            vocab_size: 32064,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: Some(32),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: Some(10_000.0),
            rope_scaling: None,
            rope_parameters: None,
            max_position_embeddings: 4096,
            tie_word_embeddings: false,
            hidden_act: silu(),
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: Some(1),
            eos_token_id: Some(TokenIds::One(2)),
            pad_token_id: Some(32001),
        }
    }

    /// Key/value head count.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Parameters of the model this configuration builds (exact for the LLaMA layout), without building it.
    pub fn parameter_count(&self) -> u128 {
        let [v, h, i, l] =
            [self.vocab_size, self.hidden_size, self.intermediate_size, self.num_hidden_layers].map(|x| x as u128);
        let (q, kv) =
            ((self.num_attention_heads * self.head_size()) as u128, (self.kv_heads() * self.head_size()) as u128);
        let embeddings = if self.tie_word_embeddings { v * h } else { 2 * v * h };
        let attention = h * q + 2 * h * kv + q * h + if self.attention_bias { q + 2 * kv + h } else { 0 };
        let mlp = 3 * h * i + if self.mlp_bias { 2 * i + h } else { 0 };
        embeddings + l * (attention + mlp + 2 * h) + h
    }

    /// Per-head width.
    pub fn head_size(&self) -> usize {
        self.head_dim.unwrap_or_else(|| self.hidden_size.checked_div(self.num_attention_heads).unwrap_or(0))
    }

    /// The RoPE base, from `rope_parameters` or `rope_theta` (10 000 when neither is given).
    pub fn rope_base(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or(self.rope_theta)
            .unwrap_or(10_000.0)
    }

    /// Checks that the configuration describes a model this crate computes exactly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [("rope_scaling", &self.rope_scaling), ("rope_parameters", &self.rope_parameters)] {
            let Some(v) = value.as_ref().filter(|v| !v.is_null()) else {
                continue;
            };
            let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("default");
            if kind != "default" {
                return Err(ConfigError::Unsupported {
                    key,
                    value: v.to_string(),
                    hint: "only unscaled RoPE (rope_type \"default\") is implemented",
                });
            }
        }
        if self.hidden_act != "silu" {
            return Err(ConfigError::Unsupported {
                key: "text_config.hidden_act",
                value: self.hidden_act.clone(),
                hint: "LLaMA uses silu",
            });
        }
        crate::config::check_sizes(
            "text config",
            &[
                ("vocab_size", self.vocab_size, 1 << 22),
                ("hidden_size", self.hidden_size, 1 << 16),
                ("intermediate_size", self.intermediate_size, 1 << 18),
                ("num_hidden_layers", self.num_hidden_layers, 1024),
                ("num_attention_heads", self.num_attention_heads, 1024),
                ("num_key_value_heads", self.kv_heads(), 1024),
                ("head_dim", self.head_size(), 1 << 12),
                ("max_position_embeddings", self.max_position_embeddings, 1 << 22),
            ],
        )?;
        crate::config::check_epsilon("text config", "rms_norm_eps", self.rms_norm_eps)?;
        let (h, kv) = (self.num_attention_heads, self.kv_heads());
        if h == 0 || kv == 0 || h % kv != 0 {
            return Err(ConfigError::Invalid(format!(
                "num_attention_heads {h} must be a positive multiple of num_key_value_heads {kv}"
            )));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(h) {
            return Err(ConfigError::Invalid(format!("hidden_size {} not divisible by {h} heads", self.hidden_size)));
        }
        if !self.head_size().is_multiple_of(2) {
            return Err(ConfigError::Invalid(format!("RoPE needs an even head_dim, got {}", self.head_size())));
        }
        Ok(())
    }
}
