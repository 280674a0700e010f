//! Latency of the LLaVA vision path (tower up to layer −2 + projector) and of the LLM prefill on a mid-size
//! random configuration, on every backend compiled in and in every precision the backend holds (the frozen
//! weights in f32, f16, bf16). Names: `{device}/{dtype}/{what}/{size}`.
//!
//! `cargo bench --bench forward` (add `--features wgpu` for the GPU path). Python reference on the same
//! configuration (f32): `scripts/bench_reference.py`. Results: book/src/benchmarks.md, book/src/precision.md.
use criterion::{Criterion, criterion_group, criterion_main};
use psa_vlm::burn::tensor::{Device, Distribution, Tensor};
use psa_vlm::device::{compiled_backends, parse_device};
use psa_vlm::models::PaddingMask;
use psa_vlm::models::Precision;
use psa_vlm::models::precision::cast_frozen;

#[path = "common/mid.rs"]
mod mid;

fn bench(c: &mut Criterion) {
    let cfg = mid::mid_config(32000);
    for (backend, precision) in compiled_backends().into_iter().flat_map(|b| Precision::ALL.map(|p| (b, p))) {
        let device: Device = parse_device(backend).expect("compiled backend");
        if precision.check(&device).is_err() {
            continue;
        }
        let model = cast_frozen(cfg.init(&device).expect("model builds"), precision);
        let pixels = Tensor::<4>::random([1, 3, 224, 224], Distribution::Normal(0.0, 1.0), &device);
        let mut group = c.benchmark_group(format!("{backend}/{precision}"));
        group.sample_size(10);
        group.bench_function("vision+projector/clip-384x6-224px", |b| {
            b.iter(|| {
                let f = model.image_features(pixels.clone());
                device.sync().expect("device sync");
                f
            })
        });
        let features = model.image_features(pixels.clone());
        let mut ids = vec![1u32];
        ids.extend(100..120);
        ids.push(32000);
        ids.extend(200..210);
        let merged = model.merge(&[ids], None, Some(features)).expect("merge");
        let tokens = merged.mask.len();
        group.bench_function(format!("prefill/llama-768x8-{tokens}tok"), |b| {
            b.iter(|| {
                let mask = PaddingMask::full(1, tokens);
                let h = model.language_model.model.forward(merged.inputs_embeds.clone(), &mask, None, false);
                let [_, t, d] = h.last_hidden_state.dims();
                let logits = model.language_model.logits(h.last_hidden_state.slice([0..1, t - 1..t, 0..d]));
                device.sync().expect("device sync");
                logits
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
