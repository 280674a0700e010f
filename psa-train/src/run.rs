//! A whole training run from its settings ([`TrainConfig`]), shared by the `psa train` command and the
//! `stage1` / `stage2` examples: data, feature cache, the loop with a progress bar, metrics JSONL, loss-curve
//! SVG, held-out accuracy, and the trained modules in interoperable formats.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use psa_core::Taxonomy;
use psa_import::{LoadOptions, load_psa, save_peft_adapter, save_safety_modules};
use psa_pipeline::llava::processors;
use psa_pipeline::processor::Template;
use psa_pipeline::saved_template;
use serde::Serialize;

use crate::data::{Balance, LabelSpace, Sample, balance, read_jsonl};
use crate::feature_cache::FeatureCache;
use crate::prepare::{PrepareOptions, prepare};
use crate::record::RunRecord;
use crate::settings::TrainConfig;
use crate::trainer::{FrozenLm, RunOptions, Stage, StepMetrics, concept_accuracy, train};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The settings.
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    /// The model directory or the devices do not fit the settings.
    #[error("{}: {reason}", .path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Loading the model.
    #[error(transparent)]
    Load(#[from] psa_import::LoadError),
    /// The tokenizer or template.
    #[error(transparent)]
    Text(#[from] psa_pipeline::TextError),
    /// The data.
    #[error(transparent)]
    Data(#[from] crate::DataError),
    /// The loop.
    #[error(transparent)]
    Train(#[from] crate::trainer::TrainError),
    /// Evaluation.
    #[error(transparent)]
    Model(#[from] psa_models::ModelError),
    /// Writing outputs.
    #[error("{}: {reason}", .path.display())]
    Output {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Optimizer steps run.
    pub steps: usize,
    /// Samples trained on.
    pub samples: usize,
    /// Seconds spent computing vision features (once, cached for every epoch).
    pub vision_seconds: f64,
    /// Samples whose features came from the disk cache.
    pub cache_hits: usize,
    /// Seconds in the optimisation loop.
    pub train_seconds: f64,
    /// First and last step's total loss.
    pub loss: (f64, f64),
    /// Held-out (level, type) accuracy, when an eval file was given.
    pub accuracy: Option<(f64, f64)>,
    /// Files written.
    pub outputs: Vec<PathBuf>,
}

/// Runs a configuration on `devices` (made autodiff here): the model loads on the first; with more than one, each
/// step's micro-batches are spread over all of them (data parallel).
pub fn run(cfg: &TrainConfig, devices: &[Device]) -> Result<RunSummary, RunError> {
    let recipe = cfg.recipe.clone();
    recipe.validate().map_err(crate::trainer::TrainError::Recipe)?;
    let devices: Vec<Device> = devices.iter().map(|d| d.clone().autodiff()).collect();
    let device = devices
        .first()
        .cloned()
        .ok_or_else(|| RunError::Config { path: cfg.out.clone(), reason: "no device given".into() })?;
    device.seed(recipe.seed);
    let (model, psa_cfg, _) = load_psa(&cfg.model_dir, &device, &LoadOptions::default().with_precision(cfg.dtype))?;
    let (text, images) = processors(&cfg.model_dir, cfg.tokenizer.clone(), &psa_cfg.llava.vision)
        .map_err(|e| RunError::Config { path: cfg.model_dir.clone(), reason: e.to_string() })?;
    let name = cfg.template.clone().or_else(|| saved_template(&cfg.model_dir)).unwrap_or_else(|| "llava_v1".into());
    let template = Template::by_name(&name)?;
    let labels = LabelSpace { levels: psa_cfg.safety.num_levels, types: psa_cfg.safety.num_types };
    let taxonomy = match &cfg.taxonomy {
        Some(path) => {
            let t = Taxonomy::from_file(path)
                .map_err(|e| RunError::Config { path: path.clone(), reason: e.to_string() })?;
            if (t.levels.len(), t.types.len()) != (labels.levels, labels.types) {
                let reason = format!(
                    "{} levels and {} types, but the model has {} and {}",
                    t.levels.len(),
                    t.types.len(),
                    labels.levels,
                    labels.types
                );
                return Err(RunError::Config { path: path.clone(), reason });
            }
            t
        }
        None => Taxonomy::default(),
    };
    let mut samples = read_jsonl(&cfg.data, &cfg.image_root, labels)?;
    let clean = cfg.clean.or((cfg.stage == Stage::One).then_some(3000));
    if let Some(clean) = clean {
        samples = balance(samples, taxonomy.safe_type, Balance { clean, seed: recipe.seed });
    }
    let cache = cfg.feature_cache.as_ref().map(|dir| FeatureCache::new(dir, &model, images.config()));
    let opts = PrepareOptions {
        label_file: &cfg.data,
        images: &images,
        text: &text,
        template: &template,
        max_len: recipe.max_len,
        skip_bad_images: cfg.skip_bad_images,
        cache: cache.as_ref(),
    };
    let (data, report) = prepare(&model, &samples, &opts, &device)?;
    for skipped in &report.skipped_images {
        eprintln!("skipped: {skipped}");
    }
    let out_err =
        |path: &Path, e: &dyn std::fmt::Display| RunError::Output { path: path.into(), reason: e.to_string() };
    std::fs::create_dir_all(&cfg.out).map_err(|e| out_err(&cfg.out, &e))?;
    let record = train_record(cfg, clean, &samples).map_err(|e| out_err(&cfg.out, &e))?;
    let record_path = record.write(&cfg.out).map_err(|e| out_err(&cfg.out, &e))?;
    let metrics_path = cfg.out.join("metrics.jsonl");
    let mut log = std::fs::File::create(&metrics_path).map_err(|e| out_err(&metrics_path, &e))?;
    let stage = &cfg.stage;
    let steps = data.len().div_ceil(recipe.batch_size).div_ceil(recipe.grad_accum) * recipe.epochs;
    let bar = if cfg.progress { ProgressBar::new(steps as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {elapsed_precise} ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let run_opts = RunOptions {
        checkpoint_dir: cfg.checkpoint_every.map(|_| cfg.out.join("checkpoints")),
        checkpoint_every: cfg.checkpoint_every,
        resume_from: cfg.resume_from.clone(),
        max_steps: None,
        devices: if devices.len() > 1 { devices.clone() } else { Vec::new() },
        frozen_lm: FrozenLm::Auto,
        activation_checkpointing: cfg.activation_checkpointing,
    };
    let start = Instant::now();
    let pad = psa_cfg.llava.pad_token_id.unwrap_or(0);
    let (model, metrics) = train(model, stage, &data, &recipe, pad, &run_opts, |m: &StepMetrics| {
        bar.set_position(m.step as u64);
        bar.set_message(format!(
            "loss {:.4} (LM {:.4}, level {:.4}, type {:.4}) lr {:.2e} {:.1} samples/s",
            m.loss, m.lm_loss, m.ce_level, m.ce_type, m.lr, m.samples_per_s
        ));
        let _ = writeln!(log, "{}", serde_json::to_string(m).unwrap_or_default());
    })?;
    bar.finish();
    let train_seconds = start.elapsed().as_secs_f64();
    let mut outputs = vec![record_path, metrics_path];
    let plot = cfg.out.join("loss.svg");
    let title = match stage {
        Stage::One => "PSA-VLM stage I",
        Stage::Two { .. } => "PSA-VLM stage II",
    };
    crate::plot::loss_curve(&metrics, &plot, title).map_err(|e| out_err(&plot, &e))?;
    outputs.push(plot);
    let accuracy = match &cfg.eval {
        Some(eval) => {
            let held = read_jsonl(eval, &cfg.image_root, labels)?;
            let (held, _) = prepare(&model, &held, &PrepareOptions { label_file: eval, cache: None, ..opts }, &device)?;
            Some(concept_accuracy(&model, &held, recipe.batch_size)?)
        }
        None => None,
    };
    match stage {
        Stage::One => outputs.push(save_safety_modules(&model.safety, &psa_cfg.safety, &cfg.out)?.0),
        Stage::Two { lora, train_safety } => {
            let dir = cfg.out.join("adapter");
            save_peft_adapter(&model.llava.language_model, lora, true, &dir)?;
            outputs.push(dir);
            if *train_safety {
                outputs.push(save_safety_modules(&model.safety, &psa_cfg.safety, &cfg.out)?.0);
            }
        }
    }
    let loss = (metrics.first().map_or(f64::NAN, |m| m.loss), metrics.last().map_or(f64::NAN, |m| m.loss));
    Ok(RunSummary {
        steps: metrics.len(),
        samples: data.len(),
        vision_seconds: report.vision_seconds,
        cache_hits: report.cache_hits,
        train_seconds,
        loss,
        accuracy,
        outputs,
    })
}

/// The run's `run.json`: seed and samplers, digests of the label files, the model directory, the tokenizer, the
/// taxonomy, the checkpoint resumed from and the images trained on (one digest over all), and the settings.
fn train_record(cfg: &TrainConfig, clean: Option<usize>, samples: &[Sample]) -> std::io::Result<RunRecord> {
    let kind = match cfg.stage {
        Stage::One => "train stage1",
        Stage::Two { .. } => "train stage2",
    };
    let seed = cfg.recipe.seed;
    let settings = serde_json::to_value(cfg).map_err(std::io::Error::other)?;
    let mut record = RunRecord::new(kind, Some(seed), settings)
        .sampler("device (parameter initialisation)", "Device::seed", seed)
        .sampler("epoch order", "StdRng::seed_from_u64(seed + epoch) shuffle of the sample indices", seed)
        .sampler("dropout", "device seed per micro-batch: seed ^ step·φ64 ^ micro·0xD1B54A32D192ED03", seed);
    if let Some(clean) = clean {
        record = record.sampler(
            &format!("stage-I balancing ({clean} clean samples)"),
            "StdRng::seed_from_u64(seed) choice of the clean samples",
            seed,
        );
    }
    record = record.input("data", &cfg.data)?.input("model", &cfg.model_dir)?;
    for (role, path) in [("eval", &cfg.eval), ("tokenizer", &cfg.tokenizer), ("taxonomy", &cfg.taxonomy)] {
        if let Some(path) = path {
            record = record.input(role, path)?;
        }
    }
    if let Some(path) = &cfg.resume_from {
        record = record.input("resumed checkpoint", path)?;
    }
    let images: Vec<PathBuf> = samples.iter().flat_map(|s| s.image.paths()).map(Path::to_path_buf).collect();
    Ok(record.input_set("images", &cfg.image_root, &images))
}
