//! LLaVA composition (`LlavaForConditionalGeneration`): vision tower → feature selection → projector, spliced
//! into the LLaMA token embeddings at the `<image>` positions.
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use crate::activation::Activation;
use crate::config::{LlavaConfig, SelectStrategy};
use crate::error::{ConfigError, ModelError};
use crate::llama::LlamaForCausalLM;
use crate::mask::PaddingMask;
use crate::vision::VisionTower;

/// `multi_modal_projector`: `linear_1 → act → linear_2`.
#[derive(Module, Debug)]
pub struct MultiModalProjector {
    /// Vision width → LLM width.
    pub linear_1: Linear,
    /// LLM width → LLM width.
    pub linear_2: Linear,
    #[module(skip)]
    act: Activation,
}

impl MultiModalProjector {
    /// Builds the projector with random weights as the reference initialises it: N(0, 0.02) weights, zero biases.
    pub fn new(d_vision: usize, d_text: usize, act: Activation, bias: bool, device: &Device) -> Self {
        let linear = |d_in, d_out| {
            let l = psa_core::init::normal_linear(d_in, d_out, device);
            if bias { l } else { Linear { bias: None, ..l } }
        };
        Self { linear_1: linear(d_vision, d_text), linear_2: linear(d_text, d_text), act }
    }

    /// # Shapes
    /// - `features`: `[batch, tokens, d_vision]` → `[batch, tokens, d_text]`
    pub fn forward(&self, features: Tensor<3>) -> Tensor<3> {
        let features = crate::precision::to_dtype(features, self.linear_1.weight.val().dtype());
        crate::cpu::linear(&self.linear_2, self.act.forward(crate::cpu::linear(&self.linear_1, features)))
    }
}

/// LLaVA: checkpoint keys `vision_tower.*`, `multi_modal_projector.*`, `language_model.{model,lm_head}.*`.
#[derive(Module, Debug)]
pub struct LlavaForConditionalGeneration {
    /// Vision encoder.
    pub vision_tower: VisionTower,
    /// Vision → text projector.
    pub multi_modal_projector: MultiModalProjector,
    /// Language model.
    pub language_model: LlamaForCausalLM,
    image_token_index: u32,
    feature_layer: usize,
    keep_cls: bool,
}

/// Embeddings ready for the language model, with their padding.
#[derive(Debug, Clone)]
pub struct MergedInputs {
    /// `[batch, seq, d]`.
    pub inputs_embeds: Tensor<3>,
    /// Padding of the merged sequence.
    pub mask: PaddingMask,
    /// For each row, the merged positions where image features start, with the image index.
    pub image_spans: Vec<Vec<(usize, usize)>>,
    /// For each merged position, the index of the input token it came from (`None` for image rows and fill).
    pub source: Vec<Vec<Option<usize>>>,
}

impl MergedInputs {
    /// Carries per-token labels over to the merged sequence; image rows and fill get `ignore` (−100).
    pub fn merge_labels(&self, labels: &[Vec<i64>], ignore: i64) -> Vec<Vec<i64>> {
        self.source
            .iter()
            .zip(labels)
            .map(|(src, lab)| src.iter().map(|s| s.map_or(ignore, |i| lab[i])).collect())
            .collect()
    }
}

impl LlavaConfig {
    /// Builds the model with random weights.
    pub fn init(&self, device: &Device) -> Result<LlavaForConditionalGeneration, ConfigError> {
        Ok(LlavaForConditionalGeneration {
            vision_tower: self.vision.init(device)?,
            multi_modal_projector: MultiModalProjector::new(
                self.vision.hidden_size(),
                self.text.hidden_size,
                self.projector_act,
                self.projector_bias,
                device,
            ),
            language_model: self.text.init(device)?,
            image_token_index: self.image_token_index,
            feature_layer: self.feature_layer_index()?,
            keep_cls: self.select_strategy == SelectStrategy::Full,
        })
    }
}

impl LlavaForConditionalGeneration {
    /// Id of the `<image>` placeholder.
    pub fn image_token_index(&self) -> u32 {
        self.image_token_index
    }

    /// The hidden-state index the features come from.
    pub fn feature_layer(&self) -> usize {
        self.feature_layer
    }

    /// Whether the CLS token is kept (`full` strategy).
    pub fn keeps_cls(&self) -> bool {
        self.keep_cls
    }

    /// Selected vision features before projection (layer `vision_feature_layer`, CLS dropped unless `full`).
    ///
    /// # Shapes
    /// - `pixel_values`: `[images, 3, h, w]` → `[images, tokens, d_vision]`
    pub fn selected_features(&self, pixel_values: Tensor<4>) -> Tensor<3> {
        let mut out = self.vision_tower.forward(pixel_values, Some(self.feature_layer));
        let h = out.hidden_states.swap_remove(self.feature_layer);
        if self.keep_cls {
            return h;
        }
        let [b, t, d] = h.dims();
        h.slice([0..b, 1..t, 0..d])
    }

    /// Projected image features, `[images, tokens, d_text]`.
    pub fn image_features(&self, pixel_values: Tensor<4>) -> Tensor<3> {
        self.multi_modal_projector.forward(self.selected_features(pixel_values))
    }

    /// Splices image features into the token embeddings.
    ///
    /// Each image is marked either by one `<image>` id (expanded here, the transformers 4.37 convention) or
    /// by as many ids as it has feature tokens (current processors). Images are consumed in order.
    pub fn merge(
        &self,
        input_ids: &[Vec<u32>],
        mask: Option<&PaddingMask>,
        image_features: Option<Tensor<3>>,
    ) -> Result<MergedInputs, ModelError> {
        let text = self.language_model.model.embed(&self.sanitize(input_ids), &self.device());
        merge_image_features(input_ids, mask, image_features, self.image_token_index, text)
    }

    /// Full forward: logits `[batch, merged_seq, vocab]` and the merged padding mask.
    pub fn forward(
        &self,
        input_ids: &[Vec<u32>],
        mask: Option<&PaddingMask>,
        pixel_values: Option<Tensor<4>>,
    ) -> Result<(Tensor<3>, PaddingMask), ModelError> {
        let merged = self.merge(input_ids, mask, pixel_values.map(|p| self.image_features(p)))?;
        let out = self.language_model.model.forward(merged.inputs_embeds, &merged.mask, None, false);
        Ok((self.language_model.logits(out.last_hidden_state), merged.mask))
    }

    /// Input ids with every `<image>` id replaced by 0, so that ids outside the vocabulary embed safely.
    pub fn sanitize(&self, input_ids: &[Vec<u32>]) -> Vec<Vec<u32>> {
        let image = self.image_token_index;
        input_ids.iter().map(|r| r.iter().map(|&id| if id == image { 0 } else { id }).collect()).collect()
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.language_model.model.embed_tokens.weight.device()
    }
}

/// The merge behind [`LlavaForConditionalGeneration::merge`]: `text` holds the embeddings of `input_ids`
/// (whatever sits at the placeholder positions is replaced).
pub fn merge_image_features(
    input_ids: &[Vec<u32>],
    mask: Option<&PaddingMask>,
    image_features: Option<Tensor<3>>,
    image_token: u32,
    text: Tensor<3>,
) -> Result<MergedInputs, ModelError> {
    let b = input_ids.len();
    let t = input_ids.first().map_or(0, Vec::len);
    if b == 0 || input_ids.iter().any(|r| r.len() != t) {
        return Err(ModelError::Input("input_ids must be a non-empty batch of equal-length rows".into()));
    }
    let full = PaddingMask::full(b, t);
    let mask = mask.unwrap_or(&full);
    if mask.batch() != b || mask.len() != t {
        return Err(ModelError::Input(format!("attention mask is {}×{}, input_ids {b}×{t}", mask.batch(), mask.len())));
    }
    let (n_images, n_tok) = image_features.as_ref().map_or((0, 0), |f| {
        let [n, k, _] = f.dims();
        (n, k)
    });
    // Plan each row: text ranges and image indices, in order.
    let mut next_image = 0usize;
    let mut plans = Vec::with_capacity(b);
    for (r, row) in input_ids.iter().enumerate() {
        let mut plan = Vec::new();
        let mut i = 0;
        while i < t {
            if row[i] != image_token {
                let start = i;
                while i < t && row[i] != image_token {
                    i += 1;
                }
                plan.push(Piece::Text(start, i));
                continue;
            }
            let start = i;
            while i < t && row[i] == image_token {
                i += 1;
            }
            let run = i - start;
            let images = if run == 1 {
                1
            } else if n_tok > 0 && run % n_tok == 0 {
                run / n_tok
            } else {
                return Err(ModelError::ImageTokens(format!(
                    "row {r}: a run of {run} image tokens at position {start}; each image takes 1 or {n_tok} tokens"
                )));
            };
            for _ in 0..images {
                plan.push(Piece::Image(next_image));
                next_image += 1;
            }
        }
        plans.push(plan);
    }
    if next_image != n_images {
        return Err(ModelError::ImageTokens(format!(
            "the prompt has image placeholders for {next_image} image(s) but {n_images} image(s) were given"
        )));
    }
    let [tb, tt, d] = text.dims();
    if (tb, tt) != (b, t) {
        return Err(ModelError::Input(format!("text embeddings are {tb}×{tt}, input_ids {b}×{t}")));
    }
    let device = text.device();
    let mut rows = Vec::with_capacity(b);
    let mut mask_rows = Vec::with_capacity(b);
    let mut spans = Vec::with_capacity(b);
    let mut sources = Vec::with_capacity(b);
    for (r, plan) in plans.iter().enumerate() {
        let mut parts = Vec::new();
        let mut m = Vec::new();
        let mut row_spans = Vec::new();
        let mut src = Vec::new();
        for piece in plan {
            match *piece {
                Piece::Text(s, e) => {
                    parts.push(text.clone().slice([r..r + 1, s..e, 0..d]));
                    m.extend_from_slice(&mask.rows()[r][s..e]);
                    src.extend((s..e).map(Some));
                }
                Piece::Image(k) => {
                    let f = image_features.as_ref().expect("planned images imply features");
                    row_spans.push((m.len(), k));
                    parts.push(crate::precision::to_dtype(f.clone().slice([k..k + 1, 0..n_tok, 0..d]), text.dtype()));
                    m.extend(std::iter::repeat_n(true, n_tok));
                    src.extend(std::iter::repeat_n(None, n_tok));
                }
            }
        }
        rows.push(Tensor::cat(parts, 1));
        mask_rows.push(m);
        spans.push(row_spans);
        sources.push(src);
    }
    let len = mask_rows.iter().map(Vec::len).max().unwrap_or(0);
    let left =
        mask.rows().iter().any(|r| r.first() == Some(&false)) && !mask.rows().iter().any(|r| r.last() == Some(&false));
    for (((row, m), sp), src) in rows.iter_mut().zip(mask_rows.iter_mut()).zip(spans.iter_mut()).zip(sources.iter_mut())
    {
        let missing = len - m.len();
        if missing == 0 {
            continue;
        }
        let pad = Tensor::<3>::zeros([1, missing, d], (&device, text.dtype()));
        if left {
            *row = Tensor::cat(vec![pad, row.clone()], 1);
            m.splice(0..0, std::iter::repeat_n(false, missing));
            src.splice(0..0, std::iter::repeat_n(None, missing));
            sp.iter_mut().for_each(|(p, _)| *p += missing);
        } else {
            *row = Tensor::cat(vec![row.clone(), pad], 1);
            m.extend(std::iter::repeat_n(false, missing));
            src.extend(std::iter::repeat_n(None, missing));
        }
    }
    Ok(MergedInputs {
        inputs_embeds: Tensor::cat(rows, 0),
        mask: PaddingMask::new(mask_rows),
        image_spans: spans,
        source: sources,
    })
}

enum Piece {
    Text(usize, usize),
    Image(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_projector_is_initialised_as_the_reference() {
        let device = Device::flex();
        let p = MultiModalProjector::new(256, 512, Activation::Gelu, true, &device);
        for l in [&p.linear_1, &p.linear_2] {
            let w: Vec<f32> = l.weight.val().into_data().try_to_vec::<f32>().unwrap();
            let mean = w.iter().map(|&x| x as f64).sum::<f64>() / w.len() as f64;
            let std = (w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
            // Burn's default (Kaiming-uniform, std 1/sqrt(3·fan_in)) would give 0.036 or 0.026 here.
            assert!(mean.abs() < 1e-3 && (std - 0.02).abs() < 5e-4, "weight mean {mean}, std {std}");
            let b: Vec<f32> = l.bias.as_ref().unwrap().val().into_data().try_to_vec::<f32>().unwrap();
            assert!(b.iter().all(|&x| x == 0.0), "biases start at zero");
        }
        assert!(MultiModalProjector::new(8, 8, Activation::Gelu, false, &device).linear_1.bias.is_none());
    }
}
