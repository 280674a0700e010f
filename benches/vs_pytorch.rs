//! The quickstart model against PyTorch on the same CPU: f32 GEMM, classify, LLM prefill, greedy decode and one
//! stage-I optimizer step. `scripts/bench_vs_pytorch.py` runs the same workloads on the same inputs in PyTorch +
//! transformers; the book's benchmark chapter puts both side by side.
//!
//! Needs the quickstart model (`cargo run --release --example quickstart`, or `PSA_BENCH_MODEL=DIR`).
//! `cargo bench --bench vs_pytorch` (flex); `--features wgpu` adds the wgpu rows.
#[path = "common/inputs.rs"]
mod inputs;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use psa_vlm::burn::tensor::{Device, Distribution, Tensor};
use psa_vlm::import::{LoadOptions, load_psa};
use psa_vlm::models::cpu::gemm;
use psa_vlm::models::generate::argmax;
use psa_vlm::models::{HostAbstractor, HostDecoder, HostVision, HostWeights, KvCache, PaddingMask, PsaInput, PsaVlm};
use psa_vlm::train::Recipe;
use psa_vlm::train::trainer::{RunOptions, Stage, train};

/// Decode steps timed after each prefill.
const DECODE_STEPS: usize = 32;

fn model_dir() -> PathBuf {
    std::env::var_os("PSA_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("runs/quickstart/model"))
}

fn devices() -> Vec<(&'static str, Device)> {
    let flex = ("flex", Device::flex());
    #[cfg(feature = "wgpu")]
    return vec![flex, ("wgpu", psa_vlm::device::parse_device("wgpu").expect("wgpu device"))];
    #[cfg(not(feature = "wgpu"))]
    vec![flex]
}

/// Logits of the last position after a cached prefill of `ids`, and the cache.
fn prefill(model: &PsaVlm, ids: &[u32], device: &Device) -> (Vec<f32>, KvCache) {
    let lm = &model.llava.language_model;
    let embeds = lm.model.embed(&[ids.to_vec()], device);
    let mut cache = KvCache::new(lm.num_layers());
    let mask = PaddingMask::full(1, ids.len());
    let hidden = lm.model.forward(embeds, &mask, Some(&mut cache), false).last_hidden_state;
    let [_, t, d] = hidden.dims();
    let logits = lm.logits(hidden.slice([0..1, t - 1..t, 0..d]));
    (logits.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 logits"), cache)
}

/// Logits of the last position after a prefill of `ids` on the host engine (the embedding lookup included).
fn host_prefill(model: &PsaVlm, host: &HostDecoder, ids: &[u32], device: &Device) -> Vec<f32> {
    let embeds = model.llava.language_model.model.embed(&[ids.to_vec()], device);
    let embeds = embeds.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 embeddings");
    host.prefill(&embeds, &PaddingMask::full(1, ids.len()), DECODE_STEPS).expect("host prefill").0
}

/// [`DECODE_STEPS`] greedy decode steps (one new token each) after a prefill of `prompt` positions, on the tensor
/// backend or on `host`; returns the tokens, the prefill's first included.
fn decode(
    model: &PsaVlm,
    (first, cache): (&[f32], &mut KvCache),
    prompt: usize,
    host: Option<&HostDecoder>,
    device: &Device,
) -> Vec<u32> {
    let lm = &model.llava.language_model;
    let mut host_cache = host.map(|h| h.cache_from(cache, DECODE_STEPS).expect("host cache"));
    let mut mask = PaddingMask::full(1, prompt);
    let mut next = argmax(first);
    let mut tokens = vec![next];
    for _ in 0..DECODE_STEPS {
        mask.extend(1);
        let logits = match (host, host_cache.as_mut()) {
            (Some(h), Some(c)) => h.step(&[next], &mask, c).expect("host step"),
            _ => {
                let embeds = lm.model.embed(&[vec![next]], device);
                let hidden = lm.model.forward(embeds, &mask, Some(cache), false).last_hidden_state;
                lm.logits(hidden).into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 logits")
            }
        };
        next = argmax(&logits);
        tokens.push(next);
    }
    tokens
}

fn bench(c: &mut Criterion) {
    let dir = model_dir();
    if !dir.join("config.json").is_file() {
        eprintln!("vs_pytorch: no model at {} (run the quickstart or set PSA_BENCH_MODEL)", dir.display());
        return;
    }
    for (name, device) in devices() {
        let mut group = c.benchmark_group(format!("{name}/gemm"));
        group.sample_size(10);
        for n in [1024usize, 2048] {
            let a = Tensor::<2>::random([n, n], Distribution::Default, &device);
            let b = Tensor::<2>::random([n, n], Distribution::Default, &device);
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, _| {
                bench.iter(|| a.clone().matmul(b.clone()).into_data())
            });
        }
        group.finish();
        if name == "flex" {
            // The host engines' blocked product on the same sizes (`b` as rows: a PyTorch `Linear` weight).
            let mut group = c.benchmark_group("flex/gemm-host");
            group.sample_size(10);
            for n in [1024usize, 2048] {
                let values = |seed: usize| (0..n * n).map(|i| ((i * 37 + seed) % 101) as f32 / 50.0 - 1.0).collect();
                let (a, b): (Vec<f32>, Vec<f32>) = (values(1), values(2));
                let mut out = vec![0f32; n * n];
                group.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, _| {
                    bench.iter(|| gemm::matmul(&a, n, n, &gemm::Strided::rows(&b, n, n, n), &mut out, true))
                });
            }
            group.finish();
        }

        let (model, cfg, _) = load_psa(&dir, &device, &LoadOptions::default()).expect("quickstart model");
        let image = model.llava.image_token_index();
        // On the tensor path, and with the vision tower and the safety projector on the host engines (the CPU
        // default of the CLI and pipelines), then the same head.
        let host = HostVision::new(&model.llava).expect("host vision");
        let abstractor = HostAbstractor::new(&model.safety, &cfg.safety).expect("host abstractor");
        for (label, on_host) in [("classify", false), ("classify-host", true)] {
            let mut group = c.benchmark_group(format!("{name}/{label}"));
            group.sample_size(10);
            for batch in [1usize, 8] {
                let pixels = Tensor::<4>::from_data(inputs::pixels(batch), &device);
                let ids = vec![inputs::classify_ids(image); batch];
                group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |bench, _| {
                    bench.iter(|| {
                        let logits = match on_host {
                            true => {
                                let features = host.selected_features(pixels.clone()).expect("host features");
                                let h_s = abstractor.project(features).expect("host abstractor");
                                model.classify(PsaInput::projected(h_s, &ids))
                            }
                            false => model.classify(PsaInput::pixels(pixels.clone(), &ids)),
                        };
                        logits.expect("classify").level.into_data()
                    })
                });
            }
            group.finish();
        }

        let hosts = [
            ("", None),
            ("-host-f32", Some(HostDecoder::new(&model.llava.language_model, HostWeights::F32).expect("host"))),
            ("-host-q8_0", Some(HostDecoder::new(&model.llava.language_model, HostWeights::Q8_0).expect("host"))),
        ];
        for (suffix, host) in &hosts {
            let mut group = c.benchmark_group(format!("{name}/prefill{suffix}"));
            group.sample_size(10);
            for len in [80usize, 320] {
                let ids = inputs::prompt_ids(len);
                group.bench_with_input(BenchmarkId::from_parameter(len), &len, |bench, _| match host {
                    Some(h) => bench.iter(|| host_prefill(&model, h, &ids, &device)),
                    None => bench.iter(|| prefill(&model, &ids, &device).0),
                });
            }
            group.finish();
        }

        for (suffix, host) in &hosts {
            let mut group = c.benchmark_group(format!("{name}/decode-{DECODE_STEPS}{suffix}"));
            group.sample_size(10).measurement_time(Duration::from_secs(20));
            for len in [80usize, 320] {
                let ids = inputs::prompt_ids(len);
                let mut reported = false;
                group.bench_with_input(BenchmarkId::from_parameter(len), &len, |bench, _| {
                    bench.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let (first, mut cache) = prefill(&model, &ids, &device);
                            let start = Instant::now();
                            let tokens = decode(&model, (&first, &mut cache), len, host.as_ref(), &device);
                            total += start.elapsed();
                            if !reported {
                                eprintln!("{name}/decode{suffix} after {len}: greedy tokens {:?}", &tokens[..12]);
                                reported = true;
                            }
                        }
                        total
                    })
                });
            }
            group.finish();
        }

        let ad = device.clone().autodiff();
        let (train_model, _, _) = load_psa(&dir, &ad, &LoadOptions::default()).expect("quickstart model");
        let batch = inputs::stage1_batch(train_model.llava.image_token_index(), &ad);
        let recipe =
            Recipe { epochs: 1, batch_size: inputs::STAGE1_BATCH, grad_accum: 1, lm_loss: true, ..Recipe::stage1() };
        // Steady-state optimizer steps, as PyTorch's timed loop (one warm-up step, then timed steps): one run over
        // `iters + 1` copies of the batch, each step timed by the trainer from its start to the optimizer update.
        // The run's one-time setup (freezing, the optimizer, the host engine's weight copy) is not a step.
        let mut group = c.benchmark_group(format!("{name}/stage1-step"));
        group.sample_size(10).measurement_time(Duration::from_secs(30));
        group.bench_function(BenchmarkId::from_parameter(inputs::STAGE1_BATCH), |bench| {
            bench.iter_custom(|iters| {
                let data: Vec<_> = (0..=iters).flat_map(|_| batch.iter().cloned()).collect();
                let mut total = Duration::ZERO;
                train(train_model.clone(), &Stage::One, &data, &recipe, 2, &RunOptions::default(), |m| {
                    if m.step > 1 {
                        total += Duration::from_secs_f64(inputs::STAGE1_BATCH as f64 / m.samples_per_s);
                    }
                })
                .expect("steps");
                total
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
