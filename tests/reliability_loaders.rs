//! Loaders never panic or over-allocate: zero and absurd sizes, configs that do not belong to their weights, a
//! preprocessor that does not fit the vision tower, and overflowing sizes or offsets in GGUF, ONNX and safetensors
//! files are all errors that name the problem.
mod common;

use std::path::Path;

use common::*;
use psa_vlm::burn::tensor::Device;
use psa_vlm::import::gguf::{GgufFile, load_llama_gguf};
use psa_vlm::import::manifest::write_manifest;
use psa_vlm::import::onnx::OnnxWeights;
use psa_vlm::import::{LoadOptions, check_safetensors_header, load_psa};
use psa_vlm::pipeline::GuardedPipeline;
use psa_vlm::pipeline::processor::Template;
use serde_json::{Value, json};

/// A copy of the tiny PSA model with `edit` applied to its `config.json`.
fn model_with_config(name: &str, edit: impl FnOnce(&mut Value)) -> std::path::PathBuf {
    let dir = scratch(name);
    copy_dir(&fixtures().join("tiny_psa/model"), &dir);
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
    // Sealed again, as its author would: what is under test is the config, not the manifest.
    write_manifest(&dir).unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    match load_psa(dir, &Device::flex(), &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

type ConfigEdit = Box<dyn FnOnce(&mut Value)>;

#[test]
fn zero_absurd_and_foreign_sizes_in_configs_are_errors_before_allocation() {
    let cases: Vec<(&str, ConfigEdit, &str)> = vec![
        ("patch0", Box::new(|c| c["vision_config"]["patch_size"] = json!(0)), "patch_size = 0"),
        ("heads0", Box::new(|c| c["vision_config"]["num_attention_heads"] = json!(0)), "num_attention_heads = 0"),
        ("vocab4e9", Box::new(|c| c["text_config"]["vocab_size"] = json!(4_000_000_000u64)), "vocab_size = 4000000000"),
        ("textheads0", Box::new(|c| c["text_config"]["num_attention_heads"] = json!(0)), "num_attention_heads = 0"),
        (
            "vocab1m",
            Box::new(|c| c["text_config"]["vocab_size"] = json!(1_000_000)),
            "does not belong to these weights",
        ),
        ("layers", Box::new(|c| c["text_config"]["num_hidden_layers"] = json!(1000)), "does not belong"),
    ];
    for (name, edit, needle) in cases {
        let err = load_error(&model_with_config(name, edit));
        eprintln!("{name}: {err}");
        assert!(err.contains(needle), "{name}: {err:?} should mention {needle:?}");
    }
}

#[test]
fn a_preprocessor_that_does_not_fit_the_vision_tower_is_refused_at_load() {
    let dir = scratch("preprocessor-mismatch");
    copy_dir(&fixtures().join("tiny_psa/model"), &dir);
    let pre = json!({
        "do_resize": true, "size": {"shortest_edge": 112}, "do_center_crop": true,
        "crop_size": {"height": 112, "width": 112}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]
    });
    std::fs::write(dir.join("preprocessor_config.json"), pre.to_string()).unwrap();
    write_manifest(&dir).unwrap();
    let tokenizer = Some(fixtures().join("tiny_tokenizer/tokenizer.json"));
    let err = GuardedPipeline::load(&dir, tokenizer, Template::by_name("llava_hf").unwrap(), &Device::flex())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("112×112 pixels, a 8×8 grid") && err.contains("needs a 4×4 grid"), "{err}");
}

/// The GGUF fixture with `patch` applied; returns the load error.
fn gguf_error(name: &str, patch: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut bytes = std::fs::read(fixtures().join("tiny_gguf/bpe.gguf")).unwrap();
    patch(&mut bytes);
    let path = scratch(name).join("model.gguf");
    std::fs::write(&path, &bytes).unwrap();
    match load_llama_gguf(&path, &Device::flex(), &LoadOptions::default()) {
        Ok(_) => panic!("{name} loaded"),
        Err(e) => e.to_string(),
    }
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn gguf_metadata_and_tensor_offsets_are_checked() {
    // `llama.attention.head_count` (u32, type 4) set to 0.
    let err = gguf_error("gguf-heads0", |b| {
        let key = b"llama.attention.head_count";
        let at = find(b, &[&key[..], &4u32.to_le_bytes()].concat()) + key.len() + 4;
        b[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
    });
    assert!(err.contains("num_attention_heads = 0"), "{err}");
    // The first tensor's offset set to 2^64 − 1: it must not wrap around and load other bytes.
    let err = gguf_error("gguf-offset", |b| {
        let name = b"token_embd.weight";
        let mut at = find(b, name) + name.len();
        let n_dims = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + 8 * n_dims + 4;
        b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    });
    assert!(err.contains("token_embd.weight") && err.contains("does not lie within the file"), "{err}");
    // A tensor claiming 2^32 × 2^32 elements.
    let err = gguf_error("gguf-dims", |b| {
        let name = b"token_embd.weight";
        let at = find(b, name) + name.len() + 4;
        b[at..at + 16].copy_from_slice(&[(1u64 << 32).to_le_bytes(), (1u64 << 32).to_le_bytes()].concat());
    });
    assert!(err.contains("more than 1099511627776 elements"), "{err}");
    assert!(GgufFile::from_bytes(b"GGUF\x03\x00\x00\x00".to_vec(), Path::new("x.gguf")).is_err());
}

/// A protobuf length-delimited field.
fn field(tag: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = varint((tag << 3) | 2);
    out.extend(varint(payload.len() as u64));
    out.extend_from_slice(payload);
    out
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[test]
fn onnx_initializers_with_overflowing_or_negative_dims_are_errors() {
    for dims in [vec![1i64 << 32, 1 << 32], vec![-4, 4], vec![i64::MAX, 2]] {
        let mut tensor = Vec::new();
        for d in &dims {
            tensor.extend(varint(1 << 3));
            tensor.extend(varint(*d as u64));
        }
        tensor.extend(varint(2 << 3));
        tensor.extend(varint(1));
        tensor.extend(field(8, b"w"));
        tensor.extend(field(9, &[0u8; 16]));
        let model = field(7, &field(5, &tensor));
        match OnnxWeights::from_bytes(&model, Path::new("bad.onnx")) {
            Ok(_) => panic!("dims {dims:?} loaded"),
            Err(e) => assert!(e.to_string().contains("invalid dimensions"), "{dims:?}: {e}"),
        }
    }
}

#[test]
fn safetensors_headers_with_impossible_shapes_or_offsets_are_errors() {
    let header = |entry: Value| serde_json::to_vec(&json!({ "w": entry })).unwrap();
    let cases = [
        (json!({"dtype": "F32", "shape": [4294967296u64, 4294967296u64], "data_offsets": [0, 16]}), "invalid shape"),
        (json!({"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}), "needs 16 bytes"),
        (json!({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}), "spans bytes 8..0"),
        (json!({"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}), "truncated"),
        (json!({"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}), "unsupported dtype"),
    ];
    for (entry, needle) in cases {
        let err = check_safetensors_header(&header(entry.clone()), 16).unwrap_err();
        assert!(err.to_string().contains(needle), "{entry}: {err}");
    }
    check_safetensors_header(&header(json!({"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]})), 16).unwrap();
}

#[test]
fn configs_with_fewer_layers_than_their_weights_are_refused_by_default() {
    for (part, key) in [("vision_config", "vision_tower"), ("text_config", "language_model")] {
        let dir = model_with_config(&format!("fewer-layers-{part}"), |c| {
            let n = c[part]["num_hidden_layers"].as_u64().unwrap();
            c[part]["num_hidden_layers"] = json!(n - 1);
        });
        let e = load_error(&dir);
        assert!(e.contains("unexpected tensor(s)") && e.contains(key) && e.contains("layers.1."), "{part}: {e}");
        // Read in part on purpose, it loads and reports what it left.
        let (_, _, report) = load_psa(&dir, &Device::flex(), &LoadOptions::default().lenient()).unwrap();
        assert!(!report.unexpected.is_empty());
    }
    let e = model_with_config("eps-zero", |c| c["text_config"]["rms_norm_eps"] = json!(0.0));
    assert!(load_error(&e).contains("rms_norm_eps = 0 must lie in (0, 1)"));
    let e = model_with_config("eps-negative", |c| c["vision_config"]["layer_norm_eps"] = json!(-1e-5));
    assert!(load_error(&e).contains("layer_norm_eps = -0.00001 must lie in (0, 1)"), "{}", load_error(&e));
}

#[test]
fn a_safety_config_changed_after_saving_is_refused() {
    let dir = saved_tiny_model_dir("changed-safety-config");
    load_psa(&dir, &Device::flex(), &LoadOptions::default()).unwrap();
    let path = dir.join("config.json");
    let original = std::fs::read_to_string(&path).unwrap();
    for (key, value) in [("num_queries", json!(4)), ("query_mode", json!("ref_pad_query"))] {
        let mut config: Value = serde_json::from_str(&original).unwrap();
        assert!(config["safety_config"].get(key).is_some(), "{key} not in {}", config["safety_config"]);
        if config["safety_config"][key] == value {
            continue;
        }
        config["safety_config"][key] = value;
        std::fs::write(&path, config.to_string()).unwrap();
        write_manifest(&dir).unwrap();
        let e = load_error(&dir);
        assert!(e.contains("safety config differs") && e.contains(key), "{key}: {e}");
    }
}

#[test]
fn duplicate_or_overlapping_safetensors_entries_and_mislaid_gguf_tensors_are_errors() {
    let entry = |begin: u64, end: u64| json!({"dtype": "F32", "shape": [4], "data_offsets": [begin, end]});
    let header = |pairs: &[(&str, Value)]| {
        let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
        format!("{{{}}}", body.join(","))
    };
    let dup = header(&[("a", entry(0, 16)), ("a", entry(16, 32))]);
    assert!(check_safetensors_header(dup.as_bytes(), 32).unwrap_err().to_string().contains("appears twice"));
    let overlap = header(&[("a", entry(0, 16)), ("b", entry(0, 16))]);
    assert!(check_safetensors_header(overlap.as_bytes(), 16).unwrap_err().to_string().contains("overlaps"));
    let hole = header(&[("a", entry(0, 16)), ("b", entry(32, 48))]);
    assert!(check_safetensors_header(hole.as_bytes(), 48).unwrap_err().to_string().contains("unused"));
    let trailing = header(&[("a", entry(0, 16))]);
    assert!(check_safetensors_header(trailing.as_bytes(), 20).unwrap_err().to_string().contains("cover 16"));
    assert!(check_safetensors_header(header(&[("a", entry(0, 16)), ("b", entry(16, 32))]).as_bytes(), 32).is_ok());

    // GGUF: one tensor's offset moved by one byte, its type relabelled, and one block fewer than the file holds.
    let descriptor = |b: &[u8]| {
        let name = b"token_embd.weight";
        let mut at = find(b, name) + name.len();
        let n_dims = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + 8 * n_dims;
        at
    };
    let err = gguf_error("gguf-misaligned", |b| {
        let at = descriptor(b) + 4;
        let offset = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        b[at..at + 8].copy_from_slice(&(offset + 1).to_le_bytes());
    });
    assert!(err.contains("not a multiple of the alignment") || err.contains("does not lie within"), "{err}");
    let err = gguf_error("gguf-relabelled", |b| {
        let at = descriptor(b);
        let ty = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        b[at..at + 4].copy_from_slice(&(if ty == 0 { 1u32 } else { 0 }).to_le_bytes());
    });
    assert!(
        err.contains("unused") || err.contains("inside the tensor before") || err.contains("does not lie"),
        "{err}"
    );
    let err = gguf_error("gguf-blocks", |b| {
        let key = b"llama.block_count";
        let at = find(b, &[&key[..], &4u32.to_le_bytes()].concat()) + key.len() + 4;
        let n = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        b[at..at + 4].copy_from_slice(&(n - 1).to_le_bytes());
    });
    assert!(err.contains("unexpected tensor(s)") && err.contains("layers."), "{err}");
}
