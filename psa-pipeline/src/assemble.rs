//! A PSA-VLM assembled around separately obtained towers (a DINOv2 from ONNX, a LLaMA from GGUF, …): a fresh LLaVA
//! projector and fresh safety modules sized to them, and the `<image>` placeholder added one past the LLM's
//! vocabulary.
use burn::tensor::Device;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::TextError;
use crate::processor::TextProcessor;
use psa_models::ConfigError;
use psa_models::activation::Activation;
use psa_models::config::{LlavaConfig, SelectStrategy};
use psa_models::llama::{LlamaConfig, LlamaForCausalLM};
use psa_models::psa::{PsaConfig, PsaVlm};
use psa_models::vision::{VisionConfig, VisionTower};

/// The `<image>` placeholder of an assembled model.
pub const IMAGE_TOKEN: &str = "<image>";

/// Builds the model: `configure` may change the safety sizes (tokens, queries, …) before the new modules are made.
/// The projector and safety modules are random (reference initialisation); the towers are used as given.
pub fn assemble_psa(
    vision: (VisionTower, VisionConfig),
    language: (LlamaForCausalLM, LlamaConfig),
    configure: impl FnOnce(&mut PsaConfig),
    device: &Device,
) -> Result<(PsaVlm, PsaConfig), ConfigError> {
    let (tower, vision_config) = vision;
    let (language_model, text) = language;
    let image_token_index = text.vocab_size as u32;
    let pad_token_id = text.pad_token_id.or(text.eos_token_id.as_ref().and_then(|e| e.to_vec().first().copied()));
    let llava = LlavaConfig {
        vision: vision_config,
        text,
        image_token_index,
        pad_token_id,
        vision_feature_layer: -2,
        select_strategy: SelectStrategy::Default,
        projector_act: Activation::Gelu,
        projector_bias: true,
    };
    let mut config = PsaConfig::for_llava(llava);
    configure(&mut config);
    let mut model = config.init(device)?;
    model.llava.vision_tower = tower;
    model.llava.language_model = language_model;
    Ok((model, config))
}

/// The LLM's tokenizer with [`IMAGE_TOKEN`] added as a special token (id = the LLM's vocabulary size), checked to
/// land on `image_token_index`.
pub fn image_text_processor(mut tokenizer: Tokenizer, image_token_index: u32) -> Result<TextProcessor, TextError> {
    if tokenizer.token_to_id(IMAGE_TOKEN).is_none() {
        tokenizer.add_special_tokens(&[AddedToken::from(IMAGE_TOKEN, true)]);
    }
    let text = TextProcessor::new(tokenizer, IMAGE_TOKEN)?;
    if text.image_token_id() != image_token_index {
        return Err(TextError::MissingToken(format!(
            "{IMAGE_TOKEN} got id {}, the model expects {image_token_index} (the tokenizer's size differs from the \
             LLM's vocabulary)",
            text.image_token_id()
        )));
    }
    Ok(text)
}
