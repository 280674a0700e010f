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
