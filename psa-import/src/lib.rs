//! Weight import and export for `psa-models`, from Hugging Face model directories: `config.json` plus `model.safetensors`, a sharded
//! `model.safetensors.index.json`, or PyTorch `.bin`/`.pt` state dicts; f32/f16/bf16 cast to the device's
//! float dtype; every known key layout.
//!
//! A load either returns a complete model or an error naming the key, file and shapes involved. Also read: PEFT
//! adapters, GGUF language models, ONNX vision towers; written: PSA-VLM checkpoints, safety modules, adapters.
mod error;
mod files;
pub mod gguf;
pub mod layout;
pub mod manifest;
pub mod onnx;
mod peft;
mod psa;
mod random;
mod shapes;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ApplyError, ModuleAdapter, ModuleSnapshot};
use burn::tensor::Device;

pub use error::LoadError;
use files::{FileTensor, read_tensors};
pub use files::{SafetensorsEntry, SafetensorsError, check_safetensors_header, weight_files};
pub use layout::{Layout, normalize};
pub use peft::{load_peft_adapter, save_peft_adapter};
pub use psa::{load_psa, load_psa_with_safety, save_psa_weights, save_safety_modules, write_f32_safetensors};
pub use random::{RandomCheckpoint, write_random_psa};
use shapes::{HfToBurn, PrecisionAdapter, pytorch_shapes};

use psa_models::config::{LlavaConfig, parse, read_json};

use psa_models::llama::{LlamaConfig, LlamaForCausalLM};
use psa_models::llava::LlavaForConditionalGeneration;
use psa_models::precision::Precision;
use psa_models::vision::{ClipVisionConfig, ClipVisionModel, Dinov2Config, Dinov2Model, VisionConfig};

/// How strictly a checkpoint must match the model, whether a model directory must match its manifest, and in
/// which precision it is loaded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Fail on checkpoint tensors the model does not use (the default: a config with fewer layers than its
    /// weights would otherwise load a different model without a word); off, they are only reported.
    pub strict: bool,
    /// Load a PSA-VLM directory without checking it against its `manifest.json` (for hand-assembled directories;
    /// the report says so and the `psa` commands warn).
    pub allow_unverified: bool,
    /// Dtype of the frozen weights; the safety modules and LoRA adapters always load as f32.
    pub precision: Precision,
}

impl Default for LoadOptions {
    /// Strict, verified, f32.
    fn default() -> Self {
        Self { strict: true, allow_unverified: false, precision: Precision::default() }
    }
}

impl LoadOptions {
    /// Strict loading in f32 (the default).
    pub fn strict() -> Self {
        Self::default()
    }

    /// Unused checkpoint tensors are reported, not refused (a larger checkpoint read in part on purpose).
    pub fn lenient(self) -> Self {
        Self { strict: false, ..self }
    }

    /// These options without the manifest check.
    pub fn unverified(self) -> Self {
        Self { allow_unverified: true, ..self }
    }

    /// These options with the frozen weights in `precision`.
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }
}

/// What a successful load read.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Files read, in order.
    pub files: Vec<PathBuf>,
    /// Parameters loaded.
    pub loaded: usize,
    /// Checkpoint tensors the model does not use.
    pub unexpected: Vec<String>,
    /// Known buffers and foreign parts skipped on purpose.
    pub skipped: Vec<String>,
    /// Whether the directory was checked against its manifest (false: loaded with `allow_unverified`, or not a
    /// model directory).
    pub verified: bool,
}

/// Loads checkpoint tensors into `model`, normalising keys with `layout`. Returns the model only if every
/// parameter was loaded with the right shape.
pub fn load_into<M: Module + ModuleSnapshot>(
    model: M,
    files: &[PathBuf],
    layout: Layout,
    opts: &LoadOptions,
    device: &Device,
) -> Result<(M, LoadReport), LoadError> {
    load_matching(model, files, layout, opts, device, |_| true)
}

/// Refuses a configuration whose language model has more parameters than the weight files hold values, before
/// any memory is allocated for it: a corrupt `vocab_size` would otherwise allocate without bound.
pub(crate) fn check_fits(text: &LlamaConfig, files: &[PathBuf]) -> Result<(), LoadError> {
    let mut held: u128 = 0;
    for path in files {
        for t in read_tensors(path)?.values() {
            held += t.tensor.shape.iter().map(|&d| d as u128).product::<u128>();
        }
    }
    let needed = text.parameter_count();
    if needed > held + held / 100 + (1 << 20) {
        return Err(LoadError::Config(psa_models::ConfigError::Invalid(format!(
            "the text config describes {needed} parameters but the weight files hold only {held} values: the \
             config does not belong to these weights"
        ))));
    }
    Ok(())
}

/// [`load_into`] restricted to the parameters whose module path satisfies `wanted`; the others keep their values.
pub fn load_matching<M: Module + ModuleSnapshot>(
    model: M,
    files: &[PathBuf],
    layout: Layout,
    opts: &LoadOptions,
    device: &Device,
    wanted: impl Fn(&str) -> bool,
) -> Result<(M, LoadReport), LoadError> {
    let mut read = Vec::new();
    for path in files {
        read.extend(read_tensors(path)?);
    }
    apply_tensors(model, read, files, layout, opts, device, wanted)
}

/// Applies checkpoint tensors (keyed by their checkpoint names) to `model` after normalising the keys with
/// `layout`; fails naming the key, file and shapes when a parameter is missing or misshapen.
pub(crate) fn apply_tensors<M: Module + ModuleSnapshot>(
    mut model: M,
    read: Vec<(String, FileTensor)>,
    files: &[PathBuf],
    layout: Layout,
    opts: &LoadOptions,
    device: &Device,
    wanted: impl Fn(&str) -> bool,
) -> Result<(M, LoadReport), LoadError> {
    let mut report = LoadReport { files: files.to_vec(), ..Default::default() };
    let mut tensors = BTreeMap::new();
    let mut origin: BTreeMap<String, (String, PathBuf)> = BTreeMap::new();
    for (key, ft) in read {
        let Some(name) = normalize(layout, &key) else {
            report.skipped.push(key);
            continue;
        };
        let mut tensor = ft.tensor;
        tensor.name = name.clone();
        origin.insert(name.clone(), (key, ft.path));
        tensors.insert(name, tensor);
    }
    // Expected names and shapes in PyTorch layout (norm `weight`/`bias`, Linear `[out, in]`), read without
    // materialising the randomly initialised parameters the checkpoint replaces.
    let expected: BTreeMap<String, Vec<usize>> =
        pytorch_shapes(&model).into_iter().filter(|(name, _)| wanted(name)).collect();
    let tied_head = |name: &str| name.ends_with("lm_head.weight") && !expected.contains_key(name);
    let mut missing = Vec::new();
    for (name, shape) in &expected {
        match tensors.get(name) {
            None => missing.push(name.clone()),
            Some(t) if t.shape.to_vec() != *shape => {
                let (key, path) = origin[name].clone();
                return Err(LoadError::ShapeMismatch { key, path, expected: shape.clone(), found: t.shape.to_vec() });
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        return Err(LoadError::MissingKeys { keys: missing.iter().map(|p| layout::denormalize(layout, p)).collect() });
    }
    for name in tensors.keys().filter(|n| !expected.contains_key(*n)) {
        let original = origin[name].0.clone();
        if tied_head(name) { report.skipped.push(original) } else { report.unexpected.push(original) }
    }
    if opts.strict && !report.unexpected.is_empty() {
        return Err(LoadError::UnexpectedKeys { keys: report.unexpected });
    }
    let used: Vec<_> = tensors.into_iter().filter(|(n, _)| expected.contains_key(n)).map(|(_, t)| t).collect();
    opts.precision.check(device)?;
    let adapter = HfToBurn.chain(PrecisionAdapter(opts.precision));
    let result = model.apply(used, None, Some(Box::new(adapter)), true);
    if let Some(err) = result.errors.first() {
        let (key, reason) = match err {
            ApplyError::ShapeMismatch { path, expected, found } => {
                (path.clone(), format!("shape {found:?}, model expects {expected:?}"))
            }
            ApplyError::DTypeMismatch { path, expected, found } => {
                (path.clone(), format!("dtype {found:?}, model expects {expected:?}"))
            }
            ApplyError::AdapterError { path, message } | ApplyError::LoadError { path, message } => {
                (path.clone(), message.clone())
            }
        };
        let key = origin.get(&key).map_or(key, |(k, p)| format!("{k} ({})", p.display()));
        return Err(LoadError::Tensor { key, reason });
    }
    let not_applied: BTreeSet<_> = result.missing.iter().map(|(p, _)| p.clone()).filter(|p| wanted(p)).collect();
    if !not_applied.is_empty() {
        return Err(LoadError::MissingKeys {
            keys: not_applied.iter().map(|p| layout::denormalize(layout, p)).collect(),
        });
    }
    report.loaded = result.applied.len();
    Ok((model, report))
}

/// Loads a LLaVA model directory (any key layout, single file or shards).
pub fn load_llava(
    dir: &Path,
    device: &Device,
    opts: &LoadOptions,
) -> Result<(LlavaForConditionalGeneration, LlavaConfig, LoadReport), LoadError> {
    let config = LlavaConfig::from_dir(dir)?;
    let layout = match config.vision {
        VisionConfig::Clip(_) => Layout::LlavaClip,
        VisionConfig::Dinov2(_) => Layout::LlavaDinov2,
    };
    let files = weight_files(dir)?;
    check_fits(&config.text, &files)?;
    let (model, report) = load_into(config.init(device)?, &files, layout, opts, device)?;
    Ok((model, config, report))
}

/// Loads a standalone `CLIPVisionModel` directory.
pub fn load_clip_vision(
    dir: &Path,
    device: &Device,
    opts: &LoadOptions,
) -> Result<(ClipVisionModel, ClipVisionConfig, LoadReport), LoadError> {
    let path = dir.join("config.json");
    let VisionConfig::Clip(config) = VisionConfig::from_value(&read_json(&path)?)? else {
        return Err(LoadError::BadFile { path, reason: "not a CLIP vision config".into() });
    };
    let (model, report) = load_into(config.init(device)?, &weight_files(dir)?, Layout::ClipVision, opts, device)?;
    Ok((model, config, report))
}

/// Loads a standalone `Dinov2Model` directory.
pub fn load_dinov2(
    dir: &Path,
    device: &Device,
    opts: &LoadOptions,
) -> Result<(Dinov2Model, Dinov2Config, LoadReport), LoadError> {
    let path = dir.join("config.json");
    let config: Dinov2Config = parse(&read_json(&path)?, &path, "DINOv2 config")?;
    let (model, report) = load_into(config.init(device)?, &weight_files(dir)?, Layout::Dinov2, opts, device)?;
    Ok((model, config, report))
}

/// Loads a standalone `LlamaForCausalLM` directory.
pub fn load_llama(
    dir: &Path,
    device: &Device,
    opts: &LoadOptions,
) -> Result<(LlamaForCausalLM, LlamaConfig, LoadReport), LoadError> {
    let path = dir.join("config.json");
    let config: LlamaConfig = parse(&read_json(&path)?, &path, "LLaMA config")?;
    config.validate()?;
    let files = weight_files(dir)?;
    check_fits(&config, &files)?;
    let (model, report) = load_into(config.init(device)?, &files, Layout::Llama, opts, device)?;
    Ok((model, config, report))
}
