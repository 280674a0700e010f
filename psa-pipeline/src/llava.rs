//! A ready-to-use LLaVA pipeline: model directory → image + question → answer.
use std::path::{Path, PathBuf};
use std::time::Instant;

use ::image::DynamicImage;
use burn::tensor::Device;
use serde::Serialize;

use crate::error::PipelineError;
use crate::processor::{ImageProcessor, ImageProcessorConfig, Template, TextProcessor};
use psa_import::LoadError;
use psa_import::{LoadOptions, LoadReport, load_llava};
use psa_models::ConfigError;
use psa_models::config::LlavaConfig;
use psa_models::generate::{FinishReason, GenerationConfig, generate};
use psa_models::llava::LlavaForConditionalGeneration;

/// The answer to one question, with token counts and timings.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    /// The rendered prompt.
    pub prompt: String,
    /// Generated text.
    pub text: String,
    /// Generated token ids.
    pub tokens: Vec<u32>,
    /// Prompt length after image expansion.
    pub prompt_tokens: usize,
    /// Why generation stopped.
    pub finish: FinishReason,
    /// Vision tower + projector time, ms.
    pub vision_ms: f64,
    /// Prefill and decoding time, ms.
    pub generate_ms: f64,
}

/// Model, processors and template loaded together.
#[derive(Debug)]
pub struct LlavaPipeline {
    /// The model.
    pub model: LlavaForConditionalGeneration,
    /// Its configuration.
    pub config: LlavaConfig,
    /// What the weight import read.
    pub report: LoadReport,
    /// Tokenizer.
    pub text: TextProcessor,
    /// Image preprocessing.
    pub images: ImageProcessor,
    /// Conversation template.
    pub template: Template,
    device: Device,
}

/// The tokenizer (`tokenizer`, else `model_dir/tokenizer.json`) and image processor
/// (`model_dir/preprocessor_config.json`, else the vision tower's own recipe) of a model directory.
pub fn processors(
    model_dir: &Path,
    tokenizer: Option<PathBuf>,
    vision: &psa_models::vision::VisionConfig,
) -> Result<(TextProcessor, ImageProcessor), PipelineError> {
    let tokenizer = tokenizer.unwrap_or_else(|| model_dir.join("tokenizer.json"));
    let text = TextProcessor::from_file(&tokenizer, "<image>")?;
    let pre = model_dir.join("preprocessor_config.json");
    let cfg = if pre.is_file() {
        ImageProcessorConfig::from_file(&pre).map_err(LoadError::from)?
    } else {
        ImageProcessorConfig::for_vision(vision)
    };
    let images = cfg.build().map_err(LoadError::from)?;
    check_processor(&images, vision).map_err(LoadError::from)?;
    Ok((text, images))
}

/// Checks that the image processor's output fits the vision tower, for square and oblong inputs alike: CLIP's
/// position table holds one fixed patch grid; DINOv2 interpolates its table but needs at least one patch.
pub fn check_processor(images: &ImageProcessor, vision: &psa_models::vision::VisionConfig) -> Result<(), ConfigError> {
    use psa_models::vision::VisionConfig;
    let (patch, native) = match vision {
        VisionConfig::Clip(c) => (c.patch_size, Some(c.image_size / c.patch_size)),
        VisionConfig::Dinov2(c) => (c.patch_size, None),
    };
    for (h, w) in [(640, 640), (480, 640), (640, 480)] {
        let (oh, ow) = images.output_size(h, w);
        let grid = (oh / patch, ow / patch);
        let fits = match native {
            Some(g) => grid == (g, g),
            None => grid.0 > 0 && grid.1 > 0,
        };
        if !fits {
            let want = native.map_or("at least one patch".to_string(), |g| format!("a {g}×{g} grid"));
            return Err(ConfigError::Invalid(format!(
                "the image processor turns a {w}×{h} image into {ow}×{oh} pixels, a {}×{} grid of {patch}-pixel \
                 patches; the vision tower needs {want} (check preprocessor_config.json against the vision config)",
                grid.1, grid.0
            )));
        }
    }
    Ok(())
}

impl LlavaPipeline {
    /// Loads `model_dir`; the tokenizer defaults to `model_dir/tokenizer.json` and the image processor to
    /// `model_dir/preprocessor_config.json`, else to the vision tower's own recipe at its native size.
    pub fn load(
        model_dir: &Path,
        tokenizer: Option<PathBuf>,
        template: Template,
        device: &Device,
    ) -> Result<Self, PipelineError> {
        let (model, config, report) = load_llava(model_dir, device, &LoadOptions::default())?;
        let (text, images) = processors(model_dir, tokenizer, &config.vision)?;
        Ok(Self { model, config, report, text, images, template, device: device.clone() })
    }

    /// Generation defaults from the config: EOS from `text_config`, padding from `pad_token_id`.
    pub fn generation_config(&self, max_new_tokens: usize) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens,
            eos_token_ids: self.config.text.eos_token_id.as_ref().map(|e| e.to_vec()).unwrap_or_default(),
            pad_token_id: self.config.pad_token_id.unwrap_or(0),
            ..Default::default()
        }
    }

    /// Answers `question` about `image`.
    pub fn answer(
        &self,
        image: &DynamicImage,
        question: &str,
        cfg: &GenerationConfig,
    ) -> Result<Answer, PipelineError> {
        let prompt = self.template.image_prompt(question);
        let ids = self.text.encode_prompt(&prompt, None)?;
        let start = Instant::now();
        let pixels = self.images.preprocess(std::slice::from_ref(image), &self.device)?;
        let features = self.model.image_features(pixels);
        let merged = self.model.merge(&[ids], None, Some(features))?;
        let vision_ms = start.elapsed().as_secs_f64() * 1e3;
        let prompt_tokens = merged.mask.len();
        let start = Instant::now();
        let max_pos = self.config.text.max_position_embeddings;
        let out = generate(&self.model.language_model, merged.inputs_embeds, merged.mask, cfg, max_pos)?;
        let generate_ms = start.elapsed().as_secs_f64() * 1e3;
        let tokens = out.tokens.into_iter().next().unwrap_or_default();
        let text = self.text.decode(&tokens, true)?;
        Ok(Answer { prompt, text, tokens, prompt_tokens, finish: out.finish[0], vision_ms, generate_ms })
    }
}
