//! Loading a sample's image: one file, or a `<split>` pair pasted side by side. A missing or
//! undecodable image is an error; never a silent zero image.
use image::{DynamicImage, RgbImage, imageops};
use psa_pipeline::processor::load_image;

use super::jsonl::ImageRef;

/// Loads the image of a sample.
pub fn load(image: &ImageRef) -> Result<DynamicImage, psa_pipeline::ImageError> {
    match image {
        ImageRef::Single(p) => load_image(p),
        ImageRef::Pair(a, b) => {
            Ok(DynamicImage::ImageRgb8(side_by_side(&load_image(a)?.to_rgb8(), &load_image(b)?.to_rgb8())))
        }
    }
}

/// A canvas of width `w_a + w_b` and height `max(h_a, h_b)`, black, with `a` at (0, 0) and `b` at (w_a, 0).
pub fn side_by_side(a: &RgbImage, b: &RgbImage) -> RgbImage {
    let mut canvas = RgbImage::new(a.width() + b.width(), a.height().max(b.height()));
    imageops::overlay(&mut canvas, a, 0, 0);
    imageops::overlay(&mut canvas, b, a.width() as i64, 0);
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn pairs_are_top_aligned_on_black() {
        let a = RgbImage::from_pixel(2, 3, Rgb([10, 10, 10]));
        let b = RgbImage::from_pixel(4, 1, Rgb([200, 0, 0]));
        let c = side_by_side(&a, &b);
        assert_eq!(c.dimensions(), (6, 3));
        assert_eq!(c.get_pixel(1, 2), &Rgb([10, 10, 10]));
        assert_eq!(c.get_pixel(2, 0), &Rgb([200, 0, 0]));
        assert_eq!(c.get_pixel(5, 1), &Rgb([0, 0, 0]));
    }
}
