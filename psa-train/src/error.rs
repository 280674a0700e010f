//! Errors of `psa-train`: bad data names the file and line; nothing is silently dropped.
use std::path::PathBuf;

/// Why a dataset could not be read or a sample could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line is not valid JSON or does not follow a supported schema.
    #[error("{}:{line}: {reason}", .path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A JSONL line that is not a usable sample.
    #[error("{}:{line}: {source}", .path.display())]
    Sample {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        #[source]
        source: crate::data::jsonl::SampleError,
    },
    /// An image is missing or undecodable.
    #[error("{}:{line}: {source}", .path.display())]
    Image {
        /// The label file.
        path: PathBuf,
        /// 1-based line number of the sample.
        line: usize,
        /// The image error (names the image file).
        #[source]
        source: psa_pipeline::ImageError,
    },
    /// Tokenisation failed or produced an unusable sample.
    #[error("{}:{line}: {source}", .path.display())]
    Tokenize {
        /// The label file.
        path: PathBuf,
        /// 1-based line number of the sample.
        line: usize,
        /// What went wrong.
        #[source]
        source: crate::data::tokenize::EncodeError,
    },
    /// The feature cache could not be written.
    #[error("feature cache: {0}")]
    Cache(#[from] crate::feature_cache::CacheError),
}
