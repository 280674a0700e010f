//! LLaMA decoder (`LlamaForCausalLM`, transformers `models/llama/modeling_llama.py`): RMSNorm, rotate-half
//! RoPE, grouped-query attention, SwiGLU MLP, tied or untied `lm_head`, padding masks and a KV cache.
mod cache;
mod checkpoint;
mod config;
pub mod host;
pub mod rope;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::module::attention;
use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData, activation};

pub use cache::KvCache;
pub use config::{LlamaConfig, TokenIds};
pub use host::{HostCache, HostDecoder, HostLmLoss, HostWeights};
use rope::Rope;

use crate::cpu;
use crate::error::ConfigError;
use crate::lora::{self, LoraConfig};
use crate::mask::PaddingMask;
use crate::precision::{to_dtype, to_f32};

impl LlamaConfig {
    /// Builds the model with random weights.
    pub fn init(&self, device: &Device) -> Result<LlamaForCausalLM, ConfigError> {
        self.validate()?;
        let (d, hd) = (self.hidden_size, self.head_size());
        let (h, kv) = (self.num_attention_heads, self.kv_heads());
        let lin = |i, o, bias| lora::Linear::new(i, o, bias, device);
        let norm = || RmsNormConfig::new(d).with_epsilon(self.rms_norm_eps).init(device);
        let layers = (0..self.num_hidden_layers)
            .map(|_| LlamaDecoderLayer {
                self_attn: LlamaAttention {
                    q_proj: lin(d, h * hd, self.attention_bias),
                    k_proj: lin(d, kv * hd, self.attention_bias),
                    v_proj: lin(d, kv * hd, self.attention_bias),
                    o_proj: lin(h * hd, d, self.attention_bias),
                    num_heads: h,
                    num_kv_heads: kv,
                    head_dim: hd,
                },
                mlp: LlamaMlp {
                    gate_proj: lin(d, self.intermediate_size, self.mlp_bias),
                    up_proj: lin(d, self.intermediate_size, self.mlp_bias),
                    down_proj: lin(self.intermediate_size, d, self.mlp_bias),
                },
                input_layernorm: norm(),
                post_attention_layernorm: norm(),
            })
            .collect();
        Ok(LlamaForCausalLM {
            model: LlamaModel {
                embed_tokens: EmbeddingConfig::new(self.vocab_size, d).init(device),
                layers,
                norm: norm(),
                rope_theta: self.rope_base(),
                head_dim: hd,
            },
            lm_head: (!self.tie_word_embeddings)
                .then(|| LinearConfig::new(d, self.vocab_size).with_bias(false).init(device)),
        })
    }
}

/// `LlamaForCausalLM`: checkpoint keys `model.*` and `lm_head.weight`.
#[derive(Module, Debug)]
pub struct LlamaForCausalLM {
    /// The decoder stack.
    pub model: LlamaModel,
    /// Output projection; `None` when tied to `model.embed_tokens`.
    pub lm_head: Option<Linear>,
}

/// `LlamaModel`.
#[derive(Module, Debug)]
pub struct LlamaModel {
    /// Token embeddings `[vocab, d]`.
    pub embed_tokens: Embedding,
    /// `layers.N`.
    pub layers: Vec<LlamaDecoderLayer>,
    /// Final RMSNorm.
    pub norm: RmsNorm,
    rope_theta: f64,
    head_dim: usize,
}

/// `LlamaDecoderLayer`.
#[derive(Module, Debug)]
pub struct LlamaDecoderLayer {
    /// Self-attention.
    pub self_attn: LlamaAttention,
    /// SwiGLU feed-forward.
    pub mlp: LlamaMlp,
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
}

/// `LlamaAttention` with grouped-query heads.
#[derive(Module, Debug)]
pub struct LlamaAttention {
    /// Query projection, with its stage-II adapter when one is attached.
    pub q_proj: lora::Linear,
    /// Key projection, with its stage-II adapter when one is attached.
    pub k_proj: lora::Linear,
    /// Value projection, with its stage-II adapter when one is attached.
    pub v_proj: lora::Linear,
    /// Output projection, with its stage-II adapter when one is attached.
    pub o_proj: lora::Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

/// `LlamaMLP`: `down(silu(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp {
    /// Gate projection, with its stage-II adapter when one is attached.
    pub gate_proj: lora::Linear,
    /// Up projection, with its stage-II adapter when one is attached.
    pub up_proj: lora::Linear,
    /// Down projection, with its stage-II adapter when one is attached.
    pub down_proj: lora::Linear,
}

/// What the decoder returns.
#[derive(Debug, Clone)]
pub struct DecoderOutput {
    /// After the final norm, `[batch, seq, d]`.
    pub last_hidden_state: Tensor<3>,
    /// When requested: the input embeddings, each layer's output, and (last) the normed output, as in HF.
    pub hidden_states: Vec<Tensor<3>>,
}

impl LlamaAttention {
    fn forward(
        &self,
        x: Tensor<3>,
        rope: (&Tensor<4>, &Tensor<4>),
        mask: Tensor<4, Bool>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, hd]).swap_dims(1, 2);
        let q = rope::apply(heads(self.q_proj.forward(x.clone()), h), rope.0.clone(), rope.1.clone());
        let k = rope::apply(heads(self.k_proj.forward(x.clone()), kv), rope.0.clone(), rope.1.clone());
        let v = heads(self.v_proj.forward(x), kv);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        let (k, v) = (repeat_kv(k, h / kv), repeat_kv(v, h / kv));
        // Scores and probabilities in f32 whatever the weights' dtype.
        let dtype = q.dtype();
        let out = to_dtype(attention(to_f32(q), to_f32(k), to_f32(v), Some(mask), None, Default::default()), dtype);
        self.o_proj.forward(out.swap_dims(1, 2).reshape([b, t, h * hd]))
    }
}

/// Pairs the projections, in [`lora::LINEAR_TARGETS`] order, with their names.
fn named<T>(projections: [T; 7]) -> [(&'static str, T); 7] {
    let mut names = lora::LINEAR_TARGETS.into_iter();
    projections.map(|p| (names.next().unwrap_or_default(), p))
}

/// Repeats each key/value head `n` times in place (head `i` serves query heads `i·n .. (i+1)·n`).
fn repeat_kv(x: Tensor<4>, n: usize) -> Tensor<4> {
    if n == 1 {
        return x;
    }
    let [b, kv, s, hd] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, kv, n, s, hd]).reshape([b, kv * n, s, hd])
}

/// RMSNorm, on all threads for flex tensors ([`cpu::rms_norm`]). In half precision the input is normalised in
/// f32 and rounded before the (half) scale multiplies it, as transformers' `LlamaRMSNorm` does.
fn rms_norm(norm: &RmsNorm, x: Tensor<3>) -> Tensor<3> {
    let dtype = x.dtype();
    if dtype != DType::F32 {
        let x = x.cast(DType::F32);
        let inv = (x.clone().square().mean_dim(2) + norm.epsilon).sqrt().recip();
        return (x * inv).cast(dtype) * norm.gamma.val().unsqueeze::<3>();
    }
    cpu::rms_norm(x, &norm.gamma.val(), norm.epsilon, |x| norm.forward(x))
}

impl LlamaDecoderLayer {
    /// The seven projections LoRA can adapt, by PEFT module name.
    pub fn projections(&self) -> [(&'static str, &lora::Linear); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        named([&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &m.gate_proj, &m.up_proj, &m.down_proj])
    }

    /// [`Self::projections`], mutably.
    pub fn projections_mut(&mut self) -> [(&'static str, &mut lora::Linear); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        named([
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ])
    }

    fn forward(
        &self,
        x: Tensor<3>,
        rope: (&Tensor<4>, &Tensor<4>),
        mask: Tensor<4, Bool>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let h = self.self_attn.forward(rms_norm(&self.input_layernorm, x.clone()), rope, mask, cache);
        let x = x + h;
        let y = rms_norm(&self.post_attention_layernorm, x.clone());
        let m = &self.mlp;
        let gate = m.gate_proj.forward(y.clone());
        let up = m.up_proj.forward(y);
        let act = cpu::zip(gate, up, |g, u| cpu::silu(g) * u, |gate, up| activation::silu(gate) * up);
        x + m.down_proj.forward(act)
    }
}

impl LlamaModel {
    /// The dtype of the weights, in which the decoder computes.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.weight.val().dtype()
    }

    /// Embeds token ids.
    ///
    /// # Shapes
    /// - `ids`: `[batch, seq]` → `[batch, seq, d]`
    pub fn embed(&self, ids: &[Vec<u32>], device: &Device) -> Tensor<3> {
        let (b, t) = (ids.len(), ids.first().map_or(0, Vec::len));
        let flat: Vec<i64> = ids.iter().flatten().map(|&i| i as i64).collect();
        self.embed_tokens.forward(Tensor::<2, Int>::from_data(TensorData::new(flat, [b, t]), device))
    }

    /// Runs the decoder on embeddings whose padding (past positions included) is `mask`.
    ///
    /// With a cache, `inputs_embeds` holds only the new positions and the cache grows by them.
    ///
    /// # Shapes
    /// - `inputs_embeds`: `[batch, new, d]`; `mask`: `batch × (cached + new)`
    pub fn forward(
        &self,
        inputs_embeds: Tensor<3>,
        mask: &PaddingMask,
        mut cache: Option<&mut KvCache>,
        output_hidden_states: bool,
    ) -> DecoderOutput {
        let [b, t, _] = inputs_embeds.dims();
        let past = cache.as_ref().map_or(0, |c| c.len());
        assert_eq!(mask.batch(), b, "padding mask has {} rows for a batch of {b}", mask.batch());
        assert_eq!(mask.len(), past + t, "padding mask covers {} positions, expected {}", mask.len(), past + t);
        let device = inputs_embeds.device();
        let dtype = self.dtype();
        let inputs_embeds = to_dtype(inputs_embeds, dtype);
        let (cos, sin) = Rope::new(self.head_dim, self.rope_theta).tables(&mask.position_ids(t), &device);
        let (cos, sin) = (to_dtype(cos, dtype), to_dtype(sin, dtype));
        let attn_mask = mask.attention_mask(t, &device);
        let mut x = inputs_embeds;
        let mut hidden_states = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            if output_hidden_states {
                hidden_states.push(x.clone());
            }
            let c = cache.as_deref_mut().map(|c| (c, i));
            x = layer.forward(x, (&cos, &sin), attn_mask.clone(), c);
        }
        let x = rms_norm(&self.norm, x);
        if output_hidden_states {
            hidden_states.push(x.clone());
        }
        DecoderOutput { last_hidden_state: x, hidden_states }
    }
}

impl LlamaForCausalLM {
    /// Vocabulary logits, in f32 whatever the weights' dtype, for hidden states of any rank-3 shape
    /// `[batch, seq, d]` → `[batch, seq, vocab]`.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let hidden = to_dtype(hidden, self.model.dtype());
        to_f32(match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                // A 2-D product with the transposed table as a strided view: adding a batch axis to the view
                // would make some backends copy the whole table on every call.
                let [b, t, d] = hidden.dims();
                let table = self.model.embed_tokens.weight.val();
                let vocab = table.dims()[0];
                hidden.reshape([b * t, d]).matmul(table.transpose()).reshape([b, t, vocab])
            }
        })
    }

    /// Token ids → logits, with an optional padding mask (no padding when `None`).
    pub fn forward(&self, ids: &[Vec<u32>], mask: Option<&PaddingMask>, device: &Device) -> Tensor<3> {
        let embeds = self.model.embed(ids, device);
        let full;
        let mask = match mask {
            Some(m) => m,
            None => {
                let [b, t, _] = embeds.dims();
                full = PaddingMask::full(b, t);
                &full
            }
        };
        self.logits(self.model.forward(embeds, mask, None, false).last_hidden_state)
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    /// Adds fresh LoRA adapters to the targeted projections of every decoder layer.
    pub fn apply_lora(mut self, cfg: &LoraConfig, device: &Device) -> Self {
        for layer in &mut self.model.layers {
            for (name, proj) in layer.projections_mut() {
                if cfg.target_modules.contains(name) {
                    proj.attach(cfg, device);
                }
            }
        }
        self
    }

    /// Whether any projection carries an adapter.
    pub fn has_lora(&self) -> bool {
        self.model.layers.iter().any(|l| l.projections().iter().any(|(_, p)| p.lora.is_some()))
    }

    /// Folds every adapter into its base weight and removes the adapters.
    pub fn merge_lora(mut self) -> Self {
        for layer in &mut self.model.layers {
            layer.projections_mut().into_iter().for_each(|(_, p)| p.merge());
        }
        self
    }
}
