//! PSA-VLM checkpoints in the authors' `SafeLlavaModel` naming: a full checkpoint, or a safety-modules file on top
//! of a base llava-hf directory; export of the whole model and of our safety modules in that naming.
use std::path::{Path, PathBuf};

use burn::store::{BurnToPyTorchAdapter, ModuleAdapter, ModuleSnapshot, bridge};
use burn::tensor::{DType, Device};
use psa_core::{SafetyConfig, SafetyModules};
use safetensors::{Dtype, View};

use super::layout::{Layout, denormalize, safety_path_to_key};
use super::{LoadOptions, LoadReport, check_fits, load_into, weight_files};
use crate::error::LoadError;
use psa_models::config::{LlavaConfig, parse, read_json};
use psa_models::psa::{PsaConfig, PsaVlm};
use psa_models::vision::VisionConfig;

/// The key layout of a PSA-VLM checkpoint with this base.
pub(crate) fn layout(cfg: &LlavaConfig) -> Layout {
    match cfg.vision {
        VisionConfig::Clip(_) => Layout::PsaClip,
        VisionConfig::Dinov2(_) => Layout::PsaDinov2,
    }
}

/// Loads a full PSA-VLM checkpoint directory (LLaVA and safety keys together, any LLaVA layout).
///
/// The directory is first checked against its `manifest.json` ([`crate::manifest::verify_manifest`]) unless
/// `opts.allow_unverified`.
pub fn load_psa(dir: &Path, device: &Device, opts: &LoadOptions) -> Result<(PsaVlm, PsaConfig, LoadReport), LoadError> {
    if !opts.allow_unverified {
        crate::manifest::verify_manifest(dir)?;
    }
    let config = PsaConfig::from_dir(dir)?;
    let files = weight_files(dir)?;
    check_fits(&config.llava.text, &files)?;
    check_saved_safety(&config, &files)?;
    let (model, mut report) = load_into(config.init(device)?, &files, layout(&config.llava), opts, device)?;
    refuse_non_finite(&model, dir)?;
    report.verified = !opts.allow_unverified;
    Ok((model, config, report))
}

/// The safetensors metadata key under which [`save_psa_weights`] records the safety configuration it saved.
pub const SAFETY_CONFIG_KEY: &str = "psa_safety_config";

/// Refuses a `config.json` whose safety section differs from the one the weights were saved with (a changed
/// `num_queries` or `query_mode` changes no tensor shape, so the weights alone would load into a different model).
fn check_saved_safety(config: &PsaConfig, files: &[PathBuf]) -> Result<(), LoadError> {
    for path in files.iter().filter(|p| p.extension().is_some_and(|e| e == "safetensors")) {
        let Some(saved) = crate::files::safetensors_metadata(path)?.remove(SAFETY_CONFIG_KEY) else { continue };
        let saved: serde_json::Value = serde_json::from_str(&saved).map_err(|e| LoadError::BadFile {
            path: path.clone(),
            reason: format!("unreadable {SAFETY_CONFIG_KEY} metadata: {e}"),
        })?;
        let ours = serde_json::to_value(&config.safety)
            .map_err(|e| LoadError::BadFile { path: path.clone(), reason: e.to_string() })?;
        if saved != ours {
            let differing: Vec<String> = ours
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| saved.get(k.as_str()) != Some(v))
                .map(|(k, v)| {
                    format!("{k}: config {v}, weights {}", saved.get(k.as_str()).unwrap_or(&serde_json::Value::Null))
                })
                .collect();
            return Err(LoadError::Config(psa_models::ConfigError::Invalid(format!(
                "the safety config differs from the one {} was saved with ({}): the config does not belong to \
                 these weights",
                path.display(),
                differing.join("; ")
            ))));
        }
    }
    Ok(())
}

/// A model whose safety modules or LoRA adapters hold NaN or infinite values is never returned: its verdicts
/// would be meaningless.
fn refuse_non_finite(model: &PsaVlm, source: &Path) -> Result<(), LoadError> {
    let bad = psa_core::finite::non_finite_params(model, psa_models::precision::is_trainable_path);
    match bad.first() {
        None => Ok(()),
        Some(first) => Err(LoadError::BadFile {
            path: source.into(),
            reason: format!("{} parameter(s) hold NaN or infinite values, first `{first}`", bad.len()),
        }),
    }
}

/// Loads a base llava-hf directory plus a safety-modules file in reference naming. The safety sizes come from
/// a `config.json` beside the safety file when there is one (ours, `{"safety_config": …}`, or a full reference
/// `config.json`), else from the reference rules for the base model.
pub fn load_psa_with_safety(
    base_dir: &Path,
    safety_file: &Path,
    device: &Device,
    opts: &LoadOptions,
) -> Result<(PsaVlm, PsaConfig, LoadReport), LoadError> {
    let llava = LlavaConfig::from_dir(base_dir)?;
    let mut config = PsaConfig::for_llava(llava);
    let beside = safety_file.parent().map(|p| p.join("config.json")).filter(|p| p.is_file() && !same_dir(p, base_dir));
    if let Some(path) = beside {
        let value = read_json(&path)?;
        config.safety = if value.get("vision_config").is_some() {
            PsaConfig::from_value(&value, &path)?.safety
        } else {
            parse(value.get("safety_config").unwrap_or(&value), &path, "safety config")?
        };
    }
    config.validate()?;
    let mut files = weight_files(base_dir)?;
    files.push(safety_file.to_path_buf());
    check_fits(&config.llava.text, &files)?;
    let (model, report) = load_into(config.init(device)?, &files, layout(&config.llava), opts, device)?;
    refuse_non_finite(&model, safety_file)?;
    Ok((model, config, report))
}

fn same_dir(config: &Path, dir: &Path) -> bool {
    config.parent().and_then(|p| p.canonicalize().ok()) == dir.canonicalize().ok()
}

/// Writes every parameter of `model` in f32 to `path` as safetensors, in llava-hf keys plus the reference's safety
/// keys, atomically; NaN or infinite values refuse the save.
pub fn save_psa_weights(model: &PsaVlm, config: &PsaConfig, path: &Path) -> Result<(), LoadError> {
    let layout = layout(&config.llava);
    let safety = serde_json::to_string(&config.safety)
        .map_err(|e| LoadError::BadFile { path: path.into(), reason: e.to_string() })?;
    let metadata = std::collections::HashMap::from([(SAFETY_CONFIG_KEY.to_string(), safety)]);
    write_tensors_with(path, pytorch_tensors(model, |p| denormalize(layout, p))?, Some(metadata))
}

/// Every parameter of `module` in PyTorch layout as f32, keyed by `key(module path)`.
fn pytorch_tensors<M: ModuleSnapshot>(
    module: &M,
    key: impl Fn(&str) -> String,
) -> Result<Vec<(String, OwnedTensor)>, LoadError> {
    let mut tensors = Vec::new();
    for t in module.collect(None, Some(Box::new(BurnToPyTorchAdapter) as Box<dyn ModuleAdapter>), true) {
        let data = bridge::to_data(&t).map_err(|e| LoadError::Tensor { key: t.name.clone(), reason: e.to_string() })?;
        let data = data.convert_dtype(DType::F32);
        if data.as_slice::<f32>().is_ok_and(|v| v.iter().any(|x| !x.is_finite())) {
            return Err(LoadError::Tensor {
                key: t.name.clone(),
                reason: "holds NaN or infinite values; a diverged model is not saved".into(),
            });
        }
        tensors.push((key(&t.name), OwnedTensor { shape: t.shape.to_vec(), bytes: data.as_bytes().to_vec() }));
    }
    Ok(tensors)
}

/// Writes the safety modules as safetensors in the reference naming and PyTorch layout (f32), plus
/// `config.json` (`{"safety_config": …}`) beside it. Returns the paths written.
pub fn save_safety_modules(
    safety: &SafetyModules,
    config: &SafetyConfig,
    dir: &Path,
) -> Result<(PathBuf, PathBuf), LoadError> {
    let io = |path: &Path, e: String| LoadError::BadFile { path: path.into(), reason: e };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e.to_string()))?;
    let weights = dir.join("safety_modules.safetensors");
    write_tensors(&weights, pytorch_tensors(safety, safety_path_to_key)?)?;
    let cfg_path = dir.join("config.json");
    // Our config, plus the reference's top-level projector keys for PyTorch-side readers.
    let json = serde_json::json!({
        "safety_config": config,
        "num_safety_tokens": config.num_safety_tokens,
        "num_queries": config.num_queries,
        "hidden_size": config.abstractor_width,
        "encoder_hidden_size": config.vision_dim,
        "output_hidden_size": config.safety_dim,
        "depth": config.abstractor_depth,
        "mlp_depth": config.abstractor_mlp_depth,
        "safety_heads": config.safety_heads,
        "num_levels": config.num_levels,
        "num_types": config.num_types,
        "se_ratio": config.se_ratio,
    });
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&json).unwrap_or_default())
        .map_err(|e| io(&cfg_path, e.to_string()))?;
    Ok((weights, cfg_path))
}

/// Writes named f32 tensors `(name, shape, values)` to a safetensors file atomically (temporary file + rename).
pub fn write_f32_safetensors(path: &Path, tensors: Vec<(String, Vec<usize>, Vec<f32>)>) -> Result<(), LoadError> {
    let owned = tensors
        .into_iter()
        .map(|(name, shape, values)| {
            (name, OwnedTensor { shape, bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect() })
        })
        .collect();
    write_tensors(path, owned)
}

fn write_tensors(path: &Path, tensors: Vec<(String, OwnedTensor)>) -> Result<(), LoadError> {
    write_tensors_with(path, tensors, None)
}

/// Writes tensors (sorted by name) and header metadata to `path` atomically.
fn write_tensors_with(
    path: &Path,
    mut tensors: Vec<(String, OwnedTensor)>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<(), LoadError> {
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("tensors");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let io = |p: &Path, e: String| LoadError::BadFile { path: p.into(), reason: e };
    safetensors::serialize_to_file(tensors, metadata, &tmp).map_err(|e| io(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e.to_string()))
}

struct OwnedTensor {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for OwnedTensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}
