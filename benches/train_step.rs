//! One optimizer step (2 micro-batches of 4 samples) on the tiny PSA fixture, flex: stage I on one device and
//! data-parallel over two replicas, stage II with the safety head skipped (default) and run (`train_safety`).
//!
//! `cargo bench --bench train_step`. Results: book/src/benchmarks.md.
#[path = "../tests/common/mod.rs"]
mod common;

use common::{dataset, fixtures, prepare_file, scratch};
use criterion::{Criterion, criterion_group, criterion_main};
use psa_vlm::burn::tensor::Device;
use psa_vlm::import::{LoadOptions, load_psa};
use psa_vlm::models::lora::{LoraConfig, LoraTargets};
use psa_vlm::train::Recipe;
use psa_vlm::train::trainer::{RunOptions, Stage, train};

fn bench(c: &mut Criterion) {
    let dir = scratch("bench-train-step");
    let file = dataset(&dir, "b", 2, 1);
    let device = Device::flex().autodiff();
    let (model, _, _) =
        load_psa(&fixtures().join("tiny_psa/model"), &device, &LoadOptions::default()).expect("fixture");
    let (data, _) = prepare_file(&model, &file, &dir, false, &device).expect("dataset");
    let data = &data[..8];
    let recipe = Recipe { epochs: 1, batch_size: 4, grad_accum: 2, ..Recipe::stage1() };
    let lora = LoraConfig {
        r: 8,
        lora_alpha: 16.0,
        lora_dropout: 0.05,
        target_modules: LoraTargets::AllLinear("all-linear".into()),
    };
    let single = RunOptions::default();
    let dp = RunOptions { devices: vec![device.clone(), Device::flex().autodiff()], ..Default::default() };
    let cases = [
        ("stage1/one-device", Stage::One, &single),
        ("stage1/data-parallel-2", Stage::One, &dp),
        ("stage2/head-skipped", Stage::Two { lora: lora.clone(), train_safety: false }, &single),
        ("stage2/head-run", Stage::Two { lora, train_safety: true }, &single),
    ];
    let mut group = c.benchmark_group("flex/train-step-2x4");
    group.sample_size(20);
    for (name, stage, run) in cases {
        group.bench_function(name, |b| {
            b.iter(|| train(model.clone(), &stage, data, &recipe, 998, run, |_| {}).expect("step").1)
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
