//! Errors of `psa-models`: configurations, dtypes a device cannot hold, and refused forward passes.
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
    /// The safety modules' configuration is refused.
    #[error(transparent)]
    Safety(#[from] psa_core::CoreError),
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
