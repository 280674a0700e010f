//! GGUF import against transformers' own reading of the same files (`scripts/make_gguf_fixtures.py`): dequantised
//! weights with Q/K rows un-permuted, logits, configuration from the metadata, and both tokenizer kinds.
mod common;

use common::*;
use psa_vlm::burn::tensor::Device;
use psa_vlm::import::LoadOptions;
use psa_vlm::import::gguf::{GgufFile, gguf_tokenizer, load_llama_gguf};

fn gguf(variant: &str) -> std::path::PathBuf {
    fixtures().join(format!("tiny_gguf/{variant}.gguf"))
}

#[test]
fn weights_and_logits_match_transformers() {
    let fx = read_fixture(&fixtures().join("tiny_gguf/fixture.safetensors"));
    for (backend, device) in devices() {
        for variant in ["spm", "bpe"] {
            let (model, cfg, report) = load_llama_gguf(&gguf(variant), &device, &LoadOptions::strict()).unwrap();
            assert_eq!(cfg.tie_word_embeddings, variant == "bpe", "{variant}: tied iff output.weight is absent");
            assert_eq!((cfg.kv_heads(), cfg.num_hidden_layers), (if variant == "bpe" { 2 } else { 4 }, 2));
            assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
            let attn = &model.model.layers[0].self_attn;
            let tag = format!("{backend} {variant}");
            let tol = 1e-6;
            assert_close(
                &format!("{tag} q_proj"),
                attn.q_proj.weight.val().transpose(),
                &fx[&format!("{variant}.q_proj.0")],
                tol,
            );
            assert_close(
                &format!("{tag} k_proj"),
                attn.k_proj.weight.val().transpose(),
                &fx[&format!("{variant}.k_proj.0")],
                tol,
            );
            assert_close(
                &format!("{tag} embed_tokens"),
                model.model.embed_tokens.weight.val(),
                &fx[&format!("{variant}.embed_tokens")],
                tol,
            );
            let ids = fx[&format!("{variant}.input_ids")].ids();
            let logits = model.forward(&ids, None, &device);
            assert_close(&format!("{tag} logits"), logits, &fx[&format!("{variant}.logits")], 2e-5);
        }
    }
}

#[test]
fn tokenizers_match_transformers() {
    let text = std::fs::read_to_string(fixtures().join("tiny_gguf/tokens.json")).unwrap();
    let want: serde_json::Value = serde_json::from_str(&text).unwrap();
    for variant in ["spm", "bpe"] {
        let file = GgufFile::open(&gguf(variant)).unwrap();
        let (tokenizer, _) = gguf_tokenizer(&file).unwrap();
        let case = &want[variant];
        for (i, s) in case["strings"].as_array().unwrap().iter().enumerate() {
            let s = s.as_str().unwrap();
            let ids: Vec<u32> = serde_json::from_value(case["ids"][i].clone()).unwrap();
            let got = tokenizer.encode(s, true).unwrap().get_ids().to_vec();
            assert_eq!(got, ids, "{variant}: ids of {s:?}");
            let decoded = tokenizer.decode(&got, false).unwrap();
            assert_eq!(decoded, case["decoded"][i].as_str().unwrap(), "{variant}: decoding {s:?}");
        }
    }
}

#[test]
fn damaged_files_are_refused_with_the_reason() {
    let dir = scratch("gguf-bad");
    let bytes = std::fs::read(gguf("bpe")).unwrap();
    let device = Device::flex();
    let try_load = |name: &str, data: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        load_llama_gguf(&path, &device, &LoadOptions::default()).map(|_| ()).unwrap_err().to_string()
    };
    let err = try_load("cut.gguf", &bytes[..bytes.len() - 100]);
    assert!(err.contains("cut.gguf") && err.contains("truncated"), "{err}");
    let err = try_load("head.gguf", &bytes[..200]);
    assert!(err.contains("truncated") || err.contains("claims"), "{err}");
    let mut other = bytes.clone();
    other[..4].copy_from_slice(b"GGML");
    assert!(try_load("magic.gguf", &other).contains("not a GGUF file"));
}
