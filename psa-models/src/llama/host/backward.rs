//! The frozen decoder's next-token loss and its gradient with respect to the input embeddings, on the host.
//!
//! When the LLM is frozen (stage I), training needs from it only the loss and the gradient of that loss with respect
//! to its input rows: the trainable modules (safety tokens, projected image tokens) sit before it, and no weight of
//! the decoder gets a gradient. [`HostLmLoss`] runs the forward pass as blocked products over every row, keeping
//! each layer's input, rotated queries and keys, values, residual and MLP pre-activations, then walks the layers
//! back computing activation gradients only, with each weight's transpose packed once at construction. The caller
//! hands the input gradient back to autodiff (`sum(inputs · grad)` has exactly that gradient).
use rayon::prelude::*;

use super::{HostDecoder, HostWeights, project, rms_norm, rotate};
use crate::cpu::layers::add;
use crate::cpu::{self, attention, gemm};
use crate::error::ModelError;
use crate::llama::LlamaForCausalLM;
use crate::loss::IGNORE_INDEX;
use crate::mask::PaddingMask;

/// What the backward pass reads of one layer's forward pass.
struct Saved {
    /// The layer's input.
    x: Vec<f32>,
    /// Rotated queries, `[rows, heads·head_dim]`.
    q: Vec<f32>,
    /// Rotated keys, `[rows, kv_heads·head_dim]`.
    k: Vec<f32>,
    /// Values, `[rows, kv_heads·head_dim]`.
    v: Vec<f32>,
    /// The residual stream after attention (the MLP's input).
    mid: Vec<f32>,
    /// MLP gate and up projections, `[rows, intermediate]`.
    gate: Vec<f32>,
    up: Vec<f32>,
}

/// The frozen decoder on the host, for its next-token loss and input gradient.
#[derive(Debug, Clone)]
pub struct HostLmLoss {
    decoder: HostDecoder,
}

impl HostLmLoss {
    /// Copies the decoder's weights to the host in f32, each also transposed. Adapters must be merged first.
    pub fn new(lm: &LlamaForCausalLM) -> Result<Self, ModelError> {
        Ok(Self { decoder: HostDecoder::build(lm, HostWeights::F32, true)? })
    }

    /// The mean next-token cross-entropy of `embeds` (`[batch, seq, d]`, row-major, with padding `mask`) against
    /// `labels` (one per position, −100 = not a target; position `p` predicts label `p + 1`), and its gradient with
    /// respect to `embeds`. `None` when no label is a target.
    pub fn loss_and_grad(
        &self,
        embeds: &[f32],
        mask: &PaddingMask,
        labels: &[Vec<i64>],
    ) -> Result<Option<(f64, Vec<f32>)>, ModelError> {
        let dec = &self.decoder;
        let (b, t, d) = (mask.batch(), mask.len(), dec.norm.len());
        if t == 0 || embeds.len() != b * t * d || labels.len() != b || labels.iter().any(|r| r.len() != t) {
            return Err(ModelError::Input(format!(
                "{} embedding values and {} label rows for a {b}×{t} mask of width {d}",
                embeds.len(),
                labels.len()
            )));
        }
        let vocab = dec.embed.rows() as i64;
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (r, row) in labels.iter().enumerate() {
            for (p, &l) in row.iter().enumerate().skip(1).filter(|(_, l)| **l != IGNORE_INDEX) {
                if !(0..vocab).contains(&l) {
                    return Err(ModelError::Input(format!("label {l} is outside the vocabulary of {vocab}")));
                }
                rows.push(r * t + p - 1);
                targets.push(l as usize);
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let (x, saved) = self.forward(embeds, mask);
        let hidden: Vec<f32> = rows.iter().flat_map(|&i| x[i * d..(i + 1) * d].iter().copied()).collect();
        let (loss, dlogits) = cross_entropy(dec.logits(&hidden, rows.len()), &targets);
        let head = match &dec.lm_head {
            Some(head) => head.back(),
            None => {
                dec.embed_transposed.as_ref().expect("a decoder built for gradients keeps the tied head's transpose")
            }
        };
        let dnormed = head.matmul(&dlogits, rows.len());
        let dhidden = rms_norm_backward(&hidden, &dec.norm, dec.eps, &dnormed);
        let mut dx = vec![0f32; b * t * d];
        let (cos, sin) = dec.rope.values(&mask.position_ids(t));
        let (n, hd) = (b * t, dec.head_dim);
        for (&i, g) in rows.iter().zip(dhidden.chunks_exact(d)) {
            dx[i * d..(i + 1) * d].copy_from_slice(g);
        }
        for (layer, s) in dec.layers.iter().zip(saved).rev() {
            // MLP: x_out = mid + down(silu(gate) · up), gate/up from rms_norm(mid).
            let dact = layer.down.back().matmul(&dx, n);
            let (dgate, dup): (Vec<f32>, Vec<f32>) = dact
                .par_iter()
                .zip(s.gate.par_iter().zip(&s.up))
                .map(|(&da, (&g, &u))| {
                    let sig = 1.0 / (1.0 + cpu::exp(-g));
                    (da * u * sig * (1.0 + g * (1.0 - sig)), da * g * sig)
                })
                .unzip();
            let mut dy = layer.gate.back().matmul(&dgate, n);
            add(&mut dy, &layer.up.back().matmul(&dup, n));
            let mut dmid = dx;
            add(&mut dmid, &rms_norm_backward(&s.mid, &layer.post_norm, dec.eps, &dy));
            // Attention: mid = x + o(attend(rope(q(y)), rope(k(y)), v(y))), y = rms_norm(x).
            let da = layer.o.back().matmul(&dmid, n);
            let (mut dq, mut dk, dv) = self.attention_backward(&s, &da, mask);
            for (row, (c, sn)) in cos.chunks_exact(hd).zip(sin.chunks_exact(hd)).enumerate() {
                let (q, k) = (dq.len() / n, dk.len() / n);
                dq[row * q..(row + 1) * q].chunks_exact_mut(hd).for_each(|h| rotate_back(h, c, sn));
                dk[row * k..(row + 1) * k].chunks_exact_mut(hd).for_each(|h| rotate_back(h, c, sn));
            }
            let mut dy = layer.q.back().matmul(&dq, n);
            add(&mut dy, &layer.k.back().matmul(&dk, n));
            add(&mut dy, &layer.v.back().matmul(&dv, n));
            dx = dmid;
            add(&mut dx, &rms_norm_backward(&s.x, &layer.input_norm, dec.eps, &dy));
        }
        Ok(Some((loss, dx)))
    }

    /// The decoder's forward pass over every row; returns the final hidden states (before the last norm) and what
    /// each layer's backward pass needs.
    fn forward(&self, embeds: &[f32], mask: &PaddingMask) -> (Vec<f32>, Vec<Saved>) {
        let dec = &self.decoder;
        let (b, t) = (mask.batch(), mask.len());
        let (n, hd) = (b * t, dec.head_dim);
        let (cos, sin) = dec.rope.values(&mask.position_ids(t));
        let mut x = embeds.to_vec();
        let mut saved = Vec::with_capacity(dec.layers.len());
        for layer in &dec.layers {
            let y = rms_norm(&x, &layer.input_norm, dec.eps);
            let (mut q, mut k, v) = (project(&layer.q, &y, n), project(&layer.k, &y, n), project(&layer.v, &y, n));
            for (row, (c, s)) in cos.chunks_exact(hd).zip(sin.chunks_exact(hd)).enumerate() {
                let (qw, kw) = (q.len() / n, k.len() / n);
                q[row * qw..(row + 1) * qw].chunks_exact_mut(hd).for_each(|h| rotate(h, c, s));
                k[row * kw..(row + 1) * kw].chunks_exact_mut(hd).for_each(|h| rotate(h, c, s));
            }
            let attended = self.attend(&q, &k, &v, mask);
            let mut mid = x.clone();
            add(&mut mid, &project(&layer.o, &attended, n));
            let y = rms_norm(&mid, &layer.post_norm, dec.eps);
            let (gate, up) = (project(&layer.gate, &y, n), project(&layer.up, &y, n));
            let act: Vec<f32> = gate.par_iter().zip(&up).map(|(&g, &u)| cpu::silu(g) * u).collect();
            let mut out = mid.clone();
            add(&mut out, &project(&layer.down, &act, n));
            saved.push(Saved { x: std::mem::replace(&mut x, out), q, k, v, mid, gate, up });
        }
        (x, saved)
    }

    /// Causal attention over rows laid out `[batch·seq, heads·head_dim]` (keys and values with `kv_heads`).
    fn attend(&self, q: &[f32], k: &[f32], v: &[f32], mask: &PaddingMask) -> Vec<f32> {
        let dec = &self.decoder;
        let (b, t) = (mask.batch(), mask.len());
        let (h, kv, hd) = (dec.heads, dec.kv_heads, dec.head_dim);
        let (qw, kw) = (h * hd, kv * hd);
        attention::per_head_blocks(b, t, h, hd, |r, head, first, rows| {
            let seen = first + rows;
            let base = r * t * kw + head / (h / kv) * hd;
            let keys = gemm::Strided::rows(&k[base..], seen, hd, kw);
            let values = gemm::Strided::cols(&v[base..], seen, hd, kw);
            let visible = &mask.rows()[r];
            attention::attend(&q[(r * t + first) * qw + head * hd..], qw, rows, &keys, &values, |i, s| {
                s <= first + i && visible[s]
            })
        })
    }

    /// Gradients of the causal attention's rotated queries, rotated keys and values from the gradient `da` of
    /// its output, one task per (sequence, key/value head); the probabilities are recomputed.
    fn attention_backward(&self, s: &Saved, da: &[f32], mask: &PaddingMask) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let dec = &self.decoder;
        let (b, t) = (mask.batch(), mask.len());
        let (h, kv, hd) = (dec.heads, dec.kv_heads, dec.head_dim);
        let (qw, kw, group) = (h * hd, kv * hd, h / kv);
        let scale = 1.0 / (hd as f32).sqrt();
        // Per task: the group's query gradients `[group, t, hd]`, then key and value gradients `[t, hd]` each.
        let parts: Vec<Vec<f32>> = (0..b * kv)
            .into_par_iter()
            .map(|task| {
                let (r, g) = (task / kv, task % kv);
                let visible = &mask.rows()[r];
                let kbase = r * t * kw + g * hd;
                let keys = gemm::Strided::rows(&s.k[kbase..], t, hd, kw);
                let values = gemm::Strided::rows(&s.v[kbase..], t, hd, kw);
                let keys_down = gemm::Strided::cols(&s.k[kbase..], t, hd, kw);
                let mut out = vec![0f32; (group + 2) * t * hd];
                let (dq_all, dkv) = out.split_at_mut(group * t * hd);
                let (dk, dv) = dkv.split_at_mut(t * hd);
                let (mut p, mut ds, mut tmp) = (vec![0f32; t * t], vec![0f32; t * t], vec![0f32; t * hd]);
                for (j, dq) in dq_all.chunks_exact_mut(t * hd).enumerate() {
                    let qbase = r * t * qw + (g * group + j) * hd;
                    gemm::matmul(&s.q[qbase..], qw, t, &keys, &mut p, false);
                    for (i, row) in p.chunks_exact_mut(t).enumerate() {
                        row.iter_mut().for_each(|v| *v *= scale);
                        cpu::softmax_visible(row, |k| k <= i && visible[k]);
                    }
                    gemm::matmul(&da[qbase..], qw, t, &values, &mut ds, false);
                    for (prow, drow) in p.chunks_exact(t).zip(ds.chunks_exact_mut(t)) {
                        let dot: f32 = prow.iter().zip(drow.iter()).map(|(a, b)| a * b).sum();
                        drow.iter_mut().zip(prow).for_each(|(d, &pv)| *d = pv * (*d - dot) * scale);
                    }
                    gemm::matmul(&ds, t, t, &keys_down, dq, false);
                    transpose_square(&mut ds, t);
                    gemm::matmul(&ds, t, t, &gemm::Strided::cols(&s.q[qbase..], t, hd, qw), &mut tmp, false);
                    add(dk, &tmp);
                    transpose_square(&mut p, t);
                    gemm::matmul(&p, t, t, &gemm::Strided::cols(&da[qbase..], t, hd, qw), &mut tmp, false);
                    add(dv, &tmp);
                }
                out
            })
            .collect();
        let (mut dq, mut dk, mut dv) = (vec![0f32; b * t * qw], vec![0f32; b * t * kw], vec![0f32; b * t * kw]);
        for (task, part) in parts.iter().enumerate() {
            let (r, g) = (task / kv, task % kv);
            let (dq_all, dkv) = part.split_at(group * t * hd);
            for (j, head) in dq_all.chunks_exact(t * hd).enumerate() {
                for (i, row) in head.chunks_exact(hd).enumerate() {
                    dq[(r * t + i) * qw + (g * group + j) * hd..][..hd].copy_from_slice(row);
                }
            }
            for (i, (krow, vrow)) in dkv[..t * hd].chunks_exact(hd).zip(dkv[t * hd..].chunks_exact(hd)).enumerate() {
                dk[(r * t + i) * kw + g * hd..][..hd].copy_from_slice(krow);
                dv[(r * t + i) * kw + g * hd..][..hd].copy_from_slice(vrow);
            }
        }
        (dq, dk, dv)
    }
}

/// Transposes a `n×n` matrix in place.
fn transpose_square(m: &mut [f32], n: usize) {
    for i in 0..n {
        for j in i + 1..n {
            m.swap(i * n + j, j * n + i);
        }
    }
}

/// The mean cross-entropy of `logits` (`[targets.len(), vocab]`) against `targets`, and its gradient with respect
/// to the logits (written over them).
fn cross_entropy(mut logits: Vec<f32>, targets: &[usize]) -> (f64, Vec<f32>) {
    let vocab = logits.len() / targets.len();
    let inv = 1.0 / targets.len() as f32;
    // Per-row losses summed in order, so the value does not depend on how the rows were split over threads.
    let losses: Vec<f64> = logits
        .par_chunks_mut(vocab)
        .zip(targets)
        .map(|(row, &target)| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let target_logit = row[target];
            row.iter_mut().for_each(|v| *v = cpu::exp(*v - max));
            let sum: f64 = row.iter().map(|&v| v as f64).sum();
            let scale = (1.0 / sum) as f32 * inv;
            row.iter_mut().for_each(|v| *v *= scale);
            row[target] -= inv;
            sum.ln() + (max - target_logit) as f64
        })
        .collect();
    (losses.iter().sum::<f64>() / targets.len() as f64, logits)
}

/// The gradient with respect to `x` of RMSNorm rows (`y = x / rms(x) · gamma`) given the gradient `dy` of `y`.
fn rms_norm_backward(x: &[f32], gamma: &[f32], eps: f32, dy: &[f32]) -> Vec<f32> {
    let d = gamma.len();
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(d).zip(x.par_chunks(d).zip(dy.par_chunks(d))).for_each(|(out, (x, dy))| {
        let inv = 1.0 / (x.iter().map(|a| a * a).sum::<f32>() / d as f32 + eps).sqrt();
        let dot: f32 = x.iter().zip(dy).zip(gamma).map(|((x, dy), g)| x * dy * g).sum();
        let coef = inv * inv * inv * dot / d as f32;
        out.iter_mut().zip(x.iter().zip(dy).zip(gamma)).for_each(|(o, ((x, dy), g))| *o = inv * dy * g - coef * x);
    });
    dx
}

/// The transpose of [`rotate`]: the gradient of a head's values before rotation from the gradient after.
fn rotate_back(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos[i] + b * sin[i + half];
        x[i + half] = b * cos[i + half] - a * sin[i];
    }
}
