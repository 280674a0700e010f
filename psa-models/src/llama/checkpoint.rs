//! Activation (gradient) checkpointing for the decoder in training: the next-token loss with memory for one
//! layer's activations instead of all of them.
//!
//! A first pass runs the layers without recording a graph and keeps only each layer's input. The loss is then
//! differentiated with respect to the last layer's output, and each layer, from the last to the first, is run
//! again with a graph on its kept input and differentiated against the gradient arriving from above. The result is
//! a tensor whose value is the loss and whose gradients, with respect to the decoder's inputs and to every weight
//! that requires one (LoRA adapters in stage II), are the exact gradients: `loss + Σ (sum(v·g) − detach(sum(v·g)))`
//! over the inputs and weights `v` with their gradients `g`. LoRA dropout draws the same masks in both passes (the
//! device is reseeded per layer from one draw of its generator).
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Distribution, Gradients, Int, Tensor};

use super::rope::Rope;
use super::{LlamaDecoderLayer, LlamaForCausalLM, PaddingMask, rms_norm};
use crate::loss::supervised_lm_loss;
use crate::precision::{to_dtype, to_f32};

impl LlamaForCausalLM {
    /// The mean next-token loss of the decoder on `inputs_embeds` (labels per position, −100 ignored) computed with
    /// activation checkpointing; `None` when no position is supervised. `inputs_embeds` must live on an autodiff
    /// device; the gradients reach it and the decoder's LoRA adapters as in an ordinary backward pass.
    ///
    /// # Shapes
    /// - `inputs_embeds`: `[batch, seq, d]`; `mask`, `labels`: `batch × seq`
    pub fn checkpointed_loss(
        &self,
        inputs_embeds: Tensor<3>,
        mask: &PaddingMask,
        labels: &[Vec<i64>],
    ) -> Option<Tensor<1>> {
        let [b, t, _] = inputs_embeds.dims();
        assert_eq!(
            (mask.batch(), mask.len()),
            (b, t),
            "padding mask is {}×{}, input {b}×{t}",
            mask.batch(),
            mask.len()
        );
        let device = inputs_embeds.device();
        let dtype = self.model.dtype();
        let x0 = to_dtype(inputs_embeds, dtype);
        let rope = Rope::new(self.model.head_dim, self.model.rope_theta).tables(&mask.position_ids(t), &device);
        let (cos, sin) = (to_dtype(rope.0, dtype), to_dtype(rope.1, dtype));
        let attn_mask = mask.attention_mask(t, &device);
        let seed = layer_seed_base(&device);
        // Pass 1: no graph (inputs and weights untracked), each layer's input kept.
        let mut kept = Vec::with_capacity(self.model.layers.len());
        let mut x = x0.clone().detach();
        for (i, layer) in self.model.layers.iter().enumerate() {
            kept.push(x.clone());
            device.seed(seed.wrapping_add(i as u64));
            x = untracked(layer).forward(x, (&cos, &sin), attn_mask.clone(), None).detach();
        }
        // The loss and its gradient with respect to the last layer's output.
        let top = x.require_grad();
        let loss = supervised_lm_loss(rms_norm(&self.model.norm, top.clone()), labels, |h| self.logits(h))?;
        let value = loss.clone().into_scalar::<f32>();
        let grads = loss.backward();
        let mut upstream = top.grad(&grads).expect("the loss depends on the decoder's output");
        let mut surrogate = Tensor::<1>::from_data([value], &device);
        surrogate = link_weights(&self.model.norm, &grads, surrogate);
        surrogate = match &self.lm_head {
            Some(head) => link_weights(head, &grads, surrogate),
            None => link_weights(&self.model.embed_tokens, &grads, surrogate),
        };
        // Pass 2: each layer again, last first, differentiated against the gradient from above.
        for (i, layer) in self.model.layers.iter().enumerate().rev() {
            let input = kept.pop().expect("one input kept per layer").require_grad();
            device.seed(seed.wrapping_add(i as u64));
            let out = layer.forward(input.clone(), (&cos, &sin), attn_mask.clone(), None);
            let grads = (to_f32(out) * to_f32(Tensor::from_inner(upstream))).sum().backward();
            surrogate = link_weights(layer, &grads, surrogate);
            upstream = input.grad(&grads).expect("a layer's output depends on its input");
        }
        Some(surrogate + linked(x0, Tensor::from_inner(upstream)))
    }
}

/// `sum(v·g) − detach(sum(v·g))`: zero, with gradient `g` with respect to `v`.
fn linked<const D: usize>(v: Tensor<D>, g: Tensor<D>) -> Tensor<1> {
    let inner = (to_f32(v) * to_f32(g)).sum();
    inner.clone() - inner.detach()
}

/// A base for the per-layer seeds, drawn from the device's generator (so it follows the caller's seeding).
fn layer_seed_base(device: &Device) -> u64 {
    let draw = Tensor::<1, Int>::random([2], Distribution::Uniform(0.0, 2_147_483_647.0), device).into_data();
    let v: Vec<i64> = draw.convert::<i64>().try_to_vec().unwrap_or_default();
    v.iter().fold(0u64, |h, &x| (h << 31) ^ x as u64)
}

/// `acc` plus [`linked`] terms for every weight of `module` that `grads` holds a gradient for.
fn link_weights<M: Module>(module: &M, grads: &Gradients, acc: Tensor<1>) -> Tensor<1> {
    struct Linker<'a> {
        grads: &'a Gradients,
        acc: Option<Tensor<1>>,
    }
    impl ModuleVisitor for Linker<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let weight = param.val();
            if let Some(g) = weight.grad(self.grads) {
                let acc = self.acc.take().expect("accumulator present");
                self.acc = Some(acc + linked(weight, Tensor::from_inner(g)));
            }
        }
    }
    let mut linker = Linker { grads, acc: Some(acc) };
    module.visit(&mut linker);
    linker.acc.expect("accumulator present")
}

/// The layer with every weight detached: runs on the same device, records nothing, keeps its dropout.
fn untracked(layer: &LlamaDecoderLayer) -> LlamaDecoderLayer {
    struct Detach;
    impl ModuleMapper for Detach {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| t.detach())
        }
    }
    layer.clone().map(&mut Detach)
}
