//! Why a checkpoint could not be read or written.
use std::path::PathBuf;

use psa_models::{ConfigError, UnsupportedDtype};

/// Why weights could not be loaded. A failed load never returns a model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No weight file in a directory.
    #[error(
        "no weights in {}: expected model.safetensors, model.safetensors.index.json, pytorch_model.bin or a *.pt/*.pth file",
        .dir.display()
    )]
    NoWeights {
        /// The directory searched.
        dir: PathBuf,
    },
    /// A file is missing, truncated, corrupt or not in the expected format.
    #[error("{}: {reason}", .path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A safetensors file that is truncated, corrupt or holds a dtype this crate cannot load.
    #[error("{}: {source}", .path.display())]
    Safetensors {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        #[source]
        source: crate::files::SafetensorsError,
    },
    /// A GGUF file that is malformed or holds what this crate cannot read.
    #[error("{}: {source}", .path.display())]
    Gguf {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        #[source]
        source: crate::gguf::GgufError,
    },
    /// An adapter configuration that cannot be applied.
    #[error("{}: {source}", .path.display())]
    Lora {
        /// The `adapter_config.json`.
        path: std::path::PathBuf,
        /// What is wrong with it.
        #[source]
        source: psa_models::lora::LoraError,
    },
    /// The device cannot hold the requested dtype.
    #[error(transparent)]
    Unsupported(#[from] UnsupportedDtype),
    /// Model parameters that no file provides.
    #[error("{} model parameter(s) missing from the checkpoint: {}", .keys.len(), preview(.keys))]
    MissingKeys {
        /// Missing parameter names in hub layout.
        keys: Vec<String>,
    },
    /// Checkpoint tensors that the model does not use (an error only under strict loading).
    #[error("{} unexpected tensor(s) in the checkpoint (strict loading): {}", .keys.len(), preview(.keys))]
    UnexpectedKeys {
        /// Unused tensor names as written in the files.
        keys: Vec<String>,
    },
    /// A tensor whose shape differs from the model's.
    #[error("tensor `{key}` in {}: checkpoint shape {found:?}, model expects {expected:?}", .path.display())]
    ShapeMismatch {
        /// Tensor name as written in the file.
        key: String,
        /// The file holding it.
        path: PathBuf,
        /// Shape the model expects (PyTorch layout).
        expected: Vec<usize>,
        /// Shape in the file (PyTorch layout).
        found: Vec<usize>,
    },
    /// Any other failure while applying a tensor.
    #[error("tensor `{key}`: {reason}")]
    Tensor {
        /// Tensor name.
        key: String,
        /// What failed.
        reason: String,
    },
}

fn preview(keys: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = keys.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if keys.len() > SHOWN {
        s.push_str(&format!(", … ({} more)", keys.len() - SHOWN));
    }
    s
}
