//! The float precision of the frozen weights, and the rule that keeps everything trained in f32.
//!
//! A model loaded in half precision stores the frozen parts (vision tower, LLaVA projector, language model) in
//! f16 or bf16 and computes them in that dtype, as transformers does with `torch_dtype=torch.bfloat16`. The parts a
//! training stage updates (the safety tokens, the safety projector and head, LoRA adapters) stay in f32, with their
//! optimiser state; so do losses, attention probabilities and normalisation statistics. Tensors are cast where one
//! part hands its output to the next.
use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::conv::Conv2d;
use burn::tensor::{DType, Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::UnsupportedDtype;

/// The dtype frozen weights are stored and computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats everywhere.
    #[default]
    F32,
    /// IEEE half precision for the frozen weights.
    F16,
    /// bfloat16 for the frozen weights.
    Bf16,
}

impl Precision {
    /// Every precision, in the order the CLI lists them.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::Bf16];

    /// The Burn dtype.
    pub fn dtype(self) -> DType {
        self.float().into()
    }

    /// The Burn float dtype.
    pub fn float(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::F16 => FloatDType::F16,
            Self::Bf16 => FloatDType::BF16,
        }
    }

    /// Bytes per frozen weight.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }

    /// The precision whose dtype is `dtype`, if it is one of the three.
    pub fn of(dtype: DType) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.dtype() == dtype)
    }

    /// Fails, naming the closest precision the device holds, when `device` cannot hold tensors of this dtype (bf16 on
    /// most Vulkan drivers).
    pub fn check(self, device: &Device) -> Result<(), UnsupportedDtype> {
        if device.supports_dtype(self.float()) {
            return Ok(());
        }
        let fallback = if self == Self::Bf16 && device.supports_dtype(FloatDType::F16) { Self::F16 } else { Self::F32 };
        Err(UnsupportedDtype { precision: self, device: format!("{device:?}"), fallback })
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = psa_core::UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Self::F32),
            "f16" | "float16" | "fp16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => {
                Err(psa_core::UnknownName { what: "dtype", given: other.into(), expected: "f32, f16 or bf16".into() })
            }
        }
    }
}

/// Whether a parameter (module path) is trained by some stage and therefore always kept in f32: the safety
/// modules and LoRA adapters.
pub fn is_trainable_path(path: &str) -> bool {
    path.starts_with("safety.") || path.contains(".lora.")
}

/// The dtype a parameter at `path` gets under `precision`.
pub fn dtype_for(path: &str, precision: Precision) -> DType {
    if is_trainable_path(path) { DType::F32 } else { precision.dtype() }
}

/// `x` in `dtype` (no-op when it already is).
pub fn to_dtype<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

/// `x` in f32 (no-op when it already is).
pub fn to_f32<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    to_dtype(x, DType::F32)
}

/// A vision tower's patch embedding: computed in f32 whatever the weights' dtype (its sums run over
/// `3 · patch²` products, and some backends accumulate half-precision convolutions in half precision: on wgpu that
/// alone put f16 features 6× further from f32 than transformers' f16 run), the output in the weights' dtype.
pub fn patch_embed(conv: &Conv2d, pixels: Tensor<4>) -> Tensor<4> {
    let dtype = conv.weight.val().dtype();
    if dtype == DType::F32 {
        return conv.forward(to_f32(pixels));
    }
    // The cast stays in the graph, so a trained tower would still receive its gradient.
    struct Widen;
    impl ModuleMapper for Widen {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(to_f32)
        }
    }
    to_dtype(conv.clone().map(&mut Widen).forward(to_f32(pixels)), dtype)
}

/// Casts the frozen float parameters of `module` to `precision` and the trainable ones ([`is_trainable_path`]) to
/// f32, keeping ids and trainability.
pub fn cast_frozen<M: Module>(module: M, precision: Precision) -> M {
    module.map(&mut Caster { precision, path: Vec::new() })
}

struct Caster {
    precision: Precision,
    path: Vec<String>,
}

impl ModuleMapper for Caster {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.path.push(name.to_string());
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.path.pop();
        }
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = dtype_for(&self.path.join("."), self.precision);
        // A fresh leaf in the new dtype, trainable if the old one was.
        param.map(|t| {
            let grad = t.is_require_grad();
            let cast = to_dtype(t.detach(), dtype);
            if grad { cast.require_grad() } else { cast }
        })
    }
}
