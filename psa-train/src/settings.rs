//! Training settings: one [`TrainConfig`], read from a run file (TOML or JSON), from command-line flags
//! (`TrainArgs`, with the `cli` feature), or both. Layers apply in order — the stage's preset recipe and LoRA,
//! the file, then each flag given — and each replaces only what it sets; a key no setting has is an error that
//! names it.
use std::path::{Path, PathBuf};

use psa_models::Precision;
use psa_models::lora::LoraConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::recipe::Recipe;
use crate::trainer::Stage;

/// A training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// `stage = "stage1"` or `"stage2"`, with stage II's `lora` table and `train_safety`.
    #[serde(flatten)]
    pub stage: Stage,
    /// PSA-VLM checkpoint directory.
    pub model_dir: PathBuf,
    /// `tokenizer.json`; default `<model_dir>/tokenizer.json`.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Training label file.
    pub data: PathBuf,
    /// Held-out label file for level/type accuracy.
    #[serde(default)]
    pub eval: Option<PathBuf>,
    /// Directory image paths are relative to.
    #[serde(default = "dot")]
    pub image_root: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// Conversation template (default: the one the model directory records, else `llava_v1`).
    #[serde(default)]
    pub template: Option<String>,
    /// Taxonomy file (JSON or TOML; default the paper's): its safe type is the "clean" class stage-I balancing
    /// samples from.
    #[serde(default)]
    pub taxonomy: Option<PathBuf>,
    /// Stage-I balancing: clean samples kept (`None` keeps all; stage I default 3000).
    #[serde(default)]
    pub clean: Option<usize>,
    /// Skip and count samples with bad images instead of failing.
    #[serde(default)]
    pub skip_bad_images: bool,
    /// Directory of the disk feature cache (features reused across runs when the vision tower is unchanged).
    #[serde(default)]
    pub feature_cache: Option<PathBuf>,
    /// Save a checkpoint every this many steps.
    #[serde(default)]
    pub checkpoint_every: Option<usize>,
    /// Resume from this checkpoint folder.
    #[serde(default)]
    pub resume_from: Option<PathBuf>,
    /// The optimisation recipe: the stage's paper preset with what the layers set.
    pub recipe: Recipe,
    /// Show a progress bar.
    #[serde(default = "yes")]
    pub progress: bool,
    /// Dtype of the frozen base (`f32`, `f16`, `bf16`); the trained modules and the optimiser state stay f32.
    #[serde(default)]
    pub dtype: Precision,
    /// Recompute each LLM layer's activations in the backward pass instead of keeping them (less memory, about a
    /// third more compute).
    #[serde(default)]
    pub activation_checkpointing: bool,
}

fn dot() -> PathBuf {
    PathBuf::from(".")
}
fn yes() -> bool {
    true
}

/// Why settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A run file could not be read or parsed.
    #[error("{}: {reason}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The layers together do not make a run: a missing or unknown key, a value of the wrong type.
    #[error("{origin}: {reason}")]
    Invalid {
        /// Where the settings came from (file names, "command line").
        origin: String,
        /// What is wrong.
        reason: String,
    },
}

/// One layer of settings: where it comes from, and the keys it sets.
#[derive(Debug, Clone)]
pub struct Layer {
    /// A file name or "command line", for errors.
    pub origin: String,
    /// The keys it sets, as in a run file.
    pub values: Map<String, Value>,
}

impl Layer {
    /// A `.toml` or `.json` run file.
    pub fn file(path: &Path) -> Result<Self, SettingsError> {
        let bad = |reason: String| SettingsError::File { path: path.into(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let values = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => serde_json::from_str::<Map<String, Value>>(&text).map_err(|e| bad(e.to_string()))?,
            _ => {
                let table: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
                if let Some(key) = non_finite(&table, "") {
                    return Err(bad(format!("{key}: must be a finite number")));
                }
                serde_json::to_value(table).and_then(serde_json::from_value).map_err(|e| bad(e.to_string()))?
            }
        };
        Ok(Self { origin: path.display().to_string(), values })
    }

    /// The stage alone (`stage1` or `stage2`).
    pub fn stage(origin: &str, stage: &str) -> Self {
        Self { origin: origin.into(), values: Map::from_iter([("stage".to_string(), Value::from(stage))]) }
    }
}

impl TrainConfig {
    /// Reads a `.toml` or `.json` run file.
    pub fn from_file(path: &Path) -> Result<Self, SettingsError> {
        Self::from_layers(&[Layer::file(path)?])
    }

    /// The settings `layers` make, applied in order over the stage's presets (the paper's recipe for that stage
    /// and, for stage II, the paper's LoRA); tables merge key by key.
    pub fn from_layers(layers: &[Layer]) -> Result<Self, SettingsError> {
        let origin = layers.iter().map(|l| l.origin.as_str()).collect::<Vec<_>>().join(" + ");
        let invalid = |reason: String| SettingsError::Invalid { origin: origin.clone(), reason };
        let mut merged = Map::new();
        for layer in layers {
            overlay(&mut merged, &layer.values);
        }
        let stage = merged.get("stage").and_then(Value::as_str).unwrap_or_default().to_string();
        let (recipe, lora) = match stage.as_str() {
            "stage1" => (Recipe::stage1(), None),
            "stage2" => (Recipe::stage2(), Some(LoraConfig::paper())),
            "" => return Err(invalid("`stage` is not set (stage1 or stage2)".into())),
            other => return Err(invalid(format!("unknown stage {other:?}: expected stage1 or stage2"))),
        };
        let mut preset = Map::new();
        preset.insert("recipe".into(), to_value(&recipe));
        if let Some(lora) = lora {
            preset.insert("lora".into(), to_value(&lora));
        }
        overlay(&mut preset, &merged);
        let value = Value::Object(preset);
        let cfg: Self = serde_json::from_value(value.clone()).map_err(|e| invalid(e.to_string()))?;
        if let Some(key) = unknown_key(&value, &to_value(&cfg), "") {
            return Err(invalid(format!("unknown key `{key}` for {stage}")));
        }
        if let Stage::Two { lora, .. } = &cfg.stage {
            lora.validate().map_err(|e| invalid(format!("lora: {e}")))?;
        }
        Ok(cfg)
    }
}

/// The first float of `table` that is NaN or infinite (JSON, the layers' form, cannot hold one), as `key = value`.
fn non_finite(table: &toml::Table, prefix: &str) -> Option<String> {
    table.iter().find_map(|(key, value)| match value {
        toml::Value::Float(f) if !f.is_finite() => Some(format!("{prefix}{key} = {f}")),
        toml::Value::Table(t) => non_finite(t, &format!("{prefix}{key}.")),
        _ => None,
    })
}

/// Writes every key of `top` into `base`, merging tables key by key.
fn overlay(base: &mut Map<String, Value>, top: &Map<String, Value>) {
    for (key, value) in top {
        match (base.get_mut(key), value) {
            (Some(Value::Object(b)), Value::Object(t)) => overlay(b, t),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// The first key of `given` that the parsed settings (`kept`) do not have, with its table path.
fn unknown_key(given: &Value, kept: &Value, prefix: &str) -> Option<String> {
    let (Value::Object(given), Value::Object(kept)) = (given, kept) else { return None };
    given.iter().find_map(|(key, value)| match kept.get(key) {
        None => Some(format!("{prefix}{key}")),
        Some(k) => unknown_key(value, k, &format!("{prefix}{key}.")),
    })
}

#[cfg(feature = "cli")]
mod args;
#[cfg(feature = "cli")]
pub use args::TrainArgs;

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(origin: &str, json: Value) -> Layer {
        Layer { origin: origin.into(), values: json.as_object().cloned().unwrap_or_default() }
    }

    fn base(stage: &str) -> Layer {
        layer("run.toml", serde_json::json!({"stage": stage, "model_dir": "m", "data": "d.jsonl", "out": "o"}))
    }

    #[test]
    fn layers_apply_over_the_stage_presets_key_by_key() {
        let cfg = TrainConfig::from_layers(&[base("stage2")]).unwrap();
        assert_eq!(cfg.recipe, Recipe::stage2());
        assert_eq!(cfg.stage, Stage::Two { lora: LoraConfig::paper(), train_safety: false });
        let flags = layer("command line", serde_json::json!({"recipe": {"lr": 3e-4}, "lora": {"r": 8}}));
        let cfg = TrainConfig::from_layers(&[base("stage2"), flags]).unwrap();
        assert_eq!(cfg.recipe, Recipe { lr: 3e-4, ..Recipe::stage2() }, "warm-up stays stage II's 300");
        assert_eq!(cfg.stage, Stage::Two { lora: LoraConfig { r: 8, ..LoraConfig::paper() }, train_safety: false });
    }

    #[test]
    fn unknown_missing_and_misplaced_keys_are_named() {
        let err = |extra: Value, stage: &str| {
            let mut layers = vec![base(stage)];
            layers.push(layer("command line", extra));
            TrainConfig::from_layers(&layers).unwrap_err().to_string()
        };
        let e = err(serde_json::json!({"learning_rate": 1}), "stage1");
        assert!(e.contains("run.toml + command line") && e.contains("`learning_rate`"), "{e}");
        let e = err(serde_json::json!({"recipe": {"lrr": 1}}), "stage1");
        assert!(e.contains("lrr"), "{e}");
        let e = err(serde_json::json!({"lora": {"r": 2}}), "stage1");
        assert!(e.contains("`lora` for stage1"), "{e}");
        let e = err(serde_json::json!({"stage": "stage3"}), "stage1");
        assert!(e.contains("unknown stage \"stage3\""), "{e}");
        let dir = std::env::temp_dir().join(format!("psa-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("nan.toml");
        std::fs::write(&file, "stage = \"stage1\"\n[recipe]\nlr = nan\n").unwrap();
        let e = Layer::file(&file).unwrap_err().to_string();
        assert!(e.contains("nan.toml") && e.contains("recipe.lr = NaN"), "{e}");
        let e = TrainConfig::from_layers(&[layer("run.toml", serde_json::json!({"stage": "stage1"}))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("model_dir"), "{e}");
    }
}
