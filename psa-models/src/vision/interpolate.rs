//! PyTorch-compatible bicubic resampling weights for position-embedding grids.
//!
//! Matches `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`, with and without
//! `antialias=True` (PyTorch's anti-aliased kernel follows PIL: cubic coefficient a = −0.5 and a support
//! widened by the scale when downsampling; the plain kernel uses a = −0.75 and clamps at the border).
use burn::tensor::{Device, Tensor, TensorData};

fn cubic(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Row-major `[output, input]` matrix whose rows hold the weights of each output sample.
pub(crate) fn bicubic_matrix(input: usize, output: usize, antialias: bool) -> Vec<f64> {
    let mut m = vec![0.0; output * input];
    let scale = input as f64 / output as f64;
    for i in 0..output {
        let row = &mut m[i * input..(i + 1) * input];
        if antialias {
            let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
            let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
            let center = scale * (i as f64 + 0.5);
            let lo = ((center - support + 0.5).floor() as i64).max(0) as usize;
            let hi = ((center + support + 0.5).floor() as i64).min(input as i64) as usize;
            let mut total = 0.0;
            for (j, w) in row.iter_mut().enumerate().take(hi).skip(lo) {
                *w = cubic((j as f64 - center + 0.5) * inv, -0.5);
                total += *w;
            }
            if total != 0.0 {
                row.iter_mut().for_each(|w| *w /= total);
            }
        } else {
            let src = (i as f64 + 0.5) * scale - 0.5;
            let x0 = src.floor();
            let t = src - x0;
            for k in -1i64..=2 {
                let j = (x0 as i64 + k).clamp(0, input as i64 - 1) as usize;
                row[j] += cubic(t - k as f64, -0.75);
            }
        }
    }
    m
}

/// Resizes a `[side, side, d]` grid (row-major tokens `[side², d]`) to `[out_h·out_w, d]`.
pub(crate) fn resize_grid(
    tokens: Tensor<2>,
    side: usize,
    out_h: usize,
    out_w: usize,
    antialias: bool,
    device: &Device,
) -> Tensor<2> {
    let [_, d] = tokens.dims();
    // In f32 whatever the table's dtype (as transformers does).
    let dtype = tokens.dtype();
    let tokens = crate::precision::to_f32(tokens);
    let matrix = |n_out: usize| {
        let w: Vec<f32> = bicubic_matrix(side, n_out, antialias).into_iter().map(|v| v as f32).collect();
        Tensor::<2>::from_data(TensorData::new(w, [n_out, side]), device)
    };
    // [side(h), side(w), d] → [d, h, w]
    let grid = tokens.reshape([side, side, d]).permute([2, 0, 1]);
    let along_w = grid.matmul(matrix(out_w).transpose().unsqueeze::<3>()); // [d, h, out_w]
    let along_h = matrix(out_h).unsqueeze::<3>().matmul(along_w); // [d, out_h, out_w]
    crate::precision::to_dtype(along_h.permute([1, 2, 0]).reshape([out_h * out_w, d]), dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_one_and_identity_when_same_size() {
        for aa in [false, true] {
            for (i, o) in [(5, 4), (5, 7), (37, 16), (4, 4)] {
                let m = bicubic_matrix(i, o, aa);
                for r in 0..o {
                    let s: f64 = m[r * i..(r + 1) * i].iter().sum();
                    assert!((s - 1.0).abs() < 1e-12, "row {r} of {i}->{o} (aa {aa}) sums to {s}");
                }
            }
            let m = bicubic_matrix(4, 4, aa);
            for r in 0..4 {
                for c in 0..4 {
                    let want = if r == c { 1.0 } else { 0.0 };
                    assert!((m[r * 4 + c] - want).abs() < 1e-12, "aa {aa}: ({r},{c}) = {}", m[r * 4 + c]);
                }
            }
        }
    }
}
