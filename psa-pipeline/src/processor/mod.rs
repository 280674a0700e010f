//! Processors: pixels from images (CLIP / DINOv2 recipes) and token ids from conversations.
pub mod decode;
pub mod image;
pub mod resample;
pub mod template;
pub mod text;

pub use decode::{
    DECODER_BYTES, HEADER_BYTES, ImageHeader, ImageLimits, decode_image, load_image, load_image_within, probe_image,
};
pub use image::{ImageProcessor, ImageProcessorConfig};
pub use template::{Message, Role, Template};
pub use text::{PaddingSide, TextProcessor};
