// Deterministic inputs shared by `benches/vs_pytorch.rs`, `examples/profile_workload.rs` and
// `scripts/bench_vs_pytorch.py` (the same formulas in each, so every side computes on identical numbers). Included
// with `#[path]`.
use psa_vlm::burn::tensor::{Device, Tensor, TensorData};
use psa_vlm::train::data::Encoded;
use psa_vlm::train::trainer::Prepared;

/// Samples in the stage-I step.
pub const STAGE1_BATCH: usize = 4;
/// Text tokens of each stage-I sample (one of them `<image>`).
const STAGE1_LEN: usize = 48;
/// Text tokens of the classify prompt (one of them `<image>`).
const CLASSIFY_LEN: usize = 26;

/// Token `i` of a pseudo-text row: BOS, then ids spread over the vocabulary.
fn text_id(i: usize, row: usize) -> u32 {
    if i == 0 { 1 } else { ((i * 7919 + row * 104_729 + 101) % 49_000 + 100) as u32 }
}

/// Pixels `[b, 3, 224, 224]`: `sin(0.37c + 0.011y + 0.017x + 0.5b)`.
pub fn pixels(batch: usize) -> TensorData {
    let mut v = Vec::with_capacity(batch * 3 * 224 * 224);
    for b in 0..batch {
        for c in 0..3 {
            for y in 0..224 {
                for x in 0..224 {
                    v.push((0.37 * c as f32 + 0.011 * y as f32 + 0.017 * x as f32 + 0.5 * b as f32).sin());
                }
            }
        }
    }
    TensorData::new(v, [batch, 3, 224, 224])
}

/// A text-only prompt of `len` tokens.
pub fn prompt_ids(len: usize) -> Vec<u32> {
    (0..len).map(|i| text_id(i, 0)).collect()
}

/// The classify prompt: BOS, `<image>`, text.
pub fn classify_ids(image: u32) -> Vec<u32> {
    (0..CLASSIFY_LEN).map(|i| if i == 1 { image } else { text_id(i, 0) }).collect()
}

/// Stage-I sample `row`: BOS, `<image>`, text.
pub fn stage1_ids(row: usize, image: u32) -> Vec<u32> {
    (0..STAGE1_LEN).map(|i| if i == 1 { image } else { text_id(i, row + 1) }).collect()
}

/// Cached vision features of stage-I sample `row`, `[1, 256, 384]`: `0.5·sin(0.013p + 0.029d + row)`.
pub fn stage1_features(row: usize) -> TensorData {
    let v = (0..256)
        .flat_map(|p| (0..384).map(move |d| 0.5 * (0.013 * p as f32 + 0.029 * d as f32 + row as f32).sin()))
        .collect();
    TensorData::new(v, [1, 256, 384])
}

/// The stage-I batch: [`STAGE1_BATCH`] samples labelled on every text position, levels `row % 4`, types `row % 7`.
pub fn stage1_batch(image: u32, device: &Device) -> Vec<Prepared> {
    (0..STAGE1_BATCH)
        .map(|row| {
            let ids = stage1_ids(row, image);
            let labels = ids.iter().map(|&i| if i == image { -100 } else { i as i64 }).collect();
            // No question marks: the text-aware query modes fall back to every text token (the default mode does not
            // pool).
            let question = vec![false; ids.len()];
            Prepared {
                features: Tensor::from_data(stage1_features(row), device),
                encoded: Encoded { input_ids: ids, labels, truncated: false, question },
                level: row % 4,
                risk_type: row % 7,
            }
        })
        .collect()
}
