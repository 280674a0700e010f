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

    /// Applies the activation elementwise (on all threads for flex tensors, [`crate::cpu`]).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Gelu => gelu(x),
            Self::GeluTanh => activation::gelu_approximate(x),
            Self::QuickGelu => crate::cpu::map(x, quick_gelu, |x| x.clone() * activation::sigmoid(x * 1.702)),
            Self::Silu => crate::cpu::map(x, crate::cpu::silu, activation::silu),
            Self::Relu => activation::relu(x),
        }
    }

    /// Applies the activation to host values in place, on all threads.
    pub fn apply_host(&self, x: &mut [f32]) {
        use crate::cpu::map_slice as each;
        match self {
            Self::Gelu => each(x, gelu_erf),
            Self::GeluTanh => each(x, gelu_tanh),
            Self::QuickGelu => each(x, quick_gelu),
            Self::Silu => each(x, crate::cpu::silu),
            Self::Relu => each(x, |v| v.max(0.0)),
        }
    }
}

/// CLIP's `x·σ(1.702x)`.
#[inline(always)]
fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + crate::cpu::exp(-1.702 * x))
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715x³)))`.
fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
}

/// Exact (erf) GELU, on all threads for flex tensors ([`crate::cpu`]).
fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    crate::cpu::map(x, gelu_erf, activation::gelu)
}

/// `0.5·x·(1 + erf(x/√2))` with erf from Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5·10⁻⁷). Inlined, so
/// loops over it vectorise.
#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_7, -1.453_152_1, 1.061_405_4];
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let erf = 1.0 - poly * crate::cpu::exp(-z * z);
    0.5 * x * (1.0 + erf.copysign(x))
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn threaded_gelu_matches_burns_exact_gelu() {
        let device = Device::flex();
        let values: Vec<f32> = (0..40_000).map(|i| (i as f32 - 20_000.0) / 1_500.0).collect();
        let x = Tensor::<1>::from_data(TensorData::new(values, [40_000]), &device);
        let want: Vec<f32> = activation::gelu(x.clone()).into_data().try_into_vec().unwrap();
        let got: Vec<f32> = Activation::Gelu.forward(x).into_data().try_into_vec().unwrap();
        let worst = psa_core::compare::max_abs_diff(&got, &want).unwrap();
        assert!(worst < 2e-6, "threaded GELU differs from burn's by {worst}");
    }
}
