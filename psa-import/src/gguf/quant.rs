//! ggml storage types and their dequantisation to f32 (the block layouts of ggml's `ggml-quants.c`).
use half::{bf16, f16};

use super::error::GgmlTypeError;

/// A ggml tensor type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: an f16 scale `d` and 32 signed 4-bit values offset by 8; `x = d·(q − 8)`.
    Q4_0,
    /// Blocks of 32: f16 scale `d`, f16 minimum `m`, 32 unsigned 4-bit values; `x = d·q + m`.
    Q4_1,
    /// Blocks of 32: an f16 scale `d` and 32 int8 values; `x = d·q`.
    Q8_0,
    /// A type this crate does not dequantise (k-quants, i-quants, …), by id.
    Unsupported(u32),
}

const BLOCK: usize = 32;

impl GgmlType {
    /// The type with ggml id `id`.
    pub fn from_id(id: u32) -> Result<Self, GgmlTypeError> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::Bf16,
            4 | 5 | 31..=33 => return Err(GgmlTypeError::Removed(id)),
            other if other < 64 => Self::Unsupported(other),
            other => return Err(GgmlTypeError::Unknown(other)),
        })
    }

    /// Bytes that `n` elements occupy.
    pub fn byte_len(&self, n: usize) -> Result<usize, GgmlTypeError> {
        let per_block = match self {
            Self::F32 => return Ok(4 * n),
            Self::F16 | Self::Bf16 => return Ok(2 * n),
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Unsupported(id) => return Err(GgmlTypeError::Unsupported(*id)),
        };
        if !n.is_multiple_of(BLOCK) {
            return Err(GgmlTypeError::PartialBlock { elements: n, block: BLOCK });
        }
        Ok(n / BLOCK * per_block)
    }

    /// Decodes `n` elements from `raw` (exactly [`byte_len`](Self::byte_len) bytes).
    pub fn dequantize(&self, raw: &[u8], n: usize) -> Vec<f32> {
        let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
        let mut out = Vec::with_capacity(n);
        match self {
            Self::F32 => out.extend(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            Self::F16 => out.extend(raw.chunks_exact(2).map(half)),
            Self::Bf16 => out.extend(raw.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
            Self::Q8_0 => {
                for block in raw.chunks_exact(34) {
                    let d = half(&block[..2]);
                    out.extend(block[2..].iter().map(|&q| d * q as i8 as f32));
                }
            }
            Self::Q4_0 | Self::Q4_1 => {
                let (size, qs_at) = if *self == Self::Q4_0 { (18, 2) } else { (20, 4) };
                for block in raw.chunks_exact(size) {
                    let d = half(&block[..2]);
                    let (scale, offset) = if *self == Self::Q4_0 { (d, -8.0 * d) } else { (d, half(&block[2..4])) };
                    let qs = &block[qs_at..];
                    // Low nibbles are elements 0..16, high nibbles 16..32.
                    out.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * scale + offset));
                    out.extend(qs.iter().map(|&q| (q >> 4) as f32 * scale + offset));
                }
            }
            Self::Unsupported(_) => {}
        }
        out.truncate(n);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_decode_by_hand() {
        // Q8_0: d = 0.5, q = 0, 1, −2, …
        let mut b = f16::from_f32(0.5).to_le_bytes().to_vec();
        b.extend((0..32).map(|i: i32| (if i % 2 == 0 { i } else { -i }) as i8 as u8));
        let v = GgmlType::Q8_0.dequantize(&b, 32);
        assert_eq!((v[0], v[1], v[2], v[31]), (0.0, -0.5, 1.0, -15.5));
        // Q4_1: d = 2, m = −1, byte j holds element j (low) and j + 16 (high).
        let mut b = f16::from_f32(2.0).to_le_bytes().to_vec();
        b.extend(f16::from_f32(-1.0).to_le_bytes());
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = GgmlType::Q4_1.dequantize(&b, 32);
        assert_eq!((v[0], v[15], v[16], v[31]), (-1.0, 29.0, 29.0, -1.0));
        // Q4_0: x = d·(q − 8).
        let mut b = f16::from_f32(1.0).to_le_bytes().to_vec();
        b.extend([0x8Fu8; 16]);
        let v = GgmlType::Q4_0.dequantize(&b, 32);
        assert_eq!((v[0], v[16]), (7.0, 0.0));
        assert_eq!(GgmlType::Q4_1.byte_len(64), Ok(40));
        assert!(GgmlType::Q8_0.byte_len(33).unwrap_err().to_string().contains("blocks"));
        assert!(
            GgmlType::from_id(12).map(|t| t.byte_len(256)).unwrap().unwrap_err().to_string().contains("not supported")
        );
    }
}
