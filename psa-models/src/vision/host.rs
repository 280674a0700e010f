//! The vision tower's encoder layers on the host, for CPU inference: each weight copied once into the blocked
//! product's packed panels (q, k and v fused into one product), LayerNorm, attention and the MLP's activation on
//! all threads. The embeddings (patch convolution, class and position rows) still run on the tower itself.
//!
//! On a tensor backend every linear layer repacks its weight on each call; at one image (257 tokens) that packing
//! costs about as much as the product. The vision tower is frozen in both training stages, so a snapshot of its
//! weights stays valid for the model's life.
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::VisionTower;
use crate::activation::Activation;
use crate::cpu::attention;
use crate::cpu::gemm::{self, Strided};
use crate::error::ModelError;
use crate::llama::host::HostMatrix;
use crate::llava::LlavaForConditionalGeneration;

/// Rows per parallel task of the row-wise kernels.
const ROWS_PER_TASK: usize = 16;

#[derive(Debug, Clone)]
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

#[derive(Debug, Clone)]
struct Dense {
    weight: HostMatrix,
    bias: Vec<f32>,
}

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

fn host_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, ModelError> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| ModelError::Input(format!("{e:?}")))
}

fn norm(n: &LayerNorm) -> Result<Norm, ModelError> {
    let gamma = host_vec(n.gamma.val())?;
    let beta = match &n.beta {
        Some(b) => host_vec(b.val())?,
        None => vec![0.0; gamma.len()],
    };
    Ok(Norm { gamma, beta })
}

/// Linear layers side by side (same input): Burn stores each weight `[in, out]`, so the fused weight's row `i` is
/// row `i` of each in turn.
fn dense(linears: &[&Linear]) -> Result<Dense, ModelError> {
    let d_in = linears[0].weight.dims()[0];
    let widths: Vec<usize> = linears.iter().map(|l| l.weight.dims()[1]).collect();
    let total: usize = widths.iter().sum();
    let mut data = vec![0f32; d_in * total];
    let mut bias = Vec::with_capacity(total);
    let mut offset = 0;
    for (l, &w) in linears.iter().zip(&widths) {
        let values = host_vec(l.weight.val())?;
        for (i, row) in values.chunks_exact(w).enumerate() {
            data[i * total + offset..][..w].copy_from_slice(row);
        }
        match &l.bias {
            Some(b) => bias.extend(host_vec(b.val())?),
            None => bias.extend(std::iter::repeat_n(0.0, w)),
        }
        offset += w;
    }
    Ok(Dense { weight: HostMatrix::packed(&Strided::cols(&data, d_in, total, total)), bias })
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

/// `x · W + bias` for `n` rows.
fn product(dense: &Dense, x: &[f32], n: usize) -> Vec<f32> {
    let width = dense.bias.len();
    let mut y = vec![0f32; n * width];
    gemm::matmul(x, dense.weight.cols(), n, &dense.weight, &mut y, true);
    y.par_chunks_mut(width * ROWS_PER_TASK).for_each(|rows| {
        rows.chunks_exact_mut(width).for_each(|row| row.iter_mut().zip(&dense.bias).for_each(|(a, b)| *a += b))
    });
    y
}

/// `x += h` (times a per-channel `scale` when given).
fn residual(x: &mut [f32], h: &[f32], scale: Option<&[f32]>) {
    match scale {
        Some(s) => x.par_chunks_mut(s.len()).zip(h.par_chunks(s.len())).for_each(|(x, h)| {
            x.iter_mut().zip(h).zip(s).for_each(|((x, h), s)| *x += h * s);
        }),
        None => x.par_chunks_mut(1 << 14).zip(h.par_chunks(1 << 14)).for_each(|(x, h)| {
            x.iter_mut().zip(h).for_each(|(x, h)| *x += h);
        }),
    }
}

/// LayerNorm of each row (biased variance, as PyTorch), into a new buffer.
fn layer_norm(x: &[f32], n: &Norm, eps: f32) -> Vec<f32> {
    let d = n.gamma.len();
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(d * ROWS_PER_TASK).zip(x.par_chunks(d * ROWS_PER_TASK)).for_each(|(y, x)| {
        for (y, x) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            let mean = x.iter().sum::<f32>() / d as f32;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for (((y, x), g), b) in y.iter_mut().zip(x).zip(&n.gamma).zip(&n.beta) {
                *y = (x - mean) * inv * g + b;
            }
        }
    });
    y
}
