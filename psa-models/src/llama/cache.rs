//! Key/value cache for incremental decoding: a plain struct beside the model, not a `Module`.
use burn::tensor::Tensor;

/// Cached keys and values per decoder layer, `[batch, kv_heads, seq, head_dim]` each.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
}

impl KvCache {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers] }
    }

    /// Cached positions (0 when empty).
    pub fn len(&self) -> usize {
        self.layers.first().and_then(Option::as_ref).map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops all cached positions.
    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
    }

    /// Keys and values of `layer`, `[batch, kv_heads, len, head_dim]` each, when any are cached.
    pub fn layer(&self, layer: usize) -> Option<&(Tensor<4>, Tensor<4>)> {
        self.layers.get(layer).and_then(Option::as_ref)
    }

    /// Appends new keys and values for `layer` and returns the full ones.
    pub(crate) fn append(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.layers[layer].take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        (k, v)
    }
}
