//! Chat with a LLaMA-architecture GGUF file (llama.cpp / Ollama format): weights, configuration and tokenizer all
//! come from the file.
//!
//! ```text
//! cargo run --release --example gguf_generate -- --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --prompt "What is the capital of France? Answer in one sentence."
//! ```
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use psa_vlm::device::parse_device;
use psa_vlm::import::LoadOptions;
use psa_vlm::import::gguf::{GgufFile, gguf_tokenizer, load_llama_gguf};
use psa_vlm::models::PaddingMask;
use psa_vlm::models::{GenerationConfig, generate};
use psa_vlm::pipeline::processor::{Message, Template};

#[derive(Parser, Debug)]
#[command(about = "Generate text with a LLaMA-architecture GGUF model")]
struct Args {
    /// The .gguf file.
    #[arg(long)]
    gguf: PathBuf,
    /// The user's message.
    #[arg(long, default_value = "What is the capital of France? Answer in one sentence.")]
    prompt: String,
    /// Conversation template (`chatml` for SmolLM2, `llava_v1` for Vicuna-style models).
    #[arg(long, default_value = "chatml")]
    template: String,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 48)]
    max_new_tokens: usize,
    /// Device: cpu, ndarray, wgpu, vulkan, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = parse_device(&args.device)?;
    let start = Instant::now();
    let (model, config, report) = load_llama_gguf(&args.gguf, &device, &LoadOptions::default())
        .with_context(|| format!("loading {}", args.gguf.display()))?;
    let file = GgufFile::open(&args.gguf)?;
    let (tokenizer, _) = gguf_tokenizer(&file)?;
    println!(
        "loaded {} tensors ({} layers, width {}, vocab {}) in {:.1} s",
        report.loaded,
        config.num_hidden_layers,
        config.hidden_size,
        config.vocab_size,
        start.elapsed().as_secs_f64()
    );
    let prompt = Template::by_name(&args.template)?.render(&[Message::user(args.prompt.clone())], true);
    let ids = tokenizer.encode(prompt.as_str(), true).map_err(anyhow::Error::msg)?.get_ids().to_vec();
    let embeds = model.model.embed(std::slice::from_ref(&ids), &device);
    let cfg = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        eos_token_ids: config.eos_token_id.as_ref().map(|e| e.to_vec()).unwrap_or_default(),
        ..Default::default()
    };
    let start = Instant::now();
    let out = generate(&model, embeds, PaddingMask::full(1, ids.len()), &cfg, config.max_position_embeddings)?;
    let secs = start.elapsed().as_secs_f64();
    let text = tokenizer.decode(&out.tokens[0], true).map_err(anyhow::Error::msg)?;
    println!("prompt: {} tokens\nanswer: {}", ids.len(), text.trim());
    println!("{} tokens in {secs:.2} s ({:?})", out.tokens[0].len(), out.finish[0]);
    Ok(())
}
