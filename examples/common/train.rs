// The stage examples' command line, the same flags as `psa train` (included with `#[path]`).
use anyhow::Result;
use clap::Parser;
use psa_vlm::device::parse_devices;
use psa_vlm::train::settings::TrainArgs;

#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    settings: TrainArgs,
    /// Device: cpu, ndarray, wgpu, vulkan, cuda:N; a comma-separated list trains data-parallel over them.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Parses the flags, runs `stage` (`stage1` or `stage2`) and prints the run's JSON summary.
pub fn run(stage: &str, about: &'static str) -> Result<()> {
    let args = Args::parse_from_about(about);
    let cfg = args.settings.resolve(stage)?;
    let summary = psa_vlm::train::run(&cfg, &parse_devices(&args.device)?)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

impl Args {
    fn parse_from_about(about: &'static str) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Self::command().about(about).get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}
