//! A CPU engine for generation: the LLaMA decoder's weights copied to host memory (f32, or quantised to ggml's
//! Q8_0), a preallocated key/value cache, and multi-threaded kernels for the prefill and the decode steps.
//!
//! One decode step multiplies every weight by a single activation row per sequence. Tensor backends run that as a
//! matrix product too small to split over threads, so the step is bound by one core; here the output rows of each
//! projection are spread over all threads, keys and values are written in place, and grouped-query heads read
//! their shared key/value head without copying it. The prefill ([`HostDecoder::prefill`]) runs each projection as
//! one blocked product over every prompt row, straight from the stored weights (Q8_0 blocks are unpacked one panel
//! at a time). A cache prefilled on a tensor backend can be taken over too ([`HostDecoder::cache_from`]). For training
//! through a frozen LLM, [`HostLmLoss`] keeps each weight's transpose as well and returns the next-token loss with its
//! gradient with respect to the input embeddings.
mod backward;
mod kernels;
mod prefill;

use burn::module::Param;
use burn::nn::RmsNorm;
use burn::tensor::Tensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use backward::HostLmLoss;
pub use kernels::HostMatrix;

use super::rope::Rope;
use super::{KvCache, LlamaForCausalLM};
use crate::cpu;
use crate::cpu::gemm::Strided;
use crate::cpu::layers::host_vec;
use crate::error::ModelError;
use crate::mask::PaddingMask;

/// How the host decoder stores the LLM's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostWeights {
    /// The model's f32 values.
    #[default]
    F32,
    /// ggml Q8_0 blocks (about a quarter of the f32 bytes); a matrix whose rows are not whole 32-element blocks
    /// stays in f32.
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl std::str::FromStr for HostWeights {
    type Err = psa_core::UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            other => Err(psa_core::UnknownName {
                what: "host weight format",
                given: other.into(),
                expected: "f32 or q8_0".into(),
            }),
        }
    }
}

#[derive(Debug, Clone)]
struct Projection {
    weight: HostMatrix,
    bias: Option<Vec<f32>>,
    /// The weight transposed (`[in, out]` rows), for products with output gradients ([`HostLmLoss`]).
    transposed: Option<HostMatrix>,
}

impl Projection {
    /// The transposed weight; present on every projection of a decoder built for gradients.
    fn back(&self) -> &HostMatrix {
        self.transposed.as_ref().expect("a decoder built for gradients keeps every transposed weight")
    }
}

#[derive(Debug, Clone)]
struct HostLayer {
    q: Projection,
    k: Projection,
    v: Projection,
    o: Projection,
    gate: Projection,
    up: Projection,
    down: Projection,
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
}

/// The decoder on the host, for prefill and decode steps.
#[derive(Debug, Clone)]
pub struct HostDecoder {
    layers: Vec<HostLayer>,
    embed: HostMatrix,
    /// The embedding table transposed, `[d, vocab]` rows, when tied embeddings need gradients.
    embed_transposed: Option<HostMatrix>,
    lm_head: Option<Projection>,
    norm: Vec<f32>,
    eps: f32,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rope: Rope,
    format: HostWeights,
}

/// Keys and values per layer, `[batch, kv_heads, capacity, head_dim]`, filled up to `len`.
#[derive(Debug, Clone)]
pub struct HostCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    batch: usize,
    capacity: usize,
    len: usize,
}

impl HostCache {
    /// Cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A `Linear` on the host: Burn stores its weight `[in, out]`, whose columns are the output features' rows, so f32
/// panels are packed straight from it; Q8_0 quantises rows of `[out, in]`. With `transposed` (f32 only), the
/// stored `[in, out]` rows are kept packed too.
fn matrix(
    (weight, bias): (&Param<Tensor<2>>, &Option<Param<Tensor<1>>>),
    format: HostWeights,
    transposed: bool,
) -> Result<Projection, ModelError> {
    let [d_in, d_out] = weight.dims();
    let data = host_vec(weight.val())?;
    let weight = match format {
        HostWeights::Q8_0 if d_in.is_multiple_of(kernels::Q8_BLOCK) => {
            let mut rows = vec![0f32; data.len()];
            for (i, row) in data.chunks_exact(d_out).enumerate() {
                row.iter().enumerate().for_each(|(o, &v)| rows[o * d_in + i] = v);
            }
            HostMatrix::q8_0(d_out, d_in, &rows)?
        }
        _ => HostMatrix::packed(&Strided::cols(&data, d_in, d_out, d_out)),
    };
    let transposed = transposed.then(|| HostMatrix::packed(&Strided::rows(&data, d_in, d_out, d_out)));
    let bias = bias.as_ref().map(|b| host_vec(b.val())).transpose()?;
    Ok(Projection { weight, bias, transposed })
}

/// Q8_0 needs rows of whole 32-element blocks; a matrix whose rows are not stays in f32 (as llama.cpp does).
fn host_matrix(rows: usize, cols: usize, data: &[f32], format: HostWeights) -> Result<HostMatrix, ModelError> {
    match format {
        HostWeights::Q8_0 if cols.is_multiple_of(kernels::Q8_BLOCK) => HostMatrix::q8_0(rows, cols, data),
        _ => Ok(HostMatrix::packed(&Strided::rows(data, rows, cols, cols))),
    }
}

fn norm(n: &RmsNorm) -> Result<Vec<f32>, ModelError> {
    host_vec(n.gamma.val())
}

impl HostDecoder {
    /// Copies the decoder's weights to the host in `format`. Adapters must be merged first
    /// ([`LlamaForCausalLM::merge_lora`]).
    pub fn new(lm: &LlamaForCausalLM, format: HostWeights) -> Result<Self, ModelError> {
        Self::build(lm, format, false)
    }

    /// [`HostDecoder::new`], keeping each f32 weight transposed as well when `transposed` (for gradients).
    fn build(lm: &LlamaForCausalLM, format: HostWeights, transposed: bool) -> Result<Self, ModelError> {
        let model = &lm.model;
        let first = model.layers.first().ok_or_else(|| ModelError::HostDecoder("the model has no layers".into()))?;
        let a = &first.self_attn;
        if lm.has_lora() {
            return Err(ModelError::HostDecoder("merge the LoRA adapters into the weights first".into()));
        }
        let mut layers = Vec::with_capacity(model.layers.len());
        for layer in &model.layers {
            let (at, m) = (&layer.self_attn, &layer.mlp);
            layers.push(HostLayer {
                q: matrix((&at.q_proj.weight, &at.q_proj.bias), format, transposed)?,
                k: matrix((&at.k_proj.weight, &at.k_proj.bias), format, transposed)?,
                v: matrix((&at.v_proj.weight, &at.v_proj.bias), format, transposed)?,
                o: matrix((&at.o_proj.weight, &at.o_proj.bias), format, transposed)?,
                gate: matrix((&m.gate_proj.weight, &m.gate_proj.bias), format, transposed)?,
                up: matrix((&m.up_proj.weight, &m.up_proj.bias), format, transposed)?,
                down: matrix((&m.down_proj.weight, &m.down_proj.bias), format, transposed)?,
                input_norm: norm(&layer.input_layernorm)?,
                post_norm: norm(&layer.post_attention_layernorm)?,
            });
        }
        let [vocab, d] = model.embed_tokens.weight.dims();
        let table = host_vec(model.embed_tokens.weight.val())?;
        let embed = host_matrix(vocab, d, &table, format)?;
        let lm_head = lm.lm_head.as_ref().map(|h| matrix((&h.weight, &h.bias), format, transposed)).transpose()?;
        let embed_transposed =
            (transposed && lm_head.is_none()).then(|| HostMatrix::packed(&Strided::cols(&table, vocab, d, d)));
        Ok(Self {
            layers,
            embed,
            embed_transposed,
            lm_head,
            norm: norm(&model.norm)?,
            eps: model.norm.epsilon as f32,
            heads: a.num_heads,
            kv_heads: a.num_kv_heads,
            head_dim: a.head_dim,
            rope: Rope::new(model.head_dim, model.rope_theta),
            format,
        })
    }

    /// The weight format.
    pub fn format(&self) -> HostWeights {
        self.format
    }

    /// Bytes of weights held.
    pub fn weight_bytes(&self) -> usize {
        let p = |p: &Projection| p.weight.bytes();
        let layers: usize = self
            .layers
            .iter()
            .map(|l| p(&l.q) + p(&l.k) + p(&l.v) + p(&l.o) + p(&l.gate) + p(&l.up) + p(&l.down))
            .sum();
        layers + self.embed.bytes() + self.lm_head.as_ref().map_or(0, p)
    }

    /// A host cache holding the tensor cache's positions, with room for `extra` more.
    pub fn cache_from(&self, cache: &KvCache, extra: usize) -> Result<HostCache, ModelError> {
        let (len, kv, hd) = (cache.len(), self.kv_heads, self.head_dim);
        let capacity = len + extra;
        let mut host = HostCache { keys: Vec::new(), values: Vec::new(), batch: 0, capacity, len };
        for layer in 0..self.layers.len() {
            let (k, v) = cache.layer(layer).ok_or_else(|| ModelError::Input("the prefill cache is empty".into()))?;
            let [b, heads, t, d] = k.dims();
            if heads != kv || d != hd || t != len {
                return Err(ModelError::Input(format!("cache layer {layer} is {b}×{heads}×{t}×{d}")));
            }
            host.batch = b;
            let copy = |src: Vec<f32>| {
                let mut dst = vec![0f32; b * kv * capacity * hd];
                for (row, chunk) in src.chunks_exact(t * hd).enumerate() {
                    dst[row * capacity * hd..][..t * hd].copy_from_slice(chunk);
                }
                dst
            };
            host.keys.push(copy(host_vec(k.clone())?));
            host.values.push(copy(host_vec(v.clone())?));
        }
        Ok(host)
    }

    /// One decode step: feeds token `ids[r]` to row `r` and returns the next-token logits, `[batch, vocab]`.
    ///
    /// `mask` covers the cached positions plus this one.
    pub fn step(&self, ids: &[u32], mask: &PaddingMask, cache: &mut HostCache) -> Result<Vec<f32>, ModelError> {
        let b = ids.len();
        if b != cache.batch || mask.batch() != b || mask.len() != cache.len + 1 {
            return Err(ModelError::Input(format!(
                "{b} ids, a {}×{} mask and a cache of {} rows × {} positions",
                mask.batch(),
                mask.len(),
                cache.batch,
                cache.len
            )));
        }
        if cache.len >= cache.capacity {
            return Err(ModelError::Input(format!("the host cache is full ({} positions)", cache.capacity)));
        }
        let vocab = self.embed.rows();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::Input(format!("token id {bad} outside the vocabulary of {vocab}")));
        }
        let (cos, sin) = self.rope.values(&mask.position_ids(1));
        let mut x: Vec<f32> = ids.iter().flat_map(|&id| self.embed.row(id as usize)).collect();
        let slot = cache.len;
        for (i, layer) in self.layers.iter().enumerate() {
            let y = rms_norm(&x, &layer.input_norm, self.eps);
            let q = self.queries_keys_values(layer, i, &y, (&cos, &sin), cache, |r| (r, slot));
            let h = project(&layer.o, &self.attend_last(&q, i, mask, cache), b);
            x.iter_mut().zip(&h).for_each(|(a, b)| *a += b);
            self.mlp(layer, &mut x, b);
        }
        cache.len += 1;
        Ok(self.logits(&x, b))
    }

    /// The next-token logits of `n` final hidden rows (before the final norm).
    fn logits(&self, x: &[f32], n: usize) -> Vec<f32> {
        let x = rms_norm(x, &self.norm, self.eps);
        match &self.lm_head {
            Some(head) => project(head, &x, n),
            None => self.embed.matmul(&x, n),
        }
    }

    /// Adds the SwiGLU MLP of `n` rows of `x` (post-attention norm included) to `x`.
    fn mlp(&self, layer: &HostLayer, x: &mut [f32], n: usize) {
        let y = rms_norm(x, &layer.post_norm, self.eps);
        let (gate, up) = (project(&layer.gate, &y, n), project(&layer.up, &y, n));
        let act: Vec<f32> = gate.iter().zip(&up).map(|(&g, &u)| cpu::silu(g) * u).collect();
        let down = project(&layer.down, &act, n);
        x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
    }

    /// Projects the normed rows `x` to queries, keys and values, rotates queries and keys (`cos`/`sin` hold one
    /// `head_dim` row per input row), writes each row's key and value at the cache slot `at(row)` = (batch row,
    /// position) of layer `index`, and returns the queries.
    fn queries_keys_values(
        &self,
        layer: &HostLayer,
        index: usize,
        x: &[f32],
        (cos, sin): (&[f32], &[f32]),
        cache: &mut HostCache,
        at: impl Fn(usize) -> (usize, usize),
    ) -> Vec<f32> {
        let (h, kv, hd, cap) = (self.heads, self.kv_heads, self.head_dim, cache.capacity);
        let n = x.len() / self.norm.len();
        let mut q = project(&layer.q, x, n);
        let mut k = project(&layer.k, x, n);
        let v = project(&layer.v, x, n);
        for row in 0..n {
            let (c, s) = (&cos[row * hd..(row + 1) * hd], &sin[row * hd..(row + 1) * hd]);
            q[row * h * hd..(row + 1) * h * hd].chunks_exact_mut(hd).for_each(|head| rotate(head, c, s));
            k[row * kv * hd..(row + 1) * kv * hd].chunks_exact_mut(hd).for_each(|head| rotate(head, c, s));
            let (r, slot) = at(row);
            for g in 0..kv {
                let dst = ((r * kv + g) * cap + slot) * hd;
                cache.keys[index][dst..dst + hd].copy_from_slice(&k[(row * kv + g) * hd..][..hd]);
                cache.values[index][dst..dst + hd].copy_from_slice(&v[(row * kv + g) * hd..][..hd]);
            }
        }
        q
    }

    /// Attention of one new position per batch row (queries `q`, `[batch, heads·head_dim]`) over the cache of
    /// layer `index`, the new position included; returns `[batch, heads·head_dim]`.
    fn attend_last(&self, q: &[f32], index: usize, mask: &PaddingMask, cache: &HostCache) -> Vec<f32> {
        let (b, h, kv, hd, cap, slot) =
            (cache.batch, self.heads, self.kv_heads, self.head_dim, cache.capacity, cache.len);
        let (keys, values) = (&cache.keys[index], &cache.values[index]);
        let rows = mask.rows();
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; b * h * hd];
        out.par_chunks_mut(hd).enumerate().for_each(|(i, o)| {
            let (r, head) = (i / h, i % h);
            let base = (r * kv + head / (h / kv)) * cap * hd;
            let qh = &q[i * hd..(i + 1) * hd];
            let mut weights: Vec<f32> =
                (0..=slot).map(|s| kernels::dot_f32(qh, &keys[base + s * hd..][..hd]) * scale).collect();
            cpu::softmax_visible(&mut weights, |s| rows[r][s]);
            for (s, &w) in weights.iter().enumerate().filter(|(_, w)| **w > 0.0) {
                let vs = &values[base + s * hd..][..hd];
                o.iter_mut().zip(vs).for_each(|(a, &v)| *a += w * v);
            }
        });
        out
    }
}

fn project(p: &Projection, x: &[f32], n: usize) -> Vec<f32> {
    let mut y = p.weight.matmul(x, n);
    if let Some(bias) = &p.bias {
        y.chunks_exact_mut(bias.len()).for_each(|row| row.iter_mut().zip(bias).for_each(|(a, b)| *a += b));
    }
    y
}

/// RMSNorm of each row, into a new buffer.
fn rms_norm(x: &[f32], gamma: &[f32], eps: f32) -> Vec<f32> {
    let mut y = x.to_vec();
    cpu::rms_norm_rows(&mut y, gamma, eps);
    y
}

/// Rotate-half RoPE on one head: dimension `i` pairs with `i + head_dim/2`.
fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}
