//! The guard fails closed: a diverging run stops with an error and leaves no non-finite checkpoint, a model with
//! non-finite safety weights does not load, and non-finite concept probabilities are refused whatever the policy.
mod common;

use common::*;
use psa_vlm::burn::module::Param;
use psa_vlm::burn::tensor::{Device, Tensor, TensorData};
use psa_vlm::core::{Action, SafetyPolicy};
use psa_vlm::import::{LoadOptions, load_psa};
use psa_vlm::pipeline::{Finish, GuardRequest};
use psa_vlm::train::Recipe;
use psa_vlm::train::trainer::{RunOptions, TrainError, train_stage1};

fn nan_tokens(like: &Param<Tensor<3>>, device: &Device) -> Param<Tensor<3>> {
    let dims = like.val().dims();
    Param::from_tensor(Tensor::from_data(TensorData::new(vec![f32::NAN; dims.iter().product()], dims), device))
}

#[test]
fn diverging_training_stops_with_an_error_and_writes_no_checkpoint_of_the_bad_step() {
    let dir = scratch("fail-closed-train");
    let file = dataset(&dir, "d", 2, 3);
    let device = Device::flex().autodiff();
    let load = || load_psa(&fixtures().join("tiny_psa/model"), &device, &LoadOptions::default()).unwrap().0;
    let (data, _) = prepare_file(&load(), &file, &dir, false, &device).unwrap();
    let base = Recipe { warmup_steps: 0, epochs: 2, batch_size: 4, grad_accum: 1, ..Recipe::stage1() };
    let ckpt = dir.join("ckpt");
    let run = RunOptions { checkpoint_dir: Some(ckpt.clone()), checkpoint_every: Some(1), ..Default::default() };

    for (recipe, needle) in [
        (Recipe { lr: f64::NAN, ..base.clone() }, "lr = NaN"),
        (Recipe { batch_size: 0, ..base.clone() }, "batch_size = 0: must be at least 1"),
    ] {
        let err = train_stage1(load(), &data, &recipe, 998, &run, |_| {}).unwrap_err();
        assert!(matches!(err, TrainError::Recipe(_)) && err.to_string().contains(needle), "{err}");
    }

    // An update that overflows f32: the weights become infinite after the first step.
    let huge = Recipe { lr: 1e39, ..base.clone() };
    let err = train_stage1(load(), &data, &huge, 998, &run, |_| {}).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TrainError::NonFinite { step: 1, .. }), "{text}");
    assert!(text.contains("non-finite weights in safety."), "{text}");

    // A poisoned trainable tensor: the first loss is NaN.
    let mut model = load();
    model.safety.safety_query_tokens = nan_tokens(&model.safety.safety_query_tokens, &device);
    let err = train_stage1(model, &data, &base, 998, &run, |_| {}).unwrap_err();
    assert!(matches!(err, TrainError::NonFinite { step: 1, .. }) && err.to_string().contains("loss = NaN"), "{err}");
    let written: Vec<_> =
        std::fs::read_dir(&ckpt).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(written.is_empty(), "no checkpoint may be written by a diverged run: {written:?}");

    // A sane run still trains and checkpoints.
    let (_, metrics) = train_stage1(load(), &data, &Recipe { lr: 1e-3, ..base }, 998, &run, |_| {}).unwrap();
    assert!(metrics.iter().all(|m| m.grad_norm.is_finite() && m.grad_norm > 0.0), "{metrics:?}");
    assert!(ckpt.join(format!("checkpoint-{}", metrics.len())).is_dir());
}

#[test]
fn a_model_with_non_finite_safety_weights_does_not_load() {
    let dir = scratch("fail-closed-load");
    copy_dir(&fixtures().join("tiny_psa/model"), &dir);
    let key = "safe_mm_projector.proj.net.0.b1.conv1.bn.bias";
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = 8 + n + header[key]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[start + 4 * 5..start + 4 * 6].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let err = load_psa(&dir, &Device::flex(), &LoadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("NaN or infinite") && err.contains("safety.safe_mm_projector"), "{err}");
}

#[test]
fn non_finite_concepts_are_refused_whatever_the_policy() {
    let mut p = tiny_pipeline("llava_hf");
    let device = Device::flex();
    p.model.safety.safety_query_tokens = nan_tokens(&p.model.safety.safety_query_tokens, &device);
    let image = image::DynamicImage::ImageRgb8(draw(0, 1));
    let types: Vec<String> = p.taxonomy.types.iter().map(|t| t.name.clone()).collect();
    let allow_all = SafetyPolicy {
        disabled_types: types,
        default_action: Action::Allow,
        refusal: "Cannot assess this image.".into(),
        ..Default::default()
    };
    let request = GuardRequest { id: None, image, question: "What is this?".into(), policy: Some(allow_all) };
    let verdict = &p.classify(std::slice::from_ref(&request)).unwrap()[0];
    assert!(verdict.assessment.fault(&p.taxonomy).is_some(), "{:?}", verdict.assessment);
    assert_eq!((verdict.decision.action, verdict.decision.rule.as_str()), (Action::Refuse, "invalid_assessment"));
    let answer = &p.respond(&[request], &p.generation_config(4), true).unwrap()[0];
    assert_eq!((answer.finish, answer.answer.as_str()), (Finish::Refused, "Cannot assess this image."));
}
