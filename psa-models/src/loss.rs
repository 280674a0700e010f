//! Next-token cross-entropy over supervised positions (labels ≠ −100) after the standard shift.
use burn::tensor::{Int, Tensor, TensorData, activation};

/// Label value that is never a target.
pub const IGNORE_INDEX: i64 = -100;

/// Mean next-token cross-entropy: position `t` predicts label `t + 1`; `None` when no label is supervised.
///
/// # Shapes
/// - `logits`: `[b, t, vocab]`; `labels`: `b × t`
pub fn causal_lm_loss(logits: Tensor<3>, labels: &[Vec<i64>]) -> Option<Tensor<1>> {
    let [b, t, v] = logits.dims();
    assert_eq!(labels.len(), b, "{} label rows for a batch of {b}", labels.len());
    assert!(labels.iter().all(|r| r.len() == t), "label rows must have {t} positions");
    if t < 2 {
        return None;
    }
    let mut targets = Vec::with_capacity(b * (t - 1));
    let mut weights = Vec::with_capacity(b * (t - 1));
    for row in labels {
        for &l in &row[1..] {
            let keep = l != IGNORE_INDEX;
            assert!(!keep || (0..v as i64).contains(&l), "label {l} is outside the vocabulary of {v}");
            targets.push(if keep { l } else { 0 });
            weights.push(if keep { 1.0f32 } else { 0.0 });
        }
    }
    let count = weights.iter().filter(|&&w| w > 0.0).count();
    if count == 0 {
        return None;
    }
    let device = logits.device();
    let idx = Tensor::<3, Int>::from_data(TensorData::new(targets, [b, t - 1, 1]), &device);
    let w = Tensor::<3>::from_data(TensorData::new(weights, [b, t - 1, 1]), &device);
    let logp = activation::log_softmax(logits.slice([0..b, 0..t - 1, 0..v]), 2).gather(2, idx);
    Some((logp * w).sum().neg() / count as f64)
}
