//! Guarded inference: the default policy reproduces the reference's prompts byte for byte, every policy action
//! behaves end to end on the tiny PSA model, and batches equal one-at-a-time runs.
mod common;

use common::*;
use psa_vlm::burn::tensor::Device;
use psa_vlm::core::{Action, SafetyAssessment, SafetyPolicy, Taxonomy};
use psa_vlm::pipeline::processor::Template;
use psa_vlm::pipeline::{Finish, GuardRequest, GuardedPipeline};

fn request(id: &str, class: usize, seed: u64, question: &str, policy: Option<SafetyPolicy>) -> GuardRequest {
    GuardRequest {
        id: Some(id.into()),
        image: image::DynamicImage::ImageRgb8(draw(class, seed)),
        question: question.into(),
        policy,
    }
}

#[test]
fn default_policy_prompts_match_the_reference_layout_byte_for_byte() {
    let text = std::fs::read_to_string(fixtures().join("guard/reference_prompts.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(cases.len(), 56);
    let (taxonomy, policy, template) =
        (Taxonomy::default(), SafetyPolicy::default(), Template::by_name("ref_inference").unwrap());
    for case in &cases {
        let (level, t) = (case["level"].as_u64().unwrap() as usize, case["type"].as_u64().unwrap() as usize);
        let one_hot = |n: usize, at: usize| (0..n).map(|i| (i == at) as u8 as f32).collect::<Vec<f32>>();
        let assessment = SafetyAssessment {
            level_probs: one_hot(4, level),
            type_probs: one_hot(7, t),
            level,
            level_name: taxonomy.levels[level].name.clone(),
            risk_type: t,
            type_name: taxonomy.types[t].name.clone(),
        };
        let decision = policy.decide(&assessment, &taxonomy).unwrap();
        assert_eq!(decision.hint.as_deref(), case["hint"].as_str(), "hint of ({level}, {t})");
        let prompt = template.guarded_prompt(case["question"].as_str().unwrap(), decision.hint.as_deref());
        assert_eq!(prompt, case["prompt"].as_str().unwrap(), "prompt of ({level}, {t})");
    }
}

#[test]
fn every_policy_action_end_to_end() {
    let p = tiny_pipeline("llava_hf");
    let generation = p.generation_config(6);
    let base = request("probe", 2, 1, "What is this?", None);
    let verdict = &p.classify(std::slice::from_ref(&base)).unwrap()[0];
    let a = &verdict.assessment;
    eprintln!("tiny model verdict: level {} ({}), type {} ({})", a.level, a.level_name, a.risk_type, a.type_name);
    assert!(
        a.level != 0 && a.risk_type != 6,
        "the fixture image must get a risky verdict for this test to reach every action"
    );
    assert!((a.level_probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    let with = |policy: SafetyPolicy| GuardRequest { policy: Some(policy), ..base.clone() };

    // Default: the taxonomy hint, in the prompt the LLM answered.
    let hinted = &p.respond(std::slice::from_ref(&base), &generation, true).unwrap()[0];
    let d = hinted.decision.as_ref().unwrap();
    assert_eq!((d.action, d.rule.as_str()), (Action::Hint, "default_action"));
    let hint = p.taxonomy.hint(a.level, a.risk_type).unwrap().unwrap();
    assert_eq!(d.hint.as_deref(), Some(hint));
    assert_eq!(
        hinted.prompt.as_deref(),
        Some(format!("USER: <image>\nWhat is this?\nSafe Hint: {hint} ASSISTANT:").as_str())
    );
    assert!(hinted.completion_tokens > 0 && hinted.finish != Finish::Refused);

    // Refuse: the configured refusal, no LLM.
    let refuse =
        SafetyPolicy { default_action: Action::Refuse, refusal: "Not with this image.".into(), ..Default::default() };
    let refused = &p.respond(&[with(refuse)], &generation, true).unwrap()[0];
    assert_eq!((refused.answer.as_str(), refused.finish), ("Not with this image.", Finish::Refused));
    assert_eq!((refused.prompt.as_ref(), refused.completion_tokens, refused.prompt_tokens), (None, 0, 0));

    // Allow through a disabled type: the plain prompt, and the same answer as the unguarded run.
    let off = SafetyPolicy { disabled_types: vec![a.type_name.clone()], ..Default::default() };
    let allowed = &p.respond(&[with(off)], &generation, true).unwrap()[0];
    let d = allowed.decision.as_ref().unwrap();
    assert_eq!((d.action, d.rule.as_str()), (Action::Allow, "type_disabled"));
    let unguarded = &p.respond(std::slice::from_ref(&base), &generation, false).unwrap()[0];
    assert!(unguarded.decision.is_none() && !unguarded.guarded);
    assert_eq!(allowed.prompt.as_deref(), Some("USER: <image>\nWhat is this? ASSISTANT:"));
    assert_eq!((&allowed.prompt, &allowed.answer), (&unguarded.prompt, &unguarded.answer));
    assert_ne!(hinted.prompt_tokens, allowed.prompt_tokens, "the hint reached the LLM");

    // A threshold above the verdict's probability allows; a custom hint text replaces the taxonomy's.
    let strict = SafetyPolicy { level_threshold: Some(1.0), ..Default::default() };
    assert_eq!(
        p.respond(&[with(strict)], &generation, true).unwrap()[0].decision.as_ref().unwrap().rule,
        "level_threshold"
    );
    let key = format!("{}/{}", a.level_name, a.type_name);
    let custom = SafetyPolicy { hints: [(key, "Be careful.".to_string())].into(), ..Default::default() };
    let r = &p.respond(&[with(custom)], &generation, true).unwrap()[0];
    assert!(r.prompt.as_deref().unwrap().contains("Safe Hint: Be careful. ASSISTANT:"));

    let json = serde_json::to_value(hinted).unwrap();
    for key in ["assessment", "decision", "prompt", "answer", "prompt_tokens", "completion_tokens", "finish", "timings"]
    {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    assert_eq!(json["decision"]["action"], "hint");
}

#[test]
fn batches_equal_one_at_a_time() {
    let p = tiny_pipeline("llava_hf");
    let generation = p.generation_config(8);
    let refuse = SafetyPolicy { default_action: Action::Refuse, ..Default::default() };
    let requests = vec![
        request("a", 0, 3, "Describe the picture.", None),
        request("b", 3, 4, "What colour are the shapes, and how many of them are there in total?", None),
        request("c", 2, 1, "Why?", Some(refuse)),
        request("d", 4, 9, "Is anything unusual here? Answer briefly.", None),
    ];
    let batch = p.respond(&requests, &generation, true).unwrap();
    let verdicts = p.classify(&requests).unwrap();
    for (i, r) in requests.iter().enumerate() {
        let one = &p.respond(std::slice::from_ref(r), &generation, true).unwrap()[0];
        let got = &batch[i];
        assert_eq!(got.id, r.id);
        assert_eq!((&got.prompt, &got.answer, got.finish), (&one.prompt, &one.answer, one.finish), "row {i}");
        assert_eq!((got.prompt_tokens, got.completion_tokens), (one.prompt_tokens, one.completion_tokens));
        assert_eq!(got.decision, one.decision, "row {i}");
        let close = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(a, b)| (a - b).abs() < 1e-5);
        assert!(close(&got.assessment.level_probs, &one.assessment.level_probs), "row {i} level probs");
        assert!(close(&got.assessment.type_probs, &one.assessment.type_probs), "row {i} type probs");
        assert!(close(&verdicts[i].assessment.type_probs, &one.assessment.type_probs), "row {i} classify");
        assert_eq!(got.timings.batch_size, 4);
    }
    assert_eq!(batch[2].finish, Finish::Refused);
    assert!(batch.iter().filter(|r| r.finish != Finish::Refused).all(|r| r.completion_tokens > 0));
}

#[test]
fn a_tokenizer_whose_image_id_differs_from_the_model_is_refused() {
    use psa_vlm::import::{LoadOptions, LoadReport, load_psa};
    let device = Device::flex();
    let (model, mut config, _) =
        load_psa(&fixtures().join("tiny_psa/model"), &device, &LoadOptions::default()).unwrap();
    config.llava.image_token_index = 5;
    let (text, template, images) = tiny_processors();
    let err = GuardedPipeline::new(model, config, LoadReport::default(), text, images, template, &device).unwrap_err();
    assert!(err.to_string().contains("<image> is id 999") && err.to_string().contains("image_token_index 5"), "{err}");
}

#[test]
fn generation_stops_for_a_request_whose_caller_has_gone() {
    let p = tiny_pipeline("llava_hf");
    let request = |seed| GuardRequest {
        id: None,
        image: image::DynamicImage::ImageRgb8(draw(1, seed)),
        question: "Describe it.".into(),
        policy: None,
    };
    let requests = [request(1), request(2)];
    let all = p.respond(&requests, &p.generation_config(6), false).unwrap();
    let cut = p.respond_until(&requests, &p.generation_config(6), false, &|i| i == 0).unwrap();
    assert_eq!((cut[0].finish, cut[0].completion_tokens), (Finish::Cancelled, 0));
    assert_eq!(cut[1].answer, all[1].answer, "the other request is answered as before");
}
