//! Export PSA safety modules in the reference (`SafeLlavaModel`) naming so PyTorch can load them.
//!
//! ```text
//! cargo run --release --example export_safety -- --model-dir fixtures/tiny_psa/model --out exported/
//! ```
//! Writes `safety_modules.safetensors` and `config.json`; with `--fixture` also `expected.safetensors` (level,
//! type and LM logits computed here for the fixture's inputs) for `scripts/make_psa_fixtures.py --verify-export`.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use psa_vlm::burn::store::{ModuleStore, SafetensorsStore, bridge};
use psa_vlm::burn::tensor::{Tensor, TensorData};
use psa_vlm::device::parse_device;
use psa_vlm::import::{LoadOptions, load_psa, save_safety_modules, write_f32_safetensors};
use psa_vlm::models::{PaddingMask, Passes, PsaInput};

#[derive(Parser, Debug)]
#[command(about = "Export PSA safety modules in the reference checkpoint naming")]
struct Args {
    /// A full PSA-VLM checkpoint directory (LLaVA + safety keys).
    #[arg(long)]
    model_dir: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// A fixture with `inputs.*` tensors: also write `expected.safetensors` for the PyTorch check.
    #[arg(long)]
    fixture: Option<PathBuf>,
    /// Device string.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn host(t: Tensor<3>) -> (Vec<usize>, Vec<f32>) {
    let d = t.into_data();
    (d.shape().to_vec(), d.convert::<f32>().try_to_vec().expect("f32 data"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = parse_device(&args.device)?;
    let (model, cfg, _) = load_psa(&args.model_dir, &device, &LoadOptions::strict())?;
    let (weights, config) = save_safety_modules(&model.safety, &cfg.safety, &args.out)?;
    println!("wrote {} and {}", weights.display(), config.display());
    let Some(fixture) = args.fixture else { return Ok(()) };
    let mut store = SafetensorsStore::from_file(&fixture);
    let all = store.get_all_tensors().with_context(|| format!("reading {}", fixture.display()))?;
    let get = |name: &str| -> Result<TensorData> {
        let t = all.get(name).with_context(|| format!("{} has no {name}", fixture.display()))?;
        Ok(bridge::to_data(t)?)
    };
    let ints = |d: TensorData| -> Result<Vec<Vec<i64>>> {
        let cols = d.shape()[1];
        Ok(d.convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .chunks(cols)
            .map(<[i64]>::to_vec)
            .collect())
    };
    let pixels = Tensor::<4>::from_data(get("inputs.pixel_values")?.convert::<f32>(), &device);
    let ids: Vec<Vec<u32>> =
        ints(get("inputs.input_ids")?)?.into_iter().map(|r| r.into_iter().map(|v| v as u32).collect()).collect();
    let mask = PaddingMask::from_attention_mask(&ints(get("inputs.attention_mask")?)?);
    let out = model.forward(PsaInput::pixels(pixels, &ids).mask(&mask), Passes::full())?;
    let concepts = out.concepts.ok_or_else(|| anyhow::anyhow!("the full forward returned no concept logits"))?;
    let (ls, lv) = host(concepts.level.unsqueeze());
    let (ts, tv) = host(concepts.risk_type.unsqueeze());
    let (gs, gv) = host(out.logits.ok_or_else(|| anyhow::anyhow!("the full forward returned no logits"))?);
    let expected = vec![
        ("safety.level_logits".to_string(), ls[1..].to_vec(), lv),
        ("safety.type_logits".to_string(), ts[1..].to_vec(), tv),
        ("lm.logits".to_string(), gs, gv),
    ];
    let path = args.out.join("expected.safetensors");
    write_f32_safetensors(&path, expected)?;
    println!("wrote {}", path.display());
    Ok(())
}
