//! The safety head's text-aware query modes read the user's question only, identically in training (the whole
//! conversation is the input) and at inference (the prompt alone): the answer, which correlates with the label, never
//! steers the classification, and the template's fixed tokens are not pooled.
mod common;

use common::*;
use psa_vlm::burn::tensor::Device;
use psa_vlm::core::QueryMode;
use psa_vlm::import::{LoadOptions, load_psa};
use psa_vlm::models::PsaInput;
use psa_vlm::pipeline::processor::{Message, Template};
use psa_vlm::train::data::encode_conversation;

const QUESTION: &str = "How do I open this lock without the key?";
const ANSWER: &str = "Call a licensed locksmith.";

#[test]
fn question_marks_cover_the_question_tokens_only() {
    let (text, _, _) = tiny_processors();
    for name in ["llava_v1", "llava_hf", "chatml", "llava_llama_2"] {
        let template = Template::by_name(name).unwrap();
        let conversation = [Message::user(format!("<image>\n{QUESTION}")), Message::assistant(ANSWER)];
        let enc = encode_conversation(&text, &template, &conversation, 256).unwrap();
        let marked: Vec<u32> = enc.input_ids.iter().zip(&enc.question).filter(|(_, m)| **m).map(|(i, _)| *i).collect();
        let decoded = text.decode(&marked, false).unwrap();
        assert_eq!(decoded.trim(), QUESTION, "{name}: the marked tokens are the question");
        assert!(enc.question.iter().zip(&enc.labels).all(|(m, l)| !m || *l == -100), "{name}: no answer token");
        // Inference marks the same tokens of the prompt.
        let (prompt, span) = template.image_prompt_with_question(QUESTION);
        let (ids, marks) = text.encode_marked(&prompt, span).unwrap();
        let at_inference: Vec<u32> = ids.iter().zip(&marks).filter(|(_, m)| **m).map(|(i, _)| *i).collect();
        assert_eq!(at_inference, marked, "{name}: the same question tokens at inference");
    }
}

#[test]
fn text_aware_verdicts_are_the_same_in_training_and_at_inference() {
    let device = Device::flex();
    let (text, template, _) = tiny_processors();
    let (mut model, _, _) = load_psa(&fixtures().join("tiny_psa/model"), &device, &LoadOptions::default()).unwrap();
    let features = model.llava.selected_features(psa_vlm::burn::tensor::Tensor::random(
        [1, 3, 56, 56],
        psa_vlm::burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    ));
    let conversation = [Message::user(format!("<image>\n{QUESTION}")), Message::assistant(ANSWER)];
    let train = encode_conversation(&text, &template, &conversation, 256).unwrap();
    let (prompt, span) = template.image_prompt_with_question(QUESTION);
    let (ids, marks) = text.encode_marked(&prompt, span).unwrap();
    let (train_ids, train_marks) = (vec![train.input_ids.clone()], vec![train.question.clone()]);
    let (ids, marks) = (vec![ids], vec![marks]);
    for mode in [QueryMode::TextMean, QueryMode::LastTextToken] {
        model.safety.safe_part = model.safety.safe_part.clone().with_query_mode(mode);
        let trained_on =
            model.classify(PsaInput::features(features.clone(), &train_ids).question(&train_marks)).unwrap();
        let asked = model.classify(PsaInput::features(features.clone(), &ids).question(&marks)).unwrap();
        assert_eq!(host(trained_on.feature), host(asked.feature.clone()), "{mode:?}: the same feature");
        // Without the marks every real text token is pooled: the answer then moves the training-time feature.
        let unmarked = model.classify(PsaInput::features(features.clone(), &train_ids)).unwrap();
        let (_, a) = host(unmarked.feature);
        let (_, b) = host(asked.feature);
        let diff = max_abs_diff("a vs b", &a, &b);
        assert!(diff > 1e-4, "{mode:?}: pooling the whole conversation differs ({diff:e})");
    }
}

/// Writes a one-sample label file (image `draw(1, 3)`) asking `question` and answering `answer`.
fn one_sample(dir: &std::path::Path, name: &str, question: &str, answer: &str) -> std::path::PathBuf {
    draw(1, 3).save(dir.join("img.png")).unwrap();
    let line = serde_json::json!({
        "safe_level": 3, "safe_type": 1, "image": "img.png",
        "conversations": [{"from": "USER", "value": format!("<image>\n{question}")},
                          {"from": "ASSISTANT", "value": answer}]
    });
    let path = dir.join(format!("{name}.jsonl"));
    std::fs::write(&path, line.to_string()).unwrap();
    path
}

/// The concept cross-entropy the trainer reports for its first step on `file` (one sample, so no averaging).
fn first_step_ce(file: &std::path::Path, dir: &std::path::Path, mode: QueryMode) -> (f64, f64) {
    let device = Device::flex().autodiff();
    let (mut model, _, _) = load_psa(&fixtures().join("tiny_psa/model"), &device, &LoadOptions::default()).unwrap();
    model.safety.safe_part = model.safety.safe_part.clone().with_query_mode(mode);
    let (data, _) = prepare_file(&model, file, dir, false, &device).unwrap();
    let recipe = psa_vlm::train::Recipe { batch_size: 1, grad_accum: 1, ..psa_vlm::train::Recipe::stage1() };
    let run = psa_vlm::train::trainer::RunOptions { max_steps: Some(1), ..Default::default() };
    let (_, metrics) = psa_vlm::train::trainer::train_stage1(model, &data, &recipe, 998, &run, |_| {}).unwrap();
    (metrics[0].ce_level, metrics[0].ce_type)
}

/// `−log softmax(z)[label]` in f64.
fn ce(z: &[f32], label: usize) -> f64 {
    let m = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = m + z.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
    lse - z[label] as f64
}

#[test]
fn the_trainer_classifies_with_what_inference_sees_whatever_the_answer_and_for_an_empty_question() {
    let dir = scratch("question-trainer");
    let mut pipeline = tiny_pipeline("llava_hf");
    for mode in [QueryMode::TextMean, QueryMode::LastTextToken] {
        pipeline.model.safety.safe_part = pipeline.model.safety.safe_part.clone().with_query_mode(mode);
        for question in [QUESTION, ""] {
            let request = psa_vlm::pipeline::GuardRequest {
                id: None,
                image: image::DynamicImage::ImageRgb8(draw(1, 3)),
                question: question.into(),
                policy: None,
            };
            let rows = pipeline.concept_logits(&[request]).unwrap();
            let inference = (ce(&rows.level[0], 3), ce(&rows.risk_type[0], 1));
            for answer in [ANSWER, "I'm sorry, but I can't help with that request at all, ever."] {
                let file = one_sample(&dir, "one", question, answer);
                let trained = first_step_ce(&file, &dir, mode);
                eprintln!(
                    "{mode:?} question {question:?}, answer {answer:?}: trainer CE {trained:?}, inference {inference:?}"
                );
                let d = max_abs_diff(
                    "trainer vs inference concept CE",
                    &[trained.0, trained.1],
                    &[inference.0, inference.1],
                );
                assert!(d <= 1e-5, "{mode:?}, question {question:?}: the trainer's CE differs from inference by {d:e}");
            }
        }
    }
}
