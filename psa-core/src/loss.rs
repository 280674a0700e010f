//! The concept loss: `λ·(CE_level + CE_type)`, each a batch-mean softmax cross-entropy.
use burn::tensor::{Int, Tensor, TensorData, activation};

use crate::head::ConceptLogits;

/// Mean softmax cross-entropy of `[b, classes]` logits against class indices.
pub fn cross_entropy(logits: Tensor<2>, targets: &[usize]) -> Tensor<1> {
    let [b, classes] = logits.dims();
    assert_eq!(targets.len(), b, "{} targets for a batch of {b}", targets.len());
    assert!(targets.iter().all(|&t| t < classes), "a target is outside 0..{classes}: {targets:?}");
    let device = logits.device();
    let idx = Tensor::<2, Int>::from_data(
        TensorData::new(targets.iter().map(|&t| t as i64).collect::<Vec<_>>(), [b, 1]),
        &device,
    );
    let picked = activation::log_softmax(logits, 1).gather(1, idx);
    picked.mean().neg()
}

/// The parts of the concept loss.
#[derive(Debug, Clone)]
pub struct ConceptLoss {
    /// CE on the risk level.
    pub level: Tensor<1>,
    /// CE on the risk type.
    pub risk_type: Tensor<1>,
    /// `λ·(level + risk_type)`.
    pub weighted: Tensor<1>,
}

/// Computes the concept loss for labelled levels and types.
pub fn concept_loss(logits: &ConceptLogits, levels: &[usize], types: &[usize], lambda: f64) -> ConceptLoss {
    let level = cross_entropy(logits.level.clone(), levels);
    let risk_type = cross_entropy(logits.risk_type.clone(), types);
    let weighted = (level.clone() + risk_type.clone()) * lambda;
    ConceptLoss { level, risk_type, weighted }
}
