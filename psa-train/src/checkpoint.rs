//! Training checkpoints: only the trainable tensors, in safetensors under the model's parameter paths; the
//! optimizer state (Burn's format, keyed by parameter id); and the schedule position with each trainable
//! parameter's id, so the optimizer state lines up with a freshly loaded model on resume. Everything is written to
//! a temporary directory and renamed into place, so a crash never leaves a half-written checkpoint.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::ModuleOptimizer;
use burn::store::{ModuleSnapshot, PathFilter, SafetensorsStore};
use burn::tensor::Tensor;
use psa_core::path::ModulePath;
use psa_models::PsaVlm;

use crate::trainer::Stage;
use serde::{Deserialize, Serialize};

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// File system failure.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file is unreadable or does not fit the model.
    #[error("{}: {reason}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Where training stands: enough to continue exactly where it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: usize,
    /// Epoch of the next step.
    pub epoch: usize,
    /// Index of the next accumulation group within the epoch.
    pub group: usize,
}

/// `state.json`: the position plus the parameter id of every stored tensor.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    #[serde(flatten)]
    state: TrainState,
    /// Tensor path → parameter id (decimal string: ids use all 64 bits).
    param_ids: BTreeMap<String, String>,
}

/// Gives the parameters at the recorded paths their recorded ids.
struct SetIds<'a> {
    ids: &'a BTreeMap<String, u64>,
    path: ModulePath,
    set: usize,
}

impl ModuleMapper for SetIds<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.path.exit(container_type);
    }

    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if let Some(&id) = self.ids.get(&self.path.joined()) {
            param.id = ParamId::from(id);
            self.set += 1;
        }
        param
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.into(), source }
}

/// Writes `dir/checkpoint-{step}` atomically and returns its path; only the stage's trainable tensors are stored.
pub fn save(
    dir: &Path,
    model: &PsaVlm,
    optim: &ModuleOptimizer,
    state: TrainState,
    stage: &Stage,
) -> Result<PathBuf, CheckpointError> {
    let final_dir = dir.join(format!("checkpoint-{}", state.step));
    let bad = psa_core::finite::non_finite_params(model, |p| stage.is_trainable(p));
    if let Some(first) = bad.first() {
        return Err(CheckpointError::Invalid {
            path: final_dir,
            reason: format!(
                "not written: {} trainable tensor(s) hold NaN or infinite values, first `{first}`",
                bad.len()
            ),
        });
    }
    let tmp = dir.join(format!(".checkpoint-{}.tmp", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let weights = tmp.join("trainable.safetensors");
    let store = SafetensorsStore::from_file(&weights).with_regex(stage.trainable_pattern()).skip_enum_variants(true);
    model
        .save_into(&mut store.overwrite(true))
        .map_err(|e| CheckpointError::Invalid { path: weights.clone(), reason: e.to_string() })?;
    let opt = tmp.join("optimizer.bpk");
    optim.save(&opt).map_err(|e| CheckpointError::Invalid { path: opt.clone(), reason: e.to_string() })?;
    let param_ids = model
        .collect(Some(PathFilter::new().with_regex(stage.trainable_pattern())), None, true)
        .into_iter()
        .filter_map(|t| Some((t.name, t.param_id?.to_string())))
        .collect();
    let st = tmp.join("state.json");
    let text = serde_json::to_string_pretty(&StateFile { state, param_ids })
        .map_err(|e| CheckpointError::Invalid { path: st.clone(), reason: e.to_string() })?;
    std::fs::write(&st, text).map_err(io(&st))?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    Ok(final_dir)
}

/// Restores trainable tensors (with their parameter ids), the optimizer state and the position.
pub fn load(
    path: &Path,
    mut model: PsaVlm,
    optim: ModuleOptimizer,
    stage: &Stage,
) -> Result<(PsaVlm, ModuleOptimizer, TrainState), CheckpointError> {
    let st = path.join("state.json");
    let text = std::fs::read_to_string(&st).map_err(io(&st))?;
    let invalid = |reason: String| CheckpointError::Invalid { path: st.clone(), reason };
    let file: StateFile = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let ids = file
        .param_ids
        .iter()
        .map(|(k, v)| v.parse::<u64>().map(|id| (k.clone(), id)).map_err(|e| invalid(format!("param id of {k}: {e}"))))
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let weights = path.join("trainable.safetensors");
    let store = SafetensorsStore::from_file(&weights).with_regex(stage.trainable_pattern()).skip_enum_variants(true);
    let result = model
        .load_from(&mut store.allow_partial(true))
        .map_err(|e| CheckpointError::Invalid { path: weights.clone(), reason: e.to_string() })?;
    let missing = result.missing.iter().filter(|(p, _)| stage.is_trainable(p)).count();
    if !result.errors.is_empty() || missing > 0 || result.applied.is_empty() {
        return Err(CheckpointError::Invalid {
            path: weights,
            reason: format!(
                "does not fit the model: {} errors, {missing} trainable tensors missing, {} applied",
                result.errors.len(),
                result.applied.len()
            ),
        });
    }
    let bad = psa_core::finite::non_finite_params(&model, |p| stage.is_trainable(p));
    if let Some(first) = bad.first() {
        return Err(CheckpointError::Invalid {
            path: weights,
            reason: format!("{} trainable tensor(s) hold NaN or infinite values, first `{first}`", bad.len()),
        });
    }
    let mut mapper = SetIds { ids: &ids, path: ModulePath::default(), set: 0 };
    let model = model.map(&mut mapper);
    if mapper.set != ids.len() {
        return Err(invalid(format!("{} parameter ids recorded, {} matched the model", ids.len(), mapper.set)));
    }
    let opt = path.join("optimizer.bpk");
    let optim = optim.load(&opt).map_err(|e| CheckpointError::Invalid { path: opt.clone(), reason: e.to_string() })?;
    Ok((model, optim, file.state))
}
