//! The vision tower's encoder layers on the host, for CPU inference: each weight copied once into the blocked
//! product's packed panels (q, k and v fused into one product), LayerNorm, attention and the MLP's activation on
//! all threads. The embeddings (patch convolution, class and position rows) still run on the tower itself.
//!
//! On a tensor backend every linear layer repacks its weight on each call; at one image (257 tokens) that packing
//! costs about as much as the product. The vision tower is frozen in both training stages, so a snapshot of its
//! weights stays valid for the model's life.
use burn::tensor::{Tensor, TensorData};

use super::VisionTower;
use crate::activation::Activation;
use crate::cpu::attention;
use crate::cpu::gemm::Strided;
use crate::cpu::layers::{Dense, Norm, dense, host_vec, layer_norm, norm, product, residual};
use crate::error::ModelError;
use crate::llava::LlavaForConditionalGeneration;

#[derive(Debug, Clone)]
struct Layer {
    norm1: Norm,
    /// q, k and v side by side: `[3d, d]`.
    qkv: Dense,
    out: Dense,
    /// DINOv2's LayerScale on the attention and MLP branches.
    scale1: Option<Vec<f32>>,
    norm2: Norm,
    fc1: Dense,
    fc2: Dense,
    scale2: Option<Vec<f32>>,
}

/// The vision tower up to the LLaVA feature layer, on the host.
#[derive(Debug, Clone)]
pub struct HostVision {
    /// The tower itself, for the embeddings.
    tower: VisionTower,
    layers: Vec<Layer>,
    heads: usize,
    eps: f32,
    act: Activation,
    keep_cls: bool,
}

impl HostVision {
    /// Copies the encoder layers up to the model's feature layer to the host.
    pub fn new(llava: &LlavaForConditionalGeneration) -> Result<Self, ModelError> {
        let run = llava.feature_layer();
        let (layers, heads, eps, act) = match &llava.vision_tower {
            VisionTower::Clip(m) => {
                let layers = &m.vision_model.encoder.layers;
                let first = layers.first().ok_or_else(|| ModelError::Input("the vision tower has no layers".into()))?;
                let host = layers[..run.min(layers.len())]
                    .iter()
                    .map(|l| {
                        let a = &l.self_attn;
                        Ok(Layer {
                            norm1: norm(&l.layer_norm1)?,
                            qkv: dense(&[&a.q_proj, &a.k_proj, &a.v_proj])?,
                            out: dense(&[&a.out_proj])?,
                            scale1: None,
                            norm2: norm(&l.layer_norm2)?,
                            fc1: dense(&[&l.mlp.fc1])?,
                            fc2: dense(&[&l.mlp.fc2])?,
                            scale2: None,
                        })
                    })
                    .collect::<Result<Vec<_>, ModelError>>()?;
                (host, first.self_attn.num_heads, m.layer_norm_eps(), first.mlp.act)
            }
            VisionTower::Dinov2(m) => {
                let layers = &m.encoder.layer;
                let first = layers.first().ok_or_else(|| ModelError::Input("the vision tower has no layers".into()))?;
                let host = layers[..run.min(layers.len())]
                    .iter()
                    .map(|l| {
                        let a = &l.attention.attention;
                        Ok(Layer {
                            norm1: norm(&l.norm1)?,
                            qkv: dense(&[&a.query, &a.key, &a.value])?,
                            out: dense(&[&l.attention.output.dense])?,
                            scale1: Some(host_vec(l.layer_scale1.lambda1.val())?),
                            norm2: norm(&l.norm2)?,
                            fc1: dense(&[&l.mlp.fc1])?,
                            fc2: dense(&[&l.mlp.fc2])?,
                            scale2: Some(host_vec(l.layer_scale2.lambda1.val())?),
                        })
                    })
                    .collect::<Result<Vec<_>, ModelError>>()?;
                (host, first.attention.attention.num_heads, m.layer_norm_eps(), first.mlp.act)
            }
        };
        Ok(Self { tower: llava.vision_tower.clone(), layers, heads, eps: eps as f32, act, keep_cls: llava.keeps_cls() })
    }

    /// The selected features of `pixel_values` (`[images, 3, h, w]` → `[images, tokens, d]`, CLS dropped unless
    /// the model keeps it), the same as [`LlavaForConditionalGeneration::selected_features`], on the pixels'
    /// device.
    pub fn selected_features(&self, pixel_values: Tensor<4>) -> Result<Tensor<3>, ModelError> {
        let device = pixel_values.device();
        let embeddings = self.tower.embed(pixel_values);
        let [b, t, d] = embeddings.dims();
        let mut x = host_vec(embeddings)?;
        for layer in &self.layers {
            self.layer(layer, &mut x, b, t);
        }
        if self.keep_cls {
            return Ok(Tensor::from_data(TensorData::new(x, [b, t, d]), &device));
        }
        let patches: Vec<f32> = x.chunks_exact(t * d).flat_map(|image| image[d..].iter().copied()).collect();
        Ok(Tensor::from_data(TensorData::new(patches, [b, t - 1, d]), &device))
    }

    /// One pre-norm encoder layer on `x` (`[b·t, d]`) in place.
    fn layer(&self, layer: &Layer, x: &mut [f32], b: usize, t: usize) {
        let d = layer.norm1.gamma.len();
        let (n, hd, w) = (b * t, d / self.heads, 3 * d);
        let qkv = product(&layer.qkv, &layer_norm(x, &layer.norm1, self.eps), n);
        let attended = attention::per_head_blocks(b, t, self.heads, hd, |r, head, first, rows| {
            let base = r * t * w + head * hd;
            let keys = Strided::rows(&qkv[base + d..], t, hd, w);
            let values = Strided::cols(&qkv[base + 2 * d..], t, hd, w);
            attention::attend(&qkv[base + first * w..], w, rows, &keys, &values, |_, _| true)
        });
        residual(x, &product(&layer.out, &attended, n), layer.scale1.as_deref());
        let mut hidden = product(&layer.fc1, &layer_norm(x, &layer.norm2, self.eps), n);
        self.act.apply_host(&mut hidden);
        residual(x, &product(&layer.fc2, &hidden, n), layer.scale2.as_deref());
    }
}
