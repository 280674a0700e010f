//! Safety-module configuration: every width comes from the base model, nothing is
//! hard-coded to 4096, so 7B (4096) and 13B (5120) models both work.
use serde::{Deserialize, Serialize};

use crate::error::CoreError;

/// How the safety head turns the attention output into one classification feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryMode {
    /// Output row 0, the reference behaviour. The first token (BOS with right padding) is constant, so the
    /// question does not influence the verdict.
    #[default]
    Position0,
    /// The reference as trained: one query, the `<pad>` token's embedding (its preprocessing rotated every training
    /// sequence to start with `<pad>`). For reference-trained safety heads; constant like `Position0`.
    RefPadQuery,
    /// Mean of the output rows over the query rows the caller marks (the user's question tokens): text-aware.
    TextMean,
    /// Output row of the last marked token.
    LastTextToken,
}

impl QueryMode {
    /// Whether the verdict reads the marked text tokens (`text_mean`, `last_text_token`).
    pub fn reads_text(self) -> bool {
        matches!(self, Self::TextMean | Self::LastTextToken)
    }
}

/// Sizes and options of the PSA safety modules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafetyConfig {
    /// Safety tokens per set (S1 and S2); 64 in the paper.
    #[serde(default = "d_tokens")]
    pub num_safety_tokens: usize,
    /// Width of the tokens, the C-Abstractor output and the head: the LLM hidden size.
    pub safety_dim: usize,
    /// Width of the vision features the C-Abstractor reads.
    pub vision_dim: usize,
    /// C-Abstractor internal width; the reference rule is `vision_dim + num_safety_tokens`.
    pub abstractor_width: usize,
    /// Bottleneck blocks per RegStage.
    #[serde(default = "d_depth")]
    pub abstractor_depth: usize,
    /// Readout layers (Linear, SiLU, Linear, … ).
    #[serde(default = "d_mlp_depth")]
    pub abstractor_mlp_depth: usize,
    /// Output tokens of the C-Abstractor; a perfect square (the patch count keeps the pool an identity).
    pub num_queries: usize,
    /// Squeeze-excitation ratio on the block's input channels.
    #[serde(default = "d_se")]
    pub se_ratio: f64,
    /// Epsilon of the channel LayerNorms.
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    /// Heads of the safety cross-attention.
    #[serde(default = "d_heads")]
    pub safety_heads: usize,
    /// Risk levels.
    #[serde(default = "d_levels")]
    pub num_levels: usize,
    /// Risk types.
    #[serde(default = "d_types")]
    pub num_types: usize,
    /// λ in `L_LLM + λ·(CE_level + CE_type)`.
    #[serde(default = "d_lambda")]
    pub cls_loss_weight: f64,
    /// How the head pools its query rows.
    #[serde(default)]
    pub query_mode: QueryMode,
    /// The LLM sees the patch grid average-pooled k×k before the projector (1 = every patch, the paper); the safety
    /// branch always reads every patch. A psa-vlm option to keep CPU sequences short.
    #[serde(default = "d_pool")]
    pub llm_image_pool: usize,
}

fn d_pool() -> usize {
    1
}

fn d_tokens() -> usize {
    64
}
fn d_depth() -> usize {
    3
}
fn d_mlp_depth() -> usize {
    2
}
fn d_se() -> f64 {
    0.25
}
fn d_eps() -> f64 {
    1e-5
}
fn d_heads() -> usize {
    8
}
fn d_levels() -> usize {
    4
}
fn d_types() -> usize {
    7
}
fn d_lambda() -> f64 {
    10.0
}

impl SafetyConfig {
    /// The reference sizes for a vision tower of width `vision_dim` with `patches` patch tokens and an LLM of
    /// width `llm_dim` (7B: `SafetyConfig::for_model(1024, 576, 4096)`).
    pub fn for_model(vision_dim: usize, patches: usize, llm_dim: usize) -> Self {
        Self {
            num_safety_tokens: d_tokens(),
            safety_dim: llm_dim,
            vision_dim,
            abstractor_width: vision_dim + d_tokens(),
            abstractor_depth: d_depth(),
            abstractor_mlp_depth: d_mlp_depth(),
            num_queries: patches,
            se_ratio: d_se(),
            norm_eps: d_eps(),
            safety_heads: d_heads(),
            num_levels: d_levels(),
            num_types: d_types(),
            cls_loss_weight: d_lambda(),
            query_mode: QueryMode::Position0,
            llm_image_pool: d_pool(),
        }
    }

    /// The same configuration with `n` safety tokens per set and the reference abstractor width.
    pub fn with_safety_tokens(mut self, n: usize) -> Self {
        self.num_safety_tokens = n;
        self.abstractor_width = self.vision_dim + n;
        self
    }

    /// Side of the C-Abstractor's output grid.
    pub fn query_grid(&self) -> usize {
        (self.num_queries as f64).sqrt().round() as usize
    }

    /// Checks the sizes fit together.
    pub fn validate(&self) -> Result<(), CoreError> {
        let invalid = |reason: String| Err(CoreError::Invalid { what: "safety config", reason });
        let g = self.query_grid();
        if g * g != self.num_queries || g == 0 {
            return invalid(format!("num_queries {} is not a positive perfect square", self.num_queries));
        }
        if self.safety_heads == 0 || !self.safety_dim.is_multiple_of(self.safety_heads) {
            return invalid(format!("safety_dim {} is not divisible by {} heads", self.safety_dim, self.safety_heads));
        }
        if self.num_safety_tokens == 0 || self.abstractor_depth == 0 || self.abstractor_mlp_depth == 0 {
            return invalid("token count, abstractor depth and readout depth must be positive".into());
        }
        if self.llm_image_pool == 0 {
            return invalid("llm_image_pool must be at least 1".into());
        }
        if self.num_levels < 2 || self.num_types < 2 {
            return invalid("a classifier needs at least two classes".into());
        }
        Ok(())
    }
}
