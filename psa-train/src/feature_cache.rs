//! A disk cache of frozen vision features, keyed by the image bytes and by the vision tower that computed them
//! (a hash of its weights, its feature selection and the preprocessing), so a later run or epoch reuses them.
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ModuleSnapshot, ModuleStore, SafetensorsStore, bridge};
use burn::tensor::{Device, Tensor, TensorData};
use psa_import::write_f32_safetensors;
use psa_models::PsaVlm;
use psa_pipeline::processor::ImageProcessorConfig;
use sha2::{Digest, Sha256};

use crate::data::ImageRef;

/// Cached features live in `dir/<model key>/<image key>.safetensors`.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    dir: PathBuf,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl FeatureCache {
    /// A cache for `model`'s vision tower and `preprocess` under `root`.
    pub fn new(root: &Path, model: &PsaVlm, preprocess: &ImageProcessorConfig) -> Self {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(preprocess).unwrap_or_default());
        h.update(format!("{:?}", model.llava.image_token_index()).as_bytes());
        let tower = model.llava.vision_tower.valid();
        for t in tower.collect(None, None, true) {
            h.update(t.name.as_bytes());
            if let Ok(data) = bridge::to_data(&t) {
                h.update(data.as_bytes());
            }
        }
        h.update(format!("{}", model.llava.feature_layer()).as_bytes());
        h.update([model.llava.keeps_cls() as u8]);
        Self { dir: root.join(&hex(&h.finalize())[..16]) }
    }

    /// The directory of this model's entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key of an image: SHA-256 of its file bytes (both files of a pair).
    pub fn image_key(image: &ImageRef) -> std::io::Result<String> {
        let mut h = Sha256::new();
        match image {
            ImageRef::Single(p) => h.update(std::fs::read(p)?),
            ImageRef::Pair(a, b) => {
                h.update(std::fs::read(a)?);
                h.update(b"<split>");
                h.update(std::fs::read(b)?);
            }
        }
        Ok(hex(&h.finalize()))
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.safetensors"))
    }

    /// Cached features for an image key, if present and readable.
    pub fn get(&self, key: &str, device: &Device) -> Option<Tensor<3>> {
        let path = self.path(key);
        if !path.is_file() {
            return None;
        }
        let mut store = SafetensorsStore::from_file(&path);
        let t = store.get_all_tensors().ok()?.get("features")?.clone();
        let data: TensorData = bridge::to_data(&t).ok()?;
        Some(Tensor::from_data(data, device))
    }

    /// Stores features `[1, patches, dim]` for an image key (atomically).
    pub fn put(&self, key: &str, features: &Tensor<3>) -> Result<(), CacheError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| CacheError::Io { dir: self.dir.clone(), source })?;
        let data = features.to_data().convert::<f32>();
        let values = data.try_to_vec::<f32>().map_err(|e| CacheError::Values(format!("{e:?}")))?;
        Ok(write_f32_safetensors(&self.path(key), vec![("features".into(), data.shape().to_vec(), values)])?)
    }
}
/// Why features could not be cached.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache folder could not be made.
    #[error("{}: {source}", .dir.display())]
    Io {
        /// The folder.
        dir: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The features could not be read back from the device.
    #[error("reading the features: {0}")]
    Values(String),
    /// Writing the file failed.
    #[error(transparent)]
    Write(#[from] psa_import::LoadError),
}
