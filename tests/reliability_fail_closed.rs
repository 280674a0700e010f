//! The guard fails closed against every value it accepts: a diverging run stops with an error and leaves no
//! non-finite checkpoint, a model with non-finite safety weights does not load, non-finite, tied or near-uniform
//! concept probabilities are refused whatever the policy (and never named "safe"), calibration temperatures and
//! preprocessing outside their ranges are refused at load, a model directory that differs from its manifest by one
//! bit does not load, and a directory whose canary comes out differently is refused before any request.
mod common;

use common::*;
use psa_vlm::burn::module::Param;
use psa_vlm::burn::tensor::{Device, Tensor, TensorData};
use psa_vlm::core::{Action, SafetyPolicy};
use psa_vlm::import::manifest::write_manifest;
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
    // The manifest check would refuse the changed file first; without it the values are checked themselves.
    let err = load_psa(&dir, &Device::flex(), &LoadOptions::default().unverified()).unwrap_err().to_string();
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

/// A policy that allows every verdict it is allowed to judge.
fn allow_all(p: &psa_vlm::pipeline::GuardedPipeline) -> SafetyPolicy {
    SafetyPolicy {
        disabled_types: p.taxonomy.types.iter().map(|t| t.name.clone()).collect(),
        default_action: Action::Allow,
        refusal: "Cannot assess this image.".into(),
        ..Default::default()
    }
}

/// The level head's weights and bias set to zero: every level logit is 0, a four-way tie.
fn zero_level_head(p: &mut psa_vlm::pipeline::GuardedPipeline) {
    let head = &mut p.model.safety.safe_part.level_head;
    head.weight = Param::from_tensor(head.weight.val().zeros_like());
    head.bias = head.bias.take().map(|b| Param::from_tensor(b.val().zeros_like()));
}

#[test]
fn a_tied_head_is_refused_whatever_the_policy_and_never_named_safe() {
    let mut p = tiny_pipeline("llava_hf");
    zero_level_head(&mut p);
    let image = image::DynamicImage::ImageRgb8(draw(1, 3));
    let request = GuardRequest { id: None, image, question: "What is this?".into(), policy: Some(allow_all(&p)) };
    let verdict = &p.classify(std::slice::from_ref(&request)).unwrap()[0];
    let a = &verdict.assessment;
    assert!(a.fault(&p.taxonomy).unwrap().contains("tied"), "{a:?}");
    assert_eq!((a.level_name.as_str(), a.type_name.as_str()), ("invalid", "invalid"));
    assert_eq!((verdict.decision.action, verdict.decision.rule.as_str()), (Action::Refuse, "invalid_assessment"));
    let json = serde_json::to_string(&verdict).unwrap();
    assert!(!json.contains("\"level_name\":\"safe\""), "{json}");
}

/// A copy of the tiny model with `edit` applied to its files, sealed again (its author's own change).
fn edited_model(name: &str, edit: impl FnOnce(&std::path::Path)) -> std::path::PathBuf {
    let dir = scratch(name);
    copy_dir(&fixtures().join("tiny_psa/model"), &dir);
    edit(&dir);
    write_manifest(&dir).unwrap();
    dir
}

fn pipeline_error(dir: &std::path::Path) -> String {
    let tokenizer = Some(fixtures().join("tiny_tokenizer/tokenizer.json"));
    let template = psa_vlm::pipeline::processor::Template::by_name("llava_hf").unwrap();
    match psa_vlm::pipeline::GuardedPipeline::load(dir, tokenizer, template, &Device::flex()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn calibration_and_preprocessing_outside_their_ranges_are_refused_at_load() {
    for t in ["1e9", "0.001"] {
        let dir = edited_model("fail-closed-temperature", |d| {
            let text = format!(r#"{{"level_temperature": {t}, "type_temperature": 1.0}}"#);
            std::fs::write(d.join("calibration.json"), text).unwrap();
        });
        let e = pipeline_error(&dir);
        assert!(e.contains("level_temperature must lie in [0.05, 100]"), "{t}: {e}");
    }
    let base = serde_json::json!({
        "size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32},
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]
    });
    for (key, value, says) in [
        ("image_mean", serde_json::json!([1e30, 0.5, 0.5]), "image_mean 1000000000000000000000000000000 is not"),
        ("rescale_factor", serde_json::json!(-1.0), "rescale_factor must lie in (0, 1]"),
        ("image_std", serde_json::json!([1e-9, 0.5, 0.5]), "is not a pixel spread"),
    ] {
        let mut pre = base.clone();
        pre[key] = value;
        let dir = edited_model("fail-closed-preprocessor", |d| {
            std::fs::write(d.join("preprocessor_config.json"), pre.to_string()).unwrap();
        });
        let e = pipeline_error(&dir);
        assert!(e.contains(says), "{key}: {e}");
    }
}

#[test]
fn one_flipped_bit_or_an_unlisted_file_fails_the_manifest_and_unverified_loading_is_reported() {
    let dir = scratch("fail-closed-manifest");
    copy_dir(&fixtures().join("tiny_psa/model"), &dir);
    let (_, _, report) = load_psa(&dir, &Device::flex(), &LoadOptions::default()).unwrap();
    assert!(report.verified);
    let key = "safe_part.safety_head.bias";
    let path = dir.join("model.safetensors");
    let original = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&original[8..8 + n]).unwrap();
    let at = 8 + n + header[key]["data_offsets"][0].as_u64().unwrap() as usize;
    let mut flipped = original.clone();
    flipped[at] ^= 1;
    std::fs::write(&path, &flipped).unwrap();
    let e = load_psa(&dir, &Device::flex(), &LoadOptions::default()).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("model.safetensors") && e.contains("SHA-256") && e.contains("the file changed"), "{e}");
    let (_, _, report) = load_psa(&dir, &Device::flex(), &LoadOptions::default().unverified()).unwrap();
    assert!(!report.verified);
    std::fs::write(&path, &original).unwrap();
    std::fs::write(dir.join("calibration.json"), r#"{"level_temperature": 2.0, "type_temperature": 1.0}"#).unwrap();
    let e = load_psa(&dir, &Device::flex(), &LoadOptions::default()).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("calibration.json") && e.contains("not listed"), "{e}");
    std::fs::remove_file(dir.join("calibration.json")).unwrap();
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    let e = load_psa(&dir, &Device::flex(), &LoadOptions::default()).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("no manifest.json") && e.contains("--allow-unverified"), "{e}");
}

#[test]
fn a_model_directory_whose_canary_comes_out_differently_is_refused() {
    let dir = saved_tiny_model_dir("fail-closed-canary");
    let inputs: Vec<psa_vlm::pipeline::CanaryInput> = (0..4)
        .map(|k| psa_vlm::pipeline::CanaryInput {
            image: image::DynamicImage::ImageRgb8(draw(k % 2, 10 + k as u64)),
            question: "What is this?".into(),
            risky: k % 2 == 1,
        })
        .collect();
    let template = psa_vlm::pipeline::processor::Template::by_name("llava_hf").unwrap();
    let written = psa_vlm::pipeline::add_canary(&dir, &inputs, template.clone(), &Device::flex()).unwrap();
    assert_eq!(written.len(), 4);
    let mut loaded = psa_vlm::pipeline::GuardedPipeline::load(&dir, None, template, &Device::flex()).unwrap();
    assert!(loaded.check_canary().unwrap(), "the canary fails on the directory it was written from");
    // The same directory computing different verdicts (here: its level head zeroed in memory) fails.
    zero_level_head(&mut loaded);
    let e = loaded.check_canary().unwrap_err().to_string();
    assert!(e.contains("canary failed") && e.contains("canary/0.png"), "{e}");
}
