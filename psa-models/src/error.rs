//! Errors raised at the I/O edges of `psa-models`: configs, weight files, images, tokenizers, generation.
use std::path::PathBuf;

/// A device that cannot hold a requested float dtype.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{precision} is not supported on {device}; use --dtype {fallback}")]
pub struct UnsupportedDtype {
    /// The requested precision.
    pub precision: crate::precision::Precision,
    /// The device, as Burn prints it.
    pub device: String,
    /// The closest precision the device holds.
    pub fallback: crate::precision::Precision,
}

/// Why a configuration could not be read or is not supported.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON for this config.
    #[error("{} is not a valid {what}: {source}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Which config was expected.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A value is present but not supported by this implementation.
    #[error("unsupported {key} = {value}: {hint}")]
    Unsupported {
        /// The config key.
        key: &'static str,
        /// Its value, as written.
        value: String,
        /// What is supported instead.
        hint: &'static str,
    },
    /// Values that contradict each other.
    #[error("invalid config: {0}")]
    Invalid(String),
}

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

/// Why an image could not be turned into pixels.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be opened or decoded.
    #[error("cannot load image {}: {source}", .path.display())]
    Decode {
        /// The image file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: image::ImageError,
    },
    /// Decoding from memory failed.
    #[error("cannot decode image bytes: {0}")]
    DecodeBytes(#[source] image::ImageError),
    /// A zero-sized or otherwise unusable image.
    #[error("invalid image: {0}")]
    Invalid(String),
}

impl ImageError {
    /// An I/O failure while reading image bytes from memory.
    pub fn from_io(e: std::io::Error) -> Self {
        Self::DecodeBytes(image::ImageError::IoError(e))
    }
}

/// Why text processing failed.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The tokenizer file could not be loaded.
    #[error("cannot load tokenizer {}: {reason}", .path.display())]
    Load {
        /// The tokenizer file.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
    /// Encoding or decoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A required special token is not in the vocabulary.
    #[error("token {0:?} is not in the tokenizer's vocabulary")]
    MissingToken(String),
    /// An unknown template name.
    #[error("unknown conversation template {0:?}; known: llava_v1, llava_hf, llava_llama_2, chatml")]
    UnknownTemplate(String),
}

/// Why a forward pass or generation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Image placeholders and images do not match.
    #[error("{0}")]
    ImageTokens(String),
    /// Inputs with inconsistent shapes.
    #[error("invalid input: {0}")]
    Input(String),
    /// The host decoder cannot hold this model.
    #[error("host decoder: {0}")]
    HostDecoder(String),
    /// The sequence would exceed the model's position limit.
    #[error("sequence length {actual} exceeds max_position_embeddings {max}")]
    TooLong {
        /// Requested length.
        actual: usize,
        /// Model limit.
        max: usize,
    },
}
