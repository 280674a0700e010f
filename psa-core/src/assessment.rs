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

/// Smallest lead of the most likely class over the runner-up: a tie (a zeroed or constant head) has no verdict.
pub const MIN_MARGIN: f32 = 1e-3;

/// Smallest lead of the most likely class over the uniform probability `1/classes`: a near-uniform distribution (a
/// huge temperature, a head that learnt nothing) has no verdict either.
pub const MIN_OVER_UNIFORM: f32 = 1e-2;

/// The name an assessment without a verdict gives its level and type, so it never reads as "safe".
pub const INVALID_NAME: &str = "invalid";

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
                let mut a = Self {
                    level_name: taxonomy.levels[l].name.clone(),
                    type_name: taxonomy.types[t].name.clone(),
                    level_probs: lp,
                    type_probs: tp,
                    level: l,
                    risk_type: t,
                };
                if a.fault(taxonomy).is_some() {
                    a.level_name = INVALID_NAME.into();
                    a.type_name = INVALID_NAME.into();
                }
                a
            })
            .collect()
    }

    /// Why this assessment cannot be trusted, if it cannot: probabilities that are not finite, not in [0, 1],
    /// do not sum to 1 or do not fit the taxonomy, an argmax that is not the most likely class, a most likely class
    /// that leads the runner-up by less than [`MIN_MARGIN`] (a tie) or the uniform probability by less than
    /// [`MIN_OVER_UNIFORM`], or names that are not the taxonomy's names of the argmax (an assessment from
    /// [`from_logit_rows`](Self::from_logit_rows) that failed these checks is named [`INVALID_NAME`]).
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
            let top = p[arg];
            let second =
                p.iter().enumerate().filter(|&(i, _)| i != arg).map(|(_, &y)| y).max_by(f32::total_cmp).unwrap_or(0.0);
            if classes > 1 && top - second < MIN_MARGIN {
                return Some(format!(
                    "the {head} head is undecided: its two most likely classes are tied ({top} vs {second})"
                ));
            }
            if classes > 1 && top - 1.0 / (classes as f32) < MIN_OVER_UNIFORM {
                return Some(format!("the {head} head is undecided: its distribution is near uniform (top {top})"));
            }
        }
        let names = [
            ("level", &self.level_name, taxonomy.levels.get(self.level)),
            ("type", &self.type_name, taxonomy.types.get(self.risk_type)),
        ];
        for (head, name, class) in names {
            if class.is_none_or(|c| &c.name != name) {
                return Some(format!("the {head} name {name:?} is not the taxonomy's name of the most likely class"));
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
        let types = vec![vec![2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]];
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let a = &SafetyAssessment::from_logit_rows(&[vec![bad, 0.0, 0.0, 0.0]], &types, &tax, &cal)[0];
            assert!(a.fault(&tax).is_some(), "{bad}: {a:?}");
        }
        let mut a = SafetyAssessment::from_logit_rows(&[vec![1.0, 0.0, 0.0, 0.0]], &types, &tax, &cal).remove(0);
        assert_eq!(a.fault(&tax), None);
        a.level = 1;
        assert!(a.fault(&tax).unwrap().contains("not the most likely"));
        a.level = 0;
        a.level_name = "high".into();
        assert!(a.fault(&tax).unwrap().contains("not the taxonomy's name"));
        a.level_name = tax.levels[0].name.clone();
        a.type_probs.pop();
        assert!(a.fault(&tax).unwrap().contains("6 type probabilities for 7"));
    }

    #[test]
    fn tied_or_near_uniform_heads_are_faults_named_invalid_never_safe() {
        let tax = Taxonomy::default();
        let cal = Calibration::default();
        let types = vec![vec![2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]];
        // A zeroed level head: a four-way tie whose first class is the safe level.
        let zero = SafetyAssessment::from_logit_rows(&[vec![0.0; 4]], &types, &tax, &cal).remove(0);
        assert!(zero.fault(&tax).unwrap().contains("tied"), "{zero:?}");
        assert_eq!((zero.level_name.as_str(), zero.type_name.as_str()), (INVALID_NAME, INVALID_NAME));
        // Two classes tied at the top.
        let tie = SafetyAssessment::from_logit_rows(&[vec![3.0, 3.0, 0.0, 0.0]], &types, &tax, &cal).remove(0);
        assert!(tie.fault(&tax).unwrap().contains("tied"));
        // A temperature that flattens any logits.
        let hot = Calibration { level_temperature: 1e9, type_temperature: 1.0 };
        let flat = SafetyAssessment::from_logit_rows(&[vec![9.0, 0.0, 0.0, 0.0]], &types, &tax, &hot).remove(0);
        assert!(flat.fault(&tax).is_some(), "{flat:?}");
        let warm = Calibration { level_temperature: 200.0, type_temperature: 1.0 };
        let near = SafetyAssessment::from_logit_rows(&[vec![9.0, 0.0, 0.0, 0.0]], &types, &tax, &warm).remove(0);
        assert!(near.fault(&tax).unwrap().contains("near uniform"), "{near:?}");
        // A clear verdict passes and keeps its names.
        let clear = SafetyAssessment::from_logit_rows(&[vec![0.0, 0.0, 3.0, 0.0]], &types, &tax, &cal).remove(0);
        assert_eq!((clear.fault(&tax), clear.level_name.as_str()), (None, "medium"));
    }
}
