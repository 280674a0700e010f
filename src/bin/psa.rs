//! `psa`: the PSA-VLM command-line tool.
//!
//! ```text
//! psa train stage1 --config runs/stage1.toml [--device cpu] [--epochs 3] [--out runs/s1]
//! psa train stage2 --config runs/stage2.toml --resume-from runs/s2/checkpoints/checkpoint-300
//! ```
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use psa_vlm::device::parse_devices;
use psa_vlm::train::TrainConfig;
use psa_vlm::train::run::StageName;

#[derive(Parser, Debug)]
#[command(name = "psa", version, about = "PSA-VLM: safety concept bottlenecks for vision-language models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train stage I (safety modules) or stage II (LoRA on the LLM) from a TOML/JSON run configuration.
    Train {
        /// `stage1` or `stage2`; must agree with the configuration's `stage`.
        stage: String,
        /// Run configuration (`.toml` or `.json`).
        #[arg(long)]
        config: PathBuf,
        /// Device: cpu, ndarray, wgpu, vulkan, cuda:N; a comma-separated list trains data-parallel over them.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Output directory (overrides the configuration).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue from a checkpoint folder.
        #[arg(long)]
        resume_from: Option<PathBuf>,
        /// Recipe overrides.
        #[arg(long)]
        lr: Option<f64>,
        #[arg(long)]
        epochs: Option<usize>,
        #[arg(long)]
        batch_size: Option<usize>,
        #[arg(long)]
        grad_accum: Option<usize>,
        #[arg(long)]
        seed: Option<u64>,
        /// No progress bar (logs only).
        #[arg(long)]
        quiet: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Train { stage, config, device, out, resume_from, lr, epochs, batch_size, grad_accum, seed, quiet } => {
            let mut cfg = TrainConfig::from_file(&config)?;
            let wanted = match stage.as_str() {
                "stage1" => StageName::Stage1,
                "stage2" => StageName::Stage2,
                other => bail!("unknown stage {other:?}: expected stage1 or stage2"),
            };
            if cfg.stage != wanted {
                bail!("{} configures {:?}, but `psa train {stage}` was asked for", config.display(), cfg.stage);
            }
            cfg.out = out.unwrap_or(cfg.out);
            cfg.resume_from = resume_from.or(cfg.resume_from);
            let r = &mut cfg.recipe;
            r.lr = lr.or(r.lr);
            r.epochs = epochs.or(r.epochs);
            r.batch_size = batch_size.or(r.batch_size);
            r.grad_accum = grad_accum.or(r.grad_accum);
            r.seed = seed.or(r.seed);
            cfg.progress = !quiet && cfg.progress;
            let devices = parse_devices(&device)?;
            let summary =
                psa_vlm::train::run(&cfg, &devices).with_context(|| format!("running {}", config.display()))?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
    }
}
