//! Random-weight checkpoints of any configured shape, in the llava-hf sharded layout: a way to measure memory and
//! speed at a model's real size (LLaVA-1.5-7B, 13B) before fetching its weights. Tensors are generated and written
//! one at a time, so writing a 14 GB checkpoint needs only the largest tensor in memory.
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use safetensors::{Dtype, View};

use super::layout::denormalize;
use super::psa::layout;
use super::shapes::pytorch_shapes;
use crate::error::LoadError;
use psa_models::precision::Precision;
use psa_models::psa::PsaConfig;

/// How a random checkpoint is drawn and split.
#[derive(Debug, Clone)]
pub struct RandomCheckpoint {
    /// Dtype of every tensor in the files (the loader casts the safety modules to f32).
    pub precision: Precision,
    /// Largest shard, in bytes (transformers' default is 5 GB).
    pub shard_bytes: u64,
    /// Seed of the draw.
    pub seed: u64,
    /// Standard deviation of the weight matrices (uniform draw); norm scales are 1, biases 0.
    pub std: f32,
}

impl Default for RandomCheckpoint {
    fn default() -> Self {
        Self { precision: Precision::Bf16, shard_bytes: 5_000_000_000, seed: 0, std: 0.02 }
    }
}

/// Writes a random-weight PSA-VLM of `config`'s shapes to `dir`: `config.json`, shards
/// `model-0000k-of-0000n.safetensors` (llava-hf keys for the base, the reference's keys for the safety modules)
/// and `model.safetensors.index.json`, then `manifest.json`. `device` only hosts the lazily built model whose parameter list is read.
/// Returns the shard paths.
pub fn write_random_psa(
    config: &PsaConfig,
    dir: &Path,
    draw: &RandomCheckpoint,
    device: &Device,
) -> Result<Vec<PathBuf>, LoadError> {
    let io = |path: &Path, e: String| LoadError::BadFile { path: path.into(), reason: e };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e.to_string()))?;
    let layout = layout(&config.llava);
    let mut tensors: Vec<(String, Vec<usize>)> = pytorch_shapes(&config.init(device)?)
        .into_iter()
        .map(|(path, shape)| (denormalize(layout, &path), shape))
        .collect();
    tensors.sort();
    let width = draw.precision.bytes() as u64;
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![Vec::new()];
    let mut filled = 0u64;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() as u64 * width;
        if filled > 0 && filled + bytes > draw.shard_bytes {
            shards.push(Vec::new());
            filled = 0;
        }
        filled += bytes;
        shards.last_mut().expect("one shard at least").push((name, shape));
    }
    let n = shards.len();
    let (mut weight_map, mut total, mut paths) = (BTreeMap::new(), 0u64, Vec::new());
    for (k, shard) in shards.into_iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
        let path = dir.join(&file);
        let views: Vec<(String, RandomView)> = shard
            .into_iter()
            .map(|(name, shape)| {
                weight_map.insert(name.clone(), file.clone());
                total += shape.iter().product::<usize>() as u64 * width;
                let view = RandomView::new(&name, shape, draw);
                (name, view)
            })
            .collect();
        safetensors::serialize_to_file(views, None, &path).map_err(|e| io(&path, e.to_string()))?;
        paths.push(path);
    }
    let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    let mut value = config.to_value();
    if let Some(o) = value.as_object_mut() {
        let dtype = match draw.precision {
            Precision::F32 => "float32",
            Precision::F16 => "float16",
            Precision::Bf16 => "bfloat16",
        };
        o.insert("torch_dtype".into(), dtype.into());
    }
    for (name, v) in [("model.safetensors.index.json", index), ("config.json", value)] {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(&v).map_err(|e| io(&path, e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| io(&path, e.to_string()))?;
    }
    crate::manifest::write_manifest(dir)?;
    Ok(paths)
}

/// What a tensor is filled with.
#[derive(Debug, Clone, Copy)]
enum Fill {
    Ones,
    Zeros,
    Uniform { half_width: f32, seed: u64 },
}

/// A tensor drawn when the writer asks for its bytes.
struct RandomView {
    shape: Vec<usize>,
    precision: Precision,
    fill: Fill,
}

impl RandomView {
    fn new(name: &str, shape: Vec<usize>, draw: &RandomCheckpoint) -> Self {
        let last = name.rsplit('.').next().unwrap_or_default();
        let fill = if shape.len() == 1 && last == "weight" && name.contains("norm") {
            Fill::Ones
        } else if shape.len() == 1 && last == "bias" {
            Fill::Zeros
        } else {
            let seed = name
                .bytes()
                .fold(draw.seed ^ 0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
            Fill::Uniform { half_width: draw.std * 3f32.sqrt(), seed }
        };
        Self { shape, precision: draw.precision, fill }
    }

    fn values(&self) -> Vec<f32> {
        let n: usize = self.shape.iter().product();
        match self.fill {
            Fill::Ones => vec![1.0; n],
            Fill::Zeros => vec![0.0; n],
            Fill::Uniform { half_width, seed } => {
                const CHUNK: usize = 1 << 20;
                let mut v = vec![0f32; n];
                v.par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| {
                    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
                    c.iter_mut().for_each(|x| *x = rng.random_range(-half_width..half_width));
                });
                v
            }
        }
    }
}

impl View for RandomView {
    fn dtype(&self) -> Dtype {
        match self.precision {
            Precision::F32 => Dtype::F32,
            Precision::F16 => Dtype::F16,
            Precision::Bf16 => Dtype::BF16,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let values = self.values();
        let bytes: Vec<u8> = match self.precision {
            Precision::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Precision::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
            Precision::Bf16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        };
        Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.precision.bytes()
    }
}
