//! Strict image decoding shared by every entry point (CLI, batch, server, training data, evaluation): declared
//! dimensions are checked against limits before any pixel is decoded, and a truncated or corrupt file is an error,
//! never a partly grey image.
use std::io::Cursor;
use std::path::Path;

use ::image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use crate::error::ImageError;

/// Bounds on an image, checked from its header before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest width or height, pixels.
    pub max_side: u32,
    /// Largest width × height.
    pub max_pixels: u64,
    /// Largest image file [`load_image_within`] reads, bytes.
    pub max_file_bytes: u64,
}

impl Default for ImageLimits {
    /// 16384 per side and 64 megapixels (256 MiB decoded): far above any camera photo, far below an allocation
    /// that could take the process down; files up to 256 MiB.
    fn default() -> Self {
        Self::new(16_384, 64 << 20)
    }
}

/// Most memory the chunks before the pixel data may take while the header is read (a PNG's compressed colour
/// profile and text chunks inflate into it): real ICC profiles take well under 1 MiB.
pub const HEADER_BYTES: u64 = 8 << 20;

/// Most memory a decoder takes besides its output buffer (row buffers, the zlib window, Huffman tables).
pub const DECODER_BYTES: u64 = 16 << 20;

impl ImageLimits {
    /// Limits of `max_side` per side and `max_pixels` in all, with files up to 256 MiB.
    pub fn new(max_side: u32, max_pixels: u64) -> Self {
        Self { max_side, max_pixels, max_file_bytes: 256 << 20 }
    }

    /// Largest decoded buffer: 4 bytes (RGBA8) per pixel at the pixel limit. A 16-bit image takes up to 8 bytes
    /// a pixel, so it is refused above half the pixel limit.
    pub fn max_decoded_bytes(&self) -> u64 {
        self.max_pixels.saturating_mul(4)
    }

    /// The most memory [`ImageHeader::memory`] gives for an image within these limits.
    pub fn decode_memory_bound(&self) -> u64 {
        memory(self.max_pixels, self.max_decoded_bytes())
    }
}

/// The memory an image of `pixels` decoding to `decoded` bytes holds at its peak while it is decoded and kept as
/// RGB8: the decoded buffer, then either a second one (a JPEG is decoded twice by the truncation check) or the RGB8
/// copy, whichever is larger, plus the header's chunks and the decoder's own buffers.
fn memory(pixels: u64, decoded: u64) -> u64 {
    decoded.saturating_add(decoded.max(pixels.saturating_mul(3))).saturating_add(HEADER_BYTES + DECODER_BYTES)
}

/// What an image's header declares, read within [`HEADER_BYTES`] and checked against the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// PNG, JPEG, WebP or GIF.
    pub format: ImageFormat,
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// Size of the decoded buffer, bytes.
    pub decoded_bytes: u64,
}

impl ImageHeader {
    /// The most memory this image holds while [`decode_image`] decodes it and its RGB8 copy is made (the encoded
    /// bytes are the caller's): what a server reserves before decoding it.
    pub fn memory(&self) -> u64 {
        memory(u64::from(self.width) * u64::from(self.height), self.decoded_bytes)
    }
}

/// Opens and strictly decodes an image file within the default limits; every failure names the file.
pub fn load_image(path: &Path) -> Result<DynamicImage, ImageError> {
    load_image_within(path, &ImageLimits::default())
}

/// [`load_image`] within `limits`. Only a regular file is read (a device such as `/dev/zero`, a FIFO or a
/// directory is an error before anything is read), and at most `limits.max_file_bytes` of it.
pub fn load_image_within(path: &Path, limits: &ImageLimits) -> Result<DynamicImage, ImageError> {
    let bytes = read_regular_file(path, limits.max_file_bytes)?;
    decode_image(&bytes, limits).map_err(|e| match e {
        ImageError::DecodeBytes(source) => ImageError::Decode { path: path.into(), source },
        ImageError::Invalid(reason) => ImageError::Invalid(format!("{}: {reason}", path.display())),
        other => other,
    })
}

/// Reads a regular file of at most `max` bytes; anything else is an error naming the path.
fn read_regular_file(path: &Path, max: u64) -> Result<Vec<u8>, ImageError> {
    use std::io::Read;
    let io = |e: std::io::Error| ImageError::Decode { path: path.into(), source: ::image::ImageError::IoError(e) };
    let invalid = |reason: String| ImageError::Invalid(format!("{}: {reason}", path.display()));
    // Checked before opening: opening a FIFO blocks until a writer comes.
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(invalid("not a regular file (a device, FIFO, socket or directory is never read)".into()));
    }
    if meta.len() > max {
        return Err(invalid(format!("the file has {} bytes; the limit is {max}", meta.len())));
    }
    let file = std::fs::File::open(path).map_err(io)?;
    if !file.metadata().map_err(io)?.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(invalid(format!("the file grew past the limit of {max} bytes while it was read")));
    }
    Ok(bytes)
}

/// Reads and checks an image's header within [`HEADER_BYTES`]: PNG, JPEG, WebP or GIF, a declared size within the
/// limits, and a decoded size within [`ImageLimits::max_decoded_bytes`]. Nothing is decoded.
pub fn probe_image(bytes: &[u8], limits: &ImageLimits) -> Result<ImageHeader, ImageError> {
    let (header, _) = header_decoder(bytes, limits)?;
    Ok(header)
}

/// The header and a decoder positioned after it, whose allocations are bounded by [`HEADER_BYTES`].
fn header_decoder<'a>(
    bytes: &'a [u8],
    limits: &ImageLimits,
) -> Result<(ImageHeader, impl ImageDecoder + 'a), ImageError> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(ImageError::from_io)?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif)) => f,
        Some(other) => {
            return Err(ImageError::Invalid(format!(
                "{other:?} images are not supported (PNG, JPEG, WebP or GIF expected)"
            )));
        }
        None => {
            return Err(ImageError::Invalid("image format not recognised (PNG, JPEG, WebP or GIF expected)".into()));
        }
    };
    let mut l = Limits::default();
    l.max_alloc = Some(HEADER_BYTES);
    reader.limits(l);
    let mut decoder = reader.into_decoder().map_err(ImageError::DecodeBytes)?;
    // The PNG decoder drops a colour profile it cannot inflate within the budget and goes on; such a file is refused.
    if format == ImageFormat::Png && png_has_iccp(bytes) && decoder.icc_profile().ok().flatten().is_none() {
        return Err(ImageError::Invalid(format!(
            "the PNG's colour profile (iCCP) is corrupt or inflates past {HEADER_BYTES} bytes"
        )));
    }
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::Invalid(format!("the image declares {width}×{height} pixels")));
    }
    let pixels = u64::from(width) * u64::from(height);
    if width.max(height) > limits.max_side || pixels > limits.max_pixels {
        return Err(ImageError::Invalid(format!(
            "the image declares {width}×{height} pixels; the limits are {} per side and {} in all",
            limits.max_side, limits.max_pixels
        )));
    }
    let decoded_bytes = decoder.total_bytes();
    if decoded_bytes > limits.max_decoded_bytes() {
        return Err(ImageError::Invalid(format!(
            "the {width}×{height} image decodes to {decoded_bytes} bytes ({:?}); the limit is {} (4 bytes a pixel \
             at the pixel limit)",
            decoder.color_type(),
            limits.max_decoded_bytes()
        )));
    }
    Ok((ImageHeader { format, width, height, decoded_bytes }, decoder))
}

/// Strictly decodes PNG, JPEG, WebP or GIF bytes (the first frame of an animation) within `limits`, holding at most
/// [`ImageHeader::memory`] besides `bytes`.
pub fn decode_image(bytes: &[u8], limits: &ImageLimits) -> Result<DynamicImage, ImageError> {
    let (header, mut decoder) = header_decoder(bytes, limits)?;
    match header.format {
        ImageFormat::Jpeg => {
            drop(decoder);
            let end = check_jpeg_complete(bytes)?;
            let image = decode_jpeg_strict(bytes, limits)?;
            check_jpeg_not_padded(bytes, end, &image, limits)?;
            return Ok(image);
        }
        ImageFormat::Png if !bytes.windows(IEND.len()).any(|w| w == IEND) => {
            return Err(ImageError::Invalid("the PNG is truncated (no IEND chunk)".into()));
        }
        // The GIF decoder returns a frame whose data ended early without a word; a complete file ends with its
        // trailer byte after the last block's terminator.
        ImageFormat::Gif if !bytes.ends_with(&[0x00, 0x3B]) => {
            return Err(ImageError::Invalid("the GIF is truncated (no trailer after its last block)".into()));
        }
        _ => {}
    }
    let mut l = Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(header.decoded_bytes.saturating_add(DECODER_BYTES));
    decoder.set_limits(l).map_err(ImageError::DecodeBytes)?;
    DynamicImage::from_decoder(decoder).map_err(ImageError::DecodeBytes)
}

/// Refuses a JPEG whose last scan was cut short and given an end-of-image marker: the decoder fills a scan that
/// meets the end marker early with zero bits and reports success. Bytes inserted before the end marker change
/// nothing in a complete scan (its data ended before them) but enter a cut one, so the image is decoded again with
/// them and must come out the same. When that second decode fails, nothing can be told and the image stands.
/// `end` is the offset of the end-of-image marker [`check_jpeg_complete`] found.
fn check_jpeg_not_padded(
    bytes: &[u8],
    end: usize,
    image: &DynamicImage,
    limits: &ImageLimits,
) -> Result<(), ImageError> {
    let mut padded = Vec::with_capacity(bytes.len() + PAD.len());
    padded.extend_from_slice(&bytes[..end]);
    padded.extend_from_slice(&PAD);
    padded.extend_from_slice(&bytes[end..]);
    match decode_jpeg(&padded, limits, false) {
        Ok(other) if other.as_bytes() != image.as_bytes() => Err(ImageError::Invalid(
            "the JPEG is truncated: its last scan ends before its image data does (an end marker was appended)".into(),
        )),
        _ => Ok(()),
    }
}

/// Non-zero filler without `0xFF`, so it can never form a marker or look like the zero bits a decoder pads with.
const PAD: [u8; 64] = [0x5A; 64];

/// Whether a PNG has an `iCCP` chunk before its image data (chunks walked from the signature).
fn png_has_iccp(bytes: &[u8]) -> bool {
    let mut at = 8usize;
    while let Some(head) = bytes.get(at..at + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        match &head[4..8] {
            b"iCCP" => return true,
            b"IDAT" | b"IEND" => return false,
            _ => {}
        }
        at = match at.checked_add(12).and_then(|a| a.checked_add(len)) {
            Some(next) => next,
            None => return false,
        };
    }
    false
}

/// The end of every complete PNG: the `IEND` chunk type and its fixed CRC.
const IEND: [u8; 8] = [0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82];

/// Decodes a JPEG with the decoder's strict mode on: a scan that runs out of data or a marker inside entropy-coded
/// data is an error. Colour spaces map as in `image`'s own JPEG decoder, so pixels are identical to it.
fn decode_jpeg_strict(bytes: &[u8], limits: &ImageLimits) -> Result<DynamicImage, ImageError> {
    decode_jpeg(bytes, limits, true)
}

/// Decodes a JPEG with zune-jpeg, in strict mode or not.
fn decode_jpeg(bytes: &[u8], limits: &ImageLimits, strict: bool) -> Result<DynamicImage, ImageError> {
    use zune_core::colorspace::ColorSpace;
    let corrupt = |e: zune_jpeg::errors::DecodeErrors| ImageError::Invalid(format!("corrupt JPEG: {e}"));
    let side = limits.max_side as usize;
    let options =
        zune_core::options::DecoderOptions::default().set_strict_mode(strict).set_max_width(side).set_max_height(side);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(corrupt)?;
    let space = decoder.input_colorspace().unwrap_or(ColorSpace::RGB);
    let out = match space {
        ColorSpace::RGB | ColorSpace::RGBA | ColorSpace::Luma | ColorSpace::LumaA => space,
        _ => ColorSpace::RGB,
    };
    decoder.set_options(decoder.options().jpeg_set_out_colorspace(out));
    let pixels = decoder.decode().map_err(corrupt)?;
    let (w, h) = decoder.dimensions().ok_or_else(|| ImageError::Invalid("JPEG without dimensions".into()))?;
    let (w, h) = (w as u32, h as u32);
    let wrong = || ImageError::Invalid("the JPEG decoder returned a buffer of the wrong size".into());
    Ok(match out {
        ColorSpace::Luma => DynamicImage::ImageLuma8(::image::GrayImage::from_raw(w, h, pixels).ok_or_else(wrong)?),
        ColorSpace::LumaA => {
            DynamicImage::ImageLumaA8(::image::GrayAlphaImage::from_raw(w, h, pixels).ok_or_else(wrong)?)
        }
        ColorSpace::RGBA => DynamicImage::ImageRgba8(::image::RgbaImage::from_raw(w, h, pixels).ok_or_else(wrong)?),
        _ => DynamicImage::ImageRgb8(::image::RgbImage::from_raw(w, h, pixels).ok_or_else(wrong)?),
    })
}

/// Checks a JPEG's structure before decoding, because decoders fill missing data with grey and report success:
/// - its last scan must end with an end-of-image marker (entropy-coded data stuffs every `0xFF` byte, so an
///   `FF D9` after the last start-of-scan `FF DA` is the real end; a thumbnail's end marker comes earlier);
/// - its scans must be long enough for the frame it declares: every 8×8 block costs at least one bit (its DC
///   code), so a header that claims 4000×4000 pixels over a few hundred bytes of data is refused.
///
/// Returns the offset of that end-of-image marker.
fn check_jpeg_complete(bytes: &[u8]) -> Result<usize, ImageError> {
    let invalid = |reason: &str| Err(ImageError::Invalid(format!("the JPEG {reason}")));
    let (blocks, first_scan) = jpeg_frame(bytes).ok_or_else(|| {
        ImageError::Invalid("the JPEG has no frame header or no image data (no start-of-scan marker)".into())
    })?;
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(scan), Some(end)) if end > scan => {
            if ((end - first_scan) as u64) * 8 < blocks {
                return invalid(&format!(
                    "is corrupt: {} bytes of scan data cannot hold the {blocks} blocks its frame declares",
                    end - first_scan
                ));
            }
            Ok(end)
        }
        _ => invalid("is truncated (no end-of-image marker after its last scan)"),
    }
}

/// The number of 8×8 blocks the first frame header declares and the offset of the first start-of-scan marker,
/// found by walking the marker segments.
fn jpeg_frame(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut at = 2;
    let mut blocks = None;
    loop {
        while *bytes.get(at)? == 0xFF && *bytes.get(at + 1)? == 0xFF {
            at += 1;
        }
        if *bytes.get(at)? != 0xFF {
            return None;
        }
        let marker = *bytes.get(at + 1)?;
        if marker == 0xDA {
            return blocks.map(|b| (b, at));
        }
        let len = usize::from(u16::from_be_bytes([*bytes.get(at + 2)?, *bytes.get(at + 3)?]));
        let segment = bytes.get(at + 4..at + 2 + len)?;
        let is_frame = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_frame && blocks.is_none() {
            blocks = Some(frame_blocks(segment)?);
        }
        at += 2 + len;
    }
}

/// Blocks of a frame header body: `P Y(2) X(2) Nf` then `Nf × (C, HV, Tq)`.
fn frame_blocks(sof: &[u8]) -> Option<u64> {
    let (height, width) =
        (u16::from_be_bytes([*sof.get(1)?, *sof.get(2)?]), u16::from_be_bytes([*sof.get(3)?, *sof.get(4)?]));
    let components: Vec<(u64, u64)> = sof
        .get(6..6 + 3 * usize::from(*sof.get(5)?))?
        .chunks(3)
        .map(|c| (u64::from(c[1] >> 4), u64::from(c[1] & 15)))
        .collect();
    let h_max = components.iter().map(|c| c.0).max()?.max(1);
    let v_max = components.iter().map(|c| c.1).max()?.max(1);
    let (w, h) = (u64::from(width), u64::from(height));
    Some(
        components
            .iter()
            .map(|&(hs, vs)| (w * hs).div_ceil(h_max).div_ceil(8) * (h * vs).div_ceil(v_max).div_ceil(8))
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::image::{Rgb, RgbImage};

    fn encoded(format: ImageFormat, w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8]));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img).write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    /// The error text of a decode that must fail (never the image: a dump would flood the output).
    fn error(bytes: &[u8], limits: &ImageLimits) -> String {
        match decode_image(bytes, limits) {
            Ok(img) => panic!("decoded a {}×{} image", img.width(), img.height()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn whole_images_decode_and_truncated_or_oversized_ones_are_errors() {
        let limits = ImageLimits::default();
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP, ImageFormat::Gif] {
            let bytes = encoded(format, 64, 48);
            let img = decode_image(&bytes, &limits).map_err(|e| e.to_string()).unwrap();
            assert_eq!((img.width(), img.height()), (64, 48));
            for keep in [bytes.len() * 3 / 4, bytes.len() / 2, bytes.len() - 2] {
                let decoded = decode_image(&bytes[..keep], &limits).is_ok();
                assert!(!decoded, "{format:?} cut to {keep} of {} bytes decoded", bytes.len());
            }
            let small = ImageLimits { max_side: 63, ..limits };
            let appended = [&bytes[..bytes.len() * 3 / 4], &[0xFF, 0xD9][..]].concat();
            assert!(decode_image(&appended, &limits).is_err(), "{format:?} cut with an end marker decoded");
            assert!(error(&bytes, &small).contains("declares 64×48"));
            let few = ImageLimits { max_pixels: 64 * 48 - 1, ..limits };
            assert!(error(&bytes, &few).contains("declares 64×48"));
        }
        assert!(error(b"BM\x00\x00\x00 not really", &limits).contains("PNG, JPEG, WebP or GIF expected"));
        assert!(error(b"plain text", &limits).contains("not recognised"));
    }

    #[test]
    fn a_jpeg_header_claiming_a_huge_image_without_data_is_refused_before_decoding() {
        let mut bytes = encoded(ImageFormat::Jpeg, 16, 16);
        // Rewrite the SOF0 frame size to 4000 × 4000 and drop everything after the frame header.
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        bytes[sof + 5..sof + 9].copy_from_slice(&[0x0F, 0xA0, 0x0F, 0xA0]);
        let err = error(&bytes, &ImageLimits::default());
        assert!(err.contains("cannot hold the 750000 blocks"), "{err}");
        error(&bytes[..sof + 19], &ImageLimits::default());
        let tight = ImageLimits::new(4096, 4 << 20);
        assert!(error(&bytes, &tight).contains("declares 4000×4000"));
    }
}
