//! Complete model directories: the weights plus everything a `psa` command needs to run them (configuration with
//! the conversation template's name, tokenizer, image preprocessing, calibration).
use std::path::{Path, PathBuf};

use psa_core::Calibration;
use psa_import::{LoadError, save_psa_weights};
use psa_models::config::read_json;
use psa_models::{PsaConfig, PsaVlm};
use tokenizers::Tokenizer;

use crate::processor::ImageProcessorConfig;

/// The config key naming the conversation template a model directory was trained with.
pub const TEMPLATE_KEY: &str = "psa_template";

/// What a complete model directory holds besides the weights and the model configuration.
#[derive(Debug, Clone, Copy)]
pub struct ModelDirParts<'a> {
    /// The tokenizer, `<image>` included.
    pub tokenizer: &'a Tokenizer,
    /// The image preprocessing the model was trained with.
    pub image_processor: &'a ImageProcessorConfig,
    /// The conversation template's name (`chatml`, `llava_v1`, …).
    pub template: &'a str,
    /// Fitted temperatures, when there are any.
    pub calibration: Option<&'a Calibration>,
}

/// Writes a complete PSA-VLM directory that `psa_import::load_psa` and the guarded pipeline read back:
/// `model.safetensors` (every parameter in f32, llava-hf keys plus the reference's safety keys), `config.json` (with
/// the template's name under [`TEMPLATE_KEY`]), `tokenizer.json`, `preprocessor_config.json` and
/// `calibration.json`, then `manifest.json` (the SHA-256 of every file, which every loader checks). A canary left
/// by an earlier write is removed (its verdicts belong to the old weights); [`crate::add_canary`] adds a new one.
/// Returns the paths written.
pub fn save_model_dir(
    model: &PsaVlm,
    config: &PsaConfig,
    parts: ModelDirParts<'_>,
    dir: &Path,
) -> Result<Vec<PathBuf>, LoadError> {
    let io = |path: &Path, e: String| LoadError::BadFile { path: path.into(), reason: e };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e.to_string()))?;
    let weights = dir.join("model.safetensors");
    save_psa_weights(model, config, &weights)?;
    let mut value = config.to_value();
    if let Some(o) = value.as_object_mut() {
        o.insert(TEMPLATE_KEY.into(), serde_json::Value::from(parts.template));
    }
    let write_json = |name: &str, v: &serde_json::Value| -> Result<PathBuf, LoadError> {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(v).map_err(|e| io(&path, e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| io(&path, e.to_string()))?;
        Ok(path)
    };
    let mut written = vec![weights, write_json("config.json", &value)?];
    let pre = serde_json::to_value(parts.image_processor).map_err(|e| io(dir, e.to_string()))?;
    written.push(write_json("preprocessor_config.json", &pre)?);
    let tok = dir.join("tokenizer.json");
    parts.tokenizer.save(&tok, false).map_err(|e| io(&tok, e.to_string()))?;
    written.push(tok);
    let calibration = dir.join("calibration.json");
    match parts.calibration {
        Some(c) => {
            c.save(&calibration).map_err(|e| io(&calibration, e.to_string()))?;
            written.push(calibration);
        }
        // A calibration of an earlier write would otherwise be applied to these weights.
        None if calibration.is_file() => {
            std::fs::remove_file(&calibration).map_err(|e| io(&calibration, e.to_string()))?
        }
        None => {}
    }
    crate::canary::remove_canary(dir)?;
    written.push(psa_import::manifest::write_manifest(dir)?);
    Ok(written)
}

/// The template name a model directory records under [`TEMPLATE_KEY`], if any.
pub fn saved_template(dir: &Path) -> Option<String> {
    let value = read_json(&dir.join("config.json")).ok()?;
    value.get(TEMPLATE_KEY)?.as_str().map(str::to_string)
}
