//! Typographic images for the demo data: text rendered with TrueType/OpenType fonts (ab_glyph) or the built-in
//! 8×8 bitmap font, in many sizes, colours, backgrounds and layouts, optionally followed by FigStep's empty
//! numbered list.
use ab_glyph::{Font, FontVec, PxScale, ScaleFont};
use image::{Rgb, RgbImage, imageops};
use rand::Rng;
use rand::rngs::StdRng;

/// A text renderer: a loaded font file, or the 8×8 bitmap font.
pub enum Renderer {
    /// An outline font.
    Outline(Box<FontVec>),
    /// The `font8x8` bitmap font, scaled by whole pixels.
    Bitmap,
}

impl Renderer {
    /// Loads a `.ttf` / `.otf` file.
    pub fn load(path: &std::path::Path) -> Result<Self, crate::DemoError> {
        let bytes = std::fs::read(path).map_err(crate::DemoError::io(path))?;
        FontVec::try_from_vec(bytes)
            .map(|f| Self::Outline(Box::new(f)))
            .map_err(|source| crate::DemoError::Font { path: path.into(), source })
    }

    /// Width of `text` at `px` pixels.
    fn width(&self, text: &str, px: f32) -> f32 {
        match self {
            Self::Outline(font) => {
                let f = font.as_scaled(PxScale::from(px));
                text.chars().map(|c| f.h_advance(f.glyph_id(c))).sum()
            }
            Self::Bitmap => text.chars().count() as f32 * 8.0 * (px / 8.0).round().max(1.0),
        }
    }

    /// Draws one line with its top-left corner at `(x, y)`.
    fn draw(&self, img: &mut RgbImage, text: &str, (x, y): (f32, f32), px: f32, colour: Rgb<u8>) {
        match self {
            Self::Outline(font) => {
                let f = font.as_scaled(PxScale::from(px));
                let mut caret = x;
                for c in text.chars() {
                    let id = f.glyph_id(c);
                    let glyph = id.with_scale_and_position(PxScale::from(px), ab_glyph::point(caret, y + f.ascent()));
                    caret += f.h_advance(id);
                    let Some(outlined) = font.outline_glyph(glyph) else { continue };
                    let bounds = outlined.px_bounds();
                    outlined.draw(|gx, gy, coverage| {
                        let (px_, py_) = (bounds.min.x as i64 + gx as i64, bounds.min.y as i64 + gy as i64);
                        if px_ >= 0 && py_ >= 0 && (px_ as u32) < img.width() && (py_ as u32) < img.height() {
                            let p = img.get_pixel_mut(px_ as u32, py_ as u32);
                            for k in 0..3 {
                                p.0[k] = (p.0[k] as f32 * (1.0 - coverage) + colour.0[k] as f32 * coverage) as u8;
                            }
                        }
                    });
                }
            }
            Self::Bitmap => {
                let scale = (px / 8.0).round().max(1.0) as u32;
                draw_text(img, text, (x.max(0.0) as u32, y.max(0.0) as u32), scale, colour);
            }
        }
    }
}

/// Draws `text` with the 8×8 bitmap font, each glyph pixel a `scale`×`scale` square, top-left at `(x, y)`;
/// what falls outside the image is clipped.
pub fn draw_text(img: &mut RgbImage, text: &str, (x, y): (u32, u32), scale: u32, colour: Rgb<u8>) {
    use font8x8::UnicodeFonts;
    let (w, h) = img.dimensions();
    for (col, ch) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS.get(ch).unwrap_or([0; 8]);
        let x0 = x + col as u32 * 8 * scale;
        for (gy, bits) in glyph.iter().enumerate() {
            for gx in (0..8u32).filter(|gx| bits >> gx & 1 == 1) {
                for (dx, dy) in (0..scale).flat_map(|dx| (0..scale).map(move |dy| (dx, dy))) {
                    let (px, py) = (x0 + gx * scale + dx, y + gy as u32 * scale + dy);
                    if px < w && py < h {
                        img.put_pixel(px, py, colour);
                    }
                }
            }
        }
    }
}

/// How a typographic image looks.
#[derive(Debug, Clone)]
pub struct Style {
    /// Text height in pixels.
    pub px: f32,
    /// Text colour.
    pub ink: Rgb<u8>,
    /// Centre each line instead of aligning it left.
    pub centred: bool,
    /// Add FigStep's empty "1. 2. 3." list below the text.
    pub numbered_list: bool,
    /// Margin in pixels.
    pub margin: f32,
}

impl Style {
    /// A random style for a `size`-pixel image: 6–12 % of the side for the text, dark ink on light backgrounds or
    /// light ink on dark ones (`dark_background`).
    pub fn random(size: u32, dark_background: bool, rng: &mut StdRng) -> Self {
        let shade = |lo: u8, hi: u8, rng: &mut StdRng| {
            Rgb([rng.random_range(lo..hi), rng.random_range(lo..hi), rng.random_range(lo..hi)])
        };
        Self {
            px: size as f32 * rng.random_range(0.06..0.12),
            ink: if dark_background { shade(200, 255, rng) } else { shade(0, 70, rng) },
            centred: rng.random_bool(0.4),
            numbered_list: rng.random_bool(0.5),
            margin: size as f32 * rng.random_range(0.03..0.1),
        }
    }
}

/// A random background: a flat light or dark colour, a vertical gradient, or (when given) a faded photo.
pub fn background(size: u32, dark: bool, photo: Option<&RgbImage>, rng: &mut StdRng) -> RgbImage {
    let base = if dark { rng.random_range(10u16..60) } else { rng.random_range(200u16..256) } as u8;
    let tint = |rng: &mut StdRng| -> [i16; 3] {
        [rng.random_range(-25..25), rng.random_range(-25..25), rng.random_range(-25..25)]
    };
    let (t0, t1) = (tint(rng), tint(rng));
    let clamp = |v: i16| v.clamp(0, 255) as u8;
    match (photo, rng.random_range(0..3)) {
        (Some(p), 0) => {
            let mut img = imageops::resize(p, size, size, imageops::FilterType::Triangle);
            for px in img.pixels_mut() {
                for c in px.0.iter_mut() {
                    *c = ((*c as u16 + 3 * base as u16) / 4) as u8;
                }
            }
            img
        }
        (_, 1) => RgbImage::from_fn(size, size, |_, y| {
            let f = y as f32 / size as f32;
            Rgb(std::array::from_fn(|k| clamp(base as i16 + (t0[k] as f32 * (1.0 - f) + t1[k] as f32 * f) as i16)))
        }),
        _ => RgbImage::from_pixel(size, size, Rgb(std::array::from_fn(|k| clamp(base as i16 + t0[k])))),
    }
}

/// Renders `text` word-wrapped onto `canvas` in `style`; lines that do not fit are dropped.
pub fn typeset(canvas: &mut RgbImage, text: &str, renderer: &Renderer, style: &Style) {
    let width = canvas.width() as f32 - 2.0 * style.margin;
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let candidate = if line.is_empty() { word.to_string() } else { format!("{line} {word}") };
        if !line.is_empty() && renderer.width(&candidate, style.px) > width {
            lines.push(std::mem::replace(&mut line, word.to_string()));
        } else {
            line = candidate;
        }
    }
    lines.push(line);
    if style.numbered_list {
        lines.extend(["1.", "2.", "3."].map(String::from));
    }
    let step = style.px * 1.25;
    for (i, l) in lines.iter().enumerate() {
        let y = style.margin + i as f32 * step;
        if y + style.px > canvas.height() as f32 {
            break;
        }
        let x = if style.centred {
            (canvas.width() as f32 - renderer.width(l, style.px)).max(0.0) / 2.0
        } else {
            style.margin
        };
        renderer.draw(canvas, l, (x, y), style.px, style.ink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn bitmap_text_wraps_and_varies_with_the_text() {
        let style = Style { px: 16.0, ink: Rgb([0, 0, 0]), centred: false, numbered_list: true, margin: 8.0 };
        let mut a = RgbImage::from_pixel(224, 224, Rgb([255, 255, 255]));
        let mut b = a.clone();
        typeset(&mut a, "How to pick a lock with a paper clip and patience", &Renderer::Bitmap, &style);
        typeset(&mut b, "How to bake bread", &Renderer::Bitmap, &style);
        let dark = a.pixels().filter(|p| p.0[0] == 0).count();
        assert!(dark > 500 && a != b, "{dark} dark pixels");
        // Wrapped: ink on a second text line (y 28..44) as well as the first.
        assert!((28..44).any(|y| (0..224).any(|x| a.get_pixel(x, y).0[0] == 0)));
        let mut rng = StdRng::seed_from_u64(3);
        let bg = background(64, true, None, &mut rng);
        assert!(bg.pixels().all(|p| p.0.iter().all(|&c| c < 90)));
    }
}
