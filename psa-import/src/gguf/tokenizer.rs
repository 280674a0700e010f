//! A `tokenizers` tokenizer from GGUF metadata, built as transformers builds it from the same file:
//! `gpt2` (byte-level BPE with the file's merges) and `llama` (sentencepiece-style BPE with byte fallback, merges
//! recovered from the vocabulary and scores). Control and unknown tokens become special added tokens,
//! user-defined ones plain added tokens.
use std::collections::HashMap;

use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::error::GgufTokenizerError;
use super::reader::{GgufFile, GgufValue};

/// GPT-2's printable spelling of each byte (`bytes_to_unicode`).
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let code = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

/// Merges implied by a sentencepiece vocabulary: every split of a token into two vocabulary pieces, ordered by the
/// token's score (best first), then by the pieces' lengths (transformers' `generate_merges`).
fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let vocab: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut order: Vec<&str> = Vec::new();
    let mut score_of: HashMap<&str, f32> = HashMap::new();
    for (t, &s) in tokens.iter().zip(scores) {
        if score_of.insert(t, s).is_none() {
            order.push(t);
        }
    }
    let mut merges: Vec<(String, String, f32)> = Vec::new();
    for token in order {
        let chars: Vec<(usize, char)> = token.char_indices().collect();
        let mut local: Vec<(&str, &str)> = Vec::new();
        for &(at, _) in chars.iter().skip(1) {
            let (l, r) = token.split_at(at);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                local.push((l, r));
            }
        }
        local.sort_by_key(|(l, r)| (vocab[l], vocab[r]));
        merges.extend(local.into_iter().map(|(l, r)| (l.to_string(), r.to_string(), score_of[token])));
    }
    let key = |m: &(String, String, f32)| (m.2, m.0.chars().count(), m.1.chars().count());
    merges.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0).then(kb.1.cmp(&ka.1)).then(kb.2.cmp(&ka.2))
    });
    merges.into_iter().map(|(l, r, _)| (l, r)).collect()
}

fn strings(file: &GgufFile, key: &'static str) -> Result<Vec<String>, GgufTokenizerError> {
    let values = file.get(key).and_then(GgufValue::as_array).ok_or(GgufTokenizerError::Missing(key))?;
    values.iter().map(|v| v.as_str().map(str::to_string).ok_or(GgufTokenizerError::NotString(key))).collect()
}

/// The tokenizer the file describes, and its `tokenizer.json` form.
pub fn gguf_tokenizer(file: &GgufFile) -> Result<(Tokenizer, Value), GgufTokenizerError> {
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(GgufValue::as_str)
        .ok_or(GgufTokenizerError::Missing("tokenizer.ggml.model"))?;
    let mut tokens = strings(file, "tokenizer.ggml.tokens")?;
    let types: Vec<u64> = match file.get("tokenizer.ggml.token_type").and_then(GgufValue::as_array) {
        Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let id = |key: &str| file.get(key).and_then(GgufValue::as_u64);
    let (model_json, pre, decoder, add_bos_default) = match model {
        "gpt2" => {
            let alphabet = byte_alphabet();
            let spelled: std::collections::HashSet<char> = alphabet.iter().copied().collect();
            for t in tokens.iter_mut() {
                if !t.chars().all(|c| spelled.contains(&c)) {
                    *t = t.bytes().map(|b| alphabet[b as usize]).collect();
                }
            }
            let merges: Vec<Value> = strings(file, "tokenizer.ggml.merges")?
                .iter()
                .map(|m| {
                    let (l, r) = m.split_once(' ').unwrap_or((m, ""));
                    json!([l, r])
                })
                .collect();
            let bpe = json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab_json(&tokens), "merges": merges});
            let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                "use_regex": true});
            let decoder =
                json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (bpe, byte_level, decoder, false)
        }
        "llama" => {
            let scores: Vec<f32> = match file.get("tokenizer.ggml.scores").and_then(GgufValue::as_array) {
                Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
                None => return Err(GgufTokenizerError::Missing("tokenizer.ggml.scores (a llama vocabulary needs it)")),
            };
            let merges: Vec<Value> = match file.get("tokenizer.ggml.merges") {
                Some(_) => strings(file, "tokenizer.ggml.merges")?
                    .iter()
                    .map(|m| json!(m.split_once(' ').map_or([m.as_str(), ""], |(l, r)| [l, r])))
                    .collect(),
                None => merges_from_scores(&tokens, &scores).into_iter().map(|(l, r)| json!([l, r])).collect(),
            };
            let bpe = json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab_json(&tokens), "merges": merges});
            let pre =
                json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false});
            let decoder = json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]});
            (bpe, pre, decoder, true)
        }
        other => return Err(GgufTokenizerError::Model(other.into())),
    };
    let mut added = Vec::new();
    for (i, (t, &kind)) in tokens.iter().zip(&types).enumerate() {
        let special = matches!(kind, 2 | 3);
        if special || kind == 4 {
            added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": special}));
        }
    }
    let add_bos = file.get("tokenizer.ggml.add_bos_token").and_then(GgufValue::as_bool).unwrap_or(add_bos_default);
    let post = match id("tokenizer.ggml.bos_token_id").filter(|_| add_bos) {
        Some(bos) => {
            let bos_text = tokens.get(bos as usize).ok_or(GgufTokenizerError::Bos(bos))?;
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos_text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos_text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos_text, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos_text.as_str(): {"id": bos_text, "ids": [bos], "tokens": [bos_text]}}})
        }
        None => Value::Null,
    };
    let json = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": pre, "post_processor": post, "decoder": decoder, "model": model_json});
    let tokenizer: Tokenizer = json.to_string().parse().map_err(GgufTokenizerError::Build)?;
    Ok((tokenizer, json))
}

fn vocab_json(tokens: &[String]) -> Value {
    let mut map = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        map.insert(t.clone(), json!(i));
    }
    Value::Object(map)
}
