//! What a [`PsaVlm`](super::PsaVlm) call takes: the batch ([`PsaInput`]: images as pixels, features or `h_s`, prompt
//! tokens and optional padding, question marks and labels) and what runs ([`Passes`]: the safety head, the LLM how).
use burn::tensor::Tensor;

use crate::llama::HostLmLoss;
use crate::mask::PaddingMask;

/// Safety labels of a batch.
#[derive(Debug, Clone, Copy)]
pub struct ConceptLabels<'a> {
    /// Risk level per row.
    pub levels: &'a [usize],
    /// Risk type per row.
    pub types: &'a [usize],
}

/// The visual side of a [`PsaInput`], one image per row.
#[derive(Debug, Clone)]
pub enum VisionInput {
    /// Preprocessed pixels `[b, 3, h, w]`: the vision tower runs.
    Pixels(Tensor<4>),
    /// Selected vision features `[b, patches, vision_dim]` (cacheable: the tower is frozen in both stages).
    Features(Tensor<3>),
    /// The safety projector's output `h_s` `[b, num_queries, safety_dim]` (e.g. from [`crate::HostAbstractor`]):
    /// enough for the safety head, not for the LLM.
    Projected(Tensor<3>),
}

/// One batch for [`PsaVlm`](super::PsaVlm): the images, the prompt tokens, and what a call may use (padding, the question's
/// tokens, LM and concept labels). Built like Burn's `MhaInput`: a constructor, then optional parts.
#[derive(Debug, Clone)]
pub struct PsaInput<'a> {
    /// The images.
    pub vision: VisionInput,
    /// Prompt token ids, one row per image, `<image>` where its tokens go.
    pub input_ids: &'a [Vec<u32>],
    /// Padding of `input_ids` (none when `None`).
    pub mask: Option<&'a PaddingMask>,
    /// The user's question's tokens, one row per input row: the text-aware query modes pool these only (rows that
    /// mark none fall back to every real text token).
    pub question: Option<&'a [Vec<bool>]>,
    /// Next-token labels per input token (−100 ignored).
    pub labels: Option<&'a [Vec<i64>]>,
    /// Risk level and type per row.
    pub concepts: Option<ConceptLabels<'a>>,
}

impl<'a> PsaInput<'a> {
    /// Pixels `[b, 3, h, w]` and their prompts.
    pub fn pixels(pixels: Tensor<4>, input_ids: &'a [Vec<u32>]) -> Self {
        Self::new(VisionInput::Pixels(pixels), input_ids)
    }

    /// Selected vision features `[b, patches, vision_dim]` and their prompts.
    pub fn features(features: Tensor<3>, input_ids: &'a [Vec<u32>]) -> Self {
        Self::new(VisionInput::Features(features), input_ids)
    }

    /// The safety projector's output `h_s` and the prompts (safety head only).
    pub fn projected(h_s: Tensor<3>, input_ids: &'a [Vec<u32>]) -> Self {
        Self::new(VisionInput::Projected(h_s), input_ids)
    }

    fn new(vision: VisionInput, input_ids: &'a [Vec<u32>]) -> Self {
        Self { vision, input_ids, mask: None, question: None, labels: None, concepts: None }
    }

    /// With the prompts' padding mask.
    pub fn mask(self, mask: &'a PaddingMask) -> Self {
        Self { mask: Some(mask), ..self }
    }

    /// With the question's tokens marked.
    pub fn question(self, question: &'a [Vec<bool>]) -> Self {
        Self { question: Some(question), ..self }
    }

    /// With next-token labels.
    pub fn labels(self, labels: &'a [Vec<i64>]) -> Self {
        Self { labels: Some(labels), ..self }
    }

    /// With risk labels.
    pub fn concepts(self, concepts: ConceptLabels<'a>) -> Self {
        Self { concepts: Some(concepts), ..self }
    }
}

/// What [`PsaVlm::forward`](super::PsaVlm::forward) runs: the safety head or not, and the LLM how.
#[derive(Debug, Clone, Copy)]
pub struct Passes<'a> {
    /// Run the safety head (and its loss when the input has concept labels).
    pub head: bool,
    /// How the LLM runs.
    pub lm: LmPass<'a>,
}

impl<'a> Passes<'a> {
    /// Everything: the safety head and the LLM's logits at every position (with its loss when labelled).
    pub fn full() -> Self {
        Self { head: true, lm: LmPass::Logits }
    }

    /// The safety head only (stage I without the LM loss): the LLM never runs.
    pub fn head_only() -> Self {
        Self { head: true, lm: LmPass::Skip }
    }

    /// A training step: the next-token loss through `engine`, projecting only supervised positions (`logits` is
    /// `None`), and the safety head when `head`.
    pub fn training(head: bool, engine: LmEngine<'a>) -> Self {
        Self { head, lm: LmPass::Loss(engine) }
    }
}

/// How [`PsaVlm::forward`](super::PsaVlm::forward) runs the LLM.
#[derive(Debug, Clone, Copy)]
pub enum LmPass<'a> {
    /// Not at all.
    Skip,
    /// Logits at every position (and the loss when labelled).
    Logits,
    /// The loss only, projecting only the positions whose next label is supervised.
    Loss(LmEngine<'a>),
}

/// How a training step differentiates the LLM's next-token loss.
#[derive(Debug, Clone, Copy, Default)]
pub enum LmEngine<'a> {
    /// Ordinary autodiff: every layer's activations are kept for the backward pass.
    #[default]
    Autodiff,
    /// Activation checkpointing: only each layer's input is kept, and each layer runs again in the backward pass
    /// ([`LlamaForCausalLM::checkpointed_loss`](crate::LlamaForCausalLM::checkpointed_loss)); the same gradients
    /// for about a third more compute.
    Checkpointed,
    /// The host engine's loss and input gradient (a frozen LLM only: gradients reach the modules before it).
    Host(&'a HostLmLoss),
}
