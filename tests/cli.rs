//! The `psa train` command and whole runs from a TOML configuration: outputs, overrides and config errors.
mod common;

use std::process::Command;

use common::*;

fn config(dir: &std::path::Path, stage: &str, extra: &str) -> std::path::PathBuf {
    let data = dataset(dir, "cli", 4, 21);
    let text = format!(
        r#"stage = "{stage}"
model_dir = "{model}"
tokenizer = "{tok}"
data = "{data}"
eval = "{data}"
image_root = "{dir}"
out = "{out}"
template = "llava_hf"
progress = false
checkpoint_every = 2
{extra}
[recipe]
lr = 0.002
epochs = 2
batch_size = 4
grad_accum = 1
warmup_steps = 1
"#,
        model = fixtures().join("tiny_psa/model").display(),
        tok = fixtures().join("tiny_tokenizer/tokenizer.json").display(),
        data = data.display(),
        dir = dir.display(),
        out = dir.join(format!("out-{stage}")).display(),
    );
    let path = dir.join(format!("{stage}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn psa_train_runs_both_stages_from_toml() {
    let dir = scratch("cli");
    for (stage, extra) in [
        ("stage1", ""),
        ("stage2", "[lora]\nr = 2\nlora_alpha = 4.0\nlora_dropout = 0.0\ntarget_modules = [\"q_proj\", \"v_proj\"]\n"),
    ] {
        let cfg = config(&dir, stage, extra);
        let out = Command::new(env!("CARGO_BIN_EXE_psa"))
            .args(["train", stage, "--config"])
            .arg(&cfg)
            .arg("--quiet")
            // Stage I runs data-parallel over two CPU replicas.
            .args(["--device", if stage == "stage1" { "cpu,cpu" } else { "cpu" }])
            .output()
            .unwrap();
        assert!(out.status.success(), "{stage}: {}", String::from_utf8_lossy(&out.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // 20 samples, batch 4, 2 epochs = 10 steps.
        assert_eq!(summary["steps"], 10, "{summary}");
        let run_dir = dir.join(format!("out-{stage}"));
        let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
        assert_eq!(metrics.lines().count(), 10);
        let svg = std::fs::read_to_string(run_dir.join("loss.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("optimizer step"), "loss curve written");
        assert!(run_dir.join("checkpoints/checkpoint-10/trainable.safetensors").is_file());
        if stage == "stage1" {
            assert!(run_dir.join("safety_modules.safetensors").is_file());
            assert!(summary["accuracy"].is_array());
        } else {
            let adapter = read_fixture(&run_dir.join("adapter/adapter_model.safetensors"));
            assert_eq!(adapter.len(), 2 * 2 * 2, "2 layers × q/v × (A, B)");
        }
    }
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "stage = \"stage1\"\nmodel_dir = \"x\"\ndata = \"y\"\nout = \"z\"\nlearning_rate = 1\n")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_psa")).args(["train", "stage1", "--config"]).arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad.toml") && err.contains("learning_rate"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_psa"))
        .args(["train", "stage2", "--config"])
        .arg(config(&dir, "stage1", ""))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("configures stage1, but stage2 was asked for"));
    // A learning rate that cannot train fails before any work, writing nothing.
    let nan_out = dir.join("nan-run");
    let out = Command::new(env!("CARGO_BIN_EXE_psa"))
        .args(["train", "stage1", "--config"])
        .arg(config(&dir, "stage1", ""))
        .args(["--quiet", "--lr", "nan", "--out"])
        .arg(&nan_out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("lr = NaN"), "{err}");
    assert!(!nan_out.join("safety_modules.safetensors").exists());
}

#[test]
fn a_run_records_itself_and_its_seed_and_taxonomy_reach_balancing() {
    use psa_vlm::train::data::{Balance, LabelSpace, balance, read_jsonl};
    use psa_vlm::train::record::RunRecord;
    let dir = scratch("record");
    // The paper's taxonomy with another safe type: class (3, 1) becomes the "clean" class balancing thins out.
    let mut taxonomy = psa_vlm::core::Taxonomy::default();
    taxonomy.safe_type = 1;
    let taxonomy_file = dir.join("taxonomy.json");
    std::fs::write(&taxonomy_file, serde_json::to_string(&taxonomy).unwrap()).unwrap();
    config(&dir, "stage1", ""); // writes the data set, cli.jsonl
    let samples = read_jsonl(&dir.join("cli.jsonl"), &dir, LabelSpace::default()).unwrap();
    for (seed, safe_type) in [(3u64, 6usize), (4, 6), (3, 1)] {
        let extra =
            if safe_type == 1 { format!("taxonomy = \"{}\"\n", taxonomy_file.display()) } else { String::new() };
        let cfg = config(&dir, "stage1", &format!("clean = 2\n{extra}"));
        let text = std::fs::read_to_string(&cfg).unwrap().replace("[recipe]\n", &format!("[recipe]\nseed = {seed}\n"));
        std::fs::write(&cfg, text.replace("checkpoint_every = 2\n", "")).unwrap();
        let cfg = psa_vlm::train::TrainConfig::from_file(&cfg).unwrap();
        psa_vlm::train::run(&cfg, &[psa_vlm::burn::tensor::Device::flex()]).unwrap();
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(cfg.out.join("run.json")).unwrap()).unwrap();
        assert_eq!((record["kind"].as_str(), record["seed"].as_u64()), (Some("train stage1"), Some(seed)));
        assert_eq!(record["settings"]["recipe"]["seed"].as_u64(), Some(seed));
        let samplers: Vec<&str> =
            record["samplers"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert!(samplers.iter().any(|s| s.starts_with("stage-I balancing (2 clean")), "{samplers:?}");
        assert!(record["samplers"].as_array().unwrap().iter().all(|s| s["seed"].as_u64() == Some(seed)));
        let role = |r: &str| {
            record["inputs"].as_array().unwrap().iter().find(|i| i["role"].as_str().unwrap().starts_with(r)).cloned()
        };
        assert_eq!(role("data").unwrap()["sha256"].as_str().unwrap().len(), 64);
        assert!(role("model").is_some() && role("tokenizer").is_some());
        assert_eq!(role("taxonomy").is_some(), safe_type == 1);
        // The images trained on are exactly what balancing with this seed and this safe type keeps.
        let kept = balance(samples.clone(), safe_type, Balance { clean: 2, seed });
        assert_eq!(kept.len(), 18);
        let files: Vec<std::path::PathBuf> =
            kept.iter().flat_map(|s| s.image.paths()).map(|p| p.to_path_buf()).collect();
        let want = RunRecord::new("x", None, serde_json::Value::Null).input_set("images", &dir, &files);
        let images = role("images").unwrap();
        assert_eq!(images["role"].as_str(), Some("images (18 files)"));
        assert_eq!(
            images["sha256"].as_str(),
            Some(want.inputs[0].sha256.as_str()),
            "seed {seed}, safe type {safe_type}"
        );
    }
}
