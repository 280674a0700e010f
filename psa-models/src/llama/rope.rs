//! Rotary position embeddings in Hugging Face's `rotate_half` convention.
//!
//! Dimension `i` pairs with `i + head_dim/2` (not the interleaved pairs of `burn::nn::RotaryEncoding`); the
//! frequencies are computed in f32 exactly as transformers' `LlamaRotaryEmbedding` does.
use burn::tensor::{Device, Tensor, TensorData};

/// Precomputed inverse frequencies for one head width.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// Inverse frequencies `1 / base^(2i/head_dim)`.
    pub fn new(head_dim: usize, base: f64) -> Self {
        let inv_freq = (0..head_dim / 2).map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
        Self { inv_freq }
    }

    /// `cos` and `sin` values `[batch, seq, head_dim]`, flattened, for the given position ids.
    pub fn values(&self, positions: &[Vec<usize>]) -> (Vec<f32>, Vec<f32>) {
        let n = positions.iter().map(Vec::len).sum::<usize>() * self.inv_freq.len() * 2;
        let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for &p in positions.iter().flatten() {
            for _ in 0..2 {
                for &f in &self.inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        (cos, sin)
    }

    /// `cos` and `sin` tables `[batch, 1, seq, head_dim]` for the given position ids.
    pub fn tables(&self, positions: &[Vec<usize>], device: &Device) -> (Tensor<4>, Tensor<4>) {
        let (b, t) = (positions.len(), positions.first().map_or(0, Vec::len));
        let (cos, sin) = self.values(positions);
        let shape = [b, 1, t, self.inv_freq.len() * 2];
        (Tensor::from_data(TensorData::new(cos, shape), device), Tensor::from_data(TensorData::new(sin, shape), device))
    }
}

/// Applies the rotation to `[batch, heads, seq, head_dim]`.
pub fn apply(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    let [b, h, t, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..t, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos + rotated * sin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_preserves_norm_and_pairs_halves() {
        let device = Device::flex();
        let rope = Rope::new(4, 10_000.0);
        let (cos, sin) = rope.tables(&[vec![3]], &device);
        let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 0.0], [1, 1, 1, 4]), &device);
        let y: Vec<f32> = apply(x, cos, sin).into_data().try_to_vec().unwrap();
        // Dimension 0 rotates with dimension 2 (rotate_half), by angle 3·1.
        assert!((y[0] - 3f32.cos()).abs() < 1e-6 && (y[2] - 3f32.sin()).abs() < 1e-6, "{y:?}");
        assert!(y[1].abs() < 1e-7 && y[3].abs() < 1e-7, "{y:?}");
    }
}
