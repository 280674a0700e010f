//! Global gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_`: every gradient is scaled by one factor so
//! that the L2 norm over all of them together is at most the limit. (burn-optim's `GradientClipping::Norm` clips each
//! parameter's gradient on its own, which changes the direction of the step.)
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// `grads` scaled by `min(1, max_norm / (norm + 1e-6))`, where `norm` is their global L2 norm (measured by the
/// caller over the same parameters, e.g. with `psa_core::finite::grad_norm`).
pub fn clip_grad_norm<M: Module>(module: &M, grads: GradientsParams, norm: f64, max_norm: f64) -> GradientsParams {
    let coef = max_norm / (norm + 1e-6);
    if coef >= 1.0 {
        return grads;
    }
    let mut scale = Scale { grads, coef };
    module.visit(&mut scale);
    scale.grads
}

struct Scale {
    grads: GradientsParams,
    coef: f64,
}

impl ModuleVisitor for Scale {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g * self.coef);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{Device, TensorData};

    fn grads(device: &Device, linear: &Linear) -> GradientsParams {
        let mut g = GradientsParams::new();
        // Norms 5 and 12: global norm 13.
        g.register(
            linear.weight.id,
            Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 0.0, 0.0, 4.0], [2, 2]), device),
        );
        let bias = linear.bias.as_ref().expect("bias");
        g.register(bias.id, Tensor::<1>::from_data(TensorData::new(vec![12.0f32, 0.0], [2]), device));
        g
    }

    fn values<const D: usize>(g: &GradientsParams, p: &Param<Tensor<D>>) -> Vec<f32> {
        g.get::<D>(p.id).expect("gradient").into_data().convert::<f32>().try_to_vec().expect("f32")
    }

    #[test]
    fn scales_every_gradient_by_one_factor_like_clip_grad_norm() {
        let device = Device::flex();
        let linear = LinearConfig::new(2, 2).init(&device);
        let bias = linear.bias.clone().expect("bias");
        // Over the limit: everything times 1 / (13 + 1e-6), so the global norm becomes 1 and the 5 : 12 ratio stays
        // (clipping each tensor to 1 would give a global norm of √2 and a 1 : 1 ratio).
        let clipped = clip_grad_norm(&linear, grads(&device, &linear), 13.0, 1.0);
        let c = 1.0 / (13.0 + 1e-6);
        let (w, b) = (values(&clipped, &linear.weight), values(&clipped, &bias));
        let want_w = [3.0 * c, 0.0, 0.0, 4.0 * c];
        assert!(w.iter().zip(want_w).all(|(x, y)| (*x as f64 - y).abs() < 1e-7), "{w:?}");
        assert!((b[0] as f64 - 12.0 * c).abs() < 1e-7 && b[1] == 0.0, "{b:?}");
        let norm = w.iter().chain(&b).map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6, "global norm {norm}");
        // Under the limit: unchanged.
        let kept = clip_grad_norm(&linear, grads(&device, &linear), 13.0, 20.0);
        assert_eq!(values(&kept, &linear.weight), vec![3.0, 0.0, 0.0, 4.0]);
    }
}
