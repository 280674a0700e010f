//! Weight import: every key layout, dtype and shard split gives identical results, and broken checkpoints
//! fail with errors that name the key, the file and the shapes.
mod common;

use common::*;
use psa_vlm::burn::tensor::{Device, Tensor, TensorData};
use psa_vlm::import::{LoadError, SafetensorsError};
use psa_vlm::import::{LoadOptions, load_llava};

/// The standalone CLIP and LLaMA directories against transformers, flex: measured 2.7e-6 (vision last hidden
/// state) and 2.0e-6 (text logits); the LLaVA parity bound.
const STANDALONE_TOL: f64 = 2e-5;

fn logits(dir: &std::path::Path, device: &Device) -> Tensor<3> {
    let (model, _, report) =
        load_llava(dir, device, &LoadOptions::strict()).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    let fx = read_fixture(&fixtures().join("tiny_llava/fixture.safetensors"));
    let p = &fx["inputs.pixel_values"];
    let pixels = Tensor::<4>::from_data(
        TensorData::new(p.values.iter().map(|&v| v as f32).collect::<Vec<_>>(), [1, 3, 56, 56]),
        device,
    );
    model.forward(&fx["inputs.input_ids"].ids(), None, Some(pixels)).unwrap().0
}

#[test]
fn every_layout_dtype_and_shard_split_loads_identically() {
    let device = Device::flex();
    let base = fixtures().join("tiny_llava");
    let (shape, values) = host(logits(&base.join("hub_f32"), &device));
    let reference = Ref { shape, values };
    for layout in ["model", "hub_f16_sharded", "pytorch_bin"] {
        let diff = max_diff(logits(&base.join(layout), &device), &reference);
        eprintln!("{layout}: max |Δlogits| vs hub_f32 = {diff:e}");
        assert_eq!(diff, 0.0, "{layout} differs from hub_f32");
    }
}

#[test]
fn missing_key_is_named() {
    let dir = scratch("missing");
    copy_dir(&fixtures().join("tiny_llava/hub_f32"), &dir);
    let key = "language_model.model.layers.1.self_attn.k_proj.weight";
    edit_safetensors_header(&dir.join("model.safetensors"), |h, _| {
        let v = h.remove(key).unwrap();
        h.insert(format!("{key}_renamed"), v);
        Vec::new()
    });
    let err = load_llava(&dir, &Device::flex(), &LoadOptions::default()).unwrap_err();
    assert!(matches!(&err, LoadError::MissingKeys { keys } if keys == &vec![key.to_string()]), "{err}");
    assert!(err.to_string().contains(key), "{err}");
    let strict = load_llava(&dir, &Device::flex(), &LoadOptions::default());
    assert!(strict.is_err(), "a missing key fails whatever the strictness");
}

#[test]
fn unexpected_key_fails_only_when_strict() {
    let dir = scratch("unexpected");
    copy_dir(&fixtures().join("tiny_llava/hub_f32"), &dir);
    // Append a tensor the model does not have: the model is complete, the file has one extra tensor.
    edit_safetensors_header(&dir.join("model.safetensors"), |h, len| {
        h.insert(
            "extra_head.bias".into(),
            serde_json::json!({"dtype": "F32", "shape": [4], "data_offsets": [len, len + 16]}),
        );
        vec![0u8; 16]
    });
    let (_, _, report) = load_llava(&dir, &Device::flex(), &LoadOptions::default().lenient()).unwrap();
    assert_eq!(report.unexpected, vec!["extra_head.bias".to_string()]);
    let err = load_llava(&dir, &Device::flex(), &LoadOptions::strict()).unwrap_err();
    assert!(err.to_string().contains("extra_head.bias"), "{err}");
}

#[test]
fn reshaped_tensor_names_key_file_and_both_shapes() {
    let dir = scratch("reshaped");
    copy_dir(&fixtures().join("tiny_llava/hub_f32"), &dir);
    let key = "language_model.model.layers.0.self_attn.q_proj.weight";
    edit_safetensors_header(&dir.join("model.safetensors"), |h, _| {
        h.get_mut(key).unwrap()["shape"] = serde_json::json!([32, 128]);
        Vec::new()
    });
    let err = load_llava(&dir, &Device::flex(), &LoadOptions::default()).unwrap_err();
    match &err {
        LoadError::ShapeMismatch { key: k, path, expected, found } => {
            assert_eq!(k, key);
            assert!(path.ends_with("model.safetensors"));
            assert_eq!((expected.as_slice(), found.as_slice()), (&[64, 64][..], &[32, 128][..]));
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("[32, 128]") && msg.contains("[64, 64]") && msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn truncated_shard_names_the_file() {
    let dir = scratch("truncated");
    copy_dir(&fixtures().join("tiny_llava/hub_f16_sharded"), &dir);
    let shard = dir.join("model-00002-of-00003.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 1000]).unwrap();
    let err = load_llava(&dir, &Device::flex(), &LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Safetensors { source: SafetensorsError::Truncated { .. }, .. }), "{msg}");
    assert!(msg.contains("model-00002-of-00003.safetensors") && msg.contains("truncated"), "{msg}");

    std::fs::write(&shard, b"not a safetensors file at all").unwrap();
    let msg = load_llava(&dir, &Device::flex(), &LoadOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("model-00002-of-00003.safetensors"), "{msg}");

    std::fs::remove_file(&shard).unwrap();
    let msg = load_llava(&dir, &Device::flex(), &LoadOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("model-00002-of-00003.safetensors") && msg.contains("missing"), "{msg}");
}

#[test]
fn corrupt_pytorch_checkpoint_names_the_file() {
    let dir = scratch("badbin");
    copy_dir(&fixtures().join("tiny_llava/pytorch_bin"), &dir);
    let bin = dir.join("pytorch_model.bin");
    let bytes = std::fs::read(&bin).unwrap();
    std::fs::write(&bin, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_llava(&dir, &Device::flex(), &LoadOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("pytorch_model.bin"), "{msg}");
}

#[test]
fn unsupported_rope_scaling_is_a_clear_error() {
    let dir = scratch("rope");
    copy_dir(&fixtures().join("tiny_llava/hub_f32"), &dir);
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["text_config"]["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    std::fs::write(&path, cfg.to_string()).unwrap();
    let msg = load_llava(&dir, &Device::flex(), &LoadOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("rope_scaling") && msg.contains("yarn"), "{msg}");
}

/// Round-to-nearest-even f32 → bf16 bits.
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

#[test]
fn bfloat16_checkpoint_loads_every_value_exactly() {
    use psa_vlm::burn::store::{BurnToPyTorchAdapter, ModuleAdapter, ModuleSnapshot};
    let src = fixtures().join("tiny_llava/hub_f32");
    let dir = scratch("bf16");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    // Rewrite every F32 tensor as BF16.
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut entries: Vec<_> = header.iter().filter(|(k, _)| *k != "__metadata__").collect();
    entries.sort_by_key(|(_, v)| v["data_offsets"][0].as_u64().unwrap());
    let (mut out_header, mut out_data) = (serde_json::Map::new(), Vec::new());
    let mut expected = std::collections::BTreeMap::new();
    for (key, v) in entries {
        let (s, e) = (v["data_offsets"][0].as_u64().unwrap() as usize, v["data_offsets"][1].as_u64().unwrap() as usize);
        assert_eq!(v["dtype"], "F32");
        let start = out_data.len();
        let mut values = Vec::new();
        for c in data[s..e].chunks(4) {
            let h = bf16_bits(f32::from_le_bytes(c.try_into().unwrap()));
            out_data.extend_from_slice(&h.to_le_bytes());
            values.push(f32::from_bits((h as u32) << 16));
        }
        out_header.insert(
            key.clone(),
            serde_json::json!({"dtype": "BF16", "shape": v["shape"], "data_offsets": [start, out_data.len()]}),
        );
        expected.insert(key.clone(), values);
    }
    let mut text = serde_json::to_string(&out_header).unwrap();
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(text.as_bytes());
    file.extend_from_slice(&out_data);
    std::fs::write(dir.join("model.safetensors"), file).unwrap();

    let (model, _, report) = load_llava(&dir, &Device::flex(), &LoadOptions::strict()).unwrap();
    assert_eq!(report.loaded, expected.len());
    let mut checked = 0;
    for t in model.collect(None, Some(Box::new(BurnToPyTorchAdapter) as Box<dyn ModuleAdapter>), true) {
        let got = psa_vlm::burn::store::bridge::to_data(&t).unwrap();
        assert_eq!(got.dtype(), psa_vlm::burn::tensor::DType::F32, "{} is not f32", t.name);
        let got: Vec<f32> = got.try_to_vec().unwrap();
        assert_eq!(&got, &expected[&t.name], "{} differs from its bf16 value", t.name);
        checked += 1;
    }
    assert_eq!(checked, 64);
}

/// Turns the hub-layout LLaVA fixture into a standalone model directory by renaming header keys.
fn standalone(name: &str, prefix_from: &str, prefix_to: &str, config: serde_json::Value) -> std::path::PathBuf {
    let dir = scratch(name);
    std::fs::copy(fixtures().join("tiny_llava/hub_f32/model.safetensors"), dir.join("model.safetensors")).unwrap();
    edit_safetensors_header(&dir.join("model.safetensors"), |h, _| {
        let keys: Vec<String> = h.keys().filter(|k| k.starts_with(prefix_from)).cloned().collect();
        for k in keys {
            let v = h.remove(&k).unwrap();
            h.insert(format!("{prefix_to}{}", &k[prefix_from.len()..]), v);
        }
        Vec::new()
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn standalone_clip_vision_and_llama_directories_load() {
    use psa_vlm::import::{load_clip_vision, load_llama};
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tiny_llava/hub_f32/config.json")).unwrap())
            .unwrap();
    let fx = read_fixture(&fixtures().join("tiny_llava/fixture.safetensors"));
    let device = Device::flex();

    let clip_dir = standalone("clip", "vision_tower.vision_model.", "vision_model.", cfg["vision_config"].clone());
    let (clip, _, report) = load_clip_vision(&clip_dir, &device, &LoadOptions::default().lenient()).unwrap();
    assert!(report.unexpected.iter().all(|k| !k.starts_with("vision_model.")), "{:?}", report.unexpected);
    let p = &fx["inputs.pixel_values"];
    let pixels = Tensor::<4>::from_data(
        TensorData::new(p.values.iter().map(|&v| v as f32).collect::<Vec<_>>(), [1, 3, 56, 56]),
        &device,
    );
    let out = clip.forward(pixels, None);
    assert_close(
        "standalone CLIP last_hidden_state",
        out.last_hidden_state.unwrap(),
        &fx["vision.last_hidden_state"],
        STANDALONE_TOL,
    );

    let mut text_cfg = cfg["text_config"].clone();
    text_cfg["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    let llama_dir = standalone("llama", "language_model.", "", text_cfg);
    let (llama, _, _) = load_llama(&llama_dir, &device, &LoadOptions::default().lenient()).unwrap();
    let logits = llama.forward(&fx["text_only.input_ids"].ids(), None, &device);
    assert_close("standalone LLaMA text logits", logits, &fx["text_only.logits"], STANDALONE_TOL);
}
