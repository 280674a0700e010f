//! Temperature scaling of the two safety classifiers: one scalar `T` per head divides the logits before the
//! softmax, fitted after training on a held-out validation split by minimising the negative log-likelihood.
//! The argmax never changes; the probabilities the policy's thresholds read do.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::CoreError;

/// Smallest and largest temperature a fit may return (a head that is right on every validation sample would
/// otherwise drive `T` to zero).
pub const TEMPERATURE_RANGE: (f64, f64) = (0.05, 100.0);

/// Per-head temperatures; `1.0` leaves a head as trained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Temperature of the risk-level head.
    pub level_temperature: f64,
    /// Temperature of the risk-type head.
    pub type_temperature: f64,
}

impl Default for Calibration {
    fn default() -> Self {
        Self { level_temperature: 1.0, type_temperature: 1.0 }
    }
}

impl Calibration {
    /// Reads `calibration.json`, checking both temperatures lie in [`TEMPERATURE_RANGE`].
    pub fn from_file(path: &Path) -> Result<Self, CoreError> {
        let text = std::fs::read_to_string(path).map_err(|source| CoreError::Io { path: path.into(), source })?;
        let c: Self =
            serde_json::from_str(&text).map_err(|e| CoreError::Parse { path: path.into(), reason: e.to_string() })?;
        c.validate()?;
        Ok(c)
    }

    /// Writes the temperatures as JSON.
    pub fn save(&self, path: &Path) -> Result<(), CoreError> {
        self.validate()?;
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| CoreError::Invalid { what: "calibration", reason: e.to_string() })?;
        std::fs::write(path, text).map_err(|source| CoreError::Io { path: path.into(), source })
    }

    /// Checks the temperatures lie in [`TEMPERATURE_RANGE`], what a fit can return: a temperature of `1e9` is
    /// finite and positive but flattens every verdict into a tie.
    pub fn validate(&self) -> Result<(), CoreError> {
        let (lo, hi) = TEMPERATURE_RANGE;
        for (name, t) in [("level_temperature", self.level_temperature), ("type_temperature", self.type_temperature)] {
            if !(t.is_finite() && (lo..=hi).contains(&t)) {
                return Err(CoreError::Invalid {
                    what: "calibration",
                    reason: format!("{name} must lie in [{lo}, {hi}], got {t}"),
                });
            }
        }
        Ok(())
    }
}

/// `softmax(logits / temperature)` in f64.
pub fn softmax_t(logits: &[f32], temperature: f64) -> Vec<f64> {
    let scaled: Vec<f64> = logits.iter().map(|&z| z as f64 / temperature).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = scaled.iter().map(|z| (z - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Mean negative log-likelihood of `labels` under `softmax(logits / temperature)`.
pub fn nll(logits: &[Vec<f32>], labels: &[usize], temperature: f64) -> f64 {
    let n = logits.len().max(1) as f64;
    logits
        .iter()
        .zip(labels)
        .map(|(z, &y)| {
            let scaled: Vec<f64> = z.iter().map(|&v| v as f64 / temperature).collect();
            let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + scaled.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
            lse - scaled[y]
        })
        .sum::<f64>()
        / n
}

/// The temperature minimising [`nll`] within [`TEMPERATURE_RANGE`]. The NLL is convex in `1/T`, so a golden-section
/// search over `1/T` finds the minimum. Errors on empty input, a label out of range or non-finite logits.
pub fn fit_temperature(logits: &[Vec<f32>], labels: &[usize]) -> Result<f64, CoreError> {
    let invalid = |reason: String| CoreError::Invalid { what: "calibration data", reason };
    if logits.is_empty() || logits.len() != labels.len() {
        return Err(invalid(format!("{} logit rows for {} labels", logits.len(), labels.len())));
    }
    for (i, (z, &y)) in logits.iter().zip(labels).enumerate() {
        if y >= z.len() {
            return Err(invalid(format!("row {i}: label {y} for {} classes", z.len())));
        }
        if z.iter().any(|v| !v.is_finite()) {
            return Err(invalid(format!("row {i}: non-finite logit")));
        }
    }
    let f = |beta: f64| nll(logits, labels, 1.0 / beta);
    let (mut lo, mut hi) = (1.0 / TEMPERATURE_RANGE.1, 1.0 / TEMPERATURE_RANGE.0);
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (hi - g * (hi - lo), lo + g * (hi - lo));
    let (mut fa, mut fb) = (f(a), f(b));
    for _ in 0..200 {
        if fa <= fb {
            hi = b;
            (b, fb) = (a, fa);
            a = hi - g * (hi - lo);
            fa = f(a);
        } else {
            lo = a;
            (a, fa) = (b, fb);
            b = lo + g * (hi - lo);
            fb = f(b);
        }
        if hi - lo < 1e-12 {
            break;
        }
    }
    Ok(1.0 / ((lo + hi) / 2.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitted_temperature_is_the_stationary_point_of_the_nll() {
        // Two classes, logits ±1: one row right, one wrong. NLL(β) = log(1 + e^{-2β}) + log(1 + e^{2β}) (halved),
        // minimal at β = 0 (T → ∞), so the fit lands on the upper bound.
        let tie = fit_temperature(&[vec![1.0, -1.0], vec![1.0, -1.0]], &[0, 1]).unwrap();
        assert!((tie - TEMPERATURE_RANGE.1).abs() < 1e-6, "{tie}");
        // Three right, one wrong with margin 2: p = σ(2β) must equal 3/4, so β = ln(3)/2 and T = 2/ln 3.
        let rows = vec![vec![1.0, -1.0]; 4];
        let t = fit_temperature(&rows, &[0, 0, 0, 1]).unwrap();
        assert!((t - 2.0 / 3f64.ln()).abs() < 1e-6, "{t}");
        assert!(nll(&rows, &[0, 0, 0, 1], t) < nll(&rows, &[0, 0, 0, 1], 1.0));
    }

    #[test]
    fn softmax_with_temperature_and_bad_input() {
        let p = softmax_t(&[2.0, 0.0], 2.0);
        assert!((p[0] - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-12);
        assert!(fit_temperature(&[], &[]).is_err());
        assert!(fit_temperature(&[vec![0.0, 1.0]], &[2]).is_err());
        assert!(fit_temperature(&[vec![f32::NAN, 1.0]], &[0]).is_err());
        let bad = Calibration { level_temperature: 0.0, type_temperature: 1.0 };
        assert!(bad.validate().unwrap_err().to_string().contains("level_temperature"));
    }
}
