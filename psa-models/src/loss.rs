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

/// [`causal_lm_loss`] from hidden states, with the vocabulary projection `logits_of` applied only to the positions
/// whose next label is supervised (the same value; in training the other positions' logits are never needed).
///
/// # Shapes
/// - `hidden`: `[b, t, d]`; `labels`: `b × t`; `logits_of`: `[1, n, d]` → `[1, n, vocab]`
pub fn supervised_lm_loss(
    hidden: Tensor<3>,
    labels: &[Vec<i64>],
    logits_of: impl Fn(Tensor<3>) -> Tensor<3>,
) -> Option<Tensor<1>> {
    let [b, t, d] = hidden.dims();
    assert_eq!(labels.len(), b, "{} label rows for a batch of {b}", labels.len());
    assert!(labels.iter().all(|r| r.len() == t), "label rows must have {t} positions");
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for (r, row) in labels.iter().enumerate() {
        for (p, &l) in row.iter().enumerate().skip(1) {
            if l != IGNORE_INDEX {
                rows.push((r * t + p - 1) as i64);
                targets.push(l);
            }
        }
    }
    if rows.is_empty() {
        return None;
    }
    let (n, device) = (rows.len(), hidden.device());
    let index = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &device);
    let picked = hidden.reshape([b * t, d]).select(0, index).reshape([1, n, d]);
    let logits = logits_of(picked);
    let v = logits.dims()[2];
    assert!(targets.iter().all(|l| (0..v as i64).contains(l)), "a label is outside the vocabulary of {v}");
    let idx = Tensor::<3, Int>::from_data(TensorData::new(targets, [1, n, 1]), &device);
    let logp = activation::log_softmax(logits, 2).gather(2, idx);
    Some(logp.sum().neg() / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn supervised_positions_give_the_full_logits_loss() {
        let device = Device::flex();
        let hidden = Tensor::<3>::random([2, 5, 4], Distribution::Normal(0.0, 1.0), &device);
        let head = Tensor::<2>::random([4, 9], Distribution::Normal(0.0, 1.0), &device);
        let project = |h: Tensor<3>| h.matmul(head.clone().unsqueeze::<3>());
        let labels = vec![vec![-100, 3, -100, 8, 0], vec![-100, -100, -100, -100, 5]];
        let value = |t: Tensor<1>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0];
        let full = value(causal_lm_loss(project(hidden.clone()), &labels).unwrap());
        let picked = value(supervised_lm_loss(hidden.clone(), &labels, project).unwrap());
        assert!((full - picked).abs() < 1e-6, "{full} vs {picked}");
        assert!(supervised_lm_loss(hidden, &[vec![-100; 5], vec![7, -100, -100, -100, -100]], project).is_none());
    }
}
