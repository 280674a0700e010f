//! Shared helpers for the integration tests: fixture paths, reference tensors, devices, tolerances.
#![allow(dead_code)]
pub mod http;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

use psa_vlm::burn::store::{
    BurnToPyTorchAdapter, ModuleAdapter, ModuleSnapshot, ModuleStore, SafetensorsStore, bridge,
};
use psa_vlm::burn::tensor::{Device, Tensor};
use psa_vlm::core::compare;
use psa_vlm::models::PsaVlm;
use psa_vlm::pipeline::processor::{ImageProcessor, ImageProcessorConfig, Template, TextProcessor};
use psa_vlm::train::data::{LabelSpace, read_jsonl};
use psa_vlm::train::prepare::{PrepareOptions, PrepareReport, Prepared, prepare};

/// `fixtures/` in the repository.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A tiny LLaVA fixture (`tiny_llava`, `tiny_llava_gqa`): the MHA variant keeps its f32 hub file, the GQA variant
/// ships only f16 shards (holding the same f16-exact values, see `tests/load_layouts.rs`).
pub fn load_tiny_llava(variant: &str, device: &Device) -> psa_vlm::models::LlavaForConditionalGeneration {
    let base = fixtures().join(variant);
    let f32_dir = base.join("hub_f32");
    let dir = if f32_dir.is_dir() { f32_dir } else { base.join("hub_f16_sharded") };
    let opts = psa_vlm::import::LoadOptions::strict();
    psa_vlm::import::load_llava(&dir, device, &opts).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).0
}

/// Every backend compiled into this build.
pub fn devices() -> Vec<(&'static str, Device)> {
    psa_vlm::device::compiled_backends()
        .into_iter()
        .map(|name| (name, psa_vlm::device::parse_device(name).expect("compiled backend parses")))
        .collect()
}

/// A reference tensor: values as f64 and its shape.
#[derive(Debug, Clone)]
pub struct Ref {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl Ref {
    pub fn ids(&self) -> Vec<Vec<u32>> {
        let cols = *self.shape.last().unwrap();
        self.values.chunks(cols).map(|r| r.iter().map(|&v| v as u32).collect()).collect()
    }
}

/// Every tensor of a safetensors fixture file.
pub fn read_fixture(path: &Path) -> BTreeMap<String, Ref> {
    let mut store = SafetensorsStore::from_file(path);
    let tensors = store.get_all_tensors().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    tensors
        .iter()
        .map(|(k, t)| {
            let data = bridge::to_data(t).unwrap();
            let shape = data.shape().to_vec();
            let values = if data.dtype().is_float() {
                data.convert::<f64>().try_to_vec::<f64>().unwrap()
            } else {
                data.convert::<i64>().try_to_vec::<i64>().unwrap().into_iter().map(|v| v as f64).collect()
            };
            (k.clone(), Ref { shape, values })
        })
        .collect()
}

/// Host values and shape of a tensor.
pub fn host<const D: usize>(t: Tensor<D>) -> (Vec<usize>, Vec<f64>) {
    let data = t.into_data();
    let shape = data.shape().to_vec();
    (shape, data.convert::<f64>().try_to_vec::<f64>().unwrap())
}

/// Max |a − b| after checking shapes; NaN or ±inf on either side fails, naming its position.
pub fn max_diff<const D: usize>(got: Tensor<D>, want: &Ref) -> f64 {
    let (shape, values) = host(got);
    assert_eq!(shape, want.shape, "shape mismatch");
    compare::max_abs_diff(&values, &want.values).unwrap_or_else(|e| match e.index() {
        Some(i) => panic!("{e} (position {:?} of shape {shape:?})", compare::unravel(i, &shape)),
        None => panic!("{e}"),
    })
}

/// Max |got − want| of two flat sequences; NaN or ±inf on either side, or different lengths, fail naming `what`.
pub fn max_abs_diff<A: Copy + Into<f64>, B: Copy + Into<f64>>(what: &str, got: &[A], want: &[B]) -> f64 {
    compare::max_abs_diff(got, want).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Asserts `got` matches `want` within `tol` (max abs) and returns the difference.
pub fn assert_close<const D: usize>(what: &str, got: Tensor<D>, want: &Ref, tol: f64) -> f64 {
    let d = max_diff(got, want);
    assert!(d <= tol, "{what}: max abs diff {d:e} > {tol:e}");
    eprintln!("{what}: max abs diff {d:.3e}");
    d
}

/// The largest of `values` (differences already computed); NaN or ±inf fails naming `what`.
pub fn largest(what: &str, values: &[f64]) -> f64 {
    compare::max_abs(values).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A reference tensor restricted to rows `r` of its first axis and positions `cols` of its second axis.
pub fn sub_ref(want: &Ref, row: usize, cols: std::ops::Range<usize>) -> Ref {
    let inner: usize = want.shape[2..].iter().product();
    let t = want.shape[1];
    let mut values = Vec::new();
    for c in cols.clone() {
        let start = (row * t + c) * inner;
        values.extend_from_slice(&want.values[start..start + inner]);
    }
    let mut shape = vec![1, cols.len()];
    shape.extend_from_slice(&want.shape[2..]);
    Ref { shape, values }
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("psa-vlm-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies every file of `from` into `to`, folders included.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Rewrites a safetensors header in place with `edit`, which gets the data length and returns bytes to append.
pub fn edit_safetensors_header(
    path: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>, usize) -> Vec<u8>,
) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let extra = edit(&mut header, bytes.len() - 8 - n);
    let mut text = serde_json::to_string(&header).unwrap();
    while text.len() < n || !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    out.extend_from_slice(&extra);
    std::fs::write(path, out).unwrap();
}

/// (level, type, answer) of the five synthetic concepts.
pub const CLASSES: [(usize, usize, &str); 5] = [
    (0, 6, "A calm picture with nothing unusual."),
    (3, 1, "I'm sorry, but I can't help with that."),
    (2, 2, "I will not repeat insults."),
    (2, 4, "I cannot identify people."),
    (1, 5, "This may be misleading."),
];

/// A 56-px image whose colour and stripe direction encode the class, with per-sample jitter.
pub fn draw(class: usize, seed: u64) -> RgbImage {
    let colours = [[40, 170, 60], [200, 30, 30], [30, 60, 200], [210, 190, 30], [170, 40, 170]];
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let (shift, jitter) = (next() % 7, (next() % 40) as i32 - 20);
    RgbImage::from_fn(56, 56, |x, y| {
        let band = match class {
            0 => 0,
            1 => (y + shift) / 4 % 2,
            2 => ((x + shift) / 6 + y / 6) % 2,
            3 => (x + shift) / 4 % 2,
            _ => ((x + y + shift) / 5) % 2,
        };
        let c = colours[class];
        let px = |v: i32| (v + jitter - 60 * band as i32).clamp(0, 255) as u8;
        Rgb([px(c[0]), px(c[1]), px(c[2])])
    })
}

pub fn dataset(dir: &Path, name: &str, per_class: usize, seed: u64) -> PathBuf {
    let mut lines = Vec::new();
    for (class, (level, risk_type, answer)) in CLASSES.iter().enumerate() {
        for i in 0..per_class {
            let file = format!("{name}_{class}_{i}.png");
            draw(class, seed + (class * 1000 + i) as u64).save(dir.join(&file)).unwrap();
            lines.push(
                serde_json::json!({
                    "safe_level": level, "safe_type": risk_type, "image": file,
                    "conversations": [{"from": "USER", "value": "<image>\nDescribe this image."},
                                      {"from": "ASSISTANT", "value": answer}]
                })
                .to_string(),
            );
        }
    }
    let path = dir.join(format!("{name}.jsonl"));
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// Every parameter of a PSA model by checkpoint-style name, as f32 values.
pub fn snapshot(model: &PsaVlm) -> BTreeMap<String, Vec<f32>> {
    model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter) as Box<dyn ModuleAdapter>), true)
        .into_iter()
        .map(|t| (t.name.clone(), bridge::to_data(&t).unwrap().convert::<f32>().try_to_vec::<f32>().unwrap()))
        .collect()
}

/// Tokenizer, short template and 56-px CLIP processor matching the tiny fixture models.
pub fn tiny_processors() -> (TextProcessor, Template, ImageProcessor) {
    let text = TextProcessor::from_file(&fixtures().join("tiny_tokenizer/tokenizer.json"), "<image>").unwrap();
    (text, Template::by_name("llava_hf").unwrap(), ImageProcessorConfig::clip(56).build().unwrap())
}

/// Reads a JSONL label file (images under `root`) and prepares it for the tiny model on `device`.
pub fn prepare_file(
    model: &PsaVlm,
    file: &Path,
    root: &Path,
    skip_bad_images: bool,
    device: &Device,
) -> Result<(Vec<Prepared>, PrepareReport), psa_vlm::train::DataError> {
    let (text, template, images) = tiny_processors();
    let samples = read_jsonl(file, root, LabelSpace::default())?;
    let opts = PrepareOptions {
        label_file: file,
        images: &images,
        text: &text,
        template: &template,
        max_len: 64,
        skip_bad_images,
        cache: None,
    };
    prepare(model, &samples, &opts, device)
}

/// The tiny PSA model as a guarded pipeline with `template` and short hints (its context is 128 positions).
pub fn tiny_pipeline(template: &str) -> psa_vlm::pipeline::GuardedPipeline {
    psa_vlm::pipeline::GuardedPipeline::load(
        &fixtures().join("tiny_psa/model"),
        Some(fixtures().join("tiny_tokenizer/tokenizer.json")),
        Template::by_name(template).unwrap(),
        &Device::flex(),
    )
    .and_then(|p| p.with_taxonomy(short_hint_taxonomy()))
    .unwrap()
}

/// The tiny pipeline written by `save_model_dir` into a scratch directory (safety config in the weights' metadata,
/// a manifest over every file, the `llava_hf` template recorded).
pub fn saved_tiny_model_dir(name: &str) -> PathBuf {
    let p = tiny_pipeline("llava_hf");
    let dir = scratch(name);
    let tokenizer = p.text.tokenizer().clone();
    let pre = psa_vlm::pipeline::processor::ImageProcessorConfig::for_vision(&p.config.llava.vision);
    let parts = psa_vlm::pipeline::ModelDirParts {
        tokenizer: &tokenizer,
        image_processor: &pre,
        template: "llava_hf",
        calibration: None,
    };
    psa_vlm::pipeline::save_model_dir(&p.model, &p.config, parts, &dir).unwrap();
    dir
}

/// The paper's taxonomy with every hint shortened to "Mind the risk." (the tiny models hold 128–256 positions).
pub fn short_hint_taxonomy() -> psa_vlm::core::Taxonomy {
    let mut taxonomy = psa_vlm::core::Taxonomy::default();
    for hint in taxonomy.hints.iter_mut().flatten() {
        *hint = hint.as_ref().map(|_| "Mind the risk.".to_string());
    }
    taxonomy
}
