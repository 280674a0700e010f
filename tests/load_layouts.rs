//! Weight import: every key layout, dtype and shard split gives identical results, and broken checkpoints
//! fail with errors that name the key, the file and the shapes.
mod common;

use common::*;
use psa_vlm::burn::tensor::{Device, Tensor, TensorData};
use psa_vlm::models::LoadError;
use psa_vlm::models::import::{LoadOptions, load_llava};

fn logits(dir: &std::path::Path, device: &Device) -> Tensor<3> {
    let (model, _, report) = load_llava(dir, device, &LoadOptions { strict: true })
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    let fx = read_fixture(&fixtures().join("tiny_llava/fixture.safetensors"));
    let p = &fx["inputs.pixel_values"];
    let pixels = Tensor::<4>::from_data(
        TensorData::new(
            p.values.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            [1, 3, 56, 56],
        ),
        device,
    );
    model
        .forward(&fx["inputs.input_ids"].ids(), None, Some(pixels))
        .unwrap()
        .0
}

#[test]
fn every_layout_dtype_and_shard_split_loads_identically() {
    let device = Device::flex();
    let base = fixtures().join("tiny_llava");
    let reference = logits(&base.join("hub_f32"), &device);
    for layout in ["model", "hub_f16_sharded", "pytorch_bin"] {
        let (_, diff) = host(
            reference
                .clone()
                .sub(logits(&base.join(layout), &device))
                .abs()
                .max(),
        );
        eprintln!("{layout}: max |Δlogits| vs hub_f32 = {:e}", diff[0]);
        assert_eq!(diff[0], 0.0, "{layout} differs from hub_f32");
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
    assert!(
        matches!(&err, LoadError::MissingKeys { keys } if keys == &vec![key.to_string()]),
        "{err}"
    );
    assert!(err.to_string().contains(key), "{err}");
    let strict = load_llava(&dir, &Device::flex(), &LoadOptions { strict: false });
    assert!(
        strict.is_err(),
        "a missing key fails whatever the strictness"
    );
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
    let (_, _, report) = load_llava(&dir, &Device::flex(), &LoadOptions::default()).unwrap();
    assert_eq!(report.unexpected, vec!["extra_head.bias".to_string()]);
    let err = load_llava(&dir, &Device::flex(), &LoadOptions { strict: true }).unwrap_err();
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
        LoadError::ShapeMismatch {
            key: k,
            path,
            expected,
            found,
        } => {
            assert_eq!(k, key);
            assert!(path.ends_with("model.safetensors"));
            assert_eq!(
                (expected.as_slice(), found.as_slice()),
                (&[64, 64][..], &[32, 128][..])
            );
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("[32, 128]") && msg.contains("[64, 64]") && msg.contains("model.safetensors"),
        "{msg}"
    );
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
    assert!(matches!(err, LoadError::BadFile { .. }), "{msg}");
    assert!(
        msg.contains("model-00002-of-00003.safetensors") && msg.contains("truncated"),
        "{msg}"
    );

    std::fs::write(&shard, b"not a safetensors file at all").unwrap();
    let msg = load_llava(&dir, &Device::flex(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("model-00002-of-00003.safetensors"), "{msg}");

    std::fs::remove_file(&shard).unwrap();
    let msg = load_llava(&dir, &Device::flex(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("model-00002-of-00003.safetensors") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn corrupt_pytorch_checkpoint_names_the_file() {
    let dir = scratch("badbin");
    copy_dir(&fixtures().join("tiny_llava/pytorch_bin"), &dir);
    let bin = dir.join("pytorch_model.bin");
    let bytes = std::fs::read(&bin).unwrap();
    std::fs::write(&bin, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_llava(&dir, &Device::flex(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("pytorch_model.bin"), "{msg}");
}

#[test]
fn unsupported_rope_scaling_is_a_clear_error() {
    let dir = scratch("rope");
    copy_dir(&fixtures().join("tiny_llava/hub_f32"), &dir);
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["text_config"]["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    std::fs::write(&path, cfg.to_string()).unwrap();
    let msg = load_llava(&dir, &Device::flex(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("rope_scaling") && msg.contains("yarn"),
        "{msg}"
    );
}
