//! LoRA adapters in the PEFT layout: `adapter_config.json` + `adapter_model.safetensors` with keys
//! `base_model.model.<module path>.lora_A.weight` `[r, in]` and `.lora_B.weight` `[out, r]`.
use std::path::Path;

use burn::store::{BurnToPyTorchAdapter, ModuleAdapter, ModuleSnapshot, bridge};
use burn::tensor::{DType, Device};
use serde_json::Value;

use super::layout::{Layout, denormalize};
use super::psa::write_f32_safetensors;
use super::{LoadOptions, LoadReport, load_matching};
use crate::error::LoadError;
use psa_models::config::{parse, read_json};
use psa_models::llama::LlamaForCausalLM;
use psa_models::lora::{LoraConfig, LoraTargets};

/// The layout of an LLM inside LLaVA (`language_model.` prefix) or a standalone LLaMA.
fn layout(inside_llava: bool) -> Layout {
    if inside_llava { Layout::PeftLlava } else { Layout::PeftLlama }
}

fn is_lora(path: &str) -> bool {
    path.contains(".lora.lora_")
}

/// Writes the adapters of `lm` as a PEFT directory (`adapter_config.json`, `adapter_model.safetensors`).
pub fn save_peft_adapter(
    lm: &LlamaForCausalLM,
    cfg: &LoraConfig,
    inside_llava: bool,
    dir: &Path,
) -> Result<(), LoadError> {
    let io = |p: &Path, e: String| LoadError::BadFile { path: p.into(), reason: e };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e.to_string()))?;
    let mut tensors = Vec::new();
    for t in lm.collect(None, Some(Box::new(BurnToPyTorchAdapter) as Box<dyn ModuleAdapter>), true) {
        if !is_lora(&t.name) {
            continue;
        }
        let data = bridge::to_data(&t).map_err(|e| LoadError::Tensor { key: t.name.clone(), reason: e.to_string() })?;
        let values = data.convert_dtype(DType::F32).convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
        tensors.push((denormalize(layout(inside_llava), &t.name), t.shape.to_vec(), values));
    }
    if tensors.is_empty() {
        return Err(LoadError::Tensor { key: "lora".into(), reason: "the model has no LoRA adapters to save".into() });
    }
    write_f32_safetensors(&dir.join("adapter_model.safetensors"), tensors)?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": cfg.target_modules.names(),
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
    });
    let path = dir.join("adapter_config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap_or_default())
        .map_err(|e| io(&path, e.to_string()))
}

/// Adds adapters to `lm` as described by a PEFT directory and loads their weights; every adapter tensor must be
/// present, and tensors for modules we never adapt (such as the reference's accidental `lm_head` adapter) fail.
pub fn load_peft_adapter(
    lm: LlamaForCausalLM,
    dir: &Path,
    inside_llava: bool,
    device: &Device,
) -> Result<(LlamaForCausalLM, LoraConfig, LoadReport), LoadError> {
    let cfg_path = dir.join("adapter_config.json");
    let raw = read_json(&cfg_path)?;
    let targets = match raw.get("target_modules") {
        Some(Value::String(s)) => LoraTargets::AllLinear(s.clone()),
        Some(v) => LoraTargets::Names(parse(v, &cfg_path, "target_modules")?),
        None => LoraTargets::AllLinear("all-linear".into()),
    };
    let num = |k: &str, d: f64| raw.get(k).and_then(Value::as_f64).unwrap_or(d);
    let cfg = LoraConfig {
        r: num("r", 8.0) as usize,
        lora_alpha: num("lora_alpha", 8.0),
        lora_dropout: num("lora_dropout", 0.0),
        target_modules: targets,
    };
    cfg.validate().map_err(|source| LoadError::Lora { path: cfg_path.clone(), source })?;
    let lm = lm.apply_lora(&cfg, device);
    let files = [dir.join("adapter_model.safetensors")];
    let opts = LoadOptions::strict();
    let (lm, report) = load_matching(lm, &files, layout(inside_llava), &opts, device, is_lora)?;
    Ok((lm, cfg, report))
}
