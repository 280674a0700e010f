//! Latency of one guarded request on flex: classify only (vision + safety head), and classify + generate 32
//! tokens; singly and as a batch of 4. Two models: the tiny PSA fixture and a mid-size random PSA-VLM (CLIP
//! 384×6 at 224 px, LLaMA 768×8, 64 safety tokens: the configuration of `benches/forward.rs`, with the tiny
//! tokenizer's `<image>` id).
//!
//! `cargo bench --bench guard`. Results: book/src/benchmarks.md.
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "common/mid.rs"]
mod mid;

use common::{draw, fixtures};
use criterion::{Criterion, criterion_group, criterion_main};
use psa_vlm::burn::tensor::Device;
use psa_vlm::import::LoadReport;
use psa_vlm::models::{GenerationConfig, PsaConfig};
use psa_vlm::pipeline::processor::{ImageProcessorConfig, Template, TextProcessor};
use psa_vlm::pipeline::{GuardRequest, GuardedPipeline};

fn tiny(device: &Device) -> GuardedPipeline {
    let mut p = GuardedPipeline::load(
        &fixtures().join("tiny_psa/model"),
        Some(fixtures().join("tiny_tokenizer/tokenizer.json")),
        Template::by_name("llava_hf").expect("template"),
        device,
    )
    .expect("fixture");
    p.policy.default_action = psa_vlm::core::Action::Allow;
    p
}

fn mid(device: &Device) -> GuardedPipeline {
    let config = PsaConfig::for_llava(mid::mid_config(999));
    let model = config.init(device).expect("model");
    let text = TextProcessor::from_file(&fixtures().join("tiny_tokenizer/tokenizer.json"), "<image>").expect("tok");
    let images = ImageProcessorConfig::for_vision(&config.llava.vision).build().expect("processor");
    let template = Template::by_name("llava_v1").expect("template");
    GuardedPipeline::new(model, config, LoadReport::default(), text, images, template, device).expect("pipeline")
}

fn bench(c: &mut Criterion) {
    let device = Device::flex();
    let request = |i: u64| GuardRequest {
        id: None,
        image: image::DynamicImage::ImageRgb8(draw(i as usize % 5, i)),
        question: "What is shown in this picture? Answer in one sentence.".into(),
        policy: None,
    };
    let one = vec![request(1)];
    let four: Vec<GuardRequest> = (1..=4).map(request).collect();
    let generation = GenerationConfig { max_new_tokens: 32, ..Default::default() };
    for (name, pipeline) in [("tiny", tiny(&device)), ("mid", mid(&device))] {
        let mut group = c.benchmark_group(format!("flex/guard-{name}"));
        group.sample_size(10);
        group.bench_function("classify/1", |b| b.iter(|| pipeline.classify(&one).expect("classify")));
        group.bench_function("classify/4", |b| b.iter(|| pipeline.classify(&four).expect("classify")));
        group.bench_function("generate-32/1", |b| b.iter(|| pipeline.respond(&one, &generation, true).expect("gen")));
        group.bench_function("generate-32/4", |b| b.iter(|| pipeline.respond(&four, &generation, true).expect("gen")));
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
