//! Fitting the guard's temperatures on a labelled validation split after training.
use psa_core::Calibration;
use psa_core::calibration::{fit_temperature, nll, softmax_t};
use psa_pipeline::guard::{GuardRequest, GuardedPipeline, LogitRows};
use serde::{Deserialize, Serialize};

use super::datasets::EvalItem;
use super::metrics::{ece, top_label};
use super::run::requests;
use crate::error::DataError;

/// The fitted temperatures and what they changed on the validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationFit {
    /// The temperatures.
    pub calibration: Calibration,
    /// Validation samples used.
    pub n: usize,
    /// Level head: (NLL, ECE) before and after.
    pub level: FitChange,
    /// Type head: (NLL, ECE) before and after.
    pub risk_type: FitChange,
}

/// Negative log-likelihood and expected calibration error before and after scaling.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FitChange {
    /// NLL at `T = 1`.
    pub nll_before: f64,
    /// NLL at the fitted `T`.
    pub nll_after: f64,
    /// ECE at `T = 1`.
    pub ece_before: f64,
    /// ECE at the fitted `T`.
    pub ece_after: f64,
}

fn change(rows: &[Vec<f32>], truth: &[usize], t: f64) -> FitChange {
    let ece_at = |t: f64| {
        let probs: Vec<Vec<f64>> = rows.iter().map(|z| softmax_t(z, t)).collect();
        let (conf, ok) = top_label(&probs, truth);
        ece(&conf, &ok).map_or(0.0, |x| x.0)
    };
    FitChange {
        nll_before: nll(rows, truth, 1.0),
        nll_after: nll(rows, truth, t),
        ece_before: ece_at(1.0),
        ece_after: ece_at(t),
    }
}

/// Fits one temperature per head on `items`, which must all carry concept labels; the pipeline's own calibration is
/// ignored (the fit starts from the raw logits).
pub fn fit_calibration(
    pipeline: &GuardedPipeline,
    items: &[EvalItem],
    batch_size: usize,
) -> Result<CalibrationFit, DataError> {
    let err = |reason: String| DataError::Line { path: "calibration split".into(), line: 0, reason };
    let mut logits = LogitRows { level: Vec::new(), risk_type: Vec::new() };
    let (mut levels, mut types) = (Vec::new(), Vec::new());
    for chunk in items.chunks(batch_size.max(1)) {
        for item in chunk {
            let (l, t) = item.concepts.ok_or_else(|| err(format!("{}: no concept labels", item.source())))?;
            levels.push(l);
            types.push(t);
        }
        let batch: Vec<GuardRequest> = requests(chunk, false, &mut Vec::new())?.into_iter().map(|(_, r)| r).collect();
        let rows = pipeline.concept_logits(&batch).map_err(|e| err(e.to_string()))?;
        logits.level.extend(rows.level);
        logits.risk_type.extend(rows.risk_type);
    }
    let fit = |rows: &[Vec<f32>], truth: &[usize]| fit_temperature(rows, truth).map_err(|e| err(e.to_string()));
    let calibration = Calibration {
        level_temperature: fit(&logits.level, &levels)?,
        type_temperature: fit(&logits.risk_type, &types)?,
    };
    Ok(CalibrationFit {
        n: items.len(),
        level: change(&logits.level, &levels, calibration.level_temperature),
        risk_type: change(&logits.risk_type, &types, calibration.type_temperature),
        calibration,
    })
}
