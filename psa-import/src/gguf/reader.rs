//! The GGUF container (versions 2 and 3): typed metadata, tensor descriptors, aligned tensor data.
//! Every read is bounds-checked, so a truncated or corrupt file is an error naming what broke, never a panic.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::GgufError;
use super::quant::GgmlType;
use crate::error::LoadError;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// Unsigned integer (u8, u16, u32, u64).
    Uint(u64),
    /// Signed integer (i8, i16, i32, i64).
    Int(i64),
    /// Float (f32, f64).
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// Array of values.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// As an unsigned integer (non-negative integers only).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Self::Uint(v) => Some(*v),
            Self::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    /// As a float (integers convert).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Float(v) => Some(*v),
            Self::Uint(v) => Some(*v as f64),
            Self::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// As a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// As an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A tensor descriptor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions as the file lists them, innermost first.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Elements.
    pub fn len(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row-major shape, outermost first (PyTorch order: a Linear weight is `[out, in]`).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// Most elements one tensor may declare (2^40: far beyond any real tensor, far below an overflow).
const MAX_ELEMENTS: u64 = 1 << 40;

/// A parsed GGUF file; tensor data is read (and dequantised) on demand.
#[derive(Debug, Clone)]
pub struct GgufFile {
    /// Format version.
    pub version: u32,
    /// Metadata by key.
    pub metadata: BTreeMap<String, GgufValue>,
    /// Tensor descriptors in file order.
    pub tensors: Vec<TensorInfo>,
    path: PathBuf,
    bytes: Arc<Vec<u8>>,
    data_start: usize,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| GgufError::Truncated { what: what.into(), at: self.pos })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items of at least `min_size` bytes each, checked against the bytes left.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize, GgufError> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > left {
            return Err(GgufError::Count { what: what.into(), claimed: n, left });
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.count(what, 1)?;
        let raw = self.take(n, what)?;
        String::from_utf8(raw.to_vec()).map_err(|source| GgufError::Utf8 { what: what.into(), source })
    }

    fn value(&mut self, kind: u32, what: &str, depth: usize) -> Result<GgufValue, GgufError> {
        Ok(match kind {
            0 => GgufValue::Uint(self.array::<1>(what)?[0] as u64),
            1 => GgufValue::Int(self.array::<1>(what)?[0] as i8 as i64),
            2 => GgufValue::Uint(u16::from_le_bytes(self.array(what)?) as u64),
            3 => GgufValue::Int(i16::from_le_bytes(self.array(what)?) as i64),
            4 => GgufValue::Uint(self.u32(what)? as u64),
            5 => GgufValue::Int(i32::from_le_bytes(self.array(what)?) as i64),
            6 => GgufValue::Float(f32::from_le_bytes(self.array(what)?) as f64),
            7 => GgufValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => GgufValue::String(self.string(what)?),
            9 if depth < 4 => {
                let inner = self.u32(what)?;
                let n = self.count(what, 1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(inner, what, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::Uint(self.u64(what)?),
            11 => GgufValue::Int(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::Float(f64::from_le_bytes(self.array(what)?)),
            other => return Err(GgufError::ValueType { what: what.into(), kind: other }),
        })
    }
}

impl GgufFile {
    /// Reads and parses `path`.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError::BadFile { path: path.into(), reason: e.to_string() })?;
        Self::from_bytes(bytes, path)
    }

    /// Parses GGUF bytes, checking every count, size and offset against the bytes present; `path` names them.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Self, LoadError> {
        Self::parse(bytes, path).map_err(|source| LoadError::Gguf { path: path.into(), source })
    }

    fn parse(bytes: Vec<u8>, path: &Path) -> Result<Self, GgufError> {
        let mut c = Cursor { bytes: &bytes, pos: 0 };
        if c.take(4, "the magic")? != b"GGUF" {
            return Err(GgufError::Magic);
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let n_tensors = c.count("the tensor count", 24)?;
        let n_kv = c.count("the metadata count", 12)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("a metadata key")?;
            let kind = c.u32(&key)?;
            let value = c.value(kind, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string("a tensor name")?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims > 4 {
                return Err(GgufError::Rank { tensor: name, dims: n_dims });
            }
            let dims = (0..n_dims).map(|_| c.u64(&name)).collect::<Result<Vec<_>, _>>()?;
            let elements = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
            if elements.is_none_or(|n| n > MAX_ELEMENTS) {
                return Err(GgufError::TooLarge { tensor: name, dims, max: MAX_ELEMENTS });
            }
            let ggml_type = match GgmlType::from_id(c.u32(&name)?) {
                Ok(t) => t,
                Err(source) => return Err(GgufError::Type { tensor: name, source }),
            };
            let offset = c.u64(&name)?;
            tensors.push(TensorInfo { name, dims, ggml_type, offset });
        }
        let alignment = metadata.get("general.alignment").and_then(GgufValue::as_u64).unwrap_or(32);
        if alignment == 0 || !alignment.is_power_of_two() || alignment > 1 << 20 {
            return Err(GgufError::Alignment(alignment));
        }
        let alignment = alignment as usize;
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let file = Self { version, metadata, tensors, path: path.into(), bytes: Arc::new(bytes), data_start };
        let mut spans = Vec::with_capacity(file.tensors.len());
        for t in &file.tensors {
            spans.push((t.offset, t.offset + file.raw(t)?.len() as u64, t.name.as_str()));
        }
        check_tiling(&mut spans, alignment as u64, (file.bytes.len() - file.data_start.min(file.bytes.len())) as u64)?;
        Ok(file)
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// A tensor descriptor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The stored bytes of a tensor.
    fn raw(&self, t: &TensorInfo) -> Result<&[u8], GgufError> {
        let len = t.ggml_type.byte_len(t.len()).map_err(|source| GgufError::Type { tensor: t.name.clone(), source })?;
        let end =
            (self.data_start as u64).checked_add(t.offset).and_then(|s| s.checked_add(len as u64).map(|e| (s, e)));
        let Some((start, end)) = end.filter(|&(_, e)| e <= self.bytes.len() as u64) else {
            return Err(GgufError::OutOfFile {
                tensor: t.name.clone(),
                offset: t.offset,
                len,
                file_len: self.bytes.len(),
            });
        };
        Ok(&self.bytes[start as usize..end as usize])
    }

    /// A tensor's values as f32, row-major in [`TensorInfo::shape`] order.
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>, LoadError> {
        let raw = self.raw(t).map_err(|source| LoadError::Gguf { path: self.path.clone(), source })?;
        Ok(t.ggml_type.dequantize(raw, t.len()))
    }
}

/// Checks that tensor byte ranges `(start, end, name)` (offsets from the data section) tile it as GGUF writers lay
/// it out: names unique, each start aligned, in order without overlap, and no gap of a whole alignment unit or more
/// (the only gap is the padding up to the next aligned offset), nor a whole unit after the last one in the `data`
/// bytes the file holds.
fn check_tiling(spans: &mut [(u64, u64, &str)], alignment: u64, data: u64) -> Result<(), GgufError> {
    let layout = |tensor: &str, problem: String| GgufError::Layout { tensor: tensor.into(), problem };
    let mut names = std::collections::HashSet::new();
    if let Some(&(_, _, name)) = spans.iter().find(|s| !names.insert(s.2)) {
        return Err(layout(name, "is described twice".into()));
    }
    spans.sort_unstable();
    let mut at = 0u64;
    for &(start, end, name) in spans.iter() {
        if start % alignment != 0 {
            return Err(layout(name, format!("starts at offset {start}, not a multiple of the alignment {alignment}")));
        }
        if start < at {
            return Err(layout(name, format!("starts at offset {start}, inside the tensor before it (ends at {at})")));
        }
        if start - at >= alignment {
            return Err(layout(name, format!("starts at offset {start}, leaving bytes {at}..{start} unused")));
        }
        at = end;
    }
    if let Some(&(_, end, name)) = spans.last()
        && data.saturating_sub(end) >= alignment
    {
        return Err(layout(name, format!("ends at offset {end}, leaving {} bytes after it unused", data - end)));
    }
    Ok(())
}
