//! `run.json`: what a training or evaluation run needs to be reproduced — its seed and samplers, the SHA-256 of
//! every input file, the crate version, the git commit it was built from when known, and the exact settings.
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the `run.json` layout; bumped on any incompatible change.
pub const RECORD_VERSION: u32 = 1;

/// The git commit psa-train was built from (`git rev-parse HEAD` at build time), when it was built in a checkout.
pub const GIT_COMMIT: Option<&str> = option_env!("PSA_GIT_COMMIT");

/// One input file and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// What the file is to the run (`data`, `eval`, `model`, ...).
    pub role: String,
    /// Its path as given.
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256 of its contents.
    pub sha256: String,
}

/// A random draw of the run and how it is seeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sampler {
    /// What it draws (e.g. `epoch order`).
    pub name: String,
    /// How (e.g. `StdRng(seed ^ epoch) Fisher-Yates`).
    pub method: String,
    /// The seed it uses.
    pub seed: u64,
}

/// The record written as `run.json` beside a run's outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// [`RECORD_VERSION`].
    pub format_version: u32,
    /// `train stage1`, `train stage2` or `eval`.
    pub kind: String,
    /// psa-train's version.
    pub crate_version: String,
    /// [`GIT_COMMIT`].
    pub git_commit: Option<String>,
    /// The run's seed (`None` for runs that draw nothing at random, such as greedy evaluation).
    pub seed: Option<u64>,
    /// Every random draw and its seed.
    pub samplers: Vec<Sampler>,
    /// The input files and their digests.
    pub inputs: Vec<InputFile>,
    /// The exact settings, as the run resolved them.
    pub settings: serde_json::Value,
    /// Seconds since the Unix epoch when the record was made.
    pub created_unix: u64,
}

impl RunRecord {
    /// A record of `kind` with `settings`, no inputs and no samplers yet.
    pub fn new(kind: &str, seed: Option<u64>, settings: serde_json::Value) -> Self {
        Self {
            format_version: RECORD_VERSION,
            kind: kind.to_string(),
            crate_version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: GIT_COMMIT.map(str::to_string),
            seed,
            samplers: Vec::new(),
            inputs: Vec::new(),
            settings,
            created_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        }
    }

    /// Adds a sampler.
    pub fn sampler(mut self, name: &str, method: &str, seed: u64) -> Self {
        self.samplers.push(Sampler { name: name.into(), method: method.into(), seed });
        self
    }

    /// Records a set of files (such as a data set's images) as one entry under `role`: `bytes` is their total
    /// size and `sha256` the digest of their digests, one lower-case hex line each, in the given order.
    pub fn input_set(mut self, role: &str, root: &Path, files: &[PathBuf]) -> Self {
        let mut hasher = Sha256::new();
        let mut total = 0;
        for file in files {
            // A file that cannot be read (a run may skip bad images) enters the digest as `unreadable`.
            let digest = match sha256_file(file) {
                Ok((bytes, digest)) => {
                    total += bytes;
                    digest
                }
                Err(_) => "unreadable".to_string(),
            };
            hasher.update(digest.as_bytes());
            hasher.update(b"\n");
        }
        let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let role = format!("{role} ({} files)", files.len());
        self.inputs.push(InputFile { role, path: root.into(), bytes: total, sha256 });
        self
    }

    /// Hashes `path` (a file, or every file under a folder, in sorted order) and records it under `role`.
    pub fn input(mut self, role: &str, path: &Path) -> std::io::Result<Self> {
        for file in files_under(path)? {
            let (bytes, sha256) = sha256_file(&file)?;
            self.inputs.push(InputFile { role: role.into(), path: file, bytes, sha256 });
        }
        Ok(self)
    }

    /// Writes the record as `dir/run.json` (through a temporary file, so a crash leaves the old one or none).
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("run.json");
        let tmp = dir.join(".run.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}

/// `path` itself, or the regular files below it, sorted.
fn files_under(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        out.extend(files_under(&entry)?);
    }
    Ok(out)
}

/// Size and lower-case hex SHA-256 of a file, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file =
        std::fs::File::open(path).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((bytes, hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_files_and_folders_and_writes_atomically() {
        let dir = std::env::temp_dir().join(format!("psa-record-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data/sub")).unwrap();
        std::fs::write(dir.join("data/b.txt"), "abc").unwrap();
        std::fs::write(dir.join("data/sub/a.txt"), "").unwrap();
        let record = RunRecord::new("train stage1", Some(7), serde_json::json!({"k": 1}))
            .sampler("epoch order", "StdRng", 7)
            .input("data", &dir.join("data"))
            .unwrap();
        // The SHA-256 test vectors of "abc" and of the empty string.
        assert_eq!(record.inputs[0].sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(record.inputs[1].sha256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!((record.inputs[0].bytes, record.inputs[1].bytes), (3, 0));
        let path = record.write(&dir).unwrap();
        let back: RunRecord = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, record);
        assert!(!dir.join(".run.json.tmp").exists());
        let set = record.clone().input_set("images", &dir, &[dir.join("data/b.txt"), dir.join("gone.png")]);
        let last = set.inputs.last().unwrap();
        assert_eq!((last.role.as_str(), last.bytes), ("images (2 files)", 3));
        assert_eq!(last.sha256.len(), 64);
        assert!(record.clone().input("missing", &dir.join("nope")).unwrap_err().to_string().contains("nope"));
    }
}
