//! GGUF import: LLaMA-architecture files (llama.cpp's layout) as a [`LlamaForCausalLM`], its configuration from the
//! metadata, and the tokenizer from the embedded vocabulary.
//!
//! Tensors are dequantised to f32 as they are applied (F32, F16, BF16, Q8_0, Q4_0, Q4_1), renamed from llama.cpp's
//! `blk.N.attn_q` scheme to Hugging Face names, and the Q/K rows llama.cpp's converter permuted for interleaved RoPE
//! are put back in rotate-half order. A missing `output.weight` means tied embeddings.
mod error;
mod quant;
mod reader;
mod tokenizer;

use std::path::Path;
use std::sync::Arc;

use burn::store::bridge;
use burn::tensor::{Device, TensorData};
use serde_json::{Value, json};

pub use error::{GgmlTypeError, GgufError, GgufTokenizerError};
pub use quant::GgmlType;
pub use reader::{GgufFile, GgufValue, TensorInfo};
pub use tokenizer::gguf_tokenizer;

use super::files::FileTensor;
use super::{LoadOptions, LoadReport, apply_tensors, layout::Layout};
use crate::error::LoadError;
use psa_models::config::parse;
use psa_models::llama::{LlamaConfig, LlamaForCausalLM};

/// Hugging Face name of a llama.cpp tensor name, or `None` for tensors the model does not use.
pub fn hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, kind) = rest.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Puts llama.cpp's interleaved Q/K rows back in rotate-half order: GGUF row `2i + a` of each head is HF row
/// `a·d/2 + i`.
pub fn unpermute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let d = rows / heads;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for a in 0..2 {
            for i in 0..d / 2 {
                let src = (h * d + 2 * i + a) * cols;
                let dst = (h * d + a * (d / 2) + i) * cols;
                out[dst..dst + cols].copy_from_slice(&values[src..src + cols]);
            }
        }
    }
    out
}

/// A `LlamaConfig` (as `config.json` would spell it) from the `llama.*` metadata.
pub fn llama_config(file: &GgufFile) -> Result<LlamaConfig, LoadError> {
    let bad = |reason: String| LoadError::BadFile { path: file.path().into(), reason };
    let arch = file.get("general.architecture").and_then(GgufValue::as_str).unwrap_or("");
    if arch != "llama" {
        return Err(bad(format!("general.architecture is {arch:?}; only llama-architecture files are supported")));
    }
    let num = |key: &str| file.get(&format!("llama.{key}")).and_then(GgufValue::as_u64);
    let need = |key: &str| num(key).ok_or_else(|| bad(format!("metadata llama.{key} is missing")));
    let heads = need("attention.head_count")?;
    let hidden = need("embedding_length")?;
    let vocab = match num("vocab_size") {
        Some(v) => v,
        None => file.get("tokenizer.ggml.tokens").and_then(GgufValue::as_array).map_or(0, |a| a.len()) as u64,
    };
    let float = |key: &str| file.get(&format!("llama.{key}")).and_then(GgufValue::as_f64);
    let token = |key: &str| file.get(&format!("tokenizer.ggml.{key}")).and_then(GgufValue::as_u64);
    let mut value = json!({
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length")?,
        "num_hidden_layers": need("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": num("attention.head_count_kv").unwrap_or(heads),
        "head_dim": num("attention.key_length").unwrap_or(hidden / heads.max(1)),
        "rms_norm_eps": float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        "rope_theta": float("rope.freq_base").unwrap_or(10_000.0),
        "max_position_embeddings": num("context_length").unwrap_or(2048),
        "tie_word_embeddings": file.tensor("output.weight").is_none(),
        "hidden_act": "silu",
        "bos_token_id": token("bos_token_id"),
        "eos_token_id": token("eos_token_id"),
        "pad_token_id": token("padding_token_id"),
    });
    if let Some(kind) = file.get("llama.rope.scaling.type").and_then(GgufValue::as_str).filter(|k| *k != "none") {
        value["rope_scaling"] = json!({"type": kind, "factor": float("rope.scaling.factor")});
    }
    let config: LlamaConfig = parse(&value, file.path(), "LLaMA config from GGUF metadata")?;
    config.validate().map_err(|e| bad(format!("metadata: {e}")))?;
    let held: u128 = file.tensors.iter().map(|t| t.len() as u128).sum();
    if config.parameter_count() > held + held / 100 + (1 << 20) {
        return Err(bad(format!(
            "the metadata describes {} parameters but the file holds only {held} values",
            config.parameter_count()
        )));
    }
    Ok(config)
}

/// Loads a LLaMA-architecture GGUF file: the model (weights dequantised onto `device`), its configuration, and
/// what was read.
pub fn load_llama_gguf(
    path: &Path,
    device: &Device,
    opts: &LoadOptions,
) -> Result<(LlamaForCausalLM, LlamaConfig, LoadReport), LoadError> {
    let file = Arc::new(GgufFile::open(path)?);
    let config = llama_config(&file)?;
    let mut read = Vec::new();
    for (index, info) in file.tensors.iter().enumerate() {
        let key = hf_name(&info.name).unwrap_or_else(|| info.name.clone());
        let heads = if key.ends_with("q_proj.weight") {
            Some(config.num_attention_heads)
        } else if key.ends_with("k_proj.weight") {
            Some(config.kv_heads())
        } else {
            None
        };
        let shape = info.shape();
        if let Some(h) = heads
            && (shape.len() != 2 || shape[0] % (2 * h) != 0)
        {
            return Err(LoadError::BadFile {
                path: path.into(),
                reason: format!("{} has shape {shape:?}, not rows of {h} heads", info.name),
            });
        }
        let source = file.clone();
        let dims = shape.clone();
        let tensor = bridge::deferred(key.clone(), burn::tensor::DType::F32, shape.into(), None, move || {
            let info = &source.tensors[index];
            let values =
                source.dequantize(info).map_err(|e| burn::store::burn_pack::Error::ValidationError(e.to_string()))?;
            let values = match heads {
                Some(h) => unpermute_rows(&values, dims[0], dims[1], h),
                None => values,
            };
            Ok(TensorData::new(values, dims.clone()))
        });
        read.push((key, FileTensor { tensor, path: path.into() }));
    }
    let model = config.init(device)?;
    let (model, report) = apply_tensors(model, read, &[path.into()], Layout::Llama, opts, device, |_| true)?;
    Ok((model, config, report))
}

/// The chat template stored in the file (Jinja), if any.
pub fn chat_template(file: &GgufFile) -> Option<&str> {
    file.get("tokenizer.chat_template").and_then(GgufValue::as_str)
}

/// The `tokenizer.json` the file's vocabulary describes, for saving beside a converted model.
pub fn tokenizer_json(file: &GgufFile) -> Result<Value, LoadError> {
    gguf_tokenizer(file)
        .map(|(_, json)| json)
        .map_err(|e| LoadError::Gguf { path: file.path().into(), source: GgufError::Tokenizer(e) })
}
