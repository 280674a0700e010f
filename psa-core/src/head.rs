//! The safety head (`safe_part`): PyTorch `nn.MultiheadAttention` with packed `in_proj_weight`, then a risk-level
//! and a risk-type classifier on one pooled feature.
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::module::attention;
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{QueryMode, SafetyConfig};
use crate::init;

/// `nn.MultiheadAttention` (`batch_first`-agnostic) with PyTorch's packed projection weights.
#[derive(Module, Debug)]
pub struct PackedMultiheadAttention {
    /// `[3E, E]` in PyTorch layout: rows `0..E` = W_q, `E..2E` = W_k, `2E..3E` = W_v.
    pub in_proj_weight: Param<Tensor<2>>,
    /// `[3E]`: b_q, b_k, b_v.
    pub in_proj_bias: Param<Tensor<1>>,
    /// Output projection.
    pub out_proj: Linear,
    num_heads: usize,
}

impl PackedMultiheadAttention {
    fn new(dim: usize, heads: usize, device: &Device) -> Self {
        Self {
            in_proj_weight: Param::from_tensor(init::xavier_uniform([3 * dim, dim], device)),
            in_proj_bias: Param::from_tensor(Tensor::zeros([3 * dim], device)),
            out_proj: init::normal_linear(dim, dim, device),
            num_heads: heads,
        }
    }

    fn project(&self, x: Tensor<3>, part: usize) -> Tensor<3> {
        let [_, e] = self.in_proj_weight.dims();
        let w = self.in_proj_weight.val().slice([part * e..(part + 1) * e, 0..e]);
        let b = self.in_proj_bias.val().narrow(0, part * e, e);
        // 2-D, so the transposed slice stays a strided view (a batch axis on it forces a copy on some backends).
        let [n, t, _] = x.dims();
        (x.reshape([n * t, e]).matmul(w.transpose()) + b.unsqueeze::<2>()).reshape([n, t, e])
    }

    /// # Shapes
    /// - `query`: `[b, tq, e]`; `kv`: `[b, tk, e]` → `[b, tq, e]`
    pub fn forward(&self, query: Tensor<3>, kv: Tensor<3>) -> Tensor<3> {
        let [b, tq, e] = query.dims();
        let tk = kv.dims()[1];
        let (h, d) = (self.num_heads, e / self.num_heads);
        let q = self.project(query, 0).reshape([b, tq, h, d]).swap_dims(1, 2);
        let k = self.project(kv.clone(), 1).reshape([b, tk, h, d]).swap_dims(1, 2);
        let v = self.project(kv, 2).reshape([b, tk, h, d]).swap_dims(1, 2);
        let out = attention(q, k, v, None, None, Default::default());
        self.out_proj.forward(out.swap_dims(1, 2).reshape([b, tq, e]))
    }
}

/// The pooled feature and both classifiers' logits.
#[derive(Debug, Clone)]
pub struct ConceptLogits {
    /// Classification feature `z`, `[b, safety_dim]`.
    pub feature: Tensor<2>,
    /// Risk-level logits `[b, num_levels]`.
    pub level: Tensor<2>,
    /// Risk-type logits `[b, num_types]`.
    pub risk_type: Tensor<2>,
}

/// `safe_part`: cross-attention plus the level head (`safety_head`) and type head (`other_head`).
#[derive(Module, Debug)]
pub struct SafetyHead {
    /// Cross-attention, query = text embeddings, key = value = [S1 ; safety-projected patches].
    pub cross_attention: PackedMultiheadAttention,
    /// Risk level (checkpoint key `safe_part.safety_head`).
    pub level_head: Linear,
    /// Risk type (checkpoint key `safe_part.other_head`).
    pub type_head: Linear,
    #[module(skip)]
    query_mode: QueryMode,
}

impl SafetyHead {
    /// Builds the head with the reference initialisation.
    pub fn new(cfg: &SafetyConfig, device: &Device) -> Self {
        Self {
            cross_attention: PackedMultiheadAttention::new(cfg.safety_dim, cfg.safety_heads, device),
            level_head: init::normal_linear(cfg.safety_dim, cfg.num_levels, device),
            type_head: init::normal_linear(cfg.safety_dim, cfg.num_types, device),
            query_mode: cfg.query_mode,
        }
    }

    /// The pooling in use.
    pub fn query_mode(&self) -> QueryMode {
        self.query_mode
    }

    /// The same head with another pooling (the weights are shared by every mode).
    pub fn with_query_mode(mut self, mode: QueryMode) -> Self {
        self.query_mode = mode;
        self
    }

    /// Classifies from text embeddings and key/value rows.
    ///
    /// `query_mask` marks the real text tokens of each row (used by `TextMean` and `LastTextToken`; all
    /// positions when `None`). `Position0` uses row 0 only, which is exactly the reference's output row 0.
    ///
    /// # Shapes
    /// - `text_embeds`: `[b, t, e]`; `kv`: `[b, k, e]`
    pub fn forward(&self, text_embeds: Tensor<3>, kv: Tensor<3>, query_mask: Option<&[Vec<bool>]>) -> ConceptLogits {
        let [b, t, e] = text_embeds.dims();
        let feature = match self.query_mode {
            // The caller hands `RefPadQuery` the `<pad>` embedding as the only text row.
            QueryMode::Position0 | QueryMode::RefPadQuery => {
                let q = text_embeds.slice([0..b, 0..1, 0..e]);
                self.cross_attention.forward(q, kv).reshape([b, e])
            }
            QueryMode::TextMean => {
                let out = self.cross_attention.forward(text_embeds.clone(), kv);
                let device = out.device();
                let (weights, _) = mask_weights(query_mask, b, t);
                let w = Tensor::<3>::from_data(TensorData::new(weights, [b, t, 1]), &device);
                (out * w).sum_dim(1).reshape([b, e])
            }
            QueryMode::LastTextToken => {
                let out = self.cross_attention.forward(text_embeds, kv);
                let (_, last) = mask_weights(query_mask, b, t);
                let rows =
                    last.iter().enumerate().map(|(r, &p)| out.clone().slice([r..r + 1, p..p + 1, 0..e])).collect();
                Tensor::cat(rows, 0).reshape([b, e])
            }
        };
        ConceptLogits {
            level: self.level_head.forward(feature.clone()),
            risk_type: self.type_head.forward(feature.clone()),
            feature,
        }
    }
}

/// Per-position averaging weights (`1/count` on real tokens) and the last real position of each row.
fn mask_weights(mask: Option<&[Vec<bool>]>, b: usize, t: usize) -> (Vec<f32>, Vec<usize>) {
    let rows: Vec<Vec<bool>> = match mask {
        Some(m) => {
            assert_eq!(m.len(), b, "query mask has {} rows for a batch of {b}", m.len());
            m.to_vec()
        }
        None => vec![vec![true; t]; b],
    };
    let mut weights = Vec::with_capacity(b * t);
    let mut last = Vec::with_capacity(b);
    for r in &rows {
        assert_eq!(r.len(), t, "query mask row has {} positions, text has {t}", r.len());
        let n = r.iter().filter(|&&m| m).count();
        assert!(n > 0, "a query mask row selects no token");
        weights.extend(r.iter().map(|&m| if m { 1.0 / n as f32 } else { 0.0 }));
        last.push(r.iter().rposition(|&m| m).unwrap_or(0));
    }
    (weights, last)
}
