//! Training checkpoints: only the trainable tensors (Burn's burnpack keeps their parameter ids, so the optimizer
//! state lines up on resume), the optimizer state and the schedule position, written to a temporary directory
//! and renamed into place, so a crash never leaves a half-written checkpoint.
use std::path::{Path, PathBuf};

use burn::optim::ModuleOptimizer;
use burn::store::{BurnpackStore, ModuleSnapshot};
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
    let tmp = dir.join(format!(".checkpoint-{}.tmp", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let weights = tmp.join("trainable.bpk");
    model
        .save_into(&mut BurnpackStore::from_file(&weights).with_regex(stage.trainable_pattern()).overwrite(true))
        .map_err(|e| CheckpointError::Invalid { path: weights.clone(), reason: e.to_string() })?;
    let opt = tmp.join("optimizer.bpk");
    optim.save(&opt).map_err(|e| CheckpointError::Invalid { path: opt.clone(), reason: e.to_string() })?;
    let st = tmp.join("state.json");
    std::fs::write(&st, serde_json::to_string_pretty(&state).unwrap_or_default()).map_err(io(&st))?;
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
    let weights = path.join("trainable.bpk");
    let result = model
        .load_from(&mut BurnpackStore::from_file(&weights).with_regex(stage.trainable_pattern()).allow_partial(true))
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
    let opt = path.join("optimizer.bpk");
    let optim = optim.load(&opt).map_err(|e| CheckpointError::Invalid { path: opt.clone(), reason: e.to_string() })?;
    let st = path.join("state.json");
    let text = std::fs::read_to_string(&st).map_err(io(&st))?;
    let state = serde_json::from_str(&text)
        .map_err(|e| CheckpointError::Invalid { path: st.clone(), reason: e.to_string() })?;
    Ok((model, optim, state))
}
