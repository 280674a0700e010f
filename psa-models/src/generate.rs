//! Autoregressive generation with the KV cache: greedy, temperature, top-k, top-p, stop ids, seeded RNG,
//! batched prompts of different lengths (left or right padded).
use burn::tensor::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::llama::{HostDecoder, KvCache, LlamaForCausalLM};
use crate::mask::PaddingMask;

/// Sampling and stopping settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Softmax temperature; `0` means greedy decoding.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens before sampling.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p`.
    pub top_p: Option<f32>,
    /// End-of-sequence ids: generation of a row stops after one of them (it is included in the output).
    pub eos_token_ids: Vec<u32>,
    /// Extra stop ids, treated like EOS.
    pub stop_token_ids: Vec<u32>,
    /// Id fed to rows that already stopped.
    pub pad_token_id: u32,
    /// Seed of the sampling RNG.
    pub seed: u64,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            eos_token_ids: Vec::new(),
            stop_token_ids: Vec::new(),
            pad_token_id: 0,
            seed: 42,
        }
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// An EOS or stop id was produced.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
    /// The caller stopped the row (its client left, or its time ran out).
    Cancelled,
}

/// Generated tokens per row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// New token ids of each row (a final stop id included).
    pub tokens: Vec<Vec<u32>>,
    /// Why each row stopped.
    pub finish: Vec<FinishReason>,
}

/// Generates from prepared input embeddings (text only or already merged with images).
///
/// # Shapes
/// - `inputs_embeds`: `[batch, seq, d]`; `mask`: `batch × seq`
pub fn generate(
    lm: &LlamaForCausalLM,
    inputs_embeds: Tensor<3>,
    mask: PaddingMask,
    cfg: &GenerationConfig,
    max_positions: usize,
) -> Result<Generation, ModelError> {
    generate_with(lm, None, inputs_embeds, mask, cfg, max_positions)
}

/// [`generate`] on the host engine when `host` is given (prefill and decode steps on the CPU, whatever device the
/// embeddings are on), on `lm`'s device otherwise.
pub fn generate_with(
    lm: &LlamaForCausalLM,
    host: Option<&HostDecoder>,
    inputs_embeds: Tensor<3>,
    mask: PaddingMask,
    cfg: &GenerationConfig,
    max_positions: usize,
) -> Result<Generation, ModelError> {
    generate_until(lm, host, inputs_embeds, mask, cfg, max_positions, &|_| false)
}

/// [`generate_with`] that asks `cancelled(row)` before every step: a cancelled row stops at once
/// ([`FinishReason::Cancelled`]), and when every row has stopped no further step runs.
pub fn generate_until(
    lm: &LlamaForCausalLM,
    host: Option<&HostDecoder>,
    inputs_embeds: Tensor<3>,
    mut mask: PaddingMask,
    cfg: &GenerationConfig,
    max_positions: usize,
    cancelled: &dyn Fn(usize) -> bool,
) -> Result<Generation, ModelError> {
    let [b, t, d] = inputs_embeds.dims();
    if mask.batch() != b || mask.len() != t {
        return Err(ModelError::Input(format!("mask is {}×{}, embeddings {b}×{t}", mask.batch(), mask.len())));
    }
    let longest = mask.rows().iter().map(|r| r.iter().filter(|&&m| m).count()).max().unwrap_or(0);
    if longest + cfg.max_new_tokens > max_positions {
        return Err(ModelError::TooLong { actual: longest + cfg.max_new_tokens, max: max_positions });
    }
    let device = inputs_embeds.device();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let to_host = |t: Tensor<3>| -> Result<Vec<f32>, ModelError> {
        t.into_data().convert::<f32>().try_to_vec().map_err(|e| ModelError::Input(format!("{e:?}")))
    };
    let mut cache = KvCache::new(lm.num_layers());
    let (mut logits, mut host_cache) = match host {
        Some(h) => {
            let (logits, c) = h.prefill(&to_host(inputs_embeds)?, &mask, cfg.max_new_tokens)?;
            (logits, Some(c))
        }
        None => {
            let hidden = lm.model.forward(inputs_embeds, &mask, Some(&mut cache), false).last_hidden_state;
            let last: Vec<Tensor<3>> = mask
                .last_real()
                .iter()
                .enumerate()
                .map(|(r, &p)| hidden.clone().slice([r..r + 1, p..p + 1, 0..d]))
                .collect();
            (to_host(lm.logits(Tensor::cat(last, 0)))?, None)
        }
    };
    let mut out = Generation { tokens: vec![Vec::new(); b], finish: vec![FinishReason::Length; b] };
    let mut done = vec![false; b];
    for step in 0..cfg.max_new_tokens {
        let vocab = logits.len() / b;
        let mut next = Vec::with_capacity(b);
        for r in 0..b {
            if !done[r] && cancelled(r) {
                done[r] = true;
                out.finish[r] = FinishReason::Cancelled;
            }
            if done[r] {
                next.push(cfg.pad_token_id);
                continue;
            }
            let id = sample(&logits[r * vocab..(r + 1) * vocab], cfg, &mut rng);
            out.tokens[r].push(id);
            if cfg.eos_token_ids.contains(&id) || cfg.stop_token_ids.contains(&id) {
                done[r] = true;
                out.finish[r] = FinishReason::Stop;
            }
            next.push(id);
        }
        if done.iter().all(|&x| x) || step + 1 == cfg.max_new_tokens {
            break;
        }
        mask.extend(1);
        logits = match (host, host_cache.as_mut()) {
            (Some(h), Some(c)) => h.step(&next, &mask, c)?,
            _ => {
                let embeds = lm.model.embed(&next.iter().map(|&id| vec![id]).collect::<Vec<_>>(), &device);
                let h = lm.model.forward(embeds, &mask, Some(&mut cache), false).last_hidden_state;
                to_host(lm.logits(h))?
            }
        };
    }
    Ok(out)
}

/// Picks the next token from one row of logits.
pub fn sample(logits: &[f32], cfg: &GenerationConfig, rng: &mut StdRng) -> u32 {
    if cfg.temperature <= 0.0 || cfg.top_k == Some(1) {
        return argmax(logits);
    }
    let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l / cfg.temperature)).collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if let Some(k) = cfg.top_k.filter(|&k| k > 0 && k < cand.len()) {
        let kth = cand[k - 1].1;
        cand.retain(|c| c.1 >= kth);
    }
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = cfg.top_p.filter(|&p| p < 1.0) {
        let mut cum = 0.0;
        let keep = probs
            .iter()
            .position(|&q| {
                cum += q;
                cum >= p as f64
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
    }
    let mut u: f64 = rng.random();
    for (i, q) in probs.iter().enumerate() {
        if u < *q {
            return cand[i].0;
        }
        u -= q;
    }
    cand[probs.len() - 1].0
}

/// Index of the largest logit (the first one on ties, like `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> GenerationConfig {
        GenerationConfig { temperature, top_k, top_p, ..Default::default() }
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = [0.0f32, 3.0, 2.9, -1.0, 2.8];
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let id = sample(&logits, &cfg(1.0, Some(2), None), &mut rng);
            assert!(id == 1 || id == 2, "top-k 2 drew {id}");
        }
        // p(1) ≈ 0.35, p(2) ≈ 0.32: top-p 0.5 keeps exactly those two.
        for _ in 0..200 {
            let id = sample(&logits, &cfg(1.0, None, Some(0.5)), &mut rng);
            assert!(id == 1 || id == 2, "top-p 0.5 drew {id}");
        }
        assert_eq!(sample(&logits, &cfg(0.0, None, None), &mut rng), 1);
    }

    #[test]
    fn seeded_sampling_repeats_and_low_temperature_concentrates() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20).map(|_| sample(&logits, &cfg(1.0, None, None), &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        let mut rng = StdRng::seed_from_u64(1);
        let best = argmax(&logits);
        assert!((0..100).all(|_| sample(&logits, &cfg(1e-4, None, None), &mut rng) == best));
    }
}
