//! The host decoder (CPU prefill and decode steps, f32 and Q8_0) against transformers on the tiny fixtures:
//! teacher-forced logits at every position, padded batches, and exact greedy tokens through `generate_with`.
mod common;

use common::*;
use psa_vlm::burn::tensor::{Device, Tensor, TensorData};
use psa_vlm::models::lora::{LoraConfig, LoraTargets};
use psa_vlm::models::{
    GenerationConfig, HostDecoder, HostWeights, KvCache, LlamaForCausalLM, ModelError, PaddingMask, generate,
    generate_with,
};

/// Largest f32 difference measured against transformers' logits here is 2.9e-6 (flex prefill + host steps).
const TOL: f64 = 2e-5;
const VARIANTS: [&str; 2] = ["tiny_llava", "tiny_llava_gqa"];

/// The fixture's padded batch `side` ("left" or "right") as per-row flags.
fn padding_rows(fx: &std::collections::BTreeMap<String, Ref>, side: &str) -> Vec<Vec<bool>> {
    let m = &fx[&format!("batch.{side}.attention_mask")];
    m.values.chunks(m.shape[1]).map(|r| r.iter().map(|&v| v > 0.5).collect()).collect()
}

/// Prefills the first column on the tensor backend, then feeds every later column through host steps; returns
/// the logits of each position `[batch, seq, vocab]` (position 0 from the prefill).
fn teacher_forced(lm: &LlamaForCausalLM, host: &HostDecoder, ids: &[Vec<u32>], rows: &[Vec<bool>]) -> Vec<f32> {
    let device = lm.model.embed_tokens.weight.device();
    let (b, t) = (ids.len(), ids[0].len());
    let first: Vec<Vec<u32>> = ids.iter().map(|r| vec![r[0]]).collect();
    let mask = |n: usize| PaddingMask::new(rows.iter().map(|r| r[..n].to_vec()).collect());
    let mut cache = KvCache::new(lm.num_layers());
    let hidden = lm.model.forward(lm.model.embed(&first, &device), &mask(1), Some(&mut cache), false);
    let mut per_position =
        vec![lm.logits(hidden.last_hidden_state).into_data().convert::<f32>().try_to_vec::<f32>().unwrap()];
    let mut hc = host.cache_from(&cache, t - 1).unwrap();
    for col in 1..t {
        let next: Vec<u32> = ids.iter().map(|r| r[col]).collect();
        per_position.push(host.step(&next, &mask(col + 1), &mut hc).unwrap());
    }
    let vocab = per_position[0].len() / b;
    (0..b).flat_map(|r| per_position.iter().flat_map(move |p| p[r * vocab..(r + 1) * vocab].to_vec())).collect()
}

fn max_abs(got: &[f32], want: &[f64], keep: impl Fn(usize) -> bool) -> f64 {
    let pairs = got.iter().zip(want).enumerate().filter(|(i, _)| keep(*i)).map(|(_, (&g, &w))| (g, w));
    psa_vlm::core::compare::max_abs_diff_pairs(pairs).unwrap_or_else(|e| panic!("host decoder logits: {e}"))
}

#[test]
fn host_steps_match_transformers_logits_and_greedy_tokens() {
    // The host decoder copies its weights from a model on any backend; the prefill runs on that backend.
    for ((backend, device), variant) in devices().into_iter().flat_map(|d| VARIANTS.map(|v| (d.clone(), v))) {
        eprintln!("== {variant}, prefill on {backend}");
        let fx = read_fixture(&fixtures().join(variant).join("fixture.safetensors"));
        let lm = load_tiny_llava(variant, &device).language_model;
        let host = HostDecoder::new(&lm, HostWeights::F32).unwrap();

        let ids = fx["text_only.input_ids"].ids();
        let got = teacher_forced(&lm, &host, &ids, &[vec![true; ids[0].len()]]);
        let d = max_abs(&got, &fx["text_only.logits"].values, |_| true);
        eprintln!("{variant} text logits, host f32: max abs diff {d:.3e}");
        assert!(d <= TOL, "{variant}: text logits differ by {d:e}");

        for side in ["left", "right"] {
            let ids = fx[&format!("batch.{side}.input_ids")].ids();
            let rows = padding_rows(&fx, side);
            let got = teacher_forced(&lm, &host, &ids, &rows);
            let vocab = got.len() / (rows.len() * rows[0].len());
            let real = |i: usize| rows[i / vocab / rows[0].len()][i / vocab % rows[0].len()];
            let d = max_abs(&got, &fx[&format!("batch.{side}.logits")].values, real);
            eprintln!("{variant} batch.{side} logits, host f32: max abs diff {d:.3e}");
            assert!(d <= TOL, "{variant} batch.{side}: logits differ by {d:e}");
        }

        let greedy = GenerationConfig { max_new_tokens: 8, ..Default::default() };
        let text = fx["text_only.input_ids"].ids();
        let run = |h: &HostDecoder| {
            generate_with(
                &lm,
                Some(h),
                lm.model.embed(&text, &device),
                PaddingMask::full(1, text[0].len()),
                &greedy,
                128,
            )
            .unwrap()
        };
        assert_eq!(run(&host).tokens, fx["generate.text_only.new_tokens"].ids(), "{variant}: host greedy tokens");
        let ids = fx["batch.left.input_ids"].ids();
        let m = &fx["batch.left.attention_mask"];
        let rows: Vec<Vec<i64>> = m.values.chunks(m.shape[1]).map(|r| r.iter().map(|&v| v as i64).collect()).collect();
        let out = generate_with(
            &lm,
            Some(&host),
            lm.model.embed(&ids, &device),
            PaddingMask::from_attention_mask(&rows),
            &greedy,
            128,
        )
        .unwrap();
        assert_eq!(out.tokens, fx["batch.left.new_tokens"].ids(), "{variant}: host greedy tokens, left-padded batch");

        // Q8_0 keeps the weights in 8 bits: the logits move by the quantisation error (measured 1.7 % of the largest
        // logit on these random weights), far less than their spread.
        let q8 = HostDecoder::new(&lm, HostWeights::Q8_0).unwrap();
        // (The fixture's 172-wide MLP rows are not whole 32-element blocks, so down_proj stays in f32.)
        assert!(q8.weight_bytes() * 2 < host.weight_bytes(), "Q8_0 holds far fewer bytes than f32");
        let ids = fx["text_only.input_ids"].ids();
        let got = teacher_forced(&lm, &q8, &ids, &[vec![true; ids[0].len()]]);
        let want = &fx["text_only.logits"].values;
        let d = max_abs(&got, want, |_| true);
        let spread = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        eprintln!("{variant} text logits, host Q8_0: max abs diff {d:.3e} (largest logit {spread:.3})");
        assert!(d > 0.0 && d < 0.03 * spread, "{variant}: Q8_0 logits differ by {d:e}");
    }
}

/// Host prefill of `ids` (embedded on `device`) with padding `rows`: the logits at each row's last real position.
fn host_prefill(lm: &LlamaForCausalLM, host: &HostDecoder, ids: &[Vec<u32>], rows: &[Vec<bool>]) -> Vec<f32> {
    let device = lm.model.embed_tokens.weight.device();
    let embeds = lm.model.embed(ids, &device).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    host.prefill(&embeds, &PaddingMask::new(rows.to_vec()), 0).unwrap().0
}

#[test]
fn host_prefill_matches_transformers_and_the_tensor_path() {
    for ((backend, device), variant) in devices().into_iter().flat_map(|d| VARIANTS.map(|v| (d.clone(), v))) {
        let fx = read_fixture(&fixtures().join(variant).join("fixture.safetensors"));
        let lm = load_tiny_llava(variant, &device).language_model;
        let host = HostDecoder::new(&lm, HostWeights::F32).unwrap();
        // Every prefix of the text prompt: the prefill's logits at each position.
        let ids = fx["text_only.input_ids"].ids();
        let t = ids[0].len();
        let got: Vec<f32> =
            (1..=t).flat_map(|n| host_prefill(&lm, &host, &[ids[0][..n].to_vec()], &[vec![true; n]])).collect();
        let d = max_abs(&got, &fx["text_only.logits"].values, |_| true);
        eprintln!("{variant} ({backend} weights) text logits, host prefill: max abs diff {d:.3e}");
        assert!(d <= TOL, "{variant}: host prefill logits differ by {d:e}");
        // Padded batches: the last real position of each row.
        for side in ["left", "right"] {
            let ids = fx[&format!("batch.{side}.input_ids")].ids();
            let rows = padding_rows(&fx, side);
            let got = host_prefill(&lm, &host, &ids, &rows);
            let all = &fx[&format!("batch.{side}.logits")].values;
            let (t, vocab) = (rows[0].len(), got.len() / rows.len());
            let want: Vec<f64> = PaddingMask::new(rows.clone())
                .last_real()
                .iter()
                .enumerate()
                .flat_map(|(r, &p)| all[(r * t + p) * vocab..][..vocab].to_vec())
                .collect();
            let d = max_abs(&got, &want, |_| true);
            eprintln!("{variant} batch.{side}, host prefill: max abs diff {d:.3e}");
            assert!(d <= TOL, "{variant} batch.{side}: host prefill logits differ by {d:e}");
        }
    }
    // A prompt longer than one query block (64) with left padding, against the tensor path (itself checked against
    // transformers above), and the decode steps that continue from the host prefill's cache.
    let device = Device::flex();
    let lm = load_tiny_llava("tiny_llava_gqa", &device).language_model;
    let host = HostDecoder::new(&lm, HostWeights::F32).unwrap();
    let ids: Vec<Vec<u32>> = (0..2).map(|r| (0..120).map(|i| ((i * 7 + r * 13) % 90 + 3) as u32).collect()).collect();
    let rows = vec![vec![true; 120], (0..120).map(|i| i >= 17).collect::<Vec<_>>()];
    let mask = PaddingMask::new(rows.clone());
    let cfg = GenerationConfig { max_new_tokens: 6, ..Default::default() };
    let tensor = generate(&lm, lm.model.embed(&ids, &device), mask.clone(), &cfg, 128).unwrap();
    let hosted = generate_with(&lm, Some(&host), lm.model.embed(&ids, &device), mask.clone(), &cfg, 128).unwrap();
    assert_eq!(tensor, hosted, "host prefill + steps against the tensor path, 120 positions, left padding");
    let full = lm.forward(&ids, Some(&mask), &device).into_data().try_to_vec::<f32>().unwrap();
    let vocab = full.len() / (2 * 120);
    let want: Vec<f64> = [119usize, 119]
        .iter()
        .enumerate()
        .flat_map(|(r, &p)| full[(r * 120 + p) * vocab..][..vocab].iter().map(|&v| v as f64).collect::<Vec<_>>())
        .collect();
    let d = max_abs(&host_prefill(&lm, &host, &ids, &rows), &want, |_| true);
    eprintln!("120-position padded prefill, host against tensor path: max abs diff {d:.3e}");
    assert!(d <= TOL, "long host prefill differs from the tensor path by {d:e}");
    // Q8_0 weights in the blocked product: within the quantisation error of the f32 logits.
    let q8 = HostDecoder::new(&lm, HostWeights::Q8_0).unwrap();
    let spread = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let d = max_abs(&host_prefill(&lm, &q8, &ids, &rows), &want, |_| true);
    eprintln!("120-position padded prefill, host Q8_0: max abs diff {d:.3e} (largest logit {spread:.3})");
    assert!(d > 0.0 && d < 0.03 * spread, "Q8_0 prefill logits differ by {d:e}");
    let err = host.prefill(&[0.0; 10], &mask, 0).unwrap_err().to_string();
    assert!(err.contains("10 embedding values"), "{err}");
}

#[test]
fn host_decoder_refuses_what_it_cannot_run() {
    let device = Device::flex();
    let lm = load_tiny_llava("tiny_llava", &device).language_model;
    let lora = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        target_modules: LoraTargets::Names(vec!["q_proj".into()]),
    };
    let adapted = lm.clone().apply_lora(&lora, &device);
    let err = HostDecoder::new(&adapted, HostWeights::F32).unwrap_err();
    assert!(matches!(err, ModelError::HostDecoder(_)) && err.to_string().contains("merge"), "{err}");
    assert!(HostDecoder::new(&adapted.merge_lora(), HostWeights::F32).is_ok());

    let host = HostDecoder::new(&lm, HostWeights::F32).unwrap();
    let mut cache = KvCache::new(lm.num_layers());
    let embeds = Tensor::<3>::from_data(TensorData::new(vec![0.1f32; 2 * 64], [1, 2, 64]), &device);
    lm.model.forward(embeds, &PaddingMask::full(1, 2), Some(&mut cache), false);
    let mut hc = host.cache_from(&cache, 1).unwrap();
    let err = host.step(&[5], &PaddingMask::full(1, 2), &mut hc).unwrap_err().to_string();
    assert!(err.contains("2 positions") || err.contains("mask"), "{err}");
    let err = host.step(&[1_000_000], &PaddingMask::full(1, 3), &mut hc).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
    host.step(&[5], &PaddingMask::full(1, 3), &mut hc).unwrap();
    let err = host.step(&[5], &PaddingMask::full(1, 4), &mut hc).unwrap_err().to_string();
    assert!(err.contains("full"), "{err}");
    // The tensor path and the host path agree on a whole generation.
    let text = vec![vec![1u32, 20, 30, 40]];
    let cfg = GenerationConfig { max_new_tokens: 6, ..Default::default() };
    let embeds = || lm.model.embed(&text, &device);
    let a = generate(&lm, embeds(), PaddingMask::full(1, 4), &cfg, 128).unwrap();
    let b = generate_with(&lm, Some(&host), embeds(), PaddingMask::full(1, 4), &cfg, 128).unwrap();
    assert_eq!(a, b);
}
