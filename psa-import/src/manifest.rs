//! Integrity of model directories: `manifest.json` lists the SHA-256 and size of every file a directory holds
//! (its weights, configuration, tokenizer, preprocessing, calibration and canary), so one flipped bit in a head
//! bias, an edited `config.json` or a file slipped in later is an error naming the file, never a silently different
//! model. Written last and atomically by whoever writes the directory; checked by every loader of one.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::LoadError;

/// The manifest's file name inside a model directory.
pub const MANIFEST: &str = "manifest.json";

/// Sub-directories whose files the manifest also lists.
const SUBDIRS: [&str; 1] = ["canary"];

/// One listed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    /// SHA-256, lower-case hex.
    pub sha256: String,
    /// Size, bytes.
    pub bytes: u64,
}

/// `manifest.json`: every file of a model directory, by its path relative to the directory (`/`-separated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version (1).
    pub format: u32,
    /// The files and their digests.
    pub files: BTreeMap<String, FileDigest>,
}

/// SHA-256 and size of a file, read in 1 MiB blocks.
pub fn digest_file(path: &Path) -> Result<FileDigest, LoadError> {
    let bad = |e: std::io::Error| LoadError::BadFile { path: path.into(), reason: e.to_string() };
    let mut file = std::fs::File::open(path).map_err(bad)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(bad)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(FileDigest { sha256, bytes })
}

/// The files of `dir` a manifest covers: every regular file in it and in its `canary/` folder, except the
/// manifest itself and temporary files of an interrupted write.
fn listed_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, LoadError> {
    let bad = |path: &Path, e: std::io::Error| LoadError::BadFile { path: path.into(), reason: e.to_string() };
    let mut out = Vec::new();
    let mut scan = |folder: &Path, prefix: &str| -> Result<(), LoadError> {
        if !folder.is_dir() {
            return Ok(());
        }
        for entry in std::fs::read_dir(folder).map_err(|e| bad(folder, e))? {
            let entry = entry.map_err(|e| bad(folder, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_file = std::fs::metadata(&path).map_err(|e| bad(&path, e))?.is_file();
            if !is_file || (prefix.is_empty() && name == MANIFEST) || name.ends_with(".tmp") {
                continue;
            }
            out.push((format!("{prefix}{name}"), path));
        }
        Ok(())
    };
    scan(dir, "")?;
    for sub in SUBDIRS {
        scan(&dir.join(sub), &format!("{sub}/"))?;
    }
    out.sort();
    Ok(out)
}

/// Writes `dir/manifest.json` over every file now in the directory, atomically. Returns its path.
pub fn write_manifest(dir: &Path) -> Result<PathBuf, LoadError> {
    let mut files = BTreeMap::new();
    for (name, path) in listed_files(dir)? {
        files.insert(name, digest_file(&path)?);
    }
    let path = dir.join(MANIFEST);
    let manifest = Manifest { format: 1, files };
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| LoadError::BadFile { path: path.clone(), reason: e.to_string() })?;
    write_atomically(&path, text.as_bytes())?;
    Ok(path)
}

/// Writes `bytes` to `path` through a temporary file renamed into place.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    let bad = |e: std::io::Error| LoadError::BadFile { path: path.into(), reason: e.to_string() };
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).map_err(bad)?;
    std::fs::rename(&tmp, path).map_err(bad)
}

/// Checks `dir` against its manifest: every listed file present with its size and SHA-256, and no file the
/// manifest does not list. A directory without a manifest is an error too (seal a hand-assembled one with
/// `psa seal`, or load it with `--allow-unverified`).
pub fn verify_manifest(dir: &Path) -> Result<Manifest, LoadError> {
    let path = dir.join(MANIFEST);
    let bad = |path: &Path, reason: String| LoadError::BadFile { path: path.into(), reason };
    if !path.is_file() {
        return Err(bad(
            dir,
            format!(
                "no {MANIFEST}: this model directory cannot be verified (`psa seal` writes one for a hand-assembled \
                 directory; --allow-unverified loads it anyway)"
            ),
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| bad(&path, e.to_string()))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| bad(&path, format!("not a manifest: {e}")))?;
    if manifest.format != 1 {
        return Err(bad(&path, format!("manifest format {} is not supported (1 is)", manifest.format)));
    }
    let present = listed_files(dir)?;
    for (name, file) in &present {
        if !manifest.files.contains_key(name) {
            return Err(bad(
                file,
                format!("is not listed in {MANIFEST}: a file added after the directory was written"),
            ));
        }
    }
    for (name, expected) in &manifest.files {
        let file = dir.join(name);
        if name.split('/').any(|part| part.is_empty() || part == "..") || !present.iter().any(|(n, _)| n == name) {
            return Err(bad(&file, format!("is listed in {MANIFEST} but missing")));
        }
        let found = digest_file(&file)?;
        if found.bytes != expected.bytes {
            return Err(bad(&file, format!("has {} bytes; {MANIFEST} says {}", found.bytes, expected.bytes)));
        }
        if found.sha256 != expected.sha256 {
            return Err(bad(
                &file,
                format!("SHA-256 {} differs from {MANIFEST}'s {}: the file changed", found.sha256, expected.sha256),
            ));
        }
    }
    Ok(manifest)
}
