//! Threaded elementwise kernels for f32 tensors on the flex CPU backend outside autodiff.
//!
//! flex evaluates elementwise operations (erf, exp, normalisation statistics) one element at a time on one thread;
//! on a 2-core machine that made GELU, SiLU and RMSNorm a large share of a forward pass. Here the same functions
//! run over all threads in one pass each. Every function takes the tensor-operation form as `otherwise`, used for
//! tensors that live elsewhere: it stays the reference on every other backend and under autodiff.
use burn::tensor::Tensor;
#[cfg(feature = "flex")]
use burn::tensor::{DType, Device, TensorData};
#[cfg(feature = "flex")]
use rayon::prelude::*;

/// Elements per parallel task.
#[cfg(feature = "flex")]
const CHUNK: usize = 1 << 14;

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
        v.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|a| *a = f(*a)));
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

/// SiLU, `x·σ(x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
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
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
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

        // Tensors under autodiff are handed back for the tensor operations.
        let tracked = Tensor::<3>::random([2, 3, 4], Distribution::Default, &device.clone().autodiff()).require_grad();
        let before = host(tracked.clone());
        assert_eq!(host(map(tracked, |v| v + 1.0, |t| t)), before, "an autodiff tensor takes the tensor operations");
    }
}
