//! Host-memory kernels for the CPU paths: threaded elementwise kernels for f32 tensors on the flex CPU backend
//! outside autodiff, a vectorisable `exp` and softmax, and blocked matrix products ([`gemm`]).
//!
//! flex evaluates elementwise operations (erf, exp, normalisation statistics) one element at a time on one thread;
//! on a 2-core machine that made GELU, SiLU and RMSNorm a large share of a forward pass. Here the same functions
//! run over all threads in one pass each. Every function takes the tensor-operation form as `otherwise`, used for
//! tensors that live elsewhere: it stays the reference on every other backend and under autodiff.
pub mod attention;
pub mod gemm;
pub(crate) mod layers;

use burn::nn::Linear;
use burn::tensor::Tensor;
#[cfg(feature = "flex")]
use burn::tensor::{DType, Device, TensorData};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// Rows from which [`linear`] takes the host product: measured on a ViT-S/14 tower, one 257-token image ran faster
/// on flex's own product and eight images (2056 rows) about 25 % faster on the host product.
pub const LINEAR_ROWS: usize = 512;

/// Whether `device` is the flex CPU backend (with or without autodiff); `false` when flex is not compiled in.
pub fn is_flex(device: &burn::tensor::Device) -> bool {
    #[cfg(feature = "flex")]
    return *device == Device::flex();
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

/// Whether `x` is an f32 tensor on plain flex (no autodiff).
#[cfg(feature = "flex")]
fn on_flex<const D: usize>(x: &Tensor<D>) -> bool {
    // Device equality ignores autodiff, so it is checked on its own.
    let device = x.device();
    x.dtype() == DType::F32 && !device.is_autodiff() && device == Device::flex()
}

#[cfg(feature = "flex")]
fn values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
    x.into_data().try_into_vec::<f32>().expect("an F32 tensor reads as f32 values")
}

/// `f` applied to every element.
pub fn map<const D: usize>(
    x: Tensor<D>,
    f: impl Fn(f32) -> f32 + Sync,
    otherwise: impl FnOnce(Tensor<D>) -> Tensor<D>,
) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if on_flex(&x) {
        let (shape, device) = (x.shape(), x.device());
        let mut v = values(x);
        map_slice(&mut v, f);
        return Tensor::from_data(TensorData::new(v, shape), &device);
    }
    let _ = &f;
    otherwise(x)
}

/// `f(a, b)` elementwise over two tensors of one shape.
pub fn zip<const D: usize>(
    a: Tensor<D>,
    b: Tensor<D>,
    f: impl Fn(f32, f32) -> f32 + Sync,
    otherwise: impl FnOnce(Tensor<D>, Tensor<D>) -> Tensor<D>,
) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if on_flex(&a) && on_flex(&b) && a.shape() == b.shape() {
        let (shape, device) = (a.shape(), a.device());
        let (mut x, y) = (values(a), values(b));
        x.par_chunks_mut(CHUNK).zip(y.par_chunks(CHUNK)).for_each(|(c, d)| {
            c.iter_mut().zip(d).for_each(|(p, &q)| *p = f(*p, q));
        });
        return Tensor::from_data(TensorData::new(x, shape), &device);
    }
    let _ = &f;
    otherwise(a, b)
}

/// RMSNorm over the last axis: `x / sqrt(mean(x²) + eps) · gamma`, the statistic in f32.
pub fn rms_norm<const D: usize>(
    x: Tensor<D>,
    gamma: &Tensor<1>,
    eps: f64,
    otherwise: impl FnOnce(Tensor<D>) -> Tensor<D>,
) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if on_flex(&x) && on_flex(gamma) {
        let (shape, device) = (x.shape(), x.device());
        let g = values(gamma.clone());
        let d = g.len();
        let mut v = values(x);
        v.par_chunks_mut(d * (CHUNK / d).max(1)).for_each(|rows| rms_norm_rows(rows, &g, eps as f32));
        return Tensor::from_data(TensorData::new(v, shape), &device);
    }
    let _ = (gamma, eps);
    otherwise(x)
}

/// `linear(x)` over the last axis; for flex tensors of at least [`LINEAR_ROWS`] rows on all threads with
/// [`gemm::matmul`]. The weight is copied out of its tensor on each call (so a trained weight is always the current
/// one), which only pays off over many rows.
pub fn linear<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if on_flex(&x) && on_flex(&linear.weight.val()) && x.shape().num_elements() / x.dims()[D - 1] >= LINEAR_ROWS {
        let (mut dims, device) = (x.dims(), x.device());
        let [d_in, d_out] = linear.weight.dims();
        let w = values(linear.weight.val());
        let x = values(x);
        let m = x.len() / d_in;
        let mut y = vec![0f32; m * d_out];
        gemm::matmul(&x, d_in, m, &gemm::Strided::cols(&w, d_in, d_out, d_out), &mut y, true);
        if let Some(bias) = &linear.bias {
            let b = values(bias.val());
            y.par_chunks_mut(d_out * (CHUNK / d_out).max(1)).for_each(|rows| {
                rows.chunks_exact_mut(d_out).for_each(|r| r.iter_mut().zip(&b).for_each(|(a, b)| *a += b))
            });
        }
        dims[D - 1] = d_out;
        return Tensor::from_data(TensorData::new(y, dims), &device);
    }
    linear.forward(x)
}

/// Unmasked multi-head self-attention of projected `q`, `k`, `v` (`[batch, tokens, width]`, heads side by side in
/// the width), on all threads ([`attention::per_head_blocks`]).
pub fn self_attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    otherwise: impl FnOnce(Tensor<3>, Tensor<3>, Tensor<3>) -> Tensor<3>,
) -> Tensor<3> {
    #[cfg(feature = "flex")]
    if on_flex(&q) && on_flex(&k) && on_flex(&v) && q.shape() == k.shape() && k.shape() == v.shape() {
        let ([b, t, d], device) = (q.dims(), q.device());
        let hd = d / heads;
        let (q, k, v) = (values(q), values(k), values(v));
        let out = attention::per_head_blocks(b, t, heads, hd, |r, head, first, rows| {
            let base = r * t * d + head * hd;
            let keys = gemm::Strided::rows(&k[base..], t, hd, d);
            let values = gemm::Strided::cols(&v[base..], t, hd, d);
            attention::attend(&q[base + first * d..], d, rows, &keys, &values, |_, _| true)
        });
        return Tensor::from_data(TensorData::new(out, [b, t, d]), &device);
    }
    let _ = heads;
    otherwise(q, k, v)
}

/// `f` applied to every value of `x` in place, on all threads; on x86-64 CPUs with AVX2 and FMA the loop is
/// compiled for them (eight lanes instead of SSE's four), picked at run time.
pub fn map_slice(x: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    x.par_chunks_mut(CHUNK).for_each(|c| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { map_avx2(c, &f) };
        }
        c.iter_mut().for_each(|v| *v = f(*v));
    });
}

/// [`map_slice`]'s loop for AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_avx2(x: &mut [f32], f: &impl Fn(f32) -> f32) {
    x.iter_mut().for_each(|v| *v = f(*v));
}

/// SiLU, `x·σ(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `e^x` in f32 without a library call, so loops over it vectorise: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a
/// degree-7 polynomial for `e^r` (relative error below 3·10⁻⁷), and `2^n` built from its exponent bits. Below
/// −87.3 (where e^x leaves f32's normal range) the result is 0, so `exp(−∞) = 0`; above 88.3 it is e^88.3.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer without a library call.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.clamp(-87.3, 88.3);
    let rounded = clamped * LOG2E + ROUND;
    let n = rounded - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = ((((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5)
        * r
        + 1.0)
        * r
        + 1.0;
    // `rounded`'s low mantissa bits hold n (|n| ≤ 127); n + 127 shifted into the exponent field is 2ⁿ, with integer
    // operations only (a float-to-int cast would not vectorise).
    let e = p * f32::from_bits(rounded.to_bits().wrapping_add(127) << 23);
    if x < -87.3 { 0.0 } else { e }
}

/// Softmax in place over the entries of `row` for which `visible(index)` holds; the others become 0, and a row
/// with nothing visible becomes all 0.
pub fn softmax_visible(row: &mut [f32], visible: impl Fn(usize) -> bool) {
    for (s, v) in row.iter_mut().enumerate() {
        if !visible(s) {
            *v = f32::NEG_INFINITY;
        }
    }
    let max = lanes(row, f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    row.iter_mut().for_each(|v| *v = exp(*v - max));
    let inv = 1.0 / lanes(row, 0.0, |a, b| a + b);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Folds `x` with `op` in 16 independent lanes, then folds the lanes: a reduction the compiler vectorises (a single
/// running value would serialise every step).
#[inline(always)]
fn lanes(x: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    const L: usize = 16;
    let mut acc = [init; L];
    let chunks = x.chunks_exact(L);
    let tail = chunks.remainder().iter().fold(init, |a, &b| op(a, b));
    for c in chunks {
        for i in 0..L {
            acc[i] = op(acc[i], c[i]);
        }
    }
    acc.iter().fold(tail, |a, &b| op(a, b))
}

/// RMSNorm in place on each `gamma.len()`-wide row of `x`: `x / sqrt(mean(x²) + eps) · gamma`.
pub fn rms_norm_rows(x: &mut [f32], gamma: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(gamma.len()) {
        let rms = (row.iter().map(|a| a * a).sum::<f32>() / gamma.len() as f32 + eps).sqrt();
        row.iter_mut().zip(gamma).for_each(|(a, w)| *a = *a / rms * w);
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::nn::RmsNormConfig;
    use burn::tensor::{Distribution, activation};

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    fn worst(a: &[f32], b: &[f32]) -> f32 {
        psa_core::compare::max_abs_diff(a, b).unwrap() as f32
    }

    #[test]
    fn threaded_kernels_match_the_tensor_operations() {
        let device = Device::flex();
        let x = Tensor::<3>::random([3, 70, 576], Distribution::Normal(0.0, 2.0), &device);
        let y = Tensor::<3>::random([3, 70, 576], Distribution::Normal(0.0, 2.0), &device);
        let want = host(activation::silu(x.clone()) * y.clone());
        let got =
            host(zip(x.clone(), y.clone(), |g, u| silu(g) * u, |_, _| panic!("flex tensors take the threaded path")));
        assert!(worst(&got, &want) < 1e-5, "silu·up differs by {}", worst(&got, &want));

        let norm = RmsNormConfig::new(576).with_epsilon(1e-5).init(&device);
        let gamma = Tensor::<1>::random([576], Distribution::Normal(1.0, 0.1), &device);
        let norm = burn::nn::RmsNorm { gamma: burn::module::Param::from_tensor(gamma.clone()), ..norm };
        let want = host(norm.forward(x.clone()));
        let got = host(rms_norm(x.clone(), &gamma, 1e-5, |_| panic!("flex tensors take the threaded path")));
        assert!(worst(&got, &want) < 1e-5, "rms norm differs by {}", worst(&got, &want));

        // A linear layer with bias on a rank-3 input of enough rows for the host product, against Burn's.
        let rows = Tensor::<3>::random([3, LINEAR_ROWS / 2, 576], Distribution::Normal(0.0, 2.0), &device);
        let lin = burn::nn::LinearConfig::new(576, 100).init(&device);
        let want = host(lin.forward(rows.clone()));
        let got = host(linear(&lin, rows));
        assert!(worst(&got, &want) < 1e-4, "linear differs by {}", worst(&got, &want));

        // Self-attention over more tokens than one query block, against Burn's attention.
        let qkv: Vec<Tensor<3>> =
            (0..3).map(|_| Tensor::<3>::random([2, 150, 96], Distribution::Normal(0.0, 1.0), &device)).collect();
        let split = |x: Tensor<3>| x.reshape([2, 150, 6, 16]).swap_dims(1, 2);
        let (q, k, v) = (split(qkv[0].clone()), split(qkv[1].clone()), split(qkv[2].clone()));
        let want = burn::tensor::module::attention(q, k, v, None, None, Default::default());
        let want = host(want.swap_dims(1, 2).reshape([2, 150, 96]));
        let got = host(self_attention(qkv[0].clone(), qkv[1].clone(), qkv[2].clone(), 6, |_, _, _| {
            panic!("flex tensors take the threaded path")
        }));
        assert!(worst(&got, &want) < 1e-5, "self-attention differs by {}", worst(&got, &want));

        // Tensors under autodiff are handed back for the tensor operations.
        let tracked = Tensor::<3>::random([2, 3, 4], Distribution::Default, &device.clone().autodiff()).require_grad();
        let before = host(tracked.clone());
        assert_eq!(host(map(tracked, |v| v + 1.0, |t| t)), before, "an autodiff tensor takes the tensor operations");
    }
}

#[cfg(test)]
mod exp_tests {
    #[test]
    fn exp_is_within_two_ulp_scale_of_the_library_and_softmax_skips_hidden_entries() {
        let relative: Vec<f64> = (-8700..=8820)
            .map(|i| i as f32 / 100.0 + 0.003)
            .map(|x| (super::exp(x) as f64 - (x as f64).exp()) / (x as f64).exp())
            .collect();
        let worst = psa_core::compare::max_abs(&relative).unwrap();
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!((super::exp(f32::NEG_INFINITY), super::exp(-88.0)), (0.0, 0.0));
        let mut row = vec![1.0, 50.0, 2.0, f32::NEG_INFINITY];
        super::softmax_visible(&mut row, |s| s != 1);
        let e = 1f32.exp();
        let want = [1.0 / (1.0 + e), 0.0, e / (1.0 + e), 0.0];
        assert!(row.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-7), "{row:?}");
        let mut hidden = vec![3.0; 4];
        super::softmax_visible(&mut hidden, |_| false);
        assert_eq!(hidden, vec![0.0; 4]);
    }
}
