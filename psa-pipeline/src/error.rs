//! Errors of the processors and pipelines: images, tokenizers, and any failure of a pipeline.
use std::path::PathBuf;

use psa_import::LoadError;
use psa_models::ModelError;

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
    /// User text that cannot enter a prompt: it holds a special token's text.
    #[error("the question is refused: {0}")]
    UserText(String),
    /// A question longer than the limits, in bytes or tokens.
    #[error("the question is too long: {0}")]
    QuestionTooLong(String),
    /// An unknown template name.
    #[error("unknown conversation template {0:?}; known: llava_v1, llava_hf, llava_llama_2, chatml")]
    UnknownTemplate(String),
}

/// Any failure of the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Loading the model.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Reading or preprocessing the image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Tokenising or decoding.
    #[error(transparent)]
    Text(#[from] TextError),
    /// Running the model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The model directory's canary came out differently from when it was written.
    #[error("the model's canary failed (it does not give the verdicts it was written with): {0}")]
    Canary(String),
    /// A taxonomy, policy or calibration that is refused, or a policy that cannot decide.
    #[error(transparent)]
    Safety(#[from] psa_core::CoreError),
}
