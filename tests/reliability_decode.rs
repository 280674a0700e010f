//! Image decoding holds its memory bound against hostile files: a colour profile that inflates without bound is
//! refused within the header's budget, a 16-bit image is held to the same decoded bytes as an 8-bit one, a JPEG cut
//! short and given an end marker is refused, and only regular files within a size limit are read.
mod common;

use std::time::{Duration, Instant};

use common::fixtures;
use psa_vlm::pipeline::processor::{
    HEADER_BYTES, ImageLimits, decode_image, load_image, load_image_within, probe_image,
};

/// Held by the tests that allocate tens of MB, so the peak-memory measurement never sees another test's buffers.
static MEMORY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Peak resident memory of this process so far, bytes (Linux `VmHWM`).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib << 10
}

fn error(bytes: &[u8], limits: &ImageLimits) -> String {
    match decode_image(bytes, limits) {
        Ok(img) => panic!("decoded a {}×{} image", img.width(), img.height()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_colour_profile_that_inflates_to_256_mib_is_refused_within_the_header_budget() {
    let _alone = MEMORY.lock().unwrap_or_else(|e| e.into_inner());
    let bomb = std::fs::read(fixtures().join("hostile/iccp-bomb.png")).unwrap();
    let before = peak_rss();
    let limits = ImageLimits::new(4096, 4096 * 3072);
    let e = error(&bomb, &limits);
    assert!(probe_image(&bomb, &limits).is_err());
    let grown = peak_rss().saturating_sub(before);
    // The default limits of the image crate let this file take 256 MiB; the header budget is 8 MiB.
    assert!(grown < 4 * HEADER_BYTES, "decoding the bomb raised the peak by {grown} bytes: {e}");
    assert!(e.contains("colour profile (iCCP)") && e.contains(&HEADER_BYTES.to_string()), "{e}");
}

#[test]
fn a_16_bit_image_is_held_to_four_bytes_a_pixel_at_the_pixel_limit() {
    let _alone = MEMORY.lock().unwrap_or_else(|e| e.into_inner());
    let wide = std::fs::read(fixtures().join("hostile/rgb16-3000x2000.png")).unwrap();
    // 6 Mpx under an 8 Mpx limit: as RGB16 it decodes to 36 MB, over the 32 MiB that 8 Mpx of RGBA8 take.
    let limits = ImageLimits::new(4096, 8 << 20);
    let e = error(&wide, &limits);
    assert!(e.contains("decodes to 36000000 bytes") && e.contains(&(32u64 << 20).to_string()), "{e}");
    let header = probe_image(&wide, &ImageLimits::default()).unwrap();
    assert_eq!((header.width, header.height, header.decoded_bytes), (3000, 2000, 36_000_000));
    // The same size in 8 bits fits.
    let rgb8 = image::RgbImage::new(3000, 2000);
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(rgb8)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    assert_eq!(decode_image(&png, &limits).unwrap().width(), 3000);
}

#[test]
fn a_jpeg_cut_short_with_an_end_marker_appended_is_refused() {
    let img = image::RgbImage::from_fn(96, 64, |x, y| image::Rgb([(x * 5) as u8, (y * 3) as u8, ((x ^ y) * 2) as u8]));
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    let limits = ImageLimits::default();
    assert_eq!(decode_image(&jpeg, &limits).unwrap().height(), 64);
    for keep in [jpeg.len() / 2, jpeg.len() * 3 / 4, jpeg.len() - 40] {
        let cut = [&jpeg[..keep], &[0xFF, 0xD9][..]].concat();
        let e = error(&cut, &limits);
        assert!(e.contains("truncated"), "cut to {keep} of {}: {e}", jpeg.len());
    }
}

#[test]
fn only_regular_files_within_the_size_limit_are_read() {
    let start = Instant::now();
    let zero = load_image(std::path::Path::new("/dev/zero")).unwrap_err().to_string();
    assert!(zero.contains("not a regular file"), "{zero}");
    let dir = common::scratch("decode_special_files");
    let fifo = dir.join("fifo.png");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // Opening a FIFO without a writer would block forever.
    let e = load_image(&fifo).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    assert!(load_image(&dir).unwrap_err().to_string().contains("not a regular file"));
    let big = dir.join("big.png");
    std::fs::write(&big, vec![0u8; 4096]).unwrap();
    let small = ImageLimits { max_file_bytes: 1024, ..ImageLimits::default() };
    let e = load_image_within(&big, &small).unwrap_err().to_string();
    assert!(e.contains("4096 bytes; the limit is 1024"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn webp_and_gif_decode_by_their_content_whatever_their_file_name() {
    let img = image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 90]));
    let dir = common::scratch("decode-webp-gif");
    for (format, exact) in [(image::ImageFormat::WebP, true), (image::ImageFormat::Gif, false)] {
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgb8(img.clone()).write_to(&mut std::io::Cursor::new(&mut bytes), format).unwrap();
        // Shipped under a `.png` name, as real datasets do.
        let path = dir.join(format!("{format:?}.png"));
        std::fs::write(&path, &bytes).unwrap();
        let decoded = load_image(&path).unwrap().to_rgb8();
        assert_eq!(decoded.dimensions(), (40, 30), "{format:?}");
        if exact {
            assert_eq!(decoded, img, "lossless WebP keeps every pixel");
        }
        let cut = &bytes[..bytes.len() - 2];
        assert!(decode_image(cut, &ImageLimits::default()).is_err(), "{format:?} cut by two bytes decoded");
    }
}
