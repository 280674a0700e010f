//! A machine-readable safety verdict: probabilities for level and type and the argmax decisions.
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::calibration::{Calibration, softmax_t};
use crate::head::ConceptLogits;
use crate::taxonomy::Taxonomy;

/// The safety head's verdict for one image (and prompt).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafetyAssessment {
    /// Softmax over risk levels.
    pub level_probs: Vec<f32>,
    /// Softmax over risk types.
    pub type_probs: Vec<f32>,
    /// Most likely level.
    pub level: usize,
    /// Its name in the taxonomy.
    pub level_name: String,
    /// Most likely type.
    pub risk_type: usize,
    /// Its name in the taxonomy.
    pub type_name: String,
}

/// The rows of a `[b, classes]` logit tensor, on the host.
pub fn logit_rows(t: &Tensor<2>) -> Vec<Vec<f32>> {
    let [_, c] = t.dims();
    let v: Vec<f32> = t.clone().into_data().convert::<f32>().try_to_vec().expect("float data");
    v.chunks(c.max(1)).map(<[f32]>::to_vec).collect()
}

/// The softmax of a row; a row with a NaN or infinite logit gives NaN probabilities, which [`SafetyAssessment::fault`]
/// reports (a `-inf` logit would otherwise pass as a clean zero).
fn probs(logits: &[f32], temperature: f64) -> Vec<f32> {
    if logits.iter().any(|z| !z.is_finite()) {
        return vec![f32::NAN; logits.len()];
    }
    softmax_t(logits, temperature).into_iter().map(|p| p as f32).collect()
}

fn argmax(p: &[f32]) -> usize {
    p.iter().enumerate().fold(0, |best, (i, &x)| if x > p[best] { i } else { best })
}

impl SafetyAssessment {
    /// One assessment per batch row. Panics if the logits do not match the taxonomy's class counts.
    pub fn from_logits(logits: &ConceptLogits, taxonomy: &Taxonomy) -> Vec<Self> {
        Self::from_calibrated_logits(logits, taxonomy, &Calibration::default())
    }

    /// [`from_logits`](Self::from_logits) with each head's logits divided by its temperature before the softmax.
    pub fn from_calibrated_logits(logits: &ConceptLogits, taxonomy: &Taxonomy, calibration: &Calibration) -> Vec<Self> {
        Self::from_logit_rows(&logit_rows(&logits.level), &logit_rows(&logits.risk_type), taxonomy, calibration)
    }

    /// Assessments from host-side logit rows (level and type, one row per sample).
    pub fn from_logit_rows(
        level: &[Vec<f32>],
        types: &[Vec<f32>],
        taxonomy: &Taxonomy,
        calibration: &Calibration,
    ) -> Vec<Self> {
        level
            .iter()
            .zip(types)
            .map(|(l, t)| (probs(l, calibration.level_temperature), probs(t, calibration.type_temperature)))
            .map(|(lp, tp)| {
                assert_eq!((lp.len(), tp.len()), (taxonomy.levels.len(), taxonomy.types.len()), "logits vs taxonomy");
                let (l, t) = (argmax(&lp), argmax(&tp));
                Self {
                    level_name: taxonomy.levels[l].name.clone(),
                    type_name: taxonomy.types[t].name.clone(),
                    level_probs: lp,
                    type_probs: tp,
                    level: l,
                    risk_type: t,
                }
            })
            .collect()
    }

    /// Why this assessment cannot be trusted, if it cannot: probabilities that are not finite, not in [0, 1],
    /// do not sum to 1 or do not fit the taxonomy, or an argmax that is not the most likely class.
    pub fn fault(&self, taxonomy: &Taxonomy) -> Option<String> {
        let heads = [
            ("level", &self.level_probs, self.level, taxonomy.levels.len()),
            ("type", &self.type_probs, self.risk_type, taxonomy.types.len()),
        ];
        for (head, p, arg, classes) in heads {
            if p.len() != classes {
                return Some(format!("{} {head} probabilities for {classes} classes", p.len()));
            }
            if let Some(x) = p.iter().find(|x| !x.is_finite() || !(0.0..=1.0).contains(*x)) {
                return Some(format!("{head} probability {x} is not a probability"));
            }
            let sum: f32 = p.iter().sum();
            if (sum - 1.0).abs() > 1e-3 {
                return Some(format!("{head} probabilities sum to {sum}"));
            }
            if p.get(arg).is_none_or(|&x| p.iter().any(|&y| y > x)) {
                return Some(format!("{head} {arg} is not the most likely class"));
            }
        }
        None
    }

    /// Whether the verdict is the safe level or the safe type (the reference's "no hint" rule).
    pub fn is_safe(&self, taxonomy: &Taxonomy) -> bool {
        self.level == taxonomy.safe_level || self.risk_type == taxonomy.safe_type
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn verdicts_are_argmax_with_probabilities_and_round_trip_json() {
        let device = Device::flex();
        let t = |v: Vec<f32>, c: usize| Tensor::<2>::from_data(TensorData::new(v.clone(), [v.len() / c, c]), &device);
        let logits = ConceptLogits {
            feature: t(vec![0.0; 4], 2),
            level: t(vec![0.0, 0.0, 3.0, 0.0, 5.0, 0.0, 0.0, 0.0], 4),
            risk_type: t(vec![0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0], 7),
        };
        let tax = Taxonomy::default();
        let v = SafetyAssessment::from_logits(&logits, &tax);
        assert_eq!((v[0].level, v[0].risk_type, v[0].type_name.as_str()), (2, 4, "privacy"));
        assert_eq!((v[1].level, v[1].risk_type), (0, 6));
        assert!(!v[0].is_safe(&tax) && v[1].is_safe(&tax));
        assert!((v[0].level_probs.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let json = serde_json::to_string(&v[0]).unwrap();
        assert!(json.contains("\"level_name\":\"medium\""), "{json}");
        assert_eq!(serde_json::from_str::<SafetyAssessment>(&json).unwrap(), v[0]);
        assert_eq!(v[0].fault(&tax), None);
    }

    #[test]
    fn non_finite_logits_give_a_faulty_assessment_not_a_safe_one() {
        let tax = Taxonomy::default();
        let cal = Calibration::default();
        let types = vec![vec![0.0; 7]];
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let a = &SafetyAssessment::from_logit_rows(&[vec![bad, 0.0, 0.0, 0.0]], &types, &tax, &cal)[0];
            assert!(a.fault(&tax).is_some(), "{bad}: {a:?}");
        }
        let mut a = SafetyAssessment::from_logit_rows(&[vec![1.0, 0.0, 0.0, 0.0]], &types, &tax, &cal).remove(0);
        assert_eq!(a.fault(&tax), None);
        a.level = 1;
        assert!(a.fault(&tax).unwrap().contains("not the most likely"));
        a.level = 0;
        a.type_probs.pop();
        assert!(a.fault(&tax).unwrap().contains("6 type probabilities for 7"));
    }
}
