//! Finding weight files in a model directory and reading their tensors (safetensors, PyTorch pickles).
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use burn::store::burn_pack::{Error as PackError, Tensor as PackTensor};
use burn::store::{ModuleStore, PytorchStore};
use burn::tensor::{DType, TensorData};

use crate::error::LoadError;
use psa_models::config::read_json;

/// A checkpoint tensor together with the file it came from.
pub(crate) struct FileTensor {
    pub tensor: PackTensor,
    pub path: PathBuf,
}

/// The weight files of a model directory, shards in index order; a file path is returned as is.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    if dir.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    for index in ["model.safetensors.index.json", "pytorch_model.bin.index.json"] {
        let path = dir.join(index);
        if path.is_file() {
            return shards_from_index(dir, &path);
        }
    }
    for single in ["model.safetensors", "pytorch_model.bin"] {
        let path = dir.join(single);
        if path.is_file() {
            return Ok(vec![path]);
        }
    }
    let mut others: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| LoadError::BadFile { path: dir.into(), reason: e.to_string() })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("safetensors" | "pt" | "pth" | "bin")))
        .collect();
    others.sort();
    if others.is_empty() {
        return Err(LoadError::NoWeights { dir: dir.into() });
    }
    Ok(others)
}

fn shards_from_index(dir: &Path, index: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let value = read_json(index)?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| LoadError::BadFile { path: index.into(), reason: "no `weight_map` object".into() })?;
    let mut shards: Vec<String> = Vec::new();
    for (key, file) in map {
        let file = file.as_str().ok_or_else(|| LoadError::BadFile {
            path: index.into(),
            reason: format!("weight_map entry `{key}` is not a file name"),
        })?;
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_string());
        }
    }
    shards.sort();
    shards
        .into_iter()
        .map(|s| {
            let p = dir.join(&s);
            if p.is_file() {
                Ok(p)
            } else {
                Err(LoadError::BadFile { path: p, reason: format!("shard listed in {} is missing", index.display()) })
            }
        })
        .collect()
}

/// Reads every tensor of `path`, keyed by its name in the file. Safetensors tensors are read from disk only when
/// their parameter is loaded, one at a time, so a load holds at most one tensor beyond the model.
pub(crate) fn read_tensors(path: &Path) -> Result<BTreeMap<String, FileTensor>, LoadError> {
    let bad = |reason: String| LoadError::BadFile { path: path.into(), reason };
    let is_safetensors = path.extension().and_then(|e| e.to_str()) == Some("safetensors");
    let tensors = if is_safetensors {
        let safetensors = |source| LoadError::Safetensors { path: path.into(), source };
        let (header_len, entries) = check_safetensors(path).map_err(safetensors)?;
        deferred_safetensors(path, header_len, entries).map_err(safetensors)?
    } else {
        PytorchStore::from_file(path)
            .map_indices_contiguous(false)
            .get_all_tensors()
            .map_err(|e| bad(format!("not a readable PyTorch checkpoint: {e}")))?
            .clone()
    };
    Ok(tensors.into_iter().map(|(k, tensor)| (k, FileTensor { tensor, path: path.into() })).collect())
}

/// Tensors whose bytes are read from `path` on demand, from its validated header entries (the header is `header_len`
/// bytes long).
fn deferred_safetensors(
    path: &Path,
    header_len: u64,
    entries: Vec<SafetensorsEntry>,
) -> Result<BTreeMap<String, PackTensor>, SafetensorsError> {
    let start = 8 + header_len;
    let mut tensors = BTreeMap::new();
    for SafetensorsEntry { name, dtype, shape, offsets: (begin, end) } in entries {
        let dtype = match dtype.as_str() {
            "F64" => DType::F64,
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "I64" => DType::I64,
            "I32" => DType::I32,
            "I16" => DType::I16,
            "I8" => DType::I8,
            "U64" => DType::U64,
            "U32" => DType::U32,
            "U16" => DType::U16,
            "U8" | "BOOL" => DType::U8,
            other => return Err(SafetensorsError::Dtype { name, dtype: other.into() }),
        };
        let len = (end - begin) as usize;
        let (file, at, dims) = (path.to_path_buf(), start + begin, shape.clone());
        let provider = move || -> Result<_, PackError> {
            let io = |e: std::io::Error| PackError::IoError(format!("{}: {e}", file.display()));
            let mut f = File::open(&file).map_err(io)?;
            f.seek(SeekFrom::Start(at)).map_err(io)?;
            let mut bytes = vec![0u8; len];
            f.read_exact(&mut bytes).map_err(io)?;
            Ok(TensorData::from_bytes_vec(bytes, dims.clone(), dtype).into_bytes())
        };
        tensors.insert(name.clone(), PackTensor::deferred(name, dtype, shape, None, len, provider));
    }
    Ok(tensors)
}

/// Validates a safetensors header and that the file holds every byte the header promises; returns the header's
/// length and its entries.
fn check_safetensors(path: &Path) -> Result<(u64, Vec<SafetensorsEntry>), SafetensorsError> {
    let (size, header) = read_header(path)?;
    let n = header.len() as u64;
    Ok((n, check_safetensors_header(&header, size - 8 - n)?))
}

/// The file size and the JSON header bytes of a safetensors file.
fn read_header(path: &Path) -> Result<(u64, Vec<u8>), SafetensorsError> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| SafetensorsError::TooShort { size })?;
    let n = u64::from_le_bytes(len);
    if n > size.saturating_sub(8) || n > 100_000_000 {
        return Err(SafetensorsError::HeaderLength { header: n, size });
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(SafetensorsError::TruncatedHeader)?;
    Ok((size, header))
}

/// One validated tensor entry of a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsEntry {
    /// Tensor name.
    pub name: String,
    /// Dtype as the header spells it (`F32`, `BF16`, …).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte range in the data section.
    pub offsets: (u64, u64),
}

/// Validates a safetensors JSON header against `data` bytes of tensor data: every entry has a known dtype, a shape
/// whose byte size (checked arithmetic) equals its offset range, and a range inside the data. Returns the entries.
pub fn check_safetensors_header(header: &[u8], data: u64) -> Result<Vec<SafetensorsEntry>, SafetensorsError> {
    let Header(entries) = serde_json::from_slice(header)?;
    let mut seen = std::collections::HashSet::new();
    if let Some(name) = entries.iter().map(|(k, _)| k).find(|k| !seen.insert(k.as_str())) {
        return Err(SafetensorsError::Entry { name: name.clone(), problem: "appears twice in the header".into() });
    }
    let mut end = 0u64;
    let mut checked = Vec::with_capacity(entries.len());
    for (name, entry) in entries.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let corrupt = |what: &str| SafetensorsError::Entry { name: name.clone(), problem: what.into() };
        let offsets = entry
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?)))
            .ok_or_else(|| corrupt("has no data_offsets"))?;
        let dtype = entry.get("dtype").and_then(|d| d.as_str());
        let width = match dtype {
            Some("F64" | "I64" | "U64") => 8,
            Some("F32" | "I32" | "U32") => 4,
            Some("F16" | "BF16" | "I16" | "U16") => 2,
            Some("I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2") => 1,
            other => return Err(corrupt(&format!("has an unsupported dtype {other:?}"))),
        };
        let shape = entry.get("shape").and_then(|s| s.as_array()).ok_or_else(|| corrupt("has no shape"))?;
        let bytes = shape
            .iter()
            .try_fold(width, |n: u64, d| n.checked_mul(d.as_u64()?))
            .ok_or_else(|| corrupt(&format!("has an invalid shape {shape:?}")))?;
        if offsets.0 > offsets.1 || offsets.1 - offsets.0 != bytes {
            return Err(corrupt(&format!(
                "spans bytes {}..{} but its shape {shape:?} needs {bytes} bytes",
                offsets.0, offsets.1
            )));
        }
        end = end.max(offsets.1);
        checked.push(SafetensorsEntry {
            name: name.clone(),
            dtype: dtype.unwrap_or_default().to_string(),
            shape: shape.iter().filter_map(|d| d.as_u64()).map(|d| d as usize).collect(),
            offsets,
        });
    }
    if end > data {
        return Err(SafetensorsError::Truncated { described: end, present: data });
    }
    // The data section is covered exactly once, in order: no two tensors share bytes, no hole hides bytes.
    let mut ranges: Vec<&SafetensorsEntry> = checked.iter().collect();
    ranges.sort_by_key(|e| e.offsets);
    let mut at = 0u64;
    for e in ranges {
        if e.offsets.0 != at {
            let problem = if e.offsets.0 < at {
                format!("overlaps the tensor before it (starts at byte {}, before {at})", e.offsets.0)
            } else {
                format!("starts at byte {} and leaves bytes {at}..{} unused", e.offsets.0, e.offsets.0)
            };
            return Err(SafetensorsError::Entry { name: e.name.clone(), problem });
        }
        at = e.offsets.1;
    }
    if at != data {
        return Err(SafetensorsError::Entry {
            name: "(data section)".into(),
            problem: format!("holds {data} bytes but its tensors cover {at}"),
        });
    }
    Ok(checked)
}

/// A safetensors header with its entries in file order, duplicates kept (a JSON map would keep only the last).
struct Header(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Header {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = Header;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Header, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    out.push(entry);
                }
                Ok(Header(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// The `__metadata__` strings of a safetensors file (empty when it has none).
pub(crate) fn safetensors_metadata(path: &Path) -> Result<BTreeMap<String, String>, LoadError> {
    let safetensors = |source| LoadError::Safetensors { path: path.into(), source };
    let (_, header) = read_header(path).map_err(safetensors)?;
    let Header(entries) = serde_json::from_slice(&header).map_err(|e| safetensors(SafetensorsError::Json(e)))?;
    let meta = entries.into_iter().find(|(k, _)| k == "__metadata__").map(|(_, v)| v);
    Ok(meta
        .and_then(|m| m.as_object().cloned())
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string())))
        .collect())
}

/// A safetensors file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    /// Opening or reading the file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Fewer than the eight bytes of the header length.
    #[error("truncated: {size} bytes, too short for a safetensors header")]
    TooShort {
        /// The file's size.
        size: u64,
    },
    /// A header length larger than the file.
    #[error("corrupt or truncated: header length {header} exceeds the file size {size}")]
    HeaderLength {
        /// The header length as written.
        header: u64,
        /// The file's size.
        size: u64,
    },
    /// The file ends inside the header.
    #[error("truncated header: {0}")]
    TruncatedHeader(#[source] std::io::Error),
    /// The header is not JSON.
    #[error("corrupt safetensors header: {0}")]
    Json(#[from] serde_json::Error),
    /// An entry without offsets, dtype or shape, or whose byte size does not match its shape.
    #[error("corrupt safetensors header: tensor `{name}` {problem}")]
    Entry {
        /// The tensor.
        name: String,
        /// What is wrong with its entry.
        problem: String,
    },
    /// Less tensor data than the header describes.
    #[error("truncated: the header describes {described} bytes of tensor data but only {present} are present")]
    Truncated {
        /// Bytes the header describes.
        described: u64,
        /// Bytes present.
        present: u64,
    },
    /// A dtype this crate does not load (e.g. 8-bit floats).
    #[error("tensor `{name}` has dtype {dtype}, which psa-vlm cannot load")]
    Dtype {
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: String,
    },
}
