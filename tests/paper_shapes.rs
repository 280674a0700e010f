//! The paper's model sizes on this machine: a random-weight PSA-VLM with LLaVA-1.5-7B's shapes (CLIP ViT-L/14 at
//! 336 px, 576 patches; Vicuna-7B; safety modules at width 4096 with the reference's sizes) written as a sharded
//! bf16 checkpoint in the llava-hf layout, loaded in bf16, asked to classify and to answer under guard. The 13B
//! safety widths are checked on the modules alone.
//!
//! The 7B test writes 14 GB and runs for minutes, so it is ignored by default:
//! `cargo test --release --test paper_shapes -- --ignored --nocapture` (set `PSA_PAPER_DIR` to keep the
//! checkpoint between runs).
mod common;

use std::time::Instant;

use common::*;
use psa_vlm::burn::tensor::{DType, Device, Distribution, Tensor};
use psa_vlm::core::{SafetyConfig, SafetyPolicy};
use psa_vlm::import::{RandomCheckpoint, write_random_psa};
use psa_vlm::models::{Precision, PsaConfig};
use psa_vlm::pipeline::processor::{ImageProcessorConfig, Template};
use psa_vlm::pipeline::{GuardRequest, GuardedPipeline};

/// llava-hf/llava-1.5-7b-hf's `config.json` (the image token moved to the test tokenizer's `<image>` id).
fn llava_7b() -> serde_json::Value {
    serde_json::json!({
        "model_type": "llava",
        "image_token_index": 999,
        "pad_token_id": 998,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "text_config": {
            "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1,
            "eos_token_id": 2, "pad_token_id": 998, "tie_word_embeddings": false
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
            "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
            "projection_dim": 768, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5
        }
    })
}

/// `VmHWM` (peak resident memory) and `VmRSS` of this process, in GiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / (1024.0 * 1024.0))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[test]
#[ignore = "writes a 14 GB checkpoint and runs a 7B-shaped model for minutes"]
fn llava_7b_shapes_load_in_bf16_and_answer_within_24_gb() {
    let device = Device::flex();
    let dir = std::env::var_os("PSA_PAPER_DIR").map_or_else(|| scratch("paper-7b"), Into::into);
    let config = PsaConfig::from_value(&llava_7b(), &dir.join("config.json")).unwrap();
    let s = &config.safety;
    assert_eq!((s.vision_dim, s.num_safety_tokens, s.abstractor_width, s.num_queries), (1024, 64, 1088, 576));
    assert_eq!(s.safety_dim, 4096);
    if !dir.join("model.safetensors.index.json").is_file() {
        let start = Instant::now();
        let shards = write_random_psa(&config, &dir, &RandomCheckpoint::default(), &device).unwrap();
        eprintln!("wrote {} bf16 shards in {:.0} s", shards.len(), start.elapsed().as_secs_f64());
    }
    std::fs::copy(fixtures().join("tiny_tokenizer/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let pre = serde_json::to_string(&ImageProcessorConfig::clip(336)).unwrap();
    std::fs::write(dir.join("preprocessor_config.json"), pre).unwrap();
    let on_disk: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    // Forget the writer's peak (Linux: `5` resets VmHWM) so the figure is the load's and the answers'.
    let _ = std::fs::write("/proc/self/clear_refs", "5");

    let start = Instant::now();
    let template = Template::by_name("llava_v1").unwrap();
    let pipeline = GuardedPipeline::load_with(&dir, None, template, &device, Precision::Bf16).unwrap();
    let load_s = start.elapsed().as_secs_f64();
    let (load_peak, load_rss) = memory();
    let model = &pipeline.model;
    assert_eq!(model.precision(), Precision::Bf16);
    assert_eq!(model.safety.safety_query_tokens.val().dtype(), DType::F32);
    let policy = SafetyPolicy::parse(r#"{"default_action": "hint"}"#, false, &pipeline.taxonomy).unwrap();
    let request = GuardRequest {
        id: None,
        image: image::DynamicImage::ImageRgb8(draw(3, 7)),
        question: "What is shown in the picture?".into(),
        policy: Some(policy),
    };
    let start = Instant::now();
    let verdict = pipeline.classify(std::slice::from_ref(&request)).unwrap().remove(0);
    let classify_s = start.elapsed().as_secs_f64();
    assert!(verdict.assessment.level_probs.iter().all(|p| p.is_finite()));
    let start = Instant::now();
    let answer =
        pipeline.respond(std::slice::from_ref(&request), &pipeline.generation_config(4), true).unwrap().remove(0);
    let respond_s = start.elapsed().as_secs_f64();
    let (peak, rss) = memory();
    eprintln!(
        "LLaVA-1.5-7B-shaped PSA-VLM, bf16 base + f32 safety modules, flex CPU backend\n\
         checkpoint on disk {:.2} GiB\n\
         load {load_s:.1} s, after load RSS {load_rss:.2} GiB (peak {load_peak:.2} GiB)\n\
         classify {classify_s:.1} s (vision {:.0} ms, head {:.0} ms): level {} type {}\n\
         guarded answer {respond_s:.1} s: {} prompt tokens, {} new tokens, prefill+decode {:.0} ms, action {:?}\n\
         peak RSS {peak:.2} GiB, RSS {rss:.2} GiB",
        on_disk as f64 / (1u64 << 30) as f64,
        verdict.timings.vision_ms,
        verdict.timings.classify_ms,
        verdict.assessment.level,
        verdict.assessment.risk_type,
        answer.prompt_tokens,
        answer.completion_tokens,
        answer.timings.generate_ms,
        answer.decision.as_ref().map(|d| d.action),
    );
    assert!(answer.completion_tokens > 0 && answer.prompt_tokens > 576, "the LLM ran on the image tokens");
    assert!(peak < 20.0, "peak RSS {peak:.2} GiB leaves too little of a 24 GB machine");
}

/// One stage-I step (batch 1, bf16 frozen base) on the checkpoint in `dir`: step seconds, peak RSS (GiB) since the
/// load began, and the step's metrics; asserts that the frozen LLM did not move and S2 did.
fn stage1_step(dir: &std::path::Path, checkpointing: bool) -> (f64, f64, psa_vlm::train::trainer::StepMetrics) {
    use psa_vlm::pipeline::processor::TextProcessor;
    use psa_vlm::train::Recipe;
    use psa_vlm::train::data::{LabelSpace, read_jsonl};
    use psa_vlm::train::prepare::{PrepareOptions, prepare};
    use psa_vlm::train::trainer::{FrozenLm, RunOptions, train_stage1};

    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let device = Device::flex().autodiff();
    device.seed(1);
    let opts = psa_vlm::import::LoadOptions::default().with_precision(Precision::Bf16);
    let (model, _, _) = psa_vlm::import::load_psa(dir, &device, &opts).unwrap();
    let data_dir = scratch("paper-data");
    let file = dataset(&data_dir, "d", 1, 3);
    let text = TextProcessor::from_file(&fixtures().join("tiny_tokenizer/tokenizer.json"), "<image>").unwrap();
    let images = ImageProcessorConfig::clip(336).build().unwrap();
    let template = Template::by_name("llava_v1").unwrap();
    let samples = read_jsonl(&file, &data_dir, LabelSpace::default()).unwrap();
    let prep = PrepareOptions {
        label_file: &file,
        images: &images,
        text: &text,
        template: &template,
        max_len: 2048,
        skip_bad_images: false,
        cache: None,
    };
    let (data, _) = prepare(&model, &samples[..1], &prep, &device).unwrap();
    let q_before = host(model.llava.language_model.model.layers[0].self_attn.q_proj.weight.val());
    let s_before = host(model.safety.safety_query_tokens_2.val());
    // No warm-up: the schedule's first step would otherwise have a learning rate of 0.
    let recipe = Recipe { batch_size: 1, grad_accum: 1, epochs: 1, warmup_steps: 0, ..Recipe::stage1() };
    let run = RunOptions { frozen_lm: FrozenLm::Device, activation_checkpointing: checkpointing, ..Default::default() };
    let start = Instant::now();
    let (model, mut metrics) = train_stage1(model, &data, &recipe, 998, &run, |_| {}).unwrap();
    let step_s = start.elapsed().as_secs_f64();
    let (peak, _) = memory();
    assert_eq!(metrics.len(), 1);
    let m = metrics.remove(0);
    assert!(m.lm_loss.is_finite() && m.lm_loss > 0.0 && m.lr > 0.0);
    let frozen = host(model.llava.language_model.model.layers[0].self_attn.q_proj.weight.val()) == q_before;
    assert!(frozen, "a frozen LLM weight changed");
    let moved = host(model.safety.safety_query_tokens_2.val()) != s_before;
    assert!(moved, "S2 is trained through the LLM");
    (step_s, peak, m)
}

#[test]
#[ignore = "needs the 7B checkpoint of the test above and runs one training step for minutes"]
fn llava_7b_stage1_step_with_activation_checkpointing_fits_in_24_gb() {
    let dir = std::env::var_os("PSA_PAPER_DIR").map_or_else(|| scratch("paper-7b"), Into::into);
    assert!(dir.join("model.safetensors.index.json").is_file(), "run llava_7b_shapes_load_in_bf16_… first");
    let (step_s, peak, m) = stage1_step(&dir, true);
    eprintln!(
        "LLaVA-1.5-7B-shaped stage-I step, batch 1, bf16 frozen base, f32 safety modules and AdamW state, activation \
         checkpointing, flex: step {step_s:.0} s, loss {:.4} (LM {:.4}); peak RSS {peak:.2} GiB",
        m.loss, m.lm_loss
    );
    assert!(peak < 22.0, "peak RSS {peak:.2} GiB");
}

#[test]
#[ignore = "writes a 2 GB checkpoint and runs two training steps for minutes"]
fn activation_memory_per_layer_at_7b_width() {
    // The 7B model's widths with 4 decoder layers: what one layer's kept activations cost, with and without
    // checkpointing, measured rather than estimated.
    let mut value = llava_7b();
    value["text_config"]["num_hidden_layers"] = 4.into();
    let dir = scratch("paper-7b-4layers");
    let config = PsaConfig::from_value(&value, &dir.join("config.json")).unwrap();
    if !dir.join("model.safetensors.index.json").is_file() {
        write_random_psa(&config, &dir, &RandomCheckpoint::default(), &Device::flex()).unwrap();
    }
    let (with_s, with_peak, a) = stage1_step(&dir, true);
    let (plain_s, plain_peak, b) = stage1_step(&dir, false);
    eprintln!(
        "7B widths, 4 layers, stage-I step: with checkpointing {with_s:.0} s, peak {with_peak:.2} GiB; without \
         {plain_s:.0} s, peak {plain_peak:.2} GiB; kept activations {:.2} GiB per layer",
        (plain_peak - with_peak) / 4.0
    );
    assert_eq!(a.loss, b.loss, "the same step either way");
}

#[test]
fn safety_modules_at_13b_width_run_in_f32_beside_a_half_base() {
    let device = Device::flex();
    let cfg = SafetyConfig::for_model(1024, 576, 5120);
    assert_eq!((cfg.abstractor_width, cfg.num_queries, cfg.safety_dim), (1088, 576, 5120));
    let safety = cfg.init(&device).unwrap();
    // What a bf16 13B base hands over: bf16 vision features and bf16 prompt embeddings, cast at the boundary.
    let features = Tensor::<3>::random([1, 576, 1024], Distribution::Normal(0.0, 1.0), &device).cast(DType::BF16);
    let text = Tensor::<3>::random([1, 7, 5120], Distribution::Normal(0.0, 0.02), &device).cast(DType::BF16);
    let h = safety.project(features.cast(DType::F32));
    assert_eq!(h.dims(), [1, 576, 5120]);
    let out = safety.safe_part.forward(text.cast(DType::F32), safety.key_values(h), None);
    assert_eq!((out.level.dims(), out.risk_type.dims(), out.level.dtype()), ([1, 4], [1, 7], DType::F32));
    let (_, v) = host(out.level);
    assert!(v.iter().all(|x| x.is_finite()));
}

#[test]
fn random_checkpoints_load_strictly_in_every_precision() {
    let device = Device::flex();
    let config = PsaConfig::from_dir(&fixtures().join("tiny_psa/model")).unwrap();
    for precision in Precision::ALL {
        let dir = scratch(&format!("random-{precision}"));
        // Small shards: the tiny model spreads over several files, as a 7B one does.
        let draw = RandomCheckpoint { precision, shard_bytes: 200_000, seed: 3, std: 0.02 };
        let shards = write_random_psa(&config, &dir, &draw, &device).unwrap();
        assert!(shards.len() > 1, "{precision}: {} shard(s)", shards.len());
        let opts = psa_vlm::import::LoadOptions::strict().with_precision(precision);
        let (model, _, report) = psa_vlm::import::load_psa(&dir, &device, &opts).unwrap();
        assert_eq!(report.files.len(), shards.len());
        assert!(report.unexpected.is_empty());
        assert_eq!(model.precision(), precision);
        let lm = &model.llava.language_model.model;
        let (_, norm) = host(lm.norm.gamma.val());
        assert!(norm.iter().all(|&v| v == 1.0), "norm scales are ones");
        let (_, w) = host(lm.layers[0].self_attn.q_proj.weight.val());
        let bound = 0.02 * 3f64.sqrt() * 1.01;
        assert!(w.iter().all(|v| v.abs() <= bound) && w.iter().any(|v| v.abs() > 0.5 * bound), "uniform ±{bound}");
        let (_, s) = host(model.safety.safety_query_tokens.val());
        assert!(s.iter().any(|&v| v != 0.0) && model.safety.safety_query_tokens.val().dtype() == DType::F32);
    }
}
