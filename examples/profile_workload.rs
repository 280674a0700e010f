//! Runs one workload of `benches/vs_pytorch.rs` in a loop for a profiler, with nothing else in the process
//! after the model load:
//!
//! ```sh
//! cargo build --release --example profile_workload
//! perf record -F 499 -g target/release/examples/profile_workload classify-1 30
//! ```
//!
//! Workloads: `classify-1`, `classify-8` (tensor path), `classify-1-host`, `classify-8-host` (host vision and C-Abstractor engines),
//! `prefill-80`, `prefill-320` (tensor path), `prefill-80-host`,
//! `prefill-320-host` (host engine, f32), `decode-80`, `decode-80-host`, `stage1`. The second argument is the number
//! of seconds to loop (default 20). Model: `PSA_BENCH_MODEL` or the quickstart's.
//!
//! `q8-parity` instead prints how far the Q8_0 host decoder's logits are from the f32 ones along 64 greedy steps
//! after each of the bench's prompts.
#[path = "../benches/common/inputs.rs"]
mod inputs;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use psa_vlm::burn::tensor::{Device, Tensor};
use psa_vlm::core::compare::{max_abs, max_abs_diff};
use psa_vlm::import::{LoadOptions, load_psa};
use psa_vlm::models::generate::argmax;
use psa_vlm::models::{
    GenerationConfig, HostAbstractor, HostDecoder, HostVision, HostWeights, KvCache, PaddingMask, PsaInput, PsaVlm,
    generate_with,
};
use psa_vlm::train::Recipe;
use psa_vlm::train::trainer::{RunOptions, Stage, train};

/// One run of the workload on the model.
type Workload = Box<dyn FnMut(&PsaVlm) -> anyhow::Result<()>>;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let workload = args.first().context("usage: profile_workload WORKLOAD [SECONDS]")?.clone();
    let seconds: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let dir = std::env::var_os("PSA_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("runs/quickstart/model"));
    if workload == "q8-parity" {
        return q8_parity(&dir);
    }
    let train_mode = workload == "stage1";
    let device = if train_mode { Device::flex().autodiff() } else { Device::flex() };
    let (model, config, _) = load_psa(&dir, &device, &LoadOptions::default())?;
    let image = model.llava.image_token_index();
    let mut run: Workload = match workload.as_str() {
        "classify-1" | "classify-8" | "classify-1-host" | "classify-8-host" => {
            let b = if workload.contains('8') { 8 } else { 1 };
            let pixels = Tensor::<4>::from_data(inputs::pixels(b), &device);
            let ids = vec![inputs::classify_ids(image); b];
            let host = match workload.ends_with("host") {
                true => Some((HostVision::new(&model.llava)?, HostAbstractor::new(&model.safety, &config.safety)?)),
                false => None,
            };
            Box::new(move |m| {
                let level = match &host {
                    Some((vision, abstractor)) => {
                        let h_s = abstractor.project(vision.selected_features(pixels.clone())?)?;
                        m.classify(PsaInput::projected(h_s, &ids))?.level
                    }
                    None => m.classify(PsaInput::pixels(pixels.clone(), &ids))?.level,
                };
                level.into_data();
                Ok(())
            })
        }
        "prefill-80" | "prefill-320" | "prefill-80-host" | "prefill-320-host" | "decode-80" | "decode-80-host" => {
            let len = if workload.contains("320") { 320 } else { 80 };
            let steps = if workload.starts_with("decode") { 33 } else { 1 };
            let host = workload
                .ends_with("host")
                .then(|| HostDecoder::new(&model.llava.language_model, HostWeights::F32))
                .transpose()?;
            let ids = inputs::prompt_ids(len);
            let cfg = GenerationConfig { max_new_tokens: steps, ..Default::default() };
            let device = device.clone();
            Box::new(move |m| {
                let lm = &m.llava.language_model;
                let embeds = lm.model.embed(std::slice::from_ref(&ids), &device);
                generate_with(lm, host.as_ref(), embeds, PaddingMask::full(1, len), &cfg, 8192)?;
                Ok(())
            })
        }
        "stage1" => {
            let data = inputs::stage1_batch(image, &device);
            let recipe = Recipe {
                epochs: 1,
                batch_size: inputs::STAGE1_BATCH,
                grad_accum: 1,
                lm_loss: true,
                ..Recipe::stage1()
            };
            Box::new(move |m| {
                train(m.clone(), &Stage::One, &data, &recipe, 2, &RunOptions::default(), |_| {})?;
                Ok(())
            })
        }
        other => bail!("unknown workload {other:?}"),
    };
    let (start, mut n) = (Instant::now(), 0);
    while start.elapsed() < Duration::from_secs(seconds) {
        let t = Instant::now();
        run(&model)?;
        n += 1;
        eprintln!("{workload} #{n}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(())
}

/// Max |logit difference| and greedy agreement of the Q8_0 host decoder against the f32 one, teacher-forced on
/// the f32 decoder's own greedy tokens.
fn q8_parity(dir: &std::path::Path) -> anyhow::Result<()> {
    let device = Device::flex();
    let (model, _, _) = load_psa(dir, &device, &LoadOptions::default())?;
    let lm = &model.llava.language_model;
    let f32 = HostDecoder::new(lm, HostWeights::F32)?;
    let q8 = HostDecoder::new(lm, HostWeights::Q8_0)?;
    println!("weights: f32 {} MB, Q8_0 {} MB", f32.weight_bytes() >> 20, q8.weight_bytes() >> 20);
    for len in [80usize, 320] {
        let ids = inputs::prompt_ids(len);
        let mut cache = KvCache::new(lm.num_layers());
        let hidden = lm.model.forward(
            lm.model.embed(std::slice::from_ref(&ids), &device),
            &PaddingMask::full(1, len),
            Some(&mut cache),
            false,
        );
        let [_, t, d] = hidden.last_hidden_state.dims();
        let first = lm.logits(hidden.last_hidden_state.slice([0..1, t - 1..t, 0..d]));
        let first: Vec<f32> =
            first.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let (mut a, mut b) = (f32.cache_from(&cache, 64)?, q8.cache_from(&cache, 64)?);
        let mut mask = PaddingMask::full(1, len);
        let mut next = argmax(&first);
        let (mut worst, mut largest, mut agree) = (0f32, 0f32, 0);
        for _ in 0..64 {
            mask.extend(1);
            let (la, lb) = (f32.step(&[next], &mask, &mut a)?, q8.step(&[next], &mask, &mut b)?);
            worst = worst.max(max_abs_diff(&la, &lb)? as f32);
            largest = largest.max(max_abs(&la)? as f32);
            agree += usize::from(argmax(&la) == argmax(&lb));
            next = argmax(&la);
        }
        println!("prompt {len}: max |Δlogit| {worst:.4} (largest |logit| {largest:.2}), same greedy token {agree}/64");
    }
    Ok(())
}
