//! LoRA for the LLM's linear layers, computed on the activation side: `y = W·x + (α/r)·B·A·dropout(x)`.
//!
//! Burn's built-in `apply_lora` composes the dense `W + (α/r)·a·b` on every forward and keeps a weight-sized
//! gradient alive in backward; the activation-side form only adds `r`-wide activations, which is what makes
//! stage II (r = 256 on every projection of a 7B model) fit in training memory. It also gives PEFT's dropout.
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer, LinearConfig};
use burn::tensor::module::linear;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::precision::{to_dtype, to_f32};

/// The LLaMA projections LoRA can adapt (`lm_head` is never one of them).
pub const LINEAR_TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// Which projections get adapters: every linear of the decoder layers, or a list of names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LoraTargets {
    /// `"all-linear"`: q/k/v/o/gate/up/down projections of every layer (not `lm_head`).
    AllLinear(String),
    /// Explicit module names, e.g. `["q_proj", "v_proj"]`.
    Names(Vec<String>),
}

impl LoraTargets {
    /// Whether the projection named `name` is adapted.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Self::AllLinear(_) => LINEAR_TARGETS.contains(&name),
            Self::Names(n) => n.iter().any(|t| t == name),
        }
    }

    /// The names as a list (PEFT's `target_modules`).
    pub fn names(&self) -> Vec<String> {
        LINEAR_TARGETS.iter().filter(|t| self.contains(t)).map(|t| t.to_string()).collect()
    }
}

/// LoRA hyper-parameters (PEFT names; the paper: r 256, α 16, dropout 0.05, all linear layers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank.
    pub r: usize,
    /// Scale numerator: the update is multiplied by `lora_alpha / r`.
    pub lora_alpha: f64,
    /// Dropout on the adapter's input during training.
    pub lora_dropout: f64,
    /// Adapted projections.
    pub target_modules: LoraTargets,
}

impl LoraConfig {
    /// The paper's stage-II settings.
    pub fn paper() -> Self {
        Self {
            r: 256,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            target_modules: LoraTargets::AllLinear("all-linear".into()),
        }
    }

    /// `lora_alpha / r`.
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    /// Checks the names and sizes.
    pub fn validate(&self) -> Result<(), LoraError> {
        if self.r == 0 {
            return Err(LoraError::ZeroRank);
        }
        if let LoraTargets::AllLinear(s) = &self.target_modules
            && s != "all-linear"
        {
            return Err(LoraError::Targets(s.clone()));
        }
        if let LoraTargets::Names(names) = &self.target_modules
            && let Some(bad) = names.iter().find(|n| !LINEAR_TARGETS.contains(&n.as_str()))
        {
            return Err(LoraError::NotATarget(bad.clone()));
        }
        Ok(())
    }
}

/// A LoRA configuration that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoraError {
    /// `r = 0`.
    #[error("LoRA rank must be positive")]
    ZeroRank,
    /// A `target_modules` string other than `all-linear`.
    #[error("unknown target_modules {0:?}: use \"all-linear\" or a list of names")]
    Targets(String),
    /// A module LoRA cannot adapt.
    #[error("cannot adapt {0:?}: LoRA targets are {LINEAR_TARGETS:?} (lm_head is excluded)")]
    NotATarget(String),
}

/// One adapter: `lora_a` (in → r, PEFT `lora_A`) and `lora_b` (r → out, PEFT `lora_B`, zero-initialised).
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// Down projection, Kaiming-uniform like PEFT.
    pub lora_a: burn::nn::Linear,
    /// Up projection, zeros at start so the adapted model equals the base.
    pub lora_b: burn::nn::Linear,
    dropout: Dropout,
    scale: f64,
}

impl LoraAdapter {
    /// A fresh adapter for a `d_in → d_out` projection.
    pub fn new(d_in: usize, d_out: usize, cfg: &LoraConfig, device: &Device) -> Self {
        let lora_a = LinearConfig::new(d_in, cfg.r).with_bias(false).init(device);
        // Drawn now, not on first use: the draw then does not depend on how the first step runs the LLM.
        let _ = lora_a.weight.val();
        Self {
            lora_a,
            lora_b: LinearConfig::new(cfg.r, d_out).with_bias(false).with_initializer(Initializer::Zeros).init(device),
            dropout: DropoutConfig::new(cfg.lora_dropout).init(),
            scale: cfg.scale(),
        }
    }

    /// The update `(α/r)·B·A·dropout(x)`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.lora_b.forward(self.lora_a.forward(self.dropout.forward(x))) * self.scale
    }

    /// The dense update in Burn's `[in, out]` layout, for merging.
    pub fn delta_weight(&self) -> Tensor<2> {
        self.lora_a.weight.val().matmul(self.lora_b.weight.val()) * self.scale
    }
}

/// A linear layer that may carry a LoRA adapter, PEFT's `lora.Linear`: `y = x·W + b + (α/r)·B·A·dropout(x)`.
///
/// It is named `Linear` and keeps `weight` (`[in, out]`, Burn's layout) and `bias` as fields so that weight files
/// see an ordinary linear layer: checkpoint keys and the `[out, in]` ↔ `[in, out]` transpose stay those of
/// `burn::nn::Linear`; the adapter's parameters sit under `lora` (`q_proj.lora.lora_a.weight`).
#[derive(Module, Debug)]
pub struct Linear {
    /// Base weight `[in, out]`, frozen in stage II.
    pub weight: Param<Tensor<2>>,
    /// Base bias `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// The adapter, when one is attached.
    pub lora: Option<LoraAdapter>,
}

impl From<burn::nn::Linear> for Linear {
    fn from(l: burn::nn::Linear) -> Self {
        Self { weight: l.weight, bias: l.bias, lora: None }
    }
}

impl Linear {
    /// A `d_in → d_out` layer with Burn's default initialisation and no adapter.
    pub fn new(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Self {
        LinearConfig::new(d_in, d_out).with_bias(bias).init(device).into()
    }

    /// `[in, out]`.
    pub fn dims(&self) -> [usize; 2] {
        self.weight.dims()
    }

    /// `x·W + b`, plus the adapter's update when there is one (computed in f32, the adapters' dtype, and rounded
    /// to the base layer's).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let base = |x| linear(x, self.weight.val(), self.bias.as_ref().map(Param::val));
        match &self.lora {
            Some(a) => {
                let dtype = x.dtype();
                base(x.clone()) + to_dtype(a.forward(to_f32(x)), dtype)
            }
            None => base(x),
        }
    }

    /// Attaches a fresh adapter.
    pub fn attach(&mut self, cfg: &LoraConfig, device: &Device) {
        let [d_in, d_out] = self.dims();
        self.lora = Some(LoraAdapter::new(d_in, d_out, cfg, device));
    }

    /// Folds the adapter into the weight (summed in f32, stored in the weight's dtype) and removes it.
    pub fn merge(&mut self) {
        if let Some(a) = self.lora.take() {
            let w = self.weight.val();
            let dtype = w.dtype();
            self.weight = Param::from_tensor(to_dtype(to_f32(w) + a.delta_weight().detach(), dtype));
        }
    }
}
