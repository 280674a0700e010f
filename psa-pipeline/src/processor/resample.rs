//! Pillow's resampling (`Image.resize`, `libImaging/Resample.c`) reimplemented exactly for 8-bit RGB, so that
//! preprocessing matches transformers' PIL-based image processors pixel for pixel.
//!
//! Separable convolution with a support widened by the scale when shrinking, coefficients normalised and
//! quantised to 22-bit fixed point, horizontal pass first, rounding and clamping to u8 after each pass.
use ::image::RgbImage;

/// Pillow's resampling filters (the PIL ids used by `resample` in `preprocessor_config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilFilter {
    /// `Image.NEAREST` (0).
    Nearest,
    /// `Image.LANCZOS` (1).
    Lanczos,
    /// `Image.BILINEAR` (2).
    Bilinear,
    /// `Image.BICUBIC` (3).
    Bicubic,
    /// `Image.BOX` (4).
    Box,
    /// `Image.HAMMING` (5).
    Hamming,
}

impl PilFilter {
    /// The filter for a PIL resample id.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::Nearest,
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            4 => Self::Box,
            5 => Self::Hamming,
            _ => return None,
        })
    }

    fn support(self) -> f64 {
        match self {
            Self::Nearest | Self::Box => 0.5,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let sinc = |x: f64| {
            if x == 0.0 { 1.0 } else { (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x) }
        };
        match self {
            Self::Nearest | Self::Box => {
                if (-0.5..0.5).contains(&x) {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => (1.0 - x.abs()).max(0.0),
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x * (0.54 + 0.46 * x.cos())
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output sample: first input index and fixed-point weights.
fn coefficients(in_size: usize, out_size: usize, filter: PilFilter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut k: Vec<f64> = (xmin..xmax).map(|x| filter.weight((x as f64 - center + 0.5) * ss)).collect();
            let total: f64 = k.iter().sum();
            if total != 0.0 {
                k.iter_mut().for_each(|w| *w /= total);
            }
            let one = (1u64 << PRECISION_BITS) as f64;
            let fixed =
                k.iter().map(|&w| if w < 0.0 { (-0.5 + w * one) as i32 } else { (0.5 + w * one) as i32 }).collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes like `PIL.Image.resize((width, height), filter)` (nearest neighbour excluded).
pub fn pil_resize(img: &RgbImage, width: u32, height: u32, filter: PilFilter) -> RgbImage {
    let (w0, h0) = img.dimensions();
    let mut cur = img.clone();
    if width != w0 {
        let coeffs = coefficients(w0 as usize, width as usize, filter);
        let mut out = RgbImage::new(width, h0);
        for y in 0..h0 {
            for (x, (xmin, k)) in coeffs.iter().enumerate() {
                let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
                for (i, &w) in k.iter().enumerate() {
                    let p = cur.get_pixel((xmin + i) as u32, y);
                    (0..3).for_each(|c| acc[c] += p[c] as i64 * w as i64);
                }
                out.put_pixel(x as u32, y, ::image::Rgb([clip8(acc[0]), clip8(acc[1]), clip8(acc[2])]));
            }
        }
        cur = out;
    }
    if height != h0 {
        let coeffs = coefficients(h0 as usize, height as usize, filter);
        let mut out = RgbImage::new(cur.width(), height);
        for (y, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..cur.width() {
                let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
                for (i, &w) in k.iter().enumerate() {
                    let p = cur.get_pixel(x, (ymin + i) as u32);
                    (0..3).for_each(|c| acc[c] += p[c] as i64 * w as i64);
                }
                out.put_pixel(x, y as u32, ::image::Rgb([clip8(acc[0]), clip8(acc[1]), clip8(acc[2])]));
            }
        }
        cur = out;
    }
    cur
}
