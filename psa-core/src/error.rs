//! Errors of `psa-core`: invalid taxonomies and safety configurations.
use std::path::PathBuf;

/// Why a taxonomy or safety configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be parsed.
    #[error("{}: {reason}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// Inconsistent values.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was being validated.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A class index outside the taxonomy.
    #[error("{kind} {index} is out of range (the taxonomy has {count})")]
    OutOfRange {
        /// `level` or `type`.
        kind: &'static str,
        /// The index.
        index: usize,
        /// Number of classes.
        count: usize,
    },
}

/// A name (a dtype, a format, a weight layout) that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}: use {expected}")]
pub struct UnknownName {
    /// What was being named.
    pub what: &'static str,
    /// The name given.
    pub given: String,
    /// The known names.
    pub expected: String,
}
