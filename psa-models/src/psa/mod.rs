//! The PSA-VLM model: LLaVA plus the safety modules. A classify-only path that never runs the
//! LLM, and the full forward with `[S2 ; projected image tokens]` spliced in at each `<image>` position.
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use psa_core::{ConceptLogits, ConceptLoss, QueryMode, SafetyConfig, SafetyModules, concept_loss};
use serde_json::Value;

use crate::config::{LlavaConfig, read_json};
use crate::cpu::layers::host_vec;
use crate::error::{ConfigError, ModelError};
use crate::llama::HostLmLoss;
use crate::llava::{LlavaForConditionalGeneration, MergedInputs, merge_image_features};
use crate::loss::{IGNORE_INDEX, causal_lm_loss, supervised_lm_loss};
use crate::mask::PaddingMask;
use crate::precision::{Precision, cast_frozen, to_f32};
use crate::vision::VisionConfig;

mod input;
pub use input::{ConceptLabels, LmEngine, LmPass, Passes, PsaInput, VisionInput};

/// A PSA-VLM configuration: the LLaVA base and the safety modules.
#[derive(Debug, Clone, PartialEq)]
pub struct PsaConfig {
    /// The base model.
    pub llava: LlavaConfig,
    /// The safety modules.
    pub safety: SafetyConfig,
}

impl PsaConfig {
    /// Reference sizes for a LLaVA base: 64 tokens, abstractor width = vision width + 64, one query per patch.
    pub fn for_llava(llava: LlavaConfig) -> Self {
        let (vision_dim, patches) = vision_dims(&llava.vision);
        let safety = SafetyConfig::for_model(vision_dim, patches, llava.text.hidden_size);
        Self { llava, safety }
    }

    /// Parses a `config.json`: a `safety_config` object when present, else the reference's top-level projector
    /// keys (`num_queries`, `hidden_size` = abstractor width, `encoder_hidden_size`, `output_hidden_size`, `depth`,
    /// `mlp_depth`), else the reference defaults.
    pub fn from_value(value: &Value, path: &std::path::Path) -> Result<Self, ConfigError> {
        let llava = LlavaConfig::from_value(value, path)?;
        let mut cfg = Self::for_llava(llava);
        if let Some(sc) = value.get("safety_config") {
            cfg.safety = crate::config::parse(sc, path, "safety_config")?;
        } else {
            let get = |k: &str| value.get(k).and_then(Value::as_u64).map(|v| v as usize);
            let s = &mut cfg.safety;
            if let Some(v) = get("encoder_hidden_size") {
                s.vision_dim = v;
            }
            if let Some(v) = get("num_safety_tokens") {
                s.num_safety_tokens = v;
            }
            s.abstractor_width = get("hidden_size").unwrap_or(s.vision_dim + s.num_safety_tokens);
            if get("num_safety_tokens").is_none() && get("hidden_size").is_some() {
                s.num_safety_tokens = s.abstractor_width.saturating_sub(s.vision_dim);
            }
            s.safety_dim = get("output_hidden_size").unwrap_or(s.safety_dim);
            s.num_queries = get("num_queries").unwrap_or(s.num_queries);
            s.abstractor_depth = get("depth").unwrap_or(s.abstractor_depth);
            s.abstractor_mlp_depth = get("mlp_depth").unwrap_or(s.abstractor_mlp_depth);
            s.safety_heads = get("safety_heads").unwrap_or(s.safety_heads);
            s.num_levels = get("num_levels").unwrap_or(s.num_levels);
            s.num_types = get("num_types").unwrap_or(s.num_types);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The `config.json` value [`from_value`](Self::from_value) reads back: the LLaVA keys plus `safety_config`.
    pub fn to_value(&self) -> Value {
        let mut v = self.llava.to_value();
        if let Some(o) = v.as_object_mut() {
            o.insert("safety_config".into(), serde_json::to_value(&self.safety).unwrap_or_default());
        }
        v
    }

    /// Reads `config.json` from a directory.
    pub fn from_dir(dir: &std::path::Path) -> Result<Self, ConfigError> {
        let path = dir.join("config.json");
        Self::from_value(&read_json(&path)?, &path)
    }

    /// Checks the safety modules fit the base model.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.safety.validate()?;
        let (vision_dim, _) = vision_dims(&self.llava.vision);
        if self.safety.vision_dim != vision_dim || self.safety.safety_dim != self.llava.text.hidden_size {
            return Err(ConfigError::Invalid(format!(
                "safety modules read width {} and write width {}, the base model has vision width {vision_dim} and LLM width {}",
                self.safety.vision_dim, self.safety.safety_dim, self.llava.text.hidden_size
            )));
        }
        Ok(())
    }

    /// Builds the model with random weights (the safety modules with the reference initialisation).
    pub fn init(&self, device: &Device) -> Result<PsaVlm, ConfigError> {
        self.validate()?;
        Ok(PsaVlm {
            llava: self.llava.init(device)?,
            safety: self.safety.init(device)?,
            bos_token_id: self.llava.text.bos_token_id,
            pad_token_id: self.llava.pad_token_id,
            cls_loss_weight: self.safety.cls_loss_weight,
            llm_image_pool: self.safety.llm_image_pool,
        })
    }
}

/// Average-pools the square patch grid of `[b, g·g, d]` features by `k×k` → `[b, (g/k)², d]` (`k = 1`: unchanged).
pub fn pool_grid(features: Tensor<3>, k: usize) -> Result<Tensor<3>, ModelError> {
    if k <= 1 {
        return Ok(features);
    }
    let [b, n, d] = features.dims();
    let g = (n as f64).sqrt().round() as usize;
    if g * g != n || !g.is_multiple_of(k) {
        return Err(ModelError::Input(format!("{n} image tokens do not form a square grid divisible by {k}")));
    }
    let m = g / k;
    let pooled = features.reshape([b, m, k, m, k * d]).mean_dim(2).reshape([b * m * m, k, d]).mean_dim(1);
    Ok(pooled.reshape([b, m * m, d]))
}

fn vision_dims(v: &VisionConfig) -> (usize, usize) {
    match v {
        VisionConfig::Clip(c) => (c.hidden_size, c.grid() * c.grid()),
        VisionConfig::Dinov2(c) => (c.hidden_size, (c.image_size / c.patch_size).pow(2)),
    }
}

/// PSA-VLM: `llava.*` is the base model, `safety.*` the safety modules (reference names in checkpoints).
#[derive(Module, Debug)]
pub struct PsaVlm {
    /// The LLaVA base.
    pub llava: LlavaForConditionalGeneration,
    /// Safety tokens, safety projector and safety head.
    pub safety: SafetyModules,
    bos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
    cls_loss_weight: f64,
    llm_image_pool: usize,
}

/// What the full forward returns.
#[derive(Debug, Clone)]
pub struct PsaOutput {
    /// LM logits over the merged sequence, `[b, merged, vocab]`, from [`LmPass::Logits`].
    pub logits: Option<Tensor<3>>,
    /// Concept logits, when the safety head ran.
    pub concepts: Option<ConceptLogits>,
    /// The merged inputs (mask, image spans, source positions), when the LLM ran.
    pub merged: Option<MergedInputs>,
    /// Labels carried to the merged sequence (−100 on image rows), when labels were given.
    pub merged_labels: Option<Vec<Vec<i64>>>,
    /// Next-token loss over supervised positions.
    pub lm_loss: Option<Tensor<1>>,
    /// Concept loss parts.
    pub concept_loss: Option<ConceptLoss>,
    /// `L_LLM + λ·(CE_level + CE_type)` (or the part that has labels).
    pub loss: Option<Tensor<1>>,
}

impl PsaVlm {
    /// The precision of the frozen base (the safety modules are always f32).
    pub fn precision(&self) -> Precision {
        Precision::of(self.llava.language_model.model.dtype()).unwrap_or_default()
    }

    /// The model with its frozen base (vision tower, projector, LLM) cast to `precision`; the safety modules and
    /// LoRA adapters stay f32.
    pub fn with_precision(self, precision: Precision) -> Self {
        cast_frozen(self, precision)
    }

    /// The weight λ of the concept loss.
    pub fn cls_loss_weight(&self) -> f64 {
        self.cls_loss_weight
    }

    /// Token embeddings of the raw prompt (the head's queries; `<image>` embedded like any token when in vocab).
    pub fn text_embeddings(&self, input_ids: &[Vec<u32>]) -> Tensor<3> {
        let lm = &self.llava.language_model.model;
        let vocab = lm.embed_tokens.weight.dims()[0] as u32;
        let ids: Vec<Vec<u32>> =
            input_ids.iter().map(|r| r.iter().map(|&i| if i < vocab { i } else { 0 }).collect()).collect();
        lm.embed(&ids, &self.llava.device())
    }

    /// Real text tokens for the text-aware query modes: not padding, not `<image>`, not BOS.
    pub fn query_mask(&self, input_ids: &[Vec<u32>], mask: Option<&PaddingMask>) -> Vec<Vec<bool>> {
        let image = self.llava.image_token_index();
        input_ids
            .iter()
            .enumerate()
            .map(|(r, row)| {
                row.iter()
                    .enumerate()
                    .map(|(i, &id)| mask.is_none_or(|m| m.rows()[r][i]) && id != image && Some(id) != self.bos_token_id)
                    .collect()
            })
            .collect()
    }

    /// The rows the text-aware query modes pool: the tokens `question` marks, or every real text token
    /// ([`query_mask`](Self::query_mask)) in rows where it marks none or is not given.
    pub fn query_rows(
        &self,
        input_ids: &[Vec<u32>],
        mask: Option<&PaddingMask>,
        question: Option<&[Vec<bool>]>,
    ) -> Result<Vec<Vec<bool>>, ModelError> {
        let fallback = self.query_mask(input_ids, mask);
        let Some(question) = question else { return Ok(fallback) };
        if question.len() != input_ids.len() || question.iter().zip(input_ids).any(|(q, r)| q.len() != r.len()) {
            return Err(ModelError::Input("the question marks must have the shape of input_ids".into()));
        }
        Ok(question.iter().zip(fallback).map(|(q, f)| if q.iter().any(|&m| m) { q.clone() } else { f }).collect())
    }

    /// [`query_rows`](Self::query_rows) without the positions `labels` supervises; a row left with nothing to
    /// query is an error, never a fallback to its answer.
    fn answer_free_rows(
        &self,
        input_ids: &[Vec<u32>],
        mask: Option<&PaddingMask>,
        question: Option<&[Vec<bool>]>,
        labels: &[Vec<i64>],
    ) -> Result<Vec<Vec<bool>>, ModelError> {
        let mut rows = self.query_rows(input_ids, mask, question)?;
        for (r, (row, l)) in rows.iter_mut().zip(labels).enumerate() {
            for (m, &l) in row.iter_mut().zip(l) {
                *m &= l == IGNORE_INDEX;
            }
            if !row.iter().any(|&m| m) {
                return Err(ModelError::Input(format!("row {r} has no text token outside its answer to query")));
            }
        }
        Ok(rows)
    }

    /// Concept logits only: the vision tower (for pixels), the safety projector (unless `h_s` is given) and the
    /// safety head; the LLM never runs.
    pub fn classify(&self, input: PsaInput<'_>) -> Result<ConceptLogits, ModelError> {
        let text = self.text_embeddings(input.input_ids);
        let h_s = match input.vision {
            VisionInput::Projected(h_s) => h_s,
            vision => self.safety.project(to_f32(self.features(vision)?)),
        };
        self.head(h_s, text, input.input_ids, input.mask, input.question)
    }

    /// The LLM's input: prompt embeddings with `[S2 ; projected image tokens]` at each `<image>` (generation starts
    /// here; no safety head).
    pub fn merged_inputs(&self, input: PsaInput<'_>) -> Result<MergedInputs, ModelError> {
        let text = self.text_embeddings(input.input_ids);
        self.merge_embedded(self.features(input.vision)?, text, input.input_ids, input.mask)
    }

    /// The forward pass: the safety head and the LLM as `passes` asks, and the training objective
    /// `L_LLM + λ·(CE_level + CE_type)` (or the part that has labels: `labels` for the LM, `concepts` for the head).
    pub fn forward(&self, input: PsaInput<'_>, passes: Passes<'_>) -> Result<PsaOutput, ModelError> {
        let PsaInput { vision, input_ids, mask, question, labels, concepts: concept_labels } = input;
        // With labels the rows hold answers: the text-aware queries never pool a supervised (answer) token.
        let answer_free = match labels {
            Some(l) if passes.head && self.safety.safe_part.query_mode().reads_text() => {
                Some(self.answer_free_rows(input_ids, mask, question, l)?)
            }
            _ => None,
        };
        let question = answer_free.as_deref().or(question);
        // One embedding lookup serves both the head's queries and the merge (which overwrites the image rows).
        let text = self.text_embeddings(input_ids);
        let (features, given) = match vision {
            VisionInput::Projected(h_s) => (None, Some(h_s)),
            vision => (Some(self.features(vision)?), None),
        };
        let concepts = match passes.head {
            true => given
                .or_else(|| features.clone().map(|f| self.safety.project(to_f32(f))))
                .map(|h_s| self.head(h_s, text.clone(), input_ids, mask, question))
                .transpose()?,
            false => None,
        };
        let (merged, merged_labels, logits, lm_loss) = match passes.lm {
            LmPass::Skip => (None, None, None, None),
            lm_pass => {
                let merged = self.merge_embedded(features.ok_or_else(no_features)?, text, input_ids, mask)?;
                let merged_labels = labels.map(|l| merged.merge_labels(l, IGNORE_INDEX));
                let (logits, lm_loss) = self.lm_pass(&merged, merged_labels.as_deref(), lm_pass)?;
                (Some(merged), merged_labels, logits, lm_loss)
            }
        };
        let concept_loss = match (&concepts, concept_labels) {
            (Some(logits), Some(c)) => Some(concept_loss(logits, c.levels, c.types, self.cls_loss_weight)),
            _ => None,
        };
        let loss = match (&lm_loss, &concept_loss) {
            (Some(l), Some(c)) => Some(l.clone() + c.weighted.clone()),
            (Some(l), None) => Some(l.clone()),
            (None, Some(c)) => Some(c.weighted.clone()),
            (None, None) => None,
        };
        Ok(PsaOutput { logits, concepts, merged, merged_labels, lm_loss, concept_loss, loss })
    }

    /// Selected vision features `[b, patches, vision_dim]` of pixels or given features.
    fn features(&self, vision: VisionInput) -> Result<Tensor<3>, ModelError> {
        match vision {
            VisionInput::Pixels(pixels) => Ok(self.llava.selected_features(pixels)),
            VisionInput::Features(features) => Ok(features),
            VisionInput::Projected(_) => Err(no_features()),
        }
    }

    /// The safety head on `h_s` and the prompt's token embeddings. One image per row.
    fn head(
        &self,
        h_s: Tensor<3>,
        text: Tensor<3>,
        input_ids: &[Vec<u32>],
        mask: Option<&PaddingMask>,
        question: Option<&[Vec<bool>]>,
    ) -> Result<ConceptLogits, ModelError> {
        let n = h_s.dims()[0];
        if n != input_ids.len() {
            return Err(ModelError::Input(format!(
                "{n} image(s) for {} prompt(s): one image per row",
                input_ids.len()
            )));
        }
        let kv = self.safety.key_values(to_f32(h_s));
        if self.safety.safe_part.query_mode() == QueryMode::RefPadQuery {
            let pad = self
                .pad_token_id
                .ok_or_else(|| ModelError::Input("the ref_pad_query mode needs the model's pad_token_id".into()))?;
            let query = self.text_embeddings(&vec![vec![pad]; n]);
            return Ok(self.safety.safe_part.forward(to_f32(query), kv, None));
        }
        let qmask = self.query_rows(input_ids, mask, question)?;
        Ok(self.safety.safe_part.forward(to_f32(text), kv, Some(&qmask)))
    }

    fn merge_embedded(
        &self,
        features: Tensor<3>,
        text: Tensor<3>,
        input_ids: &[Vec<u32>],
        mask: Option<&PaddingMask>,
    ) -> Result<MergedInputs, ModelError> {
        let features = pool_grid(features, self.llm_image_pool)?;
        let image_rows = self.safety.llm_image_tokens(to_f32(self.llava.multi_modal_projector.forward(features)));
        merge_image_features(input_ids, mask, Some(image_rows), self.llava.image_token_index(), text)
    }

    /// The LLM on the merged sequence: logits and/or the next-token loss, as `pass` asks.
    fn lm_pass(
        &self,
        merged: &MergedInputs,
        labels: Option<&[Vec<i64>]>,
        pass: LmPass<'_>,
    ) -> Result<(Option<Tensor<3>>, Option<Tensor<1>>), ModelError> {
        let lm = &self.llava.language_model;
        let hidden = || lm.model.forward(merged.inputs_embeds.clone(), &merged.mask, None, false).last_hidden_state;
        Ok(match (pass, labels) {
            (LmPass::Skip, _) => (None, None),
            (LmPass::Logits, labels) => {
                let logits = lm.logits(hidden());
                let loss = labels.and_then(|l| causal_lm_loss(logits.clone(), l));
                (Some(logits), loss)
            }
            (LmPass::Loss(_), None) => (None, None),
            (LmPass::Loss(LmEngine::Autodiff), Some(l)) => (None, supervised_lm_loss(hidden(), l, |h| lm.logits(h))),
            (LmPass::Loss(LmEngine::Checkpointed), Some(l)) => {
                (None, lm.checkpointed_loss(merged.inputs_embeds.clone(), &merged.mask, l))
            }
            (LmPass::Loss(LmEngine::Host(host)), Some(l)) => {
                (None, host_lm_loss(host, &merged.inputs_embeds, &merged.mask, l)?)
            }
        })
    }
}

/// The refusal of an LLM pass on the safety projector's output, which the LLM cannot take.
fn no_features() -> ModelError {
    ModelError::Input("the LLM needs vision features or pixels, not the safety projector's output".into())
}

/// The host engine's LM loss on `embeds` as a tensor: its value is the host's loss and its gradient with respect
/// to `embeds` the host's gradient (`sum(embeds · g)` minus its own detached value, plus the loss).
fn host_lm_loss(
    host: &HostLmLoss,
    embeds: &Tensor<3>,
    mask: &PaddingMask,
    labels: &[Vec<i64>],
) -> Result<Option<Tensor<1>>, ModelError> {
    let (dims, device) = (embeds.dims(), embeds.device());
    let values = host_vec(embeds.clone().detach())?;
    let Some((loss, grad)) = host.loss_and_grad(&values, mask, labels)? else {
        return Ok(None);
    };
    let grad = Tensor::<3>::from_data(TensorData::new(grad, dims), &device);
    let inner = (to_f32(embeds.clone()) * grad).sum();
    Ok(Some(inner.clone() - inner.detach() + loss as f32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_grid_averages_k_by_k_blocks() {
        let device = Device::flex();
        // 4×4 grid, 2 channels: channel 0 = patch index, channel 1 = 10 × patch index.
        let values: Vec<f32> = (0..16).flat_map(|i| [i as f32, 10.0 * i as f32]).collect();
        let x = Tensor::<3>::from_data(TensorData::new(values, [1, 16, 2]), &device);
        let y = pool_grid(x.clone(), 2).unwrap();
        assert_eq!(y.dims(), [1, 4, 2]);
        let got: Vec<f32> = y.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        // Block (0, 0) holds patches 0, 1, 4, 5; block (1, 1) holds 10, 11, 14, 15.
        assert_eq!(got, vec![2.5, 25.0, 4.5, 45.0, 10.5, 105.0, 12.5, 125.0]);
        assert!(pool_grid(x.clone(), 3).is_err());
        assert_eq!(pool_grid(x, 1).unwrap().dims(), [1, 16, 2]);
    }
}
