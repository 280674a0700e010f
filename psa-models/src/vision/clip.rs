//! CLIP vision transformer (`CLIPVisionModel`, transformers `models/clip/modeling_clip.py`).
//!
//! Field names mirror the checkpoint keys (`vision_model.embeddings.patch_embedding`, `pre_layrnorm` sic, ...).
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::{VisionOutput, self_attention};
use crate::activation::Activation;
use crate::error::ConfigError;

/// `CLIPVisionConfig`, key for key; unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Input channels.
    #[serde(default = "three")]
    pub num_channels: usize,
    /// Input resolution (square).
    pub image_size: usize,
    /// Patch size.
    pub patch_size: usize,
    /// MLP activation.
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "eps5")]
    pub layer_norm_eps: f64,
}

fn three() -> usize {
    3
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps5() -> f64 {
    1e-5
}

impl ClipVisionConfig {
    /// CLIP ViT-L/14 at 336 px, the LLaVA-1.5 vision tower.
    pub fn vit_l_14_336() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 336,
            patch_size: 14,
            hidden_act: quick_gelu(),
            layer_norm_eps: 1e-5,
        }
    }

    /// Patches per image side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Checks every size is positive and sane and the patch fits the image.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::config::check_epsilon("vision config", "layer_norm_eps", self.layer_norm_eps)?;
        crate::config::check_sizes(
            "vision config",
            &[
                ("hidden_size", self.hidden_size, 1 << 14),
                ("intermediate_size", self.intermediate_size, 1 << 16),
                ("num_hidden_layers", self.num_hidden_layers, 256),
                ("num_attention_heads", self.num_attention_heads, 256),
                ("num_channels", self.num_channels, 4),
                ("image_size", self.image_size, 4096),
                ("patch_size", self.patch_size, self.image_size.max(1)),
            ],
        )
    }

    /// Builds the model with random weights.
    pub fn init(&self, device: &Device) -> Result<ClipVisionModel, ConfigError> {
        self.validate()?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ConfigError::Invalid(format!(
                "vision hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        let act = Activation::from_hf(&self.hidden_act, "vision_config.hidden_act")?;
        let d = self.hidden_size;
        let ln = || LayerNormConfig::new(d).with_epsilon(self.layer_norm_eps).init(device);
        let num_positions = self.grid() * self.grid() + 1;
        let layers = (0..self.num_hidden_layers)
            .map(|_| ClipEncoderLayer {
                self_attn: ClipAttention {
                    q_proj: LinearConfig::new(d, d).init(device),
                    k_proj: LinearConfig::new(d, d).init(device),
                    v_proj: LinearConfig::new(d, d).init(device),
                    out_proj: LinearConfig::new(d, d).init(device),
                    num_heads: self.num_attention_heads,
                },
                layer_norm1: ln(),
                mlp: ClipMlp {
                    fc1: LinearConfig::new(d, self.intermediate_size).init(device),
                    fc2: LinearConfig::new(self.intermediate_size, d).init(device),
                    act,
                },
                layer_norm2: ln(),
            })
            .collect();
        Ok(ClipVisionModel {
            vision_model: ClipVisionTransformer {
                embeddings: ClipVisionEmbeddings {
                    class_embedding: Param::from_tensor(Tensor::zeros([d], device)),
                    patch_embedding: Conv2dConfig::new([self.num_channels, d], [self.patch_size; 2])
                        .with_stride([self.patch_size; 2])
                        .with_bias(false)
                        .init(device),
                    position_embedding: EmbeddingConfig::new(num_positions, d).init(device),
                },
                pre_layrnorm: ln(),
                encoder: ClipEncoder { layers },
                post_layernorm: ln(),
            },
            layer_norm_eps: self.layer_norm_eps,
        })
    }
}

/// `CLIPVisionModel`: checkpoint prefix `vision_model.`.
#[derive(Module, Debug)]
pub struct ClipVisionModel {
    /// The transformer.
    pub vision_model: ClipVisionTransformer,
    #[module(skip)]
    layer_norm_eps: f64,
}

/// `CLIPVisionTransformer`.
#[derive(Module, Debug)]
pub struct ClipVisionTransformer {
    /// Patch, class and position embeddings.
    pub embeddings: ClipVisionEmbeddings,
    /// LayerNorm before the encoder (spelled `pre_layrnorm` in every checkpoint).
    pub pre_layrnorm: LayerNorm,
    /// Encoder layers.
    pub encoder: ClipEncoder,
    /// LayerNorm applied to the pooled CLS token.
    pub post_layernorm: LayerNorm,
}

/// `CLIPVisionEmbeddings`.
#[derive(Module, Debug)]
pub struct ClipVisionEmbeddings {
    /// Learned CLS embedding `[d]`.
    pub class_embedding: Param<Tensor<1>>,
    /// Bias-free patch convolution.
    pub patch_embedding: Conv2d,
    /// Learned absolute positions `[grid² + 1, d]`.
    pub position_embedding: Embedding,
}

/// `CLIPEncoder`.
#[derive(Module, Debug)]
pub struct ClipEncoder {
    /// `encoder.layers.N`.
    pub layers: Vec<ClipEncoderLayer>,
}

/// `CLIPEncoderLayer`: pre-norm attention and MLP blocks.
#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    /// Self-attention.
    pub self_attn: ClipAttention,
    /// Norm before attention.
    pub layer_norm1: LayerNorm,
    /// Feed-forward block.
    pub mlp: ClipMlp,
    /// Norm before the MLP.
    pub layer_norm2: LayerNorm,
}

/// `CLIPAttention` with biased projections.
#[derive(Module, Debug)]
pub struct ClipAttention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub out_proj: Linear,
    pub(crate) num_heads: usize,
}

/// `CLIPMLP`.
#[derive(Module, Debug)]
pub struct ClipMlp {
    /// Up projection.
    pub fc1: Linear,
    /// Down projection.
    pub fc2: Linear,
    #[module(skip)]
    pub(crate) act: Activation,
}

impl ClipVisionEmbeddings {
    /// # Shapes
    /// - `pixel_values`: `[batch, channels, size, size]` → `[batch, grid² + 1, d]`
    pub fn forward(&self, pixel_values: Tensor<4>) -> Tensor<3> {
        let patches = crate::precision::patch_embed(&self.patch_embedding, pixel_values);
        let [b, d, gh, gw] = patches.dims();
        let n = gh * gw;
        let [num_positions, _] = self.position_embedding.weight.dims();
        assert_eq!(
            n + 1,
            num_positions,
            "CLIP expects {} patches for its position table, got a {gh}×{gw} grid",
            num_positions - 1
        );
        let patches = patches.reshape([b, d, n]).swap_dims(1, 2);
        let cls = self.class_embedding.val().reshape([1, 1, d]).expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, patches], 1);
        let device = x.device();
        let positions = Tensor::<1, Int>::arange(0..num_positions as i64, &device).reshape([1, num_positions]);
        x + self.position_embedding.forward(positions)
    }
}

impl ClipEncoderLayer {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.layer_norm1.forward(x.clone());
        let a = &self.self_attn;
        let h = self_attention(
            crate::cpu::linear(&a.q_proj, h.clone()),
            crate::cpu::linear(&a.k_proj, h.clone()),
            crate::cpu::linear(&a.v_proj, h),
            a.num_heads,
        );
        let x = x + crate::cpu::linear(&a.out_proj, h);
        let h = self.layer_norm2.forward(x.clone());
        x + crate::cpu::linear(&self.mlp.fc2, self.mlp.act.forward(crate::cpu::linear(&self.mlp.fc1, h)))
    }
}

impl ClipVisionModel {
    /// The epsilon of every LayerNorm.
    pub fn layer_norm_eps(&self) -> f64 {
        self.layer_norm_eps
    }

    /// Runs the embeddings and the first `layers` encoder layers (all when `None`).
    ///
    /// `hidden_states[0]` is the output of `pre_layrnorm`; `last_hidden_state` is set only when every layer ran.
    pub fn forward(&self, pixel_values: Tensor<4>, layers: Option<usize>) -> VisionOutput {
        let vm = &self.vision_model;
        let total = vm.encoder.layers.len();
        let run = layers.unwrap_or(total).min(total);
        let mut x = self.embed(pixel_values);
        let mut hidden_states = vec![x.clone()];
        for layer in &vm.encoder.layers[..run] {
            x = layer.forward(x);
            hidden_states.push(x.clone());
        }
        VisionOutput { last_hidden_state: (run == total).then_some(x), hidden_states }
    }

    /// The encoder's input: embeddings after `pre_layrnorm`, `[batch, grid² + 1, d]`.
    pub fn embed(&self, pixel_values: Tensor<4>) -> Tensor<3> {
        let vm = &self.vision_model;
        vm.pre_layrnorm.forward(vm.embeddings.forward(pixel_values))
    }

    /// `post_layernorm` applied to the CLS token of `last_hidden_state`.
    ///
    /// # Shapes
    /// - `last_hidden_state`: `[batch, tokens, d]` → `[batch, d]`
    pub fn pooler_output(&self, last_hidden_state: Tensor<3>) -> Tensor<2> {
        let [b, _, d] = last_hidden_state.dims();
        let cls = last_hidden_state.slice([0..b, 0..1, 0..d]).reshape([b, d]);
        self.vision_model.post_layernorm.forward(cls)
    }
}
