//! Image preprocessing driven by `preprocessor_config.json` (`CLIPImageProcessor` semantics): shortest-edge
//! resize with Pillow's exact resampling, centre crop, rescale, normalise, CHW; optional LLaVA pad-to-square.
use std::path::Path;

use ::image::imageops::{self, FilterType};

use super::resample::{PilFilter, pil_resize};
use ::image::{DynamicImage, Rgb, RgbImage};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ImageError;
use psa_models::ConfigError;
use psa_models::config::{parse, read_json};

/// CLIP (OpenAI) normalisation mean.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP (OpenAI) normalisation std.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
/// ImageNet normalisation mean (DINOv2).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet normalisation std (DINOv2).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Most pixels the intermediate resize may produce (16 M: a 336-px shortest edge with a 1:150 aspect ratio); a
/// thin strip would otherwise resize to gigabytes.
pub const MAX_RESIZED_PIXELS: u64 = 16 << 20;

/// `preprocessor_config.json`, key for key; unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageProcessorConfig {
    /// Resize before cropping.
    #[serde(default = "yes")]
    pub do_resize: bool,
    /// `{"shortest_edge": n}`, `{"height": h, "width": w}` or a plain integer (shortest edge).
    pub size: Value,
    /// PIL resampling filter id (3 = bicubic).
    #[serde(default = "bicubic")]
    pub resample: u32,
    /// Centre-crop after resizing.
    #[serde(default = "yes")]
    pub do_center_crop: bool,
    /// `{"height": h, "width": w}` or a plain integer.
    #[serde(default)]
    pub crop_size: Option<Value>,
    /// Multiply by `rescale_factor`.
    #[serde(default = "yes")]
    pub do_rescale: bool,
    /// Usually 1/255.
    #[serde(default = "inv255")]
    pub rescale_factor: f64,
    /// Subtract the mean and divide by the std.
    #[serde(default = "yes")]
    pub do_normalize: bool,
    /// Per-channel mean.
    #[serde(default = "clip_mean")]
    pub image_mean: Vec<f32>,
    /// Per-channel std.
    #[serde(default = "clip_std")]
    pub image_std: Vec<f32>,
    /// LLaVA's `image_aspect_ratio = pad`: paste onto a square of the mean colour first.
    #[serde(default)]
    pub pad_to_square: bool,
}

fn yes() -> bool {
    true
}
fn bicubic() -> u32 {
    3
}
fn inv255() -> f64 {
    1.0 / 255.0
}
fn clip_mean() -> Vec<f32> {
    CLIP_MEAN.to_vec()
}
fn clip_std() -> Vec<f32> {
    CLIP_STD.to_vec()
}

impl ImageProcessorConfig {
    /// The llava-hf CLIP processor at `size` px (336 for LLaVA-1.5).
    pub fn clip(size: usize) -> Self {
        Self {
            do_resize: true,
            size: serde_json::json!({ "shortest_edge": size }),
            resample: 3,
            do_center_crop: true,
            crop_size: Some(serde_json::json!({ "height": size, "width": size })),
            do_rescale: true,
            rescale_factor: inv255(),
            do_normalize: true,
            image_mean: clip_mean(),
            image_std: clip_std(),
            pad_to_square: false,
        }
    }

    /// The DINOv2 preset: shortest edge 256, centre crop 224, bicubic, ImageNet statistics.
    pub fn dinov2() -> Self {
        Self {
            size: serde_json::json!({ "shortest_edge": 256 }),
            crop_size: Some(serde_json::json!({ "height": 224, "width": 224 })),
            image_mean: IMAGENET_MEAN.to_vec(),
            image_std: IMAGENET_STD.to_vec(),
            ..Self::clip(224)
        }
    }

    /// The vision tower's own recipe at its native size: CLIP at `image_size`, or the DINOv2 preset.
    pub fn for_vision(vision: &psa_models::vision::VisionConfig) -> Self {
        match vision {
            psa_models::vision::VisionConfig::Clip(c) => Self::clip(c.image_size),
            psa_models::vision::VisionConfig::Dinov2(_) => Self::dinov2(),
        }
    }

    /// Reads `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = parse(&read_json(path)?, path, "preprocessor config")?;
        cfg.build().map(|_| cfg)
    }

    /// Validates the config and resolves sizes.
    pub fn build(&self) -> Result<ImageProcessor, ConfigError> {
        let resize = if self.do_resize { Some(parse_size(&self.size, "size")?) } else { None };
        let crop = match (&self.crop_size, self.do_center_crop) {
            (Some(v), true) => match parse_size(v, "crop_size")? {
                Resize::Exact(h, w) => Some((h, w)),
                Resize::ShortestEdge(s) => Some((s, s)),
            },
            (None, true) => {
                return Err(ConfigError::Invalid("do_center_crop needs crop_size".into()));
            }
            (_, false) => None,
        };
        if self.image_mean.len() != 3 || self.image_std.len() != 3 {
            return Err(ConfigError::Invalid("image_mean and image_std need 3 values".into()));
        }
        // Pixels are in [0, 1] after rescaling (else [0, 255]): statistics outside that scale, or a scale that
        // flips or blows up the pixels, turn every image into the same input.
        if !(self.rescale_factor.is_finite() && self.rescale_factor > 0.0 && self.rescale_factor <= 1.0) {
            return Err(ConfigError::Invalid(format!(
                "rescale_factor must lie in (0, 1], got {}",
                self.rescale_factor
            )));
        }
        let scale = if self.do_rescale { 1.0 } else { 255.0 };
        if let Some(m) = self.image_mean.iter().find(|m| !(m.is_finite() && m.abs() <= scale)) {
            return Err(ConfigError::Invalid(format!("image_mean {m} is not a pixel mean (|mean| ≤ {scale})")));
        }
        if let Some(s) = self.image_std.iter().find(|s| !(s.is_finite() && (1e-3 * scale..=scale).contains(*s))) {
            return Err(ConfigError::Invalid(format!(
                "image_std {s} is not a pixel spread (between {} and {scale})",
                1e-3 * scale
            )));
        }
        for (name, side) in [("size", resize.map(|r| r.longest())), ("crop_size", crop.map(|(h, w)| h.max(w)))] {
            if side.is_some_and(|n| n == 0 || n > MAX_SIDE) {
                return Err(ConfigError::Invalid(format!("{name} must lie in 1..={MAX_SIDE} pixels")));
            }
        }
        let filter = PilFilter::from_id(self.resample).ok_or_else(|| ConfigError::Unsupported {
            key: "resample",
            value: self.resample.to_string(),
            hint: "PIL filters 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming",
        })?;
        Ok(ImageProcessor { cfg: self.clone(), resize, crop, filter })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Resize {
    ShortestEdge(usize),
    Exact(usize, usize),
}

/// Largest resize or crop side a preprocessor config may ask for.
const MAX_SIDE: usize = 4096;

impl Resize {
    fn longest(self) -> usize {
        match self {
            Self::ShortestEdge(s) => s,
            Self::Exact(h, w) => h.max(w),
        }
    }
}

fn parse_size(v: &Value, key: &'static str) -> Result<Resize, ConfigError> {
    let get = |k: &str| v.get(k).and_then(Value::as_u64).map(|x| x as usize);
    if let Some(n) = v.as_u64() {
        return Ok(Resize::ShortestEdge(n as usize));
    }
    if let Some(s) = get("shortest_edge") {
        return Ok(Resize::ShortestEdge(s));
    }
    match (get("height"), get("width")) {
        (Some(h), Some(w)) => Ok(Resize::Exact(h, w)),
        _ => Err(ConfigError::Unsupported {
            key,
            value: v.to_string(),
            hint: "an integer, {shortest_edge} or {height, width}",
        }),
    }
}

/// A validated image processor.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    cfg: ImageProcessorConfig,
    resize: Option<Resize>,
    crop: Option<(usize, usize)>,
    filter: PilFilter,
}

impl ImageProcessor {
    /// The configuration it was built from.
    pub fn config(&self) -> &ImageProcessorConfig {
        &self.cfg
    }

    /// Output `(height, width)` for an input of the given size.
    pub fn output_size(&self, height: usize, width: usize) -> (usize, usize) {
        let (h, w) = self.resized_size(height, width);
        self.crop.unwrap_or((h, w))
    }

    /// Pixels of the intermediate resized image (before the crop) for an input of the given size.
    pub fn resized_pixels(&self, height: usize, width: usize) -> u64 {
        let (h, w) = self.resized_size(height, width);
        h as u64 * w as u64
    }

    fn resized_size(&self, height: usize, width: usize) -> (usize, usize) {
        match self.resize {
            None => (height, width),
            Some(Resize::Exact(h, w)) => (h, w),
            Some(Resize::ShortestEdge(s)) => {
                let (short, long) = if width <= height { (width, height) } else { (height, width) };
                if short == s {
                    return (height, width);
                }
                let long = (s as f64 * long as f64 / short as f64) as usize;
                if width <= height { (long, s) } else { (s, long) }
            }
        }
    }

    /// Normalised CHW pixels of one image, `[3, h, w]` as a flat vector plus its size.
    pub fn pixels(&self, image: &DynamicImage) -> Result<(Vec<f32>, usize, usize), ImageError> {
        if image.width() == 0 || image.height() == 0 {
            return Err(ImageError::Invalid("the image has no pixels".into()));
        }
        let side = if self.cfg.pad_to_square { image.width().max(image.height()) } else { 0 };
        let (ih, iw) = if side > 0 { (side, side) } else { (image.height(), image.width()) };
        let resized = self.resized_pixels(ih as usize, iw as usize);
        if resized > MAX_RESIZED_PIXELS {
            return Err(ImageError::Invalid(format!(
                "a {}×{} image resizes to {resized} pixels before the crop; the limit is {MAX_RESIZED_PIXELS} \
                 (an extreme aspect ratio)",
                image.width(),
                image.height()
            )));
        }
        let mut rgb = image.to_rgb8();
        if self.cfg.pad_to_square {
            rgb = self.pad_square(rgb);
        }
        let (h, w) = self.resized_size(rgb.height() as usize, rgb.width() as usize);
        if (h, w) != (rgb.height() as usize, rgb.width() as usize) {
            rgb = match self.filter {
                PilFilter::Nearest => imageops::resize(&rgb, w as u32, h as u32, FilterType::Nearest),
                f => pil_resize(&rgb, w as u32, h as u32, f),
            };
        }
        let (ch, cw) = self.crop.unwrap_or((h, w));
        let top = (h as i64 - ch as i64).div_euclid(2);
        let left = (w as i64 - cw as i64).div_euclid(2);
        let (scale, mean, std) = (self.cfg.rescale_factor as f32, &self.cfg.image_mean, &self.cfg.image_std);
        let mut out = vec![0f32; 3 * ch * cw];
        for y in 0..ch {
            for x in 0..cw {
                let (sy, sx) = (y as i64 + top, x as i64 + left);
                let inside = (0..h as i64).contains(&sy) && (0..w as i64).contains(&sx);
                let px = if inside { *rgb.get_pixel(sx as u32, sy as u32) } else { Rgb([0, 0, 0]) };
                for c in 0..3 {
                    let mut v = px[c] as f32;
                    if self.cfg.do_rescale {
                        v *= scale;
                    }
                    if self.cfg.do_normalize {
                        v = (v - mean[c]) / std[c];
                    }
                    out[(c * ch + y) * cw + x] = v;
                }
            }
        }
        Ok((out, ch, cw))
    }

    fn pad_square(&self, img: RgbImage) -> RgbImage {
        let (w, h) = img.dimensions();
        if w == h {
            return img;
        }
        let side = w.max(h);
        let m = &self.cfg.image_mean;
        let bg = Rgb([(m[0] * 255.0) as u8, (m[1] * 255.0) as u8, (m[2] * 255.0) as u8]);
        let mut canvas = RgbImage::from_pixel(side, side, bg);
        let (x, y) = if w > h { (0, (w - h) / 2) } else { ((h - w) / 2, 0) };
        imageops::overlay(&mut canvas, &img, x as i64, y as i64);
        canvas
    }

    /// Preprocesses a batch of images into `[batch, 3, h, w]`; all outputs must share one size.
    pub fn preprocess(&self, images: &[DynamicImage], device: &Device) -> Result<Tensor<4>, ImageError> {
        let mut data = Vec::new();
        let mut size = None;
        for image in images {
            let (px, h, w) = self.pixels(image)?;
            if *size.get_or_insert((h, w)) != (h, w) {
                return Err(ImageError::Invalid(format!(
                    "images preprocess to different sizes ({:?} and {:?}); set a crop size",
                    size.unwrap_or_default(),
                    (h, w)
                )));
            }
            data.extend(px);
        }
        let (h, w) = size.ok_or_else(|| ImageError::Invalid("no images given".into()))?;
        Ok(Tensor::from_data(TensorData::new(data, [images.len(), 3, h, w]), device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_resize_matches_transformers_rounding() {
        let p = ImageProcessorConfig::clip(336).build().unwrap();
        assert_eq!(p.resized_size(655, 450), (489, 336));
        assert_eq!(p.resized_size(336, 500), (336, 500));
        assert_eq!(p.output_size(655, 450), (336, 336));
    }

    #[test]
    fn pad_to_square_centres_on_the_mean_colour() {
        let mut cfg = ImageProcessorConfig::clip(4);
        cfg.pad_to_square = true;
        cfg.do_normalize = false;
        cfg.do_rescale = false;
        cfg.do_resize = false;
        cfg.do_center_crop = false;
        let p = cfg.build().unwrap();
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 2, Rgb([255, 255, 255])));
        let (px, h, w) = p.pixels(&img).unwrap();
        assert_eq!((h, w), (4, 4));
        // Rows 0 and 3 are background (int(0.48145466·255) = 122), rows 1–2 the image.
        assert_eq!(px[0], 122.0);
        assert_eq!(px[4], 255.0);
        assert_eq!(px[12], 122.0);
    }
}
