//! A PSA-VLM assembled from separately loaded towers, as the quickstart builds DINOv2 (ONNX) + SmolLM2 (GGUF): here
//! the tiny DINOv2 fixture and the tiny byte-level GGUF LLaMA. The assembled model classifies, answers under the
//! guard (with the LLM's image tokens pooled 2×2), and keeps the towers' weights untouched.
mod common;

use common::*;
use psa_vlm::burn::tensor::Device;
use psa_vlm::import::gguf::{GgufFile, gguf_tokenizer, load_llama_gguf};
use psa_vlm::import::{LoadOptions, LoadReport, load_dinov2};
use psa_vlm::models::vision::{VisionConfig, VisionTower};
use psa_vlm::pipeline::assemble::{assemble_psa, image_text_processor};
use psa_vlm::pipeline::processor::{ImageProcessorConfig, Template};
use psa_vlm::pipeline::{GuardRequest, GuardedPipeline};

#[test]
fn dinov2_plus_gguf_llm_answers_and_its_untrained_guard_fails_closed() {
    let device = Device::flex();
    let (dino, dino_cfg, _) =
        load_dinov2(&fixtures().join("tiny_dinov2/model"), &device, &LoadOptions::default()).unwrap();
    let gguf = fixtures().join("tiny_gguf/bpe.gguf");
    let (llm, llm_cfg, _) = load_llama_gguf(&gguf, &device, &LoadOptions::default()).unwrap();
    let logits_before = host(llm.forward(&[vec![5, 6, 7]], None, &device));
    let (model, config) = assemble_psa(
        (VisionTower::Dinov2(dino), VisionConfig::Dinov2(dino_cfg)),
        (llm, llm_cfg),
        |c| {
            c.safety = c.safety.clone().with_safety_tokens(4);
            c.safety.num_queries = 16;
            c.safety.llm_image_pool = 2;
        },
        &device,
    )
    .unwrap();
    assert_eq!(config.llava.image_token_index, 600, "one past the 600-token vocabulary");
    let logits_after = host(model.llava.language_model.forward(&[vec![5, 6, 7]], None, &device));
    assert_eq!(logits_before, logits_after, "the language model is used as loaded");

    let (tokenizer, _) = gguf_tokenizer(&GgufFile::open(&gguf).unwrap()).unwrap();
    let text = image_text_processor(tokenizer, config.llava.image_token_index).unwrap();
    let images = ImageProcessorConfig {
        size: serde_json::json!({"shortest_edge": 56}),
        crop_size: Some(serde_json::json!({"height": 56, "width": 56})),
        ..ImageProcessorConfig::dinov2()
    }
    .build()
    .unwrap();
    let template = Template::by_name("chatml").unwrap();
    let p = GuardedPipeline::new(model, config, LoadReport::default(), text, images, template, &device)
        .and_then(|p| p.with_taxonomy(short_hint_taxonomy()))
        .unwrap();
    let request = GuardRequest {
        id: None,
        image: image::DynamicImage::ImageRgb8(draw(1, 2)),
        question: "What is this?".into(),
        policy: None,
    };
    // The assembled safety head is untrained (N(0, 0.02) weights): its near-uniform verdict is no verdict, so the
    // guard refuses whatever the policy; unguarded, the assembled model answers.
    let guarded = &p.respond(std::slice::from_ref(&request), &p.generation_config(4), true).unwrap()[0];
    assert!(guarded.assessment.fault(&p.taxonomy).is_some(), "{:?}", guarded.assessment);
    assert_eq!(guarded.finish, psa_vlm::pipeline::Finish::Refused);
    let out = &p.respond(&[request], &p.generation_config(4), false).unwrap()[0];
    let probs: f32 = out.assessment.type_probs.iter().sum();
    assert!((probs - 1.0).abs() < 1e-5);
    let prompt = out.prompt.as_deref().unwrap();
    assert!(prompt.starts_with("<|im_start|>user\n<image>\nWhat is this?"), "{prompt}");
    // 4 safety tokens + the 4×4 DINOv2 patch grid (56 px, CLS dropped) pooled 2×2 + the prompt's text tokens.
    let text_tokens = p.text.encode_prompt(prompt, None).unwrap().len() - 1;
    assert_eq!(out.prompt_tokens, 4 + 4 + text_tokens);
    assert!(out.completion_tokens > 0);
}
