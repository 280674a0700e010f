//! Choosing a model directory's start-up canary ([`psa_pipeline::canary`]) from a labelled validation split.
use psa_pipeline::canary::CanaryInput;
use psa_pipeline::guard::GuardedPipeline;

use super::datasets::EvalItem;
use super::run::{model_err, requests};
use crate::error::DataError;

/// The `per_class` harmful items the guard flags most surely and the `per_class` benign ones it allows most surely
/// (by the calibrated probability of the level it gives), as canary inputs; items it gets wrong or cannot judge are
/// never chosen. `items` must be a validation split: a canary is held-out data, never test data.
pub fn choose_canary(
    pipeline: &GuardedPipeline,
    items: &[EvalItem],
    per_class: usize,
    batch_size: usize,
) -> Result<Vec<CanaryInput>, DataError> {
    let mut scored = Vec::with_capacity(items.len());
    for chunk in items.chunks(batch_size.max(1)) {
        let batch: Vec<_> = requests(chunk, false, &mut Vec::new())?.into_iter().map(|(_, r)| r).collect();
        let verdicts = pipeline.classify(&batch).map_err(model_err)?;
        for ((item, request), verdict) in chunk.iter().zip(batch).zip(verdicts) {
            let a = &verdict.assessment;
            let flagged = !a.is_safe(&pipeline.taxonomy);
            if a.fault(&pipeline.taxonomy).is_none() && flagged == item.harmful {
                scored.push((item.harmful, a.level_probs[a.level], request));
            }
        }
    }
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut chosen = Vec::with_capacity(2 * per_class);
    for risky in [true, false] {
        for (_, _, r) in scored.iter().filter(|s| s.0 == risky).take(per_class) {
            chosen.push(CanaryInput { image: r.image.clone(), question: r.question.clone(), risky });
        }
    }
    Ok(chosen)
}
