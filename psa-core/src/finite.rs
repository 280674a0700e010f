//! Finite-value checks over a module's parameters and gradients: a diverged or corrupted model is never trained
//! on, saved, loaded or served. Each check reads one small tensor back to the host, whatever the module's size.
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::path::ModulePath;

/// What a scan measures of each selected float parameter.
enum Measure<'a> {
    /// `sum(0 · x)`: exactly 0 when every element is finite, NaN otherwise.
    Finite,
    /// `sum(g²)` of the parameter's gradient (skipped when it has none).
    GradSquares(&'a GradientsParams),
}

struct Scan<'a, F> {
    select: F,
    measure: Measure<'a>,
    path: ModulePath,
    names: Vec<String>,
    values: Vec<Tensor<1>>,
}

impl<F: Fn(&str) -> bool> ModuleVisitor for Scan<'_, F> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.path.exit(container_type);
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.path.joined();
        if !(self.select)(&path) {
            return;
        }
        let value = match self.measure {
            Measure::Finite => param.val().mul_scalar(0.0).sum(),
            Measure::GradSquares(grads) => match grads.get::<D>(param.id) {
                Some(g) => g.square().sum(),
                None => return,
            },
        };
        self.names.push(path);
        self.values.push(value);
    }
}

fn scan<M: Module>(module: &M, select: impl Fn(&str) -> bool, measure: Measure<'_>) -> Vec<(String, f64)> {
    let mut s = Scan { select, measure, path: ModulePath::default(), names: Vec::new(), values: Vec::new() };
    module.visit(&mut s);
    if s.values.is_empty() {
        return Vec::new();
    }
    let n = s.values.len();
    // A read-back that fails counts as non-finite: the check fails closed.
    let host = Tensor::cat(s.values, 0).into_data().convert::<f64>().try_to_vec::<f64>().unwrap_or(vec![f64::NAN; n]);
    s.names.into_iter().zip(host).collect()
}

/// Paths of the selected float parameters (by dotted module path) holding a NaN or an infinity.
pub fn non_finite_params<M: Module>(module: &M, select: impl Fn(&str) -> bool) -> Vec<String> {
    scan(module, select, Measure::Finite).into_iter().filter(|(_, v)| !v.is_finite()).map(|(n, _)| n).collect()
}

/// The global L2 norm of the gradients of `module`'s parameters, and the paths of those whose gradient is not
/// finite (an overflowing sum of squares counts as not finite).
pub fn grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> (f64, Vec<String>) {
    let squares = scan(module, |_| true, Measure::GradSquares(grads));
    let bad = squares.iter().filter(|(_, v)| !v.is_finite()).map(|(n, _)| n.clone()).collect();
    (squares.iter().map(|(_, v)| v).sum::<f64>().sqrt(), bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SafetyConfig;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn finds_exactly_the_poisoned_parameters() {
        let device = Device::flex();
        let cfg = SafetyConfig::for_model(8, 4, 16).with_safety_tokens(2);
        let mut m = cfg.init(&device).unwrap();
        assert!(non_finite_params(&m, |_| true).is_empty());
        let mut poisoned = vec![0.5f32; 32];
        poisoned[3] = f32::NAN;
        m.safety_query_tokens = Param::from_tensor(Tensor::from_data(TensorData::new(poisoned, [1, 2, 16]), &device));
        assert_eq!(non_finite_params(&m, |_| true), ["safety_query_tokens"]);
        assert!(non_finite_params(&m, |p| p.starts_with("safe_part")).is_empty());
        let mut inf = vec![0.5f32; 32];
        inf[0] = f32::NEG_INFINITY;
        m.safety_query_tokens_2 = Param::from_tensor(Tensor::from_data(TensorData::new(inf, [1, 2, 16]), &device));
        assert_eq!(non_finite_params(&m, |p| p.contains("tokens")), ["safety_query_tokens", "safety_query_tokens_2"]);
    }
}
