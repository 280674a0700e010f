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
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(diff > 1e-4, "{mode:?}: pooling the whole conversation differs ({diff:e})");
    }
}
