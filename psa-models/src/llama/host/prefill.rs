//! Prefill on the host: the whole prompt through the decoder in one pass per layer, its projections as blocked
//! matrix products over all threads, and causal attention split into (row, head, query block) tasks whose scores
//! and weighted values are blocked products too. Query blocks only score the keys they can see, which halves the
//! attention work of a long prompt.
use super::{HostCache, HostDecoder, project};
use crate::cpu::attention;
use crate::cpu::gemm;
use crate::error::ModelError;
use crate::mask::PaddingMask;

impl HostDecoder {
    /// Runs a prompt through the decoder: `embeds` is `[batch, seq, d]` (row-major) with padding `mask`. Returns
    /// the next-token logits at each row's last real position (`[batch, vocab]`) and the prompt's cache, with room
    /// for `extra` more positions.
    pub fn prefill(
        &self,
        embeds: &[f32],
        mask: &PaddingMask,
        extra: usize,
    ) -> Result<(Vec<f32>, HostCache), ModelError> {
        let (b, t, d) = (mask.batch(), mask.len(), self.norm.len());
        if t == 0 || embeds.len() != b * t * d {
            return Err(ModelError::Input(format!(
                "{} embedding values for a {b}×{t} mask of width {d}",
                embeds.len()
            )));
        }
        let (kv, hd, capacity) = (self.kv_heads, self.head_dim, t + extra);
        let layer_cache = vec![0f32; b * kv * capacity * hd];
        let mut cache = HostCache {
            keys: vec![layer_cache.clone(); self.layers.len()],
            values: vec![layer_cache; self.layers.len()],
            batch: b,
            capacity,
            len: 0,
        };
        let (cos, sin) = self.rope.values(&mask.position_ids(t));
        let n = b * t;
        let mut x = embeds.to_vec();
        for (i, layer) in self.layers.iter().enumerate() {
            let y = super::rms_norm(&x, &layer.input_norm, self.eps);
            let q = self.queries_keys_values(layer, i, &y, (&cos, &sin), &mut cache, |row| (row / t, row % t));
            let h = project(&layer.o, &self.attend_causal(&q, i, mask, &cache), n);
            x.iter_mut().zip(&h).for_each(|(a, b)| *a += b);
            self.mlp(layer, &mut x, n);
        }
        cache.len = t;
        let last: Vec<f32> =
            mask.last_real().iter().enumerate().flat_map(|(r, &p)| x[(r * t + p) * d..][..d].to_vec()).collect();
        Ok((self.logits(&last, b), cache))
    }

    /// Causal attention of every prompt position (queries `q`, `[batch·seq, heads·head_dim]`) over the cache of
    /// layer `index`, whose first `seq` positions hold the prompt; returns `[batch·seq, heads·head_dim]`.
    fn attend_causal(&self, q: &[f32], index: usize, mask: &PaddingMask, cache: &HostCache) -> Vec<f32> {
        let (b, t) = (mask.batch(), mask.len());
        let (h, kv, hd, cap) = (self.heads, self.kv_heads, self.head_dim, cache.capacity);
        let (keys, values) = (&cache.keys[index], &cache.values[index]);
        let width = h * hd;
        attention::per_head_blocks(b, t, h, hd, |r, head, first, rows| {
            // Keys after the block's last query are never visible to it.
            let seen = first + rows;
            let base = (r * kv + head / (h / kv)) * cap * hd;
            let queries = &q[(r * t + first) * width + head * hd..];
            let keys = gemm::Strided::rows(&keys[base..], seen, hd, hd);
            let values = gemm::Strided::cols(&values[base..], seen, hd, hd);
            let visible = &mask.rows()[r];
            attention::attend(queries, width, rows, &keys, &values, |i, s| s <= first + i && visible[s])
        })
    }
}
