//! The command-line layer of [`TrainConfig`], shared by `psa train` and the stage examples.
use std::path::PathBuf;

use clap::Args;
use psa_models::Precision;
use psa_models::lora::LoraConfig;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Layer, SettingsError, TrainConfig};
use crate::recipe::Recipe;

/// Training flags: `--config` names a run file, and every other flag given replaces that setting; without a file
/// the flags alone describe the run. Recipe and LoRA flags left out keep the stage's paper values.
#[derive(Args, Debug, Clone, Default, Serialize)]
pub struct TrainArgs {
    /// Run file (`.toml` or `.json`) read before the flags.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// PSA-VLM checkpoint directory (LLaVA + safety keys).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// tokenizer.json (default: MODEL_DIR/tokenizer.json).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Training label file (JSONL, reference or TRL schema).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Held-out label file for level/type accuracy.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Directory image paths are relative to (default: the working directory).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Output directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Conversation template (default: the one the model directory records, else llava_v1).
    #[arg(long)]
    pub template: Option<String>,
    /// Taxonomy file (JSON or TOML; default the paper's) whose safe type stage-I balancing samples from.
    #[arg(long)]
    pub taxonomy: Option<PathBuf>,
    /// Clean samples kept by stage-I balancing (default 3000 in stage I, all in stage II).
    #[arg(long)]
    pub clean: Option<usize>,
    /// Skip (and count) samples whose image is missing or corrupt.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub skip_bad_images: bool,
    /// Directory of a disk cache of vision features (reused while the vision tower is unchanged).
    #[arg(long)]
    pub feature_cache: Option<PathBuf>,
    /// Save a checkpoint every N optimizer steps.
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Resume from a checkpoint folder.
    #[arg(long)]
    pub resume_from: Option<PathBuf>,
    /// Peak learning rate (paper: 1e-5).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Warm-up steps (paper: 20 in stage I, 300 in stage II).
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Epochs (paper: 3).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Micro-batch size (paper: 2).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Gradient accumulation (paper: 64, an effective batch of 128).
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Global gradient-norm clip (paper: 1.0).
    #[arg(long)]
    pub max_grad_norm: Option<f32>,
    /// Seed of shuffling and initialisation (default 42).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Maximum tokens per sample before image expansion (default 2048).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Stage I: whether the LM term L_LLM is in the loss (paper: true).
    #[arg(long)]
    pub lm_loss: Option<bool>,
    /// Stage II: LoRA rank (paper: 256).
    #[arg(long = "lora-r")]
    #[serde(rename = "r")]
    pub lora_r: Option<usize>,
    /// Stage II: LoRA alpha (paper: 16).
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// Stage II: LoRA dropout (paper: 0.05).
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    /// Stage II: `all-linear` or a comma-separated list such as `q_proj,v_proj` (never lm_head).
    #[arg(long)]
    #[serde(rename = "target_modules", serialize_with = "targets")]
    pub lora_targets: Option<String>,
    /// Stage II: also train the safety modules (the reference keeps them frozen).
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub train_safety: bool,
    /// Dtype of the frozen base: f32, f16 or bf16 (the trained modules stay f32).
    #[arg(long)]
    pub dtype: Option<Precision>,
    /// Recompute each LLM layer's activations in the backward pass instead of keeping them.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub activation_checkpointing: bool,
    /// No progress bar (logs only).
    #[arg(long)]
    #[serde(skip)]
    pub quiet: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

/// `all-linear` as given, a list as PEFT's `target_modules` array.
fn targets<S: serde::Serializer>(targets: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match targets.as_deref() {
        Some("all-linear") | None => targets.serialize(s),
        Some(list) => list.split(',').map(str::trim).collect::<Vec<_>>().serialize(s),
    }
}

impl TrainArgs {
    /// The run `stage` (`stage1` or `stage2`) with these flags: the stage's presets, then the `--config` file (which,
    /// if it names a stage, must name this one), then every flag given.
    pub fn resolve(&self, stage: &str) -> Result<TrainConfig, SettingsError> {
        let mut layers = vec![Layer::stage("command line", stage)];
        if let Some(path) = &self.config {
            let file = Layer::file(path)?;
            if let Some(named) = file.values.get("stage").and_then(Value::as_str)
                && named != stage
            {
                return Err(SettingsError::Invalid {
                    origin: file.origin,
                    reason: format!("configures {named}, but {stage} was asked for"),
                });
            }
            layers.push(file);
        }
        let numbers = [("lr", self.lr), ("max_grad_norm", self.max_grad_norm.map(f64::from))];
        let numbers = numbers.into_iter().chain([("lora_alpha", self.lora_alpha), ("lora_dropout", self.lora_dropout)]);
        if let Some((key, v)) = numbers.filter_map(|(k, v)| v.map(|v| (k, v))).find(|(_, v)| !v.is_finite()) {
            let reason = format!("{key} = {v}: must be a finite number");
            return Err(SettingsError::Invalid { origin: "command line".into(), reason });
        }
        layers.push(Layer { origin: "command line".into(), values: self.flags()? });
        TrainConfig::from_layers(&layers)
    }

    /// The flags given, as run-file keys: recipe flags under `recipe`, LoRA flags under `lora`.
    fn flags(&self) -> Result<Map<String, Value>, SettingsError> {
        let invalid =
            |e: serde_json::Error| SettingsError::Invalid { origin: "command line".into(), reason: e.to_string() };
        let flat: Map<String, Value> = serde_json::to_value(self).and_then(serde_json::from_value).map_err(invalid)?;
        let (recipe_keys, lora_keys) = (super::to_value(&Recipe::stage1()), super::to_value(&LoraConfig::paper()));
        let (mut top, mut recipe, mut lora) = (Map::new(), Map::new(), Map::new());
        for (key, value) in flat.into_iter().filter(|(_, v)| !v.is_null()) {
            if recipe_keys.get(&key).is_some() {
                recipe.insert(key, value);
            } else if lora_keys.get(&key).is_some() {
                lora.insert(key, value);
            } else {
                top.insert(key, value);
            }
        }
        for (key, table) in [("recipe", recipe), ("lora", lora)] {
            if !table.is_empty() {
                top.insert(key.into(), Value::Object(table));
            }
        }
        if self.quiet {
            top.insert("progress".into(), Value::Bool(false));
        }
        Ok(top)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use psa_models::lora::LoraTargets;

    use super::*;
    use crate::trainer::Stage;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TrainArgs,
    }

    fn resolve(flags: &[&str], stage: &str) -> Result<TrainConfig, SettingsError> {
        Cli::parse_from(std::iter::once("psa").chain(flags.iter().copied())).args.resolve(stage)
    }

    #[test]
    fn flags_alone_describe_a_run() {
        let flags = ["--model-dir", "m", "--data", "d.jsonl", "--out", "o", "--lr", "3e-4", "--lora-r", "8"];
        let cfg = resolve(&[&flags[..], &["--lora-targets", "q_proj,v_proj", "--quiet"]].concat(), "stage2").unwrap();
        assert_eq!(cfg.recipe, Recipe { lr: 3e-4, ..Recipe::stage2() });
        let targets = LoraTargets::Names(vec!["q_proj".into(), "v_proj".into()]);
        let lora = LoraConfig { r: 8, target_modules: targets, ..LoraConfig::paper() };
        assert_eq!(cfg.stage, Stage::Two { lora, train_safety: false });
        assert_eq!((cfg.model_dir, cfg.progress), ("m".into(), false));
        let err = resolve(&["--model-dir", "m", "--data", "d", "--out", "o", "--lr", "nan"], "stage1").unwrap_err();
        assert!(err.to_string().contains("lr = NaN"), "{err}");
    }

    #[test]
    fn flags_replace_only_what_they_set_in_the_file() {
        let dir = std::env::temp_dir().join(format!("psa-train-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("run.toml");
        let text =
            "stage = \"stage2\"\nmodel_dir = \"fm\"\ndata = \"fd\"\nout = \"fo\"\n[recipe]\nlr = 1e-3\nepochs = 1\n";
        std::fs::write(&file, text).unwrap();
        let config = file.to_str().unwrap();
        let cfg = resolve(&["--config", config, "--lr", "5e-5"], "stage2").unwrap();
        assert_eq!(cfg.recipe, Recipe { lr: 5e-5, epochs: 1, ..Recipe::stage2() });
        assert_eq!((cfg.model_dir, cfg.data), ("fm".into(), "fd".into()));
        let err = resolve(&["--config", config], "stage1").unwrap_err().to_string();
        assert!(err.contains("run.toml") && err.contains("configures stage2, but stage1 was asked for"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_flag_that_cannot_be_written_as_a_setting_is_an_error_not_dropped() {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::OsStr::from_bytes(b"runs/\xff").to_os_string();
        let flags = Cli::parse_from([
            "psa".into(),
            "--model-dir".into(),
            "m".into(),
            "--data".into(),
            "d".into(),
            "--out".into(),
            path,
        ]);
        let err = flags.args.resolve("stage1").unwrap_err().to_string();
        assert!(err.contains("command line") && err.contains("UTF-8"), "{err}");
    }
}
