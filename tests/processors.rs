//! Image and text processors against transformers / tokenizers references (`fixtures/images`,
//! `fixtures/tiny_tokenizer`). Image tolerance: 0.04 in normalised units (PIL bicubic vs `CatmullRom`).
mod common;

use common::*;
use psa_vlm::burn::tensor::Device;
use psa_vlm::pipeline::ImageError;
use psa_vlm::pipeline::processor::{ImageProcessorConfig, Message, Template, TextProcessor, load_image};

#[test]
fn clip_preprocessing_matches_transformers_on_a_real_photo() {
    let dir = fixtures().join("images");
    let refs = read_fixture(&dir.join("clip_reference.safetensors"));
    let image = load_image(&dir.join("franz-kafka.jpg")).unwrap();
    let device = Device::flex();
    let llava_hf = ImageProcessorConfig::from_file(&dir.join("preprocessor_config.json")).unwrap().build().unwrap();
    let d336 = assert_close(
        "clip336",
        llava_hf.preprocess(std::slice::from_ref(&image), &device).unwrap(),
        &refs["clip336.pixel_values"],
        0.04,
    );
    let d224 = assert_close(
        "clip224",
        ImageProcessorConfig::clip(224).build().unwrap().preprocess(std::slice::from_ref(&image), &device).unwrap(),
        &refs["clip224.pixel_values"],
        0.04,
    );
    let mut pad = ImageProcessorConfig::clip(336);
    pad.pad_to_square = true;
    // The pad reference is stored as f16 (≈ 2e-3 rounding at |x| ≈ 2).
    let dpad = assert_close(
        "pad336",
        pad.build().unwrap().preprocess(&[image], &device).unwrap(),
        &refs["pad336.pixel_values"],
        0.04,
    );
    eprintln!("image preprocessing max diffs: clip336 {d336:.4}, clip224 {d224:.4}, pad336 {dpad:.4}");
}

#[test]
fn resize_matches_pillow_exactly_on_identical_pixels() {
    let dir = fixtures().join("images");
    let refs = read_fixture(&dir.join("clip_reference.safetensors"));
    let crop = load_image(&dir.join("kafka-crop.png")).unwrap();
    let device = Device::flex();
    let down =
        ImageProcessorConfig::clip(64).build().unwrap().preprocess(std::slice::from_ref(&crop), &device).unwrap();
    let mut up = ImageProcessorConfig::clip(160);
    up.size = serde_json::json!({"shortest_edge": 240});
    let up = up.build().unwrap().preprocess(&[crop], &device).unwrap();
    // Identical u8 pixels after the resize leave only f32 rounding in rescale/normalise.
    assert_close("crop.down64 (150x200 → 64)", down, &refs["crop.down64.pixel_values"], 1e-5);
    assert_close("crop.up160 (150x200 → 240, crop 160)", up, &refs["crop.up160.pixel_values"], 1e-5);
}

#[test]
fn missing_or_corrupt_images_are_errors_naming_the_file() {
    let missing = fixtures().join("images/no-such-photo.jpg");
    let err = load_image(&missing).unwrap_err();
    assert!(matches!(err, ImageError::Decode { .. }) && err.to_string().contains("no-such-photo.jpg"), "{err}");
    let dir = scratch("badimage");
    let bad = dir.join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    let err = load_image(&bad).unwrap_err();
    assert!(err.to_string().contains("broken.png"), "{err}");
}

#[test]
fn tokenizer_ids_match_python_exactly() {
    let dir = fixtures().join("tiny_tokenizer");
    let text = TextProcessor::from_file(&dir.join("tokenizer.json"), "<image>").unwrap();
    assert_eq!(text.image_token_id(), 999);
    assert_eq!(text.token_id("<pad>"), Some(998));
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let cases = expected.as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let input = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(text.encode(input, true).unwrap(), want, "ids of {input:?}");
        assert_eq!(text.decode(&want, true).unwrap(), case["decoded"].as_str().unwrap(), "decode of {input:?}");
    }
}

#[test]
fn prompts_expand_the_image_placeholder_on_request() {
    let text = TextProcessor::from_file(&fixtures().join("tiny_tokenizer/tokenizer.json"), "<image>").unwrap();
    let prompt =
        Template::by_name("llava_v1").unwrap().render(&[Message::user("<image>\nDescribe the picture.")], true);
    let single = text.encode_prompt(&prompt, None).unwrap();
    let expanded = text.encode_prompt(&prompt, Some(16)).unwrap();
    assert_eq!(single.iter().filter(|&&t| t == 999).count(), 1);
    assert_eq!(expanded.iter().filter(|&&t| t == 999).count(), 16);
    assert_eq!(expanded.len(), single.len() + 15);
    assert_eq!(single[0], 1, "BOS first");
}

#[test]
fn sft_labels_supervise_exactly_the_answers_and_eos() {
    use psa_vlm::train::data::encode_conversation;
    let text = TextProcessor::from_file(&fixtures().join("tiny_tokenizer/tokenizer.json"), "<image>").unwrap();
    let conv = [
        Message::user("What is in the picture? <image>"),
        Message::assistant("A small grey cat."),
        Message::user("Is it safe?"),
        Message::assistant("Yes, it is."),
    ];
    for name in ["llava_v1", "llava_hf", "llava_llama_2"] {
        let template = Template::by_name(name).unwrap();
        let enc = encode_conversation(&text, &template, &conv, 512).unwrap();
        assert_eq!(enc.input_ids.len(), enc.labels.len());
        assert_eq!(enc.input_ids[0], 1, "{name}: BOS first");
        assert_eq!(enc.input_ids.iter().filter(|&&t| t == 999).count(), 1, "{name}: one <image>");
        // Supervised spans, decoded: each answer followed by EOS (id 2).
        let mut spans: Vec<Vec<u32>> = Vec::new();
        let mut prev = false;
        for &l in &enc.labels {
            let on = l != -100;
            if on && !prev {
                spans.push(Vec::new());
            }
            if on {
                spans.last_mut().unwrap().push(l as u32);
            }
            prev = on;
        }
        assert_eq!(spans.len(), 2, "{name}: two supervised turns");
        for (span, answer) in spans.iter().zip(["A small grey cat.", "Yes, it is."]) {
            assert_eq!(*span.last().unwrap(), 2, "{name}: EOS supervised");
            assert_eq!(text.decode(span, true).unwrap().trim(), answer, "{name}");
        }
        let first = enc.labels.iter().position(|&l| l != -100).unwrap();
        let cut = encode_conversation(&text, &template, &conv, first + 2).unwrap();
        assert!(cut.truncated && cut.input_ids.len() == first + 2, "{name}: truncation reported");
        let err = encode_conversation(&text, &template, &conv, first).unwrap_err();
        assert!(err.to_string().contains("removed every supervised token"), "{name}: {err}");
    }
}
