//! DINOv2 vision transformer (`Dinov2Model`, transformers `models/dinov2/modeling_dinov2.py`).
//!
//! Differs from CLIP: biased patch conv, no pre-norm, LayerScale, exact GELU, final `layernorm` on all tokens,
//! position embeddings bicubically resized to the input grid (plain `torch` bicubic, no antialias, as
//! transformers 5.23 `Dinov2Embeddings.interpolate_pos_encoding` does).
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::interpolate::resize_grid;
use super::{VisionOutput, self_attention};
use crate::activation::Activation;
use crate::error::ConfigError;

/// `Dinov2Config`, key for key; unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dinov2Config {
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// MLP width as a multiple of `hidden_size`.
    #[serde(default = "four")]
    pub mlp_ratio: usize,
    /// Patch size.
    pub patch_size: usize,
    /// Pretraining resolution; sets the size of the position table.
    pub image_size: usize,
    /// Input channels.
    #[serde(default = "three")]
    pub num_channels: usize,
    /// MLP activation.
    #[serde(default = "gelu")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "eps6")]
    pub layer_norm_eps: f64,
    /// Biases on q, k, v.
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    /// SwiGLU feed-forward (the giant variant); not supported.
    #[serde(default)]
    pub use_swiglu_ffn: bool,
}

fn four() -> usize {
    4
}
fn three() -> usize {
    3
}
fn gelu() -> String {
    "gelu".into()
}
fn eps6() -> f64 {
    1e-6
}
fn yes() -> bool {
    true
}

impl Dinov2Config {
    /// DINOv2 ViT-S/14.
    pub fn vit_s_14() -> Self {
        Self {
            hidden_size: 384,
            num_hidden_layers: 12,
            num_attention_heads: 6,
            mlp_ratio: 4,
            patch_size: 14,
            image_size: 518,
            num_channels: 3,
            hidden_act: gelu(),
            layer_norm_eps: 1e-6,
            qkv_bias: true,
            use_swiglu_ffn: false,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        crate::config::check_epsilon("dinov2 config", "layer_norm_eps", self.layer_norm_eps)?;
        crate::config::check_sizes(
            "dinov2 config",
            &[
                ("hidden_size", self.hidden_size, 1 << 14),
                ("mlp_ratio", self.mlp_ratio, 16),
                ("num_hidden_layers", self.num_hidden_layers, 256),
                ("num_attention_heads", self.num_attention_heads, 256),
                ("num_channels", self.num_channels, 4),
                ("image_size", self.image_size, 4096),
                ("patch_size", self.patch_size, self.image_size.max(1)),
            ],
        )?;
        if self.use_swiglu_ffn {
            return Err(ConfigError::Unsupported {
                key: "use_swiglu_ffn",
                value: "true".into(),
                hint: "only the MLP feed-forward of DINOv2 S/B/L is implemented",
            });
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ConfigError::Invalid(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Ok(())
    }

    /// Builds the model with random weights.
    pub fn init(&self, device: &Device) -> Result<Dinov2Model, ConfigError> {
        self.validate()?;
        let act = Activation::from_hf(&self.hidden_act, "hidden_act")?;
        let d = self.hidden_size;
        let ln = || LayerNormConfig::new(d).with_epsilon(self.layer_norm_eps).init(device);
        let scale = || LayerScale { lambda1: Param::from_tensor(Tensor::ones([d], device)) };
        let lin = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        let side = self.image_size / self.patch_size;
        let layer = (0..self.num_hidden_layers)
            .map(|_| Dinov2Layer {
                norm1: ln(),
                attention: Dinov2Attention {
                    attention: Dinov2SelfAttention {
                        query: lin(d, d, self.qkv_bias),
                        key: lin(d, d, self.qkv_bias),
                        value: lin(d, d, self.qkv_bias),
                        num_heads: self.num_attention_heads,
                    },
                    output: Dinov2SelfOutput { dense: lin(d, d, true) },
                },
                layer_scale1: scale(),
                norm2: ln(),
                mlp: Dinov2Mlp { fc1: lin(d, d * self.mlp_ratio, true), fc2: lin(d * self.mlp_ratio, d, true), act },
                layer_scale2: scale(),
            })
            .collect();
        Ok(Dinov2Model {
            embeddings: Dinov2Embeddings {
                cls_token: Param::from_tensor(Tensor::zeros([1, 1, d], device)),
                mask_token: Param::from_tensor(Tensor::zeros([1, d], device)),
                position_embeddings: Param::from_tensor(Tensor::zeros([1, side * side + 1, d], device)),
                patch_embeddings: Dinov2PatchEmbeddings {
                    projection: Conv2dConfig::new([self.num_channels, d], [self.patch_size; 2])
                        .with_stride([self.patch_size; 2])
                        .init(device),
                },
            },
            encoder: Dinov2Encoder { layer },
            layernorm: ln(),
            layer_norm_eps: self.layer_norm_eps,
        })
    }
}

/// `Dinov2Model`: checkpoint keys `embeddings.*`, `encoder.layer.N.*`, `layernorm.*`.
#[derive(Module, Debug)]
pub struct Dinov2Model {
    /// Patch, CLS and position embeddings.
    pub embeddings: Dinov2Embeddings,
    /// Encoder layers.
    pub encoder: Dinov2Encoder,
    /// Final norm over all tokens.
    pub layernorm: LayerNorm,
    #[module(skip)]
    layer_norm_eps: f64,
}

/// `Dinov2Embeddings`.
#[derive(Module, Debug)]
pub struct Dinov2Embeddings {
    /// CLS token `[1, 1, d]`.
    pub cls_token: Param<Tensor<3>>,
    /// Mask token `[1, d]` (pretraining only; kept for checkpoint compatibility).
    pub mask_token: Param<Tensor<2>>,
    /// Position table `[1, side² + 1, d]` at the pretraining resolution.
    pub position_embeddings: Param<Tensor<3>>,
    /// Patch convolution with bias.
    pub patch_embeddings: Dinov2PatchEmbeddings,
}

/// `Dinov2PatchEmbeddings`.
#[derive(Module, Debug)]
pub struct Dinov2PatchEmbeddings {
    /// The patch convolution.
    pub projection: Conv2d,
}

/// `Dinov2Encoder`.
#[derive(Module, Debug)]
pub struct Dinov2Encoder {
    /// `encoder.layer.N`.
    pub layer: Vec<Dinov2Layer>,
}

/// `Dinov2Layer`.
#[derive(Module, Debug)]
pub struct Dinov2Layer {
    /// Norm before attention.
    pub norm1: LayerNorm,
    /// Attention block.
    pub attention: Dinov2Attention,
    /// Scale on the attention branch.
    pub layer_scale1: LayerScale,
    /// Norm before the MLP.
    pub norm2: LayerNorm,
    /// Feed-forward block.
    pub mlp: Dinov2Mlp,
    /// Scale on the MLP branch.
    pub layer_scale2: LayerScale,
}

/// `Dinov2Attention`.
#[derive(Module, Debug)]
pub struct Dinov2Attention {
    /// q, k, v projections.
    pub attention: Dinov2SelfAttention,
    /// Output projection.
    pub output: Dinov2SelfOutput,
}

/// `Dinov2SelfAttention`.
#[derive(Module, Debug)]
pub struct Dinov2SelfAttention {
    /// Query projection.
    pub query: Linear,
    /// Key projection.
    pub key: Linear,
    /// Value projection.
    pub value: Linear,
    pub(crate) num_heads: usize,
}

/// `Dinov2SelfOutput`.
#[derive(Module, Debug)]
pub struct Dinov2SelfOutput {
    /// Output projection.
    pub dense: Linear,
}

/// `Dinov2LayerScale`: per-channel scale `lambda1`.
#[derive(Module, Debug)]
pub struct LayerScale {
    /// Scale `[d]`.
    pub lambda1: Param<Tensor<1>>,
}

/// `Dinov2MLP`.
#[derive(Module, Debug)]
pub struct Dinov2Mlp {
    /// Up projection.
    pub fc1: Linear,
    /// Down projection.
    pub fc2: Linear,
    #[module(skip)]
    pub(crate) act: Activation,
}

impl Dinov2Embeddings {
    /// Position embeddings for a `grid_h × grid_w` patch grid, CLS row first: `[1 + grid_h·grid_w, d]`.
    pub fn position_embeddings_for(&self, grid_h: usize, grid_w: usize) -> Tensor<2> {
        let [_, n, d] = self.position_embeddings.dims();
        let table = self.position_embeddings.val().reshape([n, d]);
        let side = ((n - 1) as f64).sqrt().round() as usize;
        if side * side == grid_h * grid_w && grid_h == grid_w {
            return table;
        }
        let device = table.device();
        let cls = table.clone().slice([0..1, 0..d]);
        let patches = resize_grid(table.slice([1..n, 0..d]), side, grid_h, grid_w, false, &device);
        Tensor::cat(vec![cls, patches], 0)
    }

    /// # Shapes
    /// - `pixel_values`: `[batch, channels, height, width]` → `[batch, 1 + grid_h·grid_w, d]`
    pub fn forward(&self, pixel_values: Tensor<4>) -> Tensor<3> {
        let patches = crate::precision::patch_embed(&self.patch_embeddings.projection, pixel_values);
        let [b, d, gh, gw] = patches.dims();
        let patches = patches.reshape([b, d, gh * gw]).swap_dims(1, 2);
        let cls = self.cls_token.val().expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, patches], 1);
        x + self.position_embeddings_for(gh, gw).unsqueeze::<3>()
    }
}

impl Dinov2Layer {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.norm1.forward(x.clone());
        let a = &self.attention.attention;
        let h = self_attention(
            crate::cpu::linear(&a.query, h.clone()),
            crate::cpu::linear(&a.key, h.clone()),
            crate::cpu::linear(&a.value, h),
            a.num_heads,
        );
        let h = crate::cpu::linear(&self.attention.output.dense, h);
        let x = x + h * self.layer_scale1.lambda1.val().unsqueeze::<3>();
        let h = crate::cpu::linear(
            &self.mlp.fc2,
            self.mlp.act.forward(crate::cpu::linear(&self.mlp.fc1, self.norm2.forward(x.clone()))),
        );
        x + h * self.layer_scale2.lambda1.val().unsqueeze::<3>()
    }
}

impl Dinov2Model {
    /// The epsilon of every LayerNorm.
    pub fn layer_norm_eps(&self) -> f64 {
        self.layer_norm_eps
    }

    /// Runs the embeddings and the first `layers` encoder layers (all when `None`).
    ///
    /// `hidden_states[0]` is the embedding output; `last_hidden_state` (after `layernorm`) is set only when
    /// every layer ran.
    pub fn forward(&self, pixel_values: Tensor<4>, layers: Option<usize>) -> VisionOutput {
        let total = self.encoder.layer.len();
        let run = layers.unwrap_or(total).min(total);
        let mut x = self.embeddings.forward(pixel_values);
        let mut hidden_states = vec![x.clone()];
        for layer in &self.encoder.layer[..run] {
            x = layer.forward(x);
            hidden_states.push(x.clone());
        }
        let last_hidden_state = (run == total).then(|| self.layernorm.forward(x));
        VisionOutput { hidden_states, last_hidden_state }
    }
}
