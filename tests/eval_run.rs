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
    EvalOptions, Format, PhraseMatch, ReadOptions, RefusalPhrases, evaluate, fit_calibration, read_benchmark,
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
    let everything = RefusalPhrases { phrases: vec![String::new()], matching: PhraseMatch::Start };
    let policies = vec![
        ("hint".to_string(), SafetyPolicy::default()),
        ("refuse".to_string(), SafetyPolicy { default_action: Action::Refuse, ..SafetyPolicy::default() }),
    ];
    let opts = EvalOptions {
        batch_size: 3,
        policies,
        generation: p.generation_config(3),
        judges: vec![&everything],
        scorer: None,
        skip_bad_images: false,
        progress: false,
    };
    let r = evaluate(&p, "jsonl", &set, &opts).unwrap();
    assert_eq!((r.items, r.harmful, r.format_version), (4, 2, 2));
    assert!(r.judge_note.as_deref().is_some_and(|n| n.starts_with("no LLM judge")), "{:?}", r.judge_note);
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

    // An item scored by its own criteria leaves the harm metrics and is counted apart, per category.
    let mut apart = set.clone();
    apart.items[0].own_criteria = true;
    apart.items[0].category = Some("10-Legal_Opinion".into());
    let a = evaluate(&p, "jsonl", &apart, &opts).unwrap();
    let was_harmful = usize::from(set.items[0].harmful);
    assert_eq!((a.items, a.own_criteria, a.harmful), (4, 1, r.harmful - was_harmful));
    assert_eq!(a.classifier.level.as_ref().map(|m| m.n), Some(3));
    assert_eq!(a.classifier.own_criteria.len(), 1);
    assert_eq!((a.classifier.own_criteria[0].subset.as_str(), a.classifier.own_criteria[0].n), ("10-Legal_Opinion", 1));
    let hint = &a.responses[0];
    assert_eq!(hint.harmful.n + hint.benign.n, 3);
    assert_eq!((hint.own_criteria.len(), hint.own_criteria[0].counts.n), (1, 1));
    assert!(a.per_item[0].own_criteria);
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
    psa_vlm::import::manifest::write_manifest(&dir.join("model")).unwrap();
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
        ("reference-jsonl", fixtures().join("eval/reference/redteaming_test_dataset.jsonl"), 3),
    ];
    for (format, data, items) in formats {
        let out = dir.join(format!("report-{format}"));
        let args = ["eval", "--format", format, "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
        let summary = run(&[&args[..], &["--policies", "", "--quiet"]].concat(), &dir);
        assert_eq!(summary["items"].as_u64(), Some(items), "{format}");
        assert!(out.join("report.md").is_file(), "{format}");
    }
    // Without a judge model only the phrases judge, and the report says so; the run is recorded.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["judges"].as_array().unwrap().len(), 1);
    assert!(report["judges"][0].as_str().unwrap().starts_with("refusal phrases"), "{}", report["judges"]);
    assert!(md.contains("Note: no LLM judge"), "{md}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!((record["kind"].as_str(), record["seed"].as_u64()), (Some("eval"), None));
    let hashed: Vec<&str> = record["inputs"].as_array().unwrap().iter().map(|i| i["role"].as_str().unwrap()).collect();
    assert!(hashed.contains(&"data") && hashed.contains(&"model"), "{hashed:?}");
    assert_eq!(record["inputs"][0]["sha256"].as_str().unwrap().len(), 64);
    // The LLM judges (here, explicitly, the evaluated model's own LLM) read every answer of the unguarded baseline,
    // and each judge's ASR is reported beside the phrases'.
    let llm = dir.join("report-llm");
    let judges = ["--judge-model", "self", "--judges", "refusal,harmbench,llama-guard"];
    let summary =
        eval(&llm, &[&["--policies", "allow", "--limit", "2", "--max-new-tokens", "2"][..], &judges].concat());
    assert_eq!(summary["items"].as_u64(), Some(2));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(llm.join("report.json")).unwrap()).unwrap();
    let names: Vec<&str> = report["judges"].as_array().unwrap().iter().map(|j| j.as_str().unwrap()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names[1].starts_with("LLM judge (refusal)") && names[1].contains("grading its own answers"), "{names:?}");
    assert!(names[2].starts_with("LLM judge (harmbench)") && names[3].starts_with("LLM judge (llama-guard)"));
    assert_eq!(report["responses"][0]["by_judge"].as_array().unwrap().len(), 4);
    assert!(report["responses"][0]["by_judge"][2]["over_refusal"].is_null(), "a harm judge has no over-refusal");
    assert_eq!(report["per_item"][0]["responses"][0]["verdicts"].as_array().unwrap().len(), 4);
    let counts = &report["responses"][0]["benign"];
    assert_eq!(counts["blocked_by_policy"].as_u64(), Some(0));
    let judged = counts["refused_by_model"].as_u64().unwrap() + counts["answered"].as_u64().unwrap();
    assert_eq!(judged, counts["n"].as_u64().unwrap());

    // The paper's 1–10 judge on the reference test schema: one rubric per item's type, scores per subset.
    let paper = dir.join("report-paper");
    let data = fixtures().join("eval/reference/redteaming_test_dataset.jsonl");
    let args =
        ["eval", "--format", "reference-jsonl", "--data", data.to_str().unwrap(), "--out", paper.to_str().unwrap()];
    let extra = ["--policies", "allow", "--judge-model", "self", "--judges", "", "--paper-scores", "--quiet"];
    run(&[&args[..], &extra, &["--max-new-tokens", "2"]].concat(), &dir);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(paper.join("report.json")).unwrap()).unwrap();
    assert!(
        report["scorer"].as_str().unwrap().starts_with("1-10 judge with the paper's rubrics"),
        "{}",
        report["scorer"]
    );
    let scores = report["responses"][0]["scores"].as_array().unwrap();
    let subsets: Vec<&str> = scores.iter().map(|s| s["subset"].as_str().unwrap()).collect();
    assert_eq!(subsets, ["celebrity", "order_A", "politics"]);
    assert!(scores.iter().all(|s| s["n"].as_u64() == Some(1)));
    let md = std::fs::read_to_string(paper.join("report.md")).unwrap();
    assert!(md.contains("not the paper's GPT-4V scores"), "{md}");
    assert_eq!(report["harmful"].as_u64(), Some(2), "\"Safe to Answer\" is benign");
}

#[test]
fn a_canary_holds_the_items_judged_rightly_and_most_surely_of_each_class() {
    let p = tiny_pipeline("llava_hf");
    let dir = scratch("canary-choice");
    let question = "What is this?";
    let mut lines = Vec::new();
    let mut expected = Vec::new();
    for k in 0..12u64 {
        let image = draw((k % 4) as usize, 40 + k);
        image.save(dir.join(format!("{k}.png"))).unwrap();
        let request = psa_vlm::pipeline::GuardRequest {
            id: None,
            image: image::DynamicImage::ImageRgb8(image),
            question: question.into(),
            policy: None,
        };
        let a = p.classify(&[request]).unwrap().remove(0).assessment;
        let flagged = !a.is_safe(&p.taxonomy);
        // Even items are labelled as the guard judges them, odd ones the other way: those must never be chosen.
        let harmful = if k % 2 == 0 { flagged } else { !flagged };
        // An item without a valid verdict (a tie) is never chosen either.
        if k % 2 == 0 && a.fault(&p.taxonomy).is_none() {
            expected.push((harmful, a.level_probs[a.level], k));
        }
        let (level, risk) = if harmful { (2, 4) } else { (0, 6) };
        lines.push(serde_json::json!({
            "id": format!("i{k}"), "image": format!("{k}.png"), "safe_level": level, "safe_type": risk,
            "conversations": [{"from": "human", "value": format!("<image>\n{question}")}, {"from": "gpt", "value": "-"}]
        })
        .to_string());
    }
    std::fs::write(dir.join("val.jsonl"), lines.join("\n")).unwrap();
    let opts = psa_vlm::train::eval::ReadOptions { image_root: None, skip_missing_images: false };
    let set = psa_vlm::train::eval::read_benchmark(psa_vlm::train::eval::Format::Jsonl, &dir.join("val.jsonl"), &opts)
        .unwrap();
    // One item a pass, as the verdicts above were computed (items of one class score alike; a batch moves the last bits).
    let chosen = psa_vlm::train::eval::choose_canary(&p, &set.items, 2, 1).unwrap();
    expected.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut want = Vec::new();
    for risky in [true, false] {
        want.extend(expected.iter().filter(|e| e.0 == risky).take(2).map(|e| (risky, e.2)));
    }
    let got: Vec<(bool, u64)> = chosen
        .iter()
        .map(|c| {
            let k = (0..12u64).find(|&k| draw((k % 4) as usize, 40 + k) == c.image.to_rgb8()).unwrap();
            (c.risky, k)
        })
        .collect();
    assert_eq!(got, want);
    assert!(got.iter().all(|(_, k)| k % 2 == 0), "an item the guard misjudges was chosen: {got:?}");
}
