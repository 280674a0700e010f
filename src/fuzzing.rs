//! Entry points of the fuzz targets in `fuzz/` and of the stable test that replays their corpus: each feeds
//! arbitrary bytes to one parser and says whether it accepted them. None may panic or allocate without bound.
use std::path::Path;

use psa_core::{SafetyAssessment, SafetyPolicy, Taxonomy};
use psa_import::check_safetensors_header;
use psa_import::gguf::{GgufFile, gguf_tokenizer, llama_config};
use psa_import::onnx::OnnxWeights;
use psa_pipeline::processor::ImageLimits;
use psa_train::data::{LabelSpace, parse_jsonl};

/// The names of the targets, in the order of [`run`].
pub const TARGETS: [&str; 6] = ["gguf", "onnx", "safetensors_header", "jsonl", "policy", "http_body"];

/// Runs target `name` on `data`; `None` for an unknown name.
pub fn run(name: &str, data: &[u8]) -> Option<bool> {
    Some(match name {
        "gguf" => gguf(data),
        "onnx" => onnx(data),
        "safetensors_header" => safetensors_header(data),
        "jsonl" => jsonl(data),
        "policy" => policy(data),
        "http_body" => http_body(data),
        _ => return None,
    })
}

/// A GGUF file: the reader, the LLaMA config from its metadata, its tokenizer, and every tensor's values.
pub fn gguf(data: &[u8]) -> bool {
    let Ok(file) = GgufFile::from_bytes(data.to_vec(), Path::new("fuzz.gguf")) else {
        return false;
    };
    let config = llama_config(&file).is_ok();
    let tokenizer = gguf_tokenizer(&file).is_ok();
    let tensors = file.tensors.iter().all(|t| file.dequantize(t).is_ok());
    config && tokenizer && tensors
}

/// An ONNX model's float initializers.
pub fn onnx(data: &[u8]) -> bool {
    OnnxWeights::from_bytes(data, Path::new("fuzz.onnx")).is_ok()
}

/// A safetensors header: the first 8 bytes give its length, the rest after it is the tensor data.
pub fn safetensors_header(data: &[u8]) -> bool {
    let Some((len, rest)) = data.split_first_chunk::<8>() else {
        return false;
    };
    let n = usize::try_from(u64::from_le_bytes(*len)).unwrap_or(usize::MAX).min(rest.len());
    check_safetensors_header(&rest[..n], (rest.len() - n) as u64).is_ok()
}

/// A JSONL label file.
pub fn jsonl(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    parse_jsonl(text, Path::new("fuzz.jsonl"), Path::new("."), LabelSpace::default()).is_ok()
}

/// A policy as TOML (then as a JSON merge patch over the default), checked and applied to every argmax cell.
pub fn policy(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let taxonomy = Taxonomy::default();
    let parsed = SafetyPolicy::parse(text, true, &taxonomy).ok().or_else(|| {
        let patch = serde_json::from_str(text).ok()?;
        SafetyPolicy::default().with_overrides(&patch, &taxonomy).ok()
    });
    let Some(policy) = parsed else {
        return false;
    };
    let (levels, types) = (taxonomy.levels.len(), taxonomy.types.len());
    (0..levels * types).all(|cell| {
        let (level, risk_type) = (cell / types, cell % types);
        let one_hot = |n: usize, at: usize| (0..n).map(|i| if i == at { 0.9 } else { 0.1 / (n - 1) as f32 }).collect();
        let a = SafetyAssessment {
            level_probs: one_hot(levels, level),
            type_probs: one_hot(types, risk_type),
            level,
            level_name: taxonomy.levels[level].name.clone(),
            risk_type,
            type_name: taxonomy.types[risk_type].name.clone(),
        };
        policy.decide(&a, &taxonomy).is_ok()
    })
}

/// A `/v1/classify` (first byte even) or `/v1/chat/completions` (odd) request body, up to the model.
pub fn http_body(data: &[u8]) -> bool {
    let Some((&route, body)) = data.split_first() else {
        return false;
    };
    let limits = ImageLimits::new(4096, 1 << 22);
    crate::serve::check_body(route % 2 == 1, body, &limits).is_ok()
}
