//! Answer a question about an image with a LLaVA model directory.
//!
//! ```text
//! cargo run --release --example generate -- --model-dir fixtures/tiny_llava/hub_f32 \
//!     --tokenizer fixtures/tiny_tokenizer/tokenizer.json --image fixtures/images/franz-kafka.jpg \
//!     --prompt "What is shown in this image?"
//! ```
//! With no flags it runs the tiny random fixture model (its answer is noise; it shows the pipeline works).
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use psa_vlm::device::parse_device;
use psa_vlm::pipeline::llava::LlavaPipeline;
use psa_vlm::pipeline::processor::{Template, load_image};

#[derive(Parser, Debug)]
#[command(about = "Generate an answer about an image with a LLaVA checkpoint")]
struct Args {
    /// Hugging Face LLaVA directory (config.json + safetensors or pytorch_model.bin).
    #[arg(long, default_value = "fixtures/tiny_llava/hub_f32")]
    model_dir: PathBuf,
    /// tokenizer.json (default: <model-dir>/tokenizer.json, else the tiny fixture tokenizer).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Image file (JPEG or PNG).
    #[arg(long, default_value = "fixtures/images/franz-kafka.jpg")]
    image: PathBuf,
    /// The question.
    #[arg(long, default_value = "What is shown in this image?")]
    prompt: String,
    /// Conversation template: llava_hf (`USER: <image>\n… ASSISTANT:`), llava_v1, llava_llama_2 or chatml.
    #[arg(long, default_value = "llava_hf")]
    template: String,
    /// Replace the template's system prompt.
    #[arg(long)]
    system: Option<String>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Top-k filtering.
    #[arg(long)]
    top_k: Option<usize>,
    /// Top-p (nucleus) filtering.
    #[arg(long)]
    top_p: Option<f32>,
    /// Sampling seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Device: cpu, ndarray, wgpu, vulkan, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = parse_device(&args.device)?;
    let mut template = Template::by_name(&args.template)?;
    if let Some(system) = &args.system {
        template = template.with_system(system.clone());
    }
    let tokenizer = args.tokenizer.clone().or_else(|| {
        let own = args.model_dir.join("tokenizer.json");
        (!own.is_file()).then(|| PathBuf::from("fixtures/tiny_tokenizer/tokenizer.json"))
    });
    let pipeline = LlavaPipeline::load(&args.model_dir, tokenizer, template, &device)
        .with_context(|| format!("loading {}", args.model_dir.display()))?;
    eprintln!(
        "loaded {} tensors from {} file(s) on {}",
        pipeline.report.loaded,
        pipeline.report.files.len(),
        args.device
    );
    let image = load_image(&args.image)?;
    let mut cfg = pipeline.generation_config(args.max_new_tokens);
    cfg.temperature = args.temperature;
    cfg.top_k = args.top_k;
    cfg.top_p = args.top_p;
    cfg.seed = args.seed;
    let answer = pipeline.answer(&image, &args.prompt, &cfg)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!("prompt ({} tokens with the image): {:?}", answer.prompt_tokens, answer.prompt);
        println!("answer: {}", answer.text);
        println!(
            "tokens: {:?} ({:?}); vision {:.1} ms, generation {:.1} ms",
            answer.tokens, answer.finish, answer.vision_ms, answer.generate_ms
        );
    }
    Ok(())
}
