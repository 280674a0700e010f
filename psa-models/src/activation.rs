//! Activation functions named by Hugging Face `hidden_act` strings.
use burn::tensor::{Tensor, activation};
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// An activation selected by a config's `hidden_act` / `projector_hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// Exact GELU (erf), HF `gelu`.
    Gelu,
    /// Tanh-approximated GELU, HF `gelu_new` / `gelu_pytorch_tanh`.
    GeluTanh,
    /// CLIP's `x·σ(1.702x)`, HF `quick_gelu`.
    QuickGelu,
    /// SiLU / swish.
    Silu,
    /// ReLU.
    Relu,
}

impl Activation {
    /// The Hugging Face name of this activation.
    pub fn hf_name(&self) -> &'static str {
        match self {
            Self::Gelu => "gelu",
            Self::GeluTanh => "gelu_pytorch_tanh",
            Self::QuickGelu => "quick_gelu",
            Self::Silu => "silu",
            Self::Relu => "relu",
        }
    }

    /// Parses a Hugging Face activation name.
    pub fn from_hf(name: &str, key: &'static str) -> Result<Self, ConfigError> {
        Ok(match name {
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "quick_gelu" => Self::QuickGelu,
            "silu" | "swish" => Self::Silu,
            "relu" => Self::Relu,
            other => {
                return Err(ConfigError::Unsupported {
                    key,
                    value: other.to_string(),
                    hint: "supported: gelu, gelu_new, gelu_pytorch_tanh, quick_gelu, silu, relu",
                });
            }
        })
    }

    /// Applies the activation elementwise.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Gelu => activation::gelu(x),
            Self::GeluTanh => activation::gelu_approximate(x),
            Self::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
            Self::Silu => activation::silu(x),
            Self::Relu => activation::relu(x),
        }
    }
}
