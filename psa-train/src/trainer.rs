//! The two stages. Stage I: everything frozen except the two safety-token sets, the safety
//! projector and the safety head; loss `L_LLM + λ·(CE_level + CE_type)`. Stage II: LoRA on the LLM's linear
//! layers, everything else frozen (safety modules too, by default); loss `L_LLM`. The frozen vision tower's
//! features are computed once per image and reused across epochs.
use std::path::PathBuf;
use std::time::Instant;

use burn::module::{Module, ParamGroup};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};
use psa_models::lora::LoraConfig;
use psa_models::{ConceptLabels, HostLmLoss, LmEngine, ModelError, Passes, PsaInput, PsaVlm};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointError, TrainState};
use crate::data::{Encoded, collate, question_marks};
pub use crate::prepare::{PrepareOptions, PrepareReport, Prepared, prepare};
use crate::recipe::Recipe;

/// Which stage a run trains; in a run file `stage = "stage1"` or `"stage2"` (then `lora` and `train_safety`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stage")]
pub enum Stage {
    /// Safety modules only, with the concept loss.
    #[serde(rename = "stage1")]
    One,
    /// LoRA adapters on the LLM (added if the model has none), LM loss only (the safety head is skipped);
    /// optionally the safety modules too, then with the concept loss so the head gets a gradient.
    #[serde(rename = "stage2")]
    Two {
        /// Adapter settings.
        lora: LoraConfig,
        /// Also train the safety modules (the reference keeps them frozen).
        #[serde(default)]
        train_safety: bool,
    },
}

impl Stage {
    /// Path pattern (regex) of the trainable parameters, also what checkpoints store.
    pub fn trainable_pattern(&self) -> &'static str {
        match self {
            Self::One => r"^safety\.",
            Self::Two { train_safety: false, .. } => r"\.lora\.",
            Self::Two { train_safety: true, .. } => r"^safety\.|\.lora\.",
        }
    }

    /// Whether a parameter path is trained in this stage.
    pub fn is_trainable(&self, path: &str) -> bool {
        match self {
            Self::One => path.starts_with("safety."),
            Self::Two { train_safety, .. } => path.contains(".lora.") || (*train_safety && path.starts_with("safety.")),
        }
    }

    /// The trainable parameters as a group.
    pub fn trainable(&self) -> ParamGroup {
        match self {
            Self::One => ParamGroup::from_any_predicates(vec!["safety."]),
            Self::Two { train_safety: false, .. } => ParamGroup::from_any_predicates(vec![".lora."]),
            Self::Two { train_safety: true, .. } => ParamGroup::from_any_predicates(vec!["safety.", ".lora."]),
        }
    }

    /// Prepares the model: adds adapters for stage II, then freezes all but the trainable parameters.
    pub fn prepare_model(&self, mut model: PsaVlm) -> PsaVlm {
        if let Self::Two { lora, .. } = self
            && !model.llava.language_model.has_lora()
        {
            let device = model.llava.device();
            model.llava.language_model = model.llava.language_model.apply_lora(lora, &device);
        }
        model.freeze().unfreeze_group(self.trainable())
    }
}

/// One optimizer step's record.
#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    /// Optimizer step (1-based).
    pub step: usize,
    /// Epoch (0-based).
    pub epoch: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Mean total loss of the step's micro-batches.
    pub loss: f64,
    /// Mean LM loss.
    pub lm_loss: f64,
    /// Mean level cross-entropy.
    pub ce_level: f64,
    /// Mean type cross-entropy.
    pub ce_type: f64,
    /// Global L2 norm of the step's gradients, before clipping.
    pub grad_norm: f64,
    /// Samples per second over the step.
    pub samples_per_s: f64,
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_data().convert::<f64>().try_to_vec::<f64>().map(|v| v[0]).unwrap_or(f64::NAN)
}

/// Checkpointing and resumption of a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Directory for `checkpoint-{step}` folders.
    pub checkpoint_dir: Option<PathBuf>,
    /// Save every this many optimizer steps (and at the end) when a directory is set.
    pub checkpoint_every: Option<usize>,
    /// Continue from this checkpoint folder.
    pub resume_from: Option<PathBuf>,
    /// Stop after this many optimizer steps in total (the schedule still spans the full run).
    pub max_steps: Option<usize>,
    /// Data-parallel devices (autodiff). Each step's micro-batches are spread round-robin over them, computed
    /// concurrently on model replicas, and their gradients gathered on the first device, where the optimizer
    /// runs. Empty: the model's own device.
    pub devices: Vec<Device>,
    /// Where stage I computes the frozen LLM's loss and its input gradient.
    pub frozen_lm: FrozenLm,
    /// Activation checkpointing for the LLM when it runs on the device (both stages): each decoder layer's
    /// activations are recomputed in the backward pass instead of kept, so memory holds one layer's at a time.
    pub activation_checkpointing: bool,
}

/// Where stage I runs the frozen LLM: its loss and the gradient with respect to its inputs are all the step needs
/// from it (no LLM weight is trained).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrozenLm {
    /// The host engine when the model lives on the flex CPU backend and trains on one device, else the device.
    #[default]
    Auto,
    /// Autodiff on the model's device.
    Device,
    /// The host engine ([`HostLmLoss`]: f32 weights copied to host memory, forward and activation gradients on
    /// all CPU threads), whatever the model's device.
    Host,
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model refused an input.
    #[error(transparent)]
    Model(#[from] psa_models::ModelError),
    /// Saving or loading a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The recipe cannot train.
    #[error("invalid recipe: {0}")]
    Recipe(#[from] crate::recipe::RecipeError),
    /// The run diverged: the step's loss, a gradient or an updated weight is NaN or infinite. Nothing of this step
    /// was saved.
    #[error("training diverged at step {step}: {what}; no checkpoint of this step was written")]
    NonFinite {
        /// The optimizer step (1-based).
        step: usize,
        /// What is not finite.
        what: String,
    },
}

fn names(paths: &[String]) -> String {
    let shown: Vec<&str> = paths.iter().take(4).map(String::as_str).collect();
    let more = paths.len().saturating_sub(shown.len());
    if more > 0 { format!("{} and {more} more", shown.join(", ")) } else { shown.join(", ") }
}

/// The sample order of an epoch: a permutation seeded by (seed, epoch), so a resumed run sees the same order.
pub fn epoch_order(len: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(epoch as u64)));
    order
}

/// Runs stage I on prepared samples and returns the trained model and the metrics of the steps it ran.
///
/// `model` must live on an autodiff device; `on_step` sees each step's metrics (progress bars, logs).
pub fn train_stage1(
    model: PsaVlm,
    data: &[Prepared],
    recipe: &Recipe,
    pad_id: u32,
    run: &RunOptions,
    on_step: impl FnMut(&StepMetrics),
) -> Result<(PsaVlm, Vec<StepMetrics>), TrainError> {
    train(model, &Stage::One, data, recipe, pad_id, run, on_step)
}

/// Runs stage II (LoRA on the LLM) on prepared samples.
pub fn train_stage2(
    model: PsaVlm,
    lora: &LoraConfig,
    data: &[Prepared],
    recipe: &Recipe,
    pad_id: u32,
    run: &RunOptions,
    on_step: impl FnMut(&StepMetrics),
) -> Result<(PsaVlm, Vec<StepMetrics>), TrainError> {
    train(model, &Stage::Two { lora: lora.clone(), train_safety: false }, data, recipe, pad_id, run, on_step)
}

/// What one micro-batch contributed.
struct MicroOut {
    grads: GradientsParams,
    loss: f64,
    lm: f64,
    level: f64,
    risk_type: f64,
    samples: usize,
}

/// Seed of the backend RNG (LoRA dropout) for one micro-batch: a function of the position in the run only, so a
/// resumed run draws the same masks as an uninterrupted one.
fn micro_seed(seed: u64, step: usize, micro: usize) -> u64 {
    let mut z =
        seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (micro as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Forward and backward of one micro-batch on `model`'s device; the loss is scaled by `scale` (1 / micro-batches
/// per step) so the gathered gradients are the step's mean.
fn micro_step(
    model: &PsaVlm,
    stage: &Stage,
    items: &[&Prepared],
    scale: f64,
    (pad_id, lm_loss, engine): (u32, bool, LmEngine<'_>),
) -> Result<MicroOut, ModelError> {
    let device = model.llava.device();
    let encoded: Vec<&Encoded> = items.iter().map(|p| &p.encoded).collect();
    let (ids, mask, labels) = collate(&encoded, pad_id);
    let question = question_marks(&encoded);
    let features = Tensor::cat(items.iter().map(|p| p.features.clone().to_device(&device)).collect(), 0);
    let levels: Vec<usize> = items.iter().map(|p| p.level).collect();
    let types: Vec<usize> = items.iter().map(|p| p.risk_type).collect();
    let concepts = ConceptLabels { levels: &levels, types: &types };
    let input = PsaInput::features(features, &ids).mask(&mask).question(&question).labels(&labels).concepts(concepts);
    let passes = if *stage == Stage::One && !lm_loss {
        Passes::head_only()
    } else {
        Passes::training(!matches!(stage, Stage::Two { train_safety: false, .. }), engine)
    };
    let out = model.forward(input, passes)?;
    let loss = out.loss.ok_or_else(|| ModelError::Input("no supervised position in the micro-batch".into()))? * scale;
    let grads = GradientsParams::from_grads(loss.backward(), model);
    let (level, risk_type) = out.concept_loss.map_or((0.0, 0.0), |c| (scalar(c.level), scalar(c.risk_type)));
    Ok(MicroOut {
        grads,
        loss: scalar(loss) / scale,
        lm: out.lm_loss.map_or(0.0, scalar),
        level,
        risk_type,
        samples: items.len(),
    })
}

/// Runs one step's micro-batches, sequentially on one device or spread over the data-parallel devices, and returns
/// their outputs in micro-batch order with gradients on `model`'s device.
fn step_micro_batches(
    model: &PsaVlm,
    stage: &Stage,
    data: &[Prepared],
    group: &[&[usize]],
    (pad_id, seed, step, lm_loss): (u32, u64, usize, bool),
    devices: &[Device],
    engine: LmEngine<'_>,
) -> Result<Vec<MicroOut>, ModelError> {
    let scale = 1.0 / group.len() as f64;
    let items = |batch: &[usize]| -> Vec<&Prepared> { batch.iter().map(|&i| &data[i]).collect() };
    if devices.len() <= 1 {
        let device = model.llava.device();
        return group
            .iter()
            .enumerate()
            .map(|(m, batch)| {
                device.seed(micro_seed(seed, step, m));
                micro_step(model, stage, &items(batch), scale, (pad_id, lm_loss, engine))
            })
            .collect();
    }
    let main = model.llava.device();
    let per_device: Vec<Result<Vec<(usize, MicroOut)>, ModelError>> = std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(d, device)| {
                let replica = model.clone().fork(device);
                let main = &main;
                let items = &items;
                s.spawn(move || {
                    let mut outs = Vec::new();
                    for (m, batch) in group.iter().enumerate().skip(d).step_by(devices.len()) {
                        device.seed(micro_seed(seed, step, m));
                        let mut out = micro_step(&replica, stage, &items(batch), scale, (pad_id, lm_loss, engine))?;
                        out.grads = out.grads.to_device(main, &replica);
                        outs.push((m, out));
                    }
                    Ok(outs)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let mut outs = Vec::with_capacity(group.len());
    for r in per_device {
        outs.extend(r?);
    }
    outs.sort_by_key(|(m, _)| *m);
    Ok(outs.into_iter().map(|(_, o)| o).collect())
}

/// The host engine for the frozen LLM when `run` asks for it (or leaves it to [`FrozenLm::Auto`] on flex) and the
/// step has an LM loss through a frozen LLM (stage I). Under `Auto`, a model the engine cannot take (unmerged
/// adapters) stays on its device.
fn frozen_lm_engine(
    model: &PsaVlm,
    stage: &Stage,
    recipe: &Recipe,
    run: &RunOptions,
) -> Result<Option<HostLmLoss>, ModelError> {
    if *stage != Stage::One || !recipe.lm_loss {
        return Ok(None);
    }
    let lm = &model.llava.language_model;
    match run.frozen_lm {
        FrozenLm::Device => Ok(None),
        FrozenLm::Host => HostLmLoss::new(lm).map(Some),
        FrozenLm::Auto => {
            let on_flex = psa_models::cpu::is_flex(&model.llava.device())
                && run.devices.len() <= 1
                && model.precision() == psa_models::Precision::F32;
            Ok(on_flex.then(|| HostLmLoss::new(lm).ok()).flatten())
        }
    }
}

/// The optimisation loop shared by both stages.
pub fn train(
    model: PsaVlm,
    stage: &Stage,
    data: &[Prepared],
    recipe: &Recipe,
    pad_id: u32,
    run: &RunOptions,
    mut on_step: impl FnMut(&StepMetrics),
) -> Result<(PsaVlm, Vec<StepMetrics>), TrainError> {
    recipe.validate().map_err(TrainError::Recipe)?;
    let mut model = stage.prepare_model(model);
    if let Some(main) = run.devices.first() {
        model = model.fork(main);
    }
    let mut optim = recipe.optimizer().init();
    let micro_per_epoch = data.len().div_ceil(recipe.batch_size);
    let steps_per_epoch = micro_per_epoch.div_ceil(recipe.grad_accum);
    let total = steps_per_epoch * recipe.epochs;
    let mut state = TrainState { step: 0, epoch: 0, group: 0 };
    if let Some(path) = &run.resume_from {
        let (m, o, s) = checkpoint::load(path, model, optim, stage)?;
        model = m;
        optim = o;
        state = s;
    }
    let host_lm = frozen_lm_engine(&model, stage, recipe, run)?;
    let engine = match (&host_lm, run.activation_checkpointing) {
        (Some(host), _) => LmEngine::Host(host),
        (None, true) => LmEngine::Checkpointed,
        (None, false) => LmEngine::Autodiff,
    };
    let limit = run.max_steps.unwrap_or(total).min(total);
    let mut metrics = Vec::new();
    while state.epoch < recipe.epochs && state.step < limit {
        let order = epoch_order(data.len(), recipe.seed, state.epoch);
        let batches: Vec<&[usize]> = order.chunks(recipe.batch_size).collect();
        let groups: Vec<&[&[usize]]> = batches.chunks(recipe.grad_accum).collect();
        while state.group < groups.len() && state.step < limit {
            let group = groups[state.group];
            let start = Instant::now();
            let outs = step_micro_batches(
                &model,
                stage,
                data,
                group,
                (pad_id, recipe.seed, state.step, recipe.lm_loss),
                &run.devices,
                engine,
            )?;
            let mut acc = GradientsAccumulator::<PsaVlm>::new();
            let (mut loss, mut lm, mut level, mut risk_type, mut n) = (0.0, 0.0, 0.0, 0.0, 0);
            for out in outs {
                acc.accumulate(&model, out.grads);
                (loss, lm, level, risk_type) =
                    (loss + out.loss, lm + out.lm, level + out.level, risk_type + out.risk_type);
                n += out.samples;
            }
            let diverged = |what: String| TrainError::NonFinite { step: state.step + 1, what };
            let k = group.len() as f64;
            if !loss.is_finite() {
                return Err(diverged(format!("loss = {}", loss / k)));
            }
            let grads = acc.grads();
            let (grad_norm, bad) = psa_core::finite::grad_norm(&model, &grads);
            if !bad.is_empty() || !grad_norm.is_finite() {
                return Err(diverged(format!("non-finite gradient of {}", names(&bad))));
            }
            let grads = crate::clip::clip_grad_norm(&model, grads, grad_norm, recipe.max_grad_norm as f64);
            let lr = recipe.lr_at(state.step, total);
            model = optim.step(lr, model, grads);
            let bad = psa_core::finite::non_finite_params(&model, |p| stage.is_trainable(p));
            if !bad.is_empty() {
                return Err(diverged(format!("non-finite weights in {} after the update", names(&bad))));
            }
            state.step += 1;
            state.group += 1;
            let m = StepMetrics {
                step: state.step,
                epoch: state.epoch,
                lr,
                loss: loss / k,
                lm_loss: lm / k,
                ce_level: level / k,
                ce_type: risk_type / k,
                grad_norm,
                samples_per_s: n as f64 / start.elapsed().as_secs_f64(),
            };
            on_step(&m);
            metrics.push(m);
            let epoch_done = state.group == groups.len();
            if epoch_done {
                state = TrainState { epoch: state.epoch + 1, group: 0, ..state };
            }
            if let (Some(dir), Some(every)) = (&run.checkpoint_dir, run.checkpoint_every)
                && (state.step.is_multiple_of(every.max(1)) || state.step == limit)
            {
                checkpoint::save(dir, &model, &optim, state, stage)?;
            }
            if epoch_done {
                break;
            }
        }
        if groups.is_empty() {
            break;
        }
    }
    Ok((model, metrics))
}

/// The safety head's argmax (level, type) for each prepared sample, in batches (padding id 0 is masked out).
pub fn predict_concepts(
    model: &PsaVlm,
    data: &[Prepared],
    batch_size: usize,
) -> Result<Vec<(usize, usize)>, psa_models::ModelError> {
    let mut out = Vec::with_capacity(data.len());
    for chunk in data.chunks(batch_size.max(1)) {
        let encoded: Vec<&Encoded> = chunk.iter().map(|p| &p.encoded).collect();
        let (ids, mask, _) = collate(&encoded, 0);
        let question = question_marks(&encoded);
        let features = Tensor::cat(chunk.iter().map(|p| p.features.clone()).collect(), 0);
        let logits = model.classify(PsaInput::features(features, &ids).mask(&mask).question(&question))?;
        let argmax = |t: Tensor<2>| -> Vec<usize> {
            t.argmax(1)
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .unwrap_or_default()
                .into_iter()
                .map(|v| v as usize)
                .collect()
        };
        out.extend(argmax(logits.level).into_iter().zip(argmax(logits.risk_type)));
    }
    Ok(out)
}

/// Level and type accuracy of the safety head on prepared samples.
pub fn concept_accuracy(
    model: &PsaVlm,
    data: &[Prepared],
    batch_size: usize,
) -> Result<(f64, f64), psa_models::ModelError> {
    let predictions = predict_concepts(model, data, batch_size)?;
    let level_ok = data.iter().zip(&predictions).filter(|(p, (l, _))| p.level == *l).count();
    let type_ok = data.iter().zip(&predictions).filter(|(p, (_, t))| p.risk_type == *t).count();
    let n = data.len().max(1) as f64;
    Ok((level_ok as f64 / n, type_ok as f64 / n))
}
