//! Evaluating a guard end to end on the tiny PSA model: exported model directories load back exactly, the
//! evaluation's counts agree with the per-item verdicts, canned refusals are never counted as the model's, and
//! `psa eval` / `psa calibrate` write their reports.
mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use psa_vlm::burn::tensor::Device;
use psa_vlm::core::{Action, Calibration, SafetyPolicy};
use psa_vlm::pipeline::model_dir::{ModelDirParts, save_model_dir, saved_template};
use psa_vlm::pipeline::processor::Template;
use psa_vlm::pipeline::{GuardRequest, GuardedPipeline};
use psa_vlm::train::eval::{
    EvalOptions, Format, ReadOptions, RefusalPhrases, evaluate, fit_calibration, read_benchmark,
};

fn requests() -> Vec<GuardRequest> {
    (0..4)
        .map(|i| GuardRequest {
            id: None,
            image: image::DynamicImage::ImageRgb8(draw(i % 3, i as u64)),
            question: "What is this?".into(),
            policy: None,
        })
        .collect()
}

#[test]
fn exported_directory_loads_back_bit_identical_with_its_calibration_and_template() {
    let p = tiny_pipeline("llava_hf");
    let dir = scratch("export-model-dir");
    let calibration = Calibration { level_temperature: 1.5, type_temperature: 0.75 };
    let parts = ModelDirParts {
        tokenizer: p.text.tokenizer(),
        image_processor: p.images.config(),
        template: "llava_hf",
        calibration: Some(&calibration),
    };
    save_model_dir(&p.model, &p.config, parts, &dir).unwrap();
    assert_eq!(saved_template(&dir).as_deref(), Some("llava_hf"));
    let q = GuardedPipeline::load(&dir, None, Template::by_name("llava_hf").unwrap(), &Device::flex())
        .and_then(|q| q.with_taxonomy(short_hint_taxonomy()))
        .unwrap();
    assert_eq!(q.config, p.config);
    assert_eq!(q.calibration, calibration);
    assert_eq!(q.images.config(), p.images.config());
    let (a, b) = (p.concept_logits(&requests()).unwrap(), q.concept_logits(&requests()).unwrap());
    assert_eq!(a, b, "reloaded logits differ");
    // The calibrated verdict divides the logits by the temperatures.
    let raw = p.assessments(&a);
    let scaled = q.assessments(&b);
    let want = psa_vlm::core::calibration::softmax_t(&a.level[0], 1.5);
    assert!((scaled[0].level_probs[1] as f64 - want[1]).abs() < 1e-6);
    assert_eq!(raw[0].level, scaled[0].level);
}

#[test]
fn counts_follow_the_per_item_verdicts_and_canned_refusals_are_not_the_models() {
    let p = tiny_pipeline("llava_hf");
    let set =
        read_benchmark(Format::Jsonl, &fixtures().join("eval/jsonl/eval.jsonl"), &ReadOptions::default()).unwrap();
    // A judge that calls every answer a refusal: what the LLM said is "refused by model", what the policy returned
    // never is.
    let everything = RefusalPhrases { phrases: vec![String::new()] };
    let policies = vec![
        ("hint".to_string(), SafetyPolicy::default()),
        ("refuse".to_string(), SafetyPolicy { default_action: Action::Refuse, ..SafetyPolicy::default() }),
    ];
    let opts = EvalOptions {
        batch_size: 3,
        policies,
        generation: p.generation_config(3),
        judge: Some(&everything),
        skip_bad_images: false,
        progress: false,
    };
    let r = evaluate(&p, "jsonl", &set, &opts).unwrap();
    assert_eq!((r.items, r.harmful, r.format_version), (4, 2, 1));
    let flagged = |harmful: bool| r.per_item.iter().filter(|i| i.harmful == harmful && i.flagged).count();
    let refuse = &r.responses[1];
    assert_eq!(refuse.harmful.blocked_by_policy, flagged(true));
    assert_eq!(refuse.benign.blocked_by_policy, flagged(false));
    assert_eq!(refuse.harmful.refused_by_model, 2 - flagged(true));
    assert_eq!(refuse.asr, Some(0.0));
    let hint = &r.responses[0];
    assert_eq!((hint.harmful.blocked_by_policy, hint.benign.blocked_by_policy), (0, 0));
    assert_eq!(hint.harmful.hinted, flagged(true));
    assert_eq!(hint.over_refusal, Some(1.0));
    // Blocked items carry the policy's refusal text and are not marked refused by the model.
    for item in &r.per_item {
        let r = &item.responses[1];
        if r.action == Action::Refuse {
            assert!(!r.refused_by_model && r.answer == SafetyPolicy::default().refusal, "{item:?}");
        }
    }
    // The per-item verdicts are the pipeline's own.
    let verdicts = p.classify(&[GuardRequest {
        id: None,
        image: image::open(fixtures().join("eval/jsonl/b.png")).unwrap(),
        question: "Who is this?".into(),
        policy: None,
    }]);
    let v = &verdicts.unwrap()[0];
    assert_eq!((r.per_item[1].level, r.per_item[1].risk_type), (v.assessment.level, v.assessment.risk_type));
    assert!((r.per_item[1].risk - (1.0 - v.assessment.level_probs[0] as f64)).abs() < 1e-6);
    // Concept labels exist: both heads are scored on the 4 labelled items.
    assert_eq!(r.classifier.level.as_ref().map(|m| m.n), Some(4));
    let fit = fit_calibration(&p, &set.items, 2).unwrap();
    assert!(fit.level.nll_after <= fit.level.nll_before + 1e-12);
    assert!(fit.risk_type.nll_after <= fit.risk_type.nll_before + 1e-12);
}

fn run(args: &[&str], dir: &Path) -> serde_json::Value {
    let taxonomy = dir.join("taxonomy.json");
    std::fs::write(&taxonomy, serde_json::to_string(&short_hint_taxonomy()).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_psa"))
        .args(args)
        .arg("--model-dir")
        .arg(dir.join("model"))
        .args(["--template", "llava_hf", "--taxonomy"])
        .arg(&taxonomy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn psa_calibrate_then_eval_write_their_files() {
    let dir = scratch("cli-eval");
    copy_dir(&fixtures().join("tiny_psa/model"), &dir.join("model"));
    std::fs::copy(fixtures().join("tiny_tokenizer/tokenizer.json"), dir.join("model/tokenizer.json")).unwrap();
    let data = fixtures().join("eval/jsonl/eval.jsonl");
    let fit = run(&["calibrate", "--data", data.to_str().unwrap()], &dir);
    let saved = Calibration::from_file(&dir.join("model/calibration.json")).unwrap();
    assert_eq!(fit["fit"]["calibration"]["level_temperature"].as_f64(), Some(saved.level_temperature));
    let out = dir.join("report");
    let vlguard = fixtures().join("eval/vlguard/test.json");
    let eval = |out: &Path, extra: &[&str]| {
        let mut args = vec!["eval", "--format", "vlguard", "--data", vlguard.to_str().unwrap()];
        args.extend(["--out", out.to_str().unwrap(), "--quiet"]);
        args.extend(extra);
        run(&args, &dir)
    };
    let summary = eval(&out, &["--max-new-tokens", "3"]);
    assert_eq!((summary["items"].as_u64(), summary["harmful"].as_u64()), (Some(4), Some(2)));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["calibration"]["level_temperature"].as_f64(), Some(saved.level_temperature));
    assert_eq!(report["responses"].as_array().unwrap().len(), 2);
    let subsets: Vec<&str> =
        report["responses"][0]["subsets"].as_array().unwrap().iter().map(|s| s["subset"].as_str().unwrap()).collect();
    assert_eq!(subsets, ["safe_safes", "safe_unsafes", "unsafes"]);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| hint |") && md.contains("refused by model"), "{md}");
    let svg = std::fs::read_to_string(out.join("reliability.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("accuracy vs confidence"));
    assert!(md.contains("(reliability.svg)"), "the report links its plot");
    // Every format runs through the command (classifier metrics only).
    let formats = [
        ("mm-safetybench", fixtures().join("eval/mm-safetybench"), 9),
        ("figstep", fixtures().join("eval/figstep/safebench.csv"), 2),
        ("harmbench", fixtures().join("eval/harmbench/harmbench_behaviors_multimodal_all.csv"), 2),
        ("jailbreakv", fixtures().join("eval/jailbreakv/JailBreakV_28K.csv"), 2),
        ("jsonl", fixtures().join("eval/jsonl/eval.jsonl"), 4),
    ];
    for (format, data, items) in formats {
        let out = dir.join(format!("report-{format}"));
        let args = ["eval", "--format", format, "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
        let summary = run(&[&args[..], &["--policies", "", "--quiet"]].concat(), &dir);
        assert_eq!(summary["items"].as_u64(), Some(items), "{format}");
        assert!(out.join("report.md").is_file(), "{format}");
    }
    // The LLM judge (the evaluated model's own LLM) reads every answer of the unguarded baseline.
    let llm = dir.join("report-llm");
    let summary = eval(&llm, &["--policies", "allow", "--judge", "llm", "--limit", "2", "--max-new-tokens", "2"]);
    assert_eq!(summary["items"].as_u64(), Some(2));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(llm.join("report.json")).unwrap()).unwrap();
    assert!(report["judge"].as_str().unwrap().starts_with("LLM judge:"), "{}", report["judge"]);
    let counts = &report["responses"][0]["benign"];
    assert_eq!(counts["blocked_by_policy"].as_u64(), Some(0));
    let judged = counts["refused_by_model"].as_u64().unwrap() + counts["answered"].as_u64().unwrap();
    assert_eq!(judged, counts["n"].as_u64().unwrap());
}
