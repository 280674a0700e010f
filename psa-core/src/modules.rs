//! The PSA safety modules together, under the reference checkpoint's top-level names.
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::config::SafetyConfig;
use crate::error::CoreError;
use crate::head::{ConceptLogits, SafetyHead};
use crate::init;
use crate::projector::CAbstractor;

/// `safe_mm_projector`: a wrapper whose only child is the C-Abstractor `proj`.
#[derive(Module, Debug)]
pub struct SafeMmProjector {
    /// The C-Abstractor.
    pub proj: CAbstractor,
}

/// Safety tokens S1 and S2, the safety projector and the safety head.
#[derive(Module, Debug)]
pub struct SafetyModules {
    /// S1 `[1, n, safety_dim]`: prepended to the safety-projected patches as the head's keys and values.
    pub safety_query_tokens: Param<Tensor<3>>,
    /// S2 `[1, n, safety_dim]`: prepended to the projected image tokens the LLM sees.
    pub safety_query_tokens_2: Param<Tensor<3>>,
    /// The C-Abstractor over the vision features.
    pub safe_mm_projector: SafeMmProjector,
    /// Cross-attention and classifiers.
    pub safe_part: SafetyHead,
}

impl SafetyConfig {
    /// Builds the safety modules with the reference initialisation (seed the device for reproducibility).
    pub fn init(&self, device: &Device) -> Result<SafetyModules, CoreError> {
        self.validate()?;
        Ok(SafetyModules {
            safety_query_tokens: Param::from_tensor(init::normal_tokens(
                self.num_safety_tokens,
                self.safety_dim,
                device,
            )),
            safety_query_tokens_2: Param::from_tensor(init::normal_tokens(
                self.num_safety_tokens,
                self.safety_dim,
                device,
            )),
            safe_mm_projector: SafeMmProjector { proj: CAbstractor::new(self, device) },
            safe_part: SafetyHead::new(self, device),
        })
    }
}

impl SafetyModules {
    /// Safety-projected patches `h_s`, `[b, num_queries, safety_dim]`.
    pub fn project(&self, vision_features: Tensor<3>) -> Tensor<3> {
        self.safe_mm_projector.proj.forward(vision_features)
    }

    /// The head's keys and values `[S1 ; h_s]`, `[b, n + num_queries, safety_dim]`.
    pub fn key_values(&self, h_s: Tensor<3>) -> Tensor<3> {
        let [b, _, d] = h_s.dims();
        let [_, n, _] = self.safety_query_tokens.dims();
        Tensor::cat(vec![self.safety_query_tokens.val().expand([b, n, d]), h_s], 1)
    }

    /// Concept logits from vision features and the prompt's token embeddings; the LLM is not involved.
    ///
    /// # Shapes
    /// - `vision_features`: `[b, patches, vision_dim]`; `text_embeds`: `[b, t, safety_dim]`
    pub fn classify(
        &self,
        vision_features: Tensor<3>,
        text_embeds: Tensor<3>,
        query_mask: Option<&[Vec<bool>]>,
    ) -> ConceptLogits {
        let kv = self.key_values(self.project(vision_features));
        self.safe_part.forward(text_embeds, kv, query_mask)
    }

    /// The image rows the LLM sees: `[S2 ; projected image tokens]`, `[b, n + patches, safety_dim]`.
    pub fn llm_image_tokens(&self, projected: Tensor<3>) -> Tensor<3> {
        let [b, _, d] = projected.dims();
        let [_, n, _] = self.safety_query_tokens_2.dims();
        Tensor::cat(vec![self.safety_query_tokens_2.val().expand([b, n, d]), projected], 1)
    }
}
