//! Host copies of common layers (LayerNorm, linear and 1×1-convolution weights packed for [`super::gemm`]) and
//! their row-wise kernels, shared by the host engines of the vision tower and the safety projector.
use burn::nn::conv::Conv2d;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::gemm::{self, Strided};
use crate::error::ModelError;
use crate::llama::host::HostMatrix;

/// Rows per parallel task of the row-wise kernels.
const ROWS_PER_TASK: usize = 16;

/// A LayerNorm's scale and shift.
#[derive(Debug, Clone)]
pub(crate) struct Norm {
    pub(crate) gamma: Vec<f32>,
    pub(crate) beta: Vec<f32>,
}

/// A packed weight and its bias (zeros when the layer has none).
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    pub(crate) weight: HostMatrix,
    pub(crate) bias: Vec<f32>,
}

/// A tensor's values in f32.
pub(crate) fn host_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, ModelError> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| ModelError::Input(format!("{e:?}")))
}

/// A LayerNorm on the host.
pub(crate) fn norm(n: &LayerNorm) -> Result<Norm, ModelError> {
    let gamma = host_vec(n.gamma.val())?;
    let beta = match &n.beta {
        Some(b) => host_vec(b.val())?,
        None => vec![0.0; gamma.len()],
    };
    Ok(Norm { gamma, beta })
}

/// Linear layers side by side (same input): Burn stores each weight `[in, out]`, so the fused weight's row `i` is
/// row `i` of each in turn.
pub(crate) fn dense(linears: &[&Linear]) -> Result<Dense, ModelError> {
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

/// A 1×1 convolution (`[cout, cin, 1, 1]`) as a dense layer over channels-last rows.
pub(crate) fn pointwise(conv: &Conv2d) -> Result<Dense, ModelError> {
    let [cout, cin, kh, kw] = conv.weight.dims();
    if (kh, kw) != (1, 1) {
        return Err(ModelError::Input(format!("a {kh}×{kw} kernel is not a 1×1 convolution")));
    }
    let weight = host_vec(conv.weight.val())?;
    let bias = match &conv.bias {
        Some(b) => host_vec(b.val())?,
        None => vec![0.0; cout],
    };
    Ok(Dense { weight: HostMatrix::packed(&Strided::rows(&weight, cout, cin, cin)), bias })
}

/// `x · W + bias` for `n` rows.
pub(crate) fn product(dense: &Dense, x: &[f32], n: usize) -> Vec<f32> {
    let width = dense.bias.len();
    let mut y = vec![0f32; n * width];
    gemm::matmul(x, dense.weight.cols(), n, &dense.weight, &mut y, true);
    y.par_chunks_mut(width * ROWS_PER_TASK).for_each(|rows| {
        rows.chunks_exact_mut(width).for_each(|row| row.iter_mut().zip(&dense.bias).for_each(|(a, b)| *a += b))
    });
    y
}

/// `a += b`, elementwise on all threads.
pub(crate) fn add(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(1 << 14)
        .zip(b.par_chunks(1 << 14))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(x, y)| *x += y));
}

/// `x += h` (times a per-channel `scale` when given).
pub(crate) fn residual(x: &mut [f32], h: &[f32], scale: Option<&[f32]>) {
    match scale {
        Some(s) => x.par_chunks_mut(s.len()).zip(h.par_chunks(s.len())).for_each(|(x, h)| {
            x.iter_mut().zip(h).zip(s).for_each(|((x, h), s)| *x += h * s);
        }),
        None => add(x, h),
    }
}

/// LayerNorm of each row (biased variance, as PyTorch), into a new buffer.
pub(crate) fn layer_norm(x: &[f32], n: &Norm, eps: f32) -> Vec<f32> {
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
