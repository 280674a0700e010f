//! Cross-check (`--features onnx-check`): the tiny LLaVA's CLIP vision tower, exported to ONNX and converted to Rust by
//! burn-onnx at build time, agrees with psa-models' hand-written CLIP (loaded from the safetensors weights) and with
//! transformers' hidden states.
#![cfg(feature = "onnx-check")]
mod common;

#[allow(dead_code)]
mod vision_tower {
    // The generated code names `burn_store`, which psa-vlm reaches through `burn::store`.
    use psa_vlm::burn::store as burn_store;
    include!(concat!(env!("OUT_DIR"), "/onnx/vision_tower.rs"));
}

use common::*;
use psa_vlm::burn::tensor::{Device, Tensor, TensorData};
use psa_vlm::import::{LoadOptions, load_llava};

#[test]
fn burn_onnx_tower_matches_the_hand_written_clip_and_transformers() {
    let device = Device::flex();
    let fx = read_fixture(&fixtures().join("tiny_llava/fixture.safetensors"));
    let input = &fx["inputs.pixel_values"];
    let pixels = Tensor::<4>::from_data(
        TensorData::new(input.values.iter().map(|&v| v as f32).collect::<Vec<_>>(), input.shape.clone()),
        &device,
    );
    let onnx = vision_tower::Model::default();
    let (last, selected) = onnx.forward(pixels.clone());
    assert_close("burn-onnx last_hidden_state vs transformers", last, &fx["vision.last_hidden_state"], 1e-5);
    let (ours, _, _) = load_llava(&fixtures().join("tiny_llava/model"), &device, &LoadOptions::default()).unwrap();
    let layers = ours.vision_tower.forward(pixels, None).hidden_states;
    let want = host(layers[layers.len() - 2].clone());
    let got = host(selected);
    assert_eq!(want.0, got.0);
    let diff = max_abs_diff("want.1 vs got.1", &want.1, &got.1);
    eprintln!("burn-onnx layer -2 vs hand-written CLIP: max abs diff {diff:.3e}");
    assert!(diff < 1e-5, "{diff:e}");
}
