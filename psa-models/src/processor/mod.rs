//! Processors: pixels from images (CLIP / DINOv2 recipes) and token ids from conversations.
pub mod image;
pub mod resample;
pub mod template;
pub mod text;

pub use image::{ImageProcessor, ImageProcessorConfig, load_image};
pub use template::{Message, Role, Template};
pub use text::{PaddingSide, TextProcessor};
