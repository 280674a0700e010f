//! Guarded inference: one vision pass per image, the safety head's assessment, the policy's
//! decision, then the LLM on the (possibly hinted) prompt with the KV cache — or a refusal without the LLM.
//! Requests are batched: images and prompts of different lengths run in one pass.
use std::path::{Path, PathBuf};
use std::time::Instant;

use ::image::DynamicImage;
use burn::tensor::{Device, Tensor};
use psa_core::assessment::logit_rows;
use psa_core::{Action, Calibration, Decision, SafetyAssessment, SafetyPolicy, Taxonomy};
use serde::{Deserialize, Serialize};

use crate::canary::Canary;
use crate::error::PipelineError;
use crate::llava::processors;
use crate::processor::text::pad_marks;
use crate::processor::{ImageProcessor, PaddingSide, Template, TextProcessor};
use psa_import::LoadError;
use psa_import::{LoadOptions, LoadReport, load_psa};
use psa_models::generate::{FinishReason, GenerationConfig, generate_until};
use psa_models::host_abstractor::HostAbstractor;
use psa_models::llama::{HostDecoder, HostWeights};
use psa_models::precision::Precision;
use psa_models::psa::{PsaConfig, PsaInput, PsaVlm};
use psa_models::vision::HostVision;

/// One question about one image, with an optional policy for this request only.
#[derive(Debug, Clone)]
pub struct GuardRequest {
    /// Caller's identifier, echoed in the response.
    pub id: Option<String>,
    /// The image.
    pub image: DynamicImage,
    /// The user's question.
    pub question: String,
    /// Replaces the pipeline's policy for this request.
    pub policy: Option<SafetyPolicy>,
}

/// How an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// EOS or a stop id.
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// The policy refused; the LLM did not run.
    Refused,
    /// The caller stopped generation (the client left or ran out of time).
    Cancelled,
}

impl From<FinishReason> for Finish {
    fn from(f: FinishReason) -> Self {
        match f {
            FinishReason::Stop => Self::Stop,
            FinishReason::Length => Self::Length,
            FinishReason::Cancelled => Self::Cancelled,
        }
    }
}

/// Wall-clock time of the stages of the batch a request ran in, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Requests in the batch.
    pub batch_size: usize,
    /// Image preprocessing and the vision tower.
    pub vision_ms: f64,
    /// Safety projector and head.
    pub classify_ms: f64,
    /// Prefill and decoding (0 when nothing was generated).
    pub generate_ms: f64,
    /// Everything.
    pub total_ms: f64,
}

/// The verdict of the classify-only flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Caller's identifier.
    pub id: Option<String>,
    /// Level and type probabilities and argmax.
    pub assessment: SafetyAssessment,
    /// What the policy would do.
    pub decision: Decision,
    /// Stage timings.
    pub timings: Timings,
}

/// A guarded (or unguarded) answer with everything that led to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardedResponse {
    /// Caller's identifier.
    pub id: Option<String>,
    /// Whether the policy was applied.
    pub guarded: bool,
    /// The safety head's assessment.
    pub assessment: SafetyAssessment,
    /// The policy's decision (absent when unguarded).
    pub decision: Option<Decision>,
    /// The prompt the LLM saw (absent when refused).
    pub prompt: Option<String>,
    /// The answer text.
    pub answer: String,
    /// Prompt length in LLM positions, image tokens included (0 when refused).
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// How the answer ended.
    pub finish: Finish,
    /// Stage timings.
    pub timings: Timings,
}

/// A PSA-VLM model with its processors, taxonomy and default policy.
#[derive(Debug)]
pub struct GuardedPipeline {
    /// The model.
    pub model: PsaVlm,
    /// Its configuration.
    pub config: PsaConfig,
    /// What the weight import read.
    pub report: LoadReport,
    /// Tokenizer.
    pub text: TextProcessor,
    /// Image preprocessing.
    pub images: ImageProcessor,
    /// Conversation template (the one used in training; `ref_inference` for reference parity).
    pub template: Template,
    /// Level and type names and hint texts.
    pub taxonomy: Taxonomy,
    /// The policy requests get unless they bring their own.
    pub policy: SafetyPolicy,
    /// Per-head temperatures applied before the softmax (identity unless the model directory has
    /// `calibration.json`); the policy's thresholds read the calibrated probabilities.
    pub calibration: Calibration,
    /// The directory's start-up canary, when it has one.
    pub canary: Option<Canary>,
    /// Bounds every request's question is checked against before the model runs.
    pub question_limits: QuestionLimits,
    /// Where decode steps run: `None` on the model's device, else on the host decoder.
    host: Option<HostDecoder>,
    /// Where the vision tower and the safety projector run: `None` on the model's device, else on host engines.
    host_vision: Option<(HostVision, HostAbstractor)>,
    device: Device,
}

/// Bounds on a user's question, checked before anything but its length is computed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuestionLimits {
    /// Longest question in bytes, checked before tokenizing.
    pub max_bytes: usize,
    /// Longest question in tokens.
    pub max_tokens: usize,
}

impl QuestionLimits {
    /// 64 KiB and `context` tokens (a longer question cannot fit the LLM's context anyway).
    pub fn for_context(context: usize) -> Self {
        Self { max_bytes: 64 << 10, max_tokens: context }
    }
}

/// Raw concept logits of a batch, one host-side row per request.
#[derive(Debug, Clone, PartialEq)]
pub struct LogitRows {
    /// Risk-level logits.
    pub level: Vec<Vec<f32>>,
    /// Risk-type logits.
    pub risk_type: Vec<Vec<f32>>,
}

impl GuardedPipeline {
    /// Loads a PSA-VLM directory with the default taxonomy and policy; the tokenizer defaults to
    /// `model_dir/tokenizer.json`, the image processor to `model_dir/preprocessor_config.json` (else the vision
    /// tower's own recipe), and the temperatures to `model_dir/calibration.json` (else none).
    pub fn load(
        model_dir: &Path,
        tokenizer: Option<PathBuf>,
        template: Template,
        device: &Device,
    ) -> Result<Self, PipelineError> {
        Self::load_with(model_dir, tokenizer, template, device, Precision::F32)
    }

    /// [`load`](Self::load) with the frozen base in `precision` (the safety modules stay f32).
    pub fn load_with(
        model_dir: &Path,
        tokenizer: Option<PathBuf>,
        template: Template,
        device: &Device,
        precision: Precision,
    ) -> Result<Self, PipelineError> {
        Self::load_with_options(
            model_dir,
            tokenizer,
            template,
            device,
            &LoadOptions::default().with_precision(precision),
        )
    }

    /// [`load`](Self::load) under `opts`: strictness, the manifest check ([`psa_import::manifest`], on unless
    /// `opts.allow_unverified`) and precision. The directory's canary (`canary.json`), when it has one, is read
    /// into [`canary`](Self::canary); [`check_canary`](Self::check_canary) runs it.
    pub fn load_with_options(
        model_dir: &Path,
        tokenizer: Option<PathBuf>,
        template: Template,
        device: &Device,
        opts: &LoadOptions,
    ) -> Result<Self, PipelineError> {
        let (model, config, report) = load_psa(model_dir, device, opts)?;
        let (text, images) = processors(model_dir, tokenizer, &config.llava.vision)?;
        let mut pipeline = Self::new(model, config, report, text, images, template, device)?;
        let calibration = model_dir.join("calibration.json");
        if calibration.is_file() {
            pipeline = pipeline.with_calibration(Calibration::from_file(&calibration)?)?;
        }
        pipeline.canary = Canary::load(model_dir)?;
        Ok(pipeline)
    }

    /// Runs the directory's canary (see [`crate::canary`]): an error listing every sample that came out
    /// differently from when the directory was written; `Ok(false)` when there is no canary to run.
    pub fn check_canary(&self) -> Result<bool, PipelineError> {
        let Some(canary) = &self.canary else { return Ok(false) };
        let failures = canary.failures(self)?;
        if failures.is_empty() {
            return Ok(true);
        }
        Err(PipelineError::Canary(failures.join("; ")))
    }

    /// Assembles a pipeline from parts, with the default taxonomy and policy.
    pub fn new(
        model: PsaVlm,
        config: PsaConfig,
        report: LoadReport,
        text: TextProcessor,
        images: ImageProcessor,
        template: Template,
        device: &Device,
    ) -> Result<Self, PipelineError> {
        let (tokenizer_image, model_image) = (text.image_token_id(), config.llava.image_token_index);
        if tokenizer_image != model_image {
            return Err(PipelineError::Load(LoadError::Config(psa_models::ConfigError::Invalid(format!(
                "the tokenizer's <image> is id {tokenizer_image}, the model expects image_token_index {model_image}"
            )))));
        }
        crate::llava::check_processor(&images, &config.llava.vision).map_err(LoadError::from)?;
        let taxonomy = Taxonomy::default();
        Self::check_taxonomy(&taxonomy, &config)?;
        let (policy, device) = (SafetyPolicy::default(), device.clone());
        let calibration = Calibration::default();
        let question_limits = QuestionLimits::for_context(config.llava.text.max_position_embeddings);
        Ok(Self {
            canary: None,
            question_limits,
            model,
            config,
            report,
            text,
            images,
            template,
            taxonomy,
            policy,
            calibration,
            host: None,
            host_vision: None,
            device,
        })
    }

    /// Runs generation (prefill and decode steps) on a host engine holding the LLM in `weights` (`None`: on the
    /// model's device, the default). On a CPU this is several times faster per token; it keeps a second copy of the
    /// LLM weights (the f32 size, or about a quarter of it in Q8_0).
    pub fn with_host_decoder(mut self, weights: Option<HostWeights>) -> Result<Self, PipelineError> {
        self.host = weights.map(|w| HostDecoder::new(&self.model.llava.language_model, w)).transpose()?;
        Ok(self)
    }

    /// Runs the vision tower's encoder layers and the safety projector on host engines ([`HostVision`],
    /// [`HostAbstractor`]: weights packed once, in f32) when `on_host`, else on the model's device (the default).
    /// Faster on a CPU; keeps a second copy of the tower's weights up to the feature layer and of the projector's.
    pub fn with_host_vision(mut self, on_host: bool) -> Result<Self, PipelineError> {
        self.host_vision = if on_host {
            let vision = HostVision::new(&self.model.llava)?;
            Some((vision, HostAbstractor::new(&self.model.safety, &self.config.safety)?))
        } else {
            None
        };
        Ok(self)
    }

    /// Whether the vision tower runs on the host engine.
    pub fn host_vision(&self) -> bool {
        self.host_vision.is_some()
    }

    /// The host decoder's weight format, when decode steps run there.
    pub fn host_decoder(&self) -> Option<HostWeights> {
        self.host.as_ref().map(HostDecoder::format)
    }

    /// Replaces the temperatures.
    pub fn with_calibration(mut self, calibration: Calibration) -> Result<Self, PipelineError> {
        calibration.validate()?;
        self.calibration = calibration;
        Ok(self)
    }

    /// Replaces the taxonomy (its class counts must match the heads) and re-checks the policy against it.
    pub fn with_taxonomy(mut self, taxonomy: Taxonomy) -> Result<Self, PipelineError> {
        Self::check_taxonomy(&taxonomy, &self.config)?;
        self.policy.validate(&taxonomy)?;
        self.taxonomy = taxonomy;
        Ok(self)
    }

    /// Replaces the default policy.
    pub fn with_policy(mut self, policy: SafetyPolicy) -> Result<Self, PipelineError> {
        policy.validate(&self.taxonomy)?;
        self.policy = policy;
        Ok(self)
    }

    fn check_taxonomy(taxonomy: &Taxonomy, config: &PsaConfig) -> Result<(), PipelineError> {
        let invalid = |reason: String| PipelineError::Load(LoadError::Config(psa_models::ConfigError::Invalid(reason)));
        taxonomy.validate()?;
        let (levels, types) = (taxonomy.levels.len(), taxonomy.types.len());
        if (levels, types) != (config.safety.num_levels, config.safety.num_types) {
            return Err(invalid(format!(
                "the taxonomy has {levels} levels and {types} types, the model's heads {} and {}",
                config.safety.num_levels, config.safety.num_types
            )));
        }
        Ok(())
    }

    /// Checks a question against [`question_limits`](Self::question_limits).
    pub fn check_question(&self, question: &str) -> Result<(), PipelineError> {
        self.check_question_within(question, &self.question_limits)
    }

    /// Checks a question against `limits`: its bytes first (before any tokenizing), then the special tokens it
    /// must not hold ([`TextProcessor::user_text`]), then its tokens.
    pub fn check_question_within(&self, question: &str, limits: &QuestionLimits) -> Result<(), PipelineError> {
        let refuse = |what: String| PipelineError::Text(crate::error::TextError::QuestionTooLong(what));
        if question.len() > limits.max_bytes {
            return Err(refuse(format!("it has {} bytes; the limit is {}", question.len(), limits.max_bytes)));
        }
        let text = self.text.user_text(question)?;
        let tokens = self.text.encode(&text, false)?.len();
        if tokens > limits.max_tokens {
            return Err(refuse(format!("it has {tokens} tokens; the limit is {}", limits.max_tokens)));
        }
        Ok(())
    }

    fn check_questions(&self, requests: &[GuardRequest]) -> Result<(), PipelineError> {
        requests.iter().try_for_each(|r| self.check_question(&r.question))
    }

    /// Generation defaults from the config: EOS from `text_config`, padding from `pad_token_id`.
    pub fn generation_config(&self, max_new_tokens: usize) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens,
            eos_token_ids: self.config.llava.text.eos_token_id.as_ref().map(|e| e.to_vec()).unwrap_or_default(),
            pad_token_id: self.config.llava.pad_token_id.unwrap_or(0),
            ..Default::default()
        }
    }

    /// Vision features of a batch of images `[n, patches, vision_dim]` and the time they took.
    fn features(&self, images: &[&DynamicImage]) -> Result<(Tensor<3>, f64), PipelineError> {
        let start = Instant::now();
        let owned: Vec<DynamicImage> = images.iter().map(|&i| i.clone()).collect();
        let pixels = self.images.preprocess(&owned, &self.device)?;
        let features = match &self.host_vision {
            Some((host, _)) => host.selected_features(pixels)?,
            None => self.model.llava.selected_features(pixels),
        };
        Ok((features, start.elapsed().as_secs_f64() * 1e3))
    }

    /// Raw concept logits of a batch: the head's queries come from each row's unhinted prompt, the text-aware modes'
    /// from its question tokens (as in training).
    fn logits(&self, features: Tensor<3>, questions: &[&str]) -> Result<LogitRows, PipelineError> {
        let (rows, marks): (Vec<Vec<u32>>, Vec<Vec<bool>>) = questions
            .iter()
            .map(|q| {
                let (prompt, span) = self.template.image_prompt_with_question(q);
                self.text.encode_marked(&prompt, span)
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        let (ids, mask) = TextProcessor::pad(&rows, self.config.llava.pad_token_id.unwrap_or(0), PaddingSide::Right);
        let question = pad_marks(marks.iter().map(Vec::as_slice));
        let input = match &self.host_vision {
            Some((_, abstractor)) => PsaInput::projected(abstractor.project(features)?, &ids),
            None => PsaInput::features(features, &ids),
        };
        let logits = self.model.classify(input.mask(&mask).question(&question))?;
        Ok(LogitRows { level: logit_rows(&logits.level), risk_type: logit_rows(&logits.risk_type) })
    }

    /// Calibrated assessments of a batch and the time they took.
    fn assess(&self, features: Tensor<3>, questions: &[&str]) -> Result<(Vec<SafetyAssessment>, f64), PipelineError> {
        let start = Instant::now();
        let rows = self.logits(features, questions)?;
        let assessments = self.assessments(&rows);
        Ok((assessments, start.elapsed().as_secs_f64() * 1e3))
    }

    /// Calibrated assessments of raw logit rows.
    pub fn assessments(&self, rows: &LogitRows) -> Vec<SafetyAssessment> {
        SafetyAssessment::from_logit_rows(&rows.level, &rows.risk_type, &self.taxonomy, &self.calibration)
    }

    /// The uncalibrated concept logits of a batch of (image, question) pairs: one vision pass, no LLM.
    pub fn concept_logits(&self, requests: &[GuardRequest]) -> Result<LogitRows, PipelineError> {
        self.check_questions(requests)?;
        let (features, _) = self.features(&requests.iter().map(|r| &r.image).collect::<Vec<_>>())?;
        let questions: Vec<&str> = requests.iter().map(|r| r.question.as_str()).collect();
        self.logits(features, &questions)
    }

    /// What `policy` (else the pipeline's) decides for an assessment.
    pub fn decide_with(&self, policy: Option<&SafetyPolicy>, a: &SafetyAssessment) -> Result<Decision, PipelineError> {
        Ok(policy.unwrap_or(&self.policy).decide(a, &self.taxonomy)?)
    }

    /// Classifies a batch of (image, question) pairs and says what the policy would do; the LLM never runs.
    pub fn classify(&self, requests: &[GuardRequest]) -> Result<Vec<Verdict>, PipelineError> {
        self.check_questions(requests)?;
        let start = Instant::now();
        let (features, vision_ms) = self.features(&requests.iter().map(|r| &r.image).collect::<Vec<_>>())?;
        let questions: Vec<&str> = requests.iter().map(|r| r.question.as_str()).collect();
        let (assessments, classify_ms) = self.assess(features, &questions)?;
        let timings = Timings {
            batch_size: requests.len(),
            vision_ms,
            classify_ms,
            generate_ms: 0.0,
            total_ms: start.elapsed().as_secs_f64() * 1e3,
        };
        requests
            .iter()
            .zip(assessments)
            .map(|(r, assessment)| {
                let decision = self.decide(r, &assessment)?;
                Ok(Verdict { id: r.id.clone(), assessment, decision, timings: timings.clone() })
            })
            .collect()
    }

    fn decide(&self, r: &GuardRequest, a: &SafetyAssessment) -> Result<Decision, PipelineError> {
        self.decide_with(r.policy.as_ref(), a)
    }

    /// Answers a batch. Guarded: classify, apply each request's policy, refuse or generate with the hint.
    /// Unguarded (`guard = false`): the assessment is still reported, but every prompt goes to the LLM as asked.
    pub fn respond(
        &self,
        requests: &[GuardRequest],
        generation: &GenerationConfig,
        guard: bool,
    ) -> Result<Vec<GuardedResponse>, PipelineError> {
        self.respond_until(requests, generation, guard, &|_| false)
    }

    /// [`respond`](Self::respond) that stops generating for request `i` as soon as `cancelled(i)` says so (its
    /// answer is then cut short and marked [`Finish::Cancelled`]).
    pub fn respond_until(
        &self,
        requests: &[GuardRequest],
        generation: &GenerationConfig,
        guard: bool,
        cancelled: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<GuardedResponse>, PipelineError> {
        self.check_questions(requests)?;
        let start = Instant::now();
        let (features, vision_ms) = self.features(&requests.iter().map(|r| &r.image).collect::<Vec<_>>())?;
        let questions: Vec<&str> = requests.iter().map(|r| r.question.as_str()).collect();
        let (assessments, classify_ms) = self.assess(features.clone(), &questions)?;
        let decisions = if guard {
            requests
                .iter()
                .zip(&assessments)
                .map(|(r, a)| self.decide(r, a).map(Some))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![None; requests.len()]
        };
        // Rows that reach the LLM, with their prompts.
        let run: Vec<(usize, String)> = decisions
            .iter()
            .enumerate()
            .filter(|(_, d)| d.as_ref().is_none_or(|d| d.action != Action::Refuse))
            .map(|(i, d)| {
                (i, self.template.guarded_prompt(&requests[i].question, d.as_ref().and_then(|d| d.hint.as_deref())))
            })
            .collect();
        let gen_start = Instant::now();
        let mut generated = vec![None; requests.len()];
        if !run.is_empty() {
            let rows = run.iter().map(|(_, p)| self.text.encode_prompt(p, None)).collect::<Result<Vec<_>, _>>()?;
            let (ids, mask) = TextProcessor::pad(&rows, generation.pad_token_id, PaddingSide::Left);
            let index = Tensor::<1, burn::tensor::Int>::from_data(
                run.iter().map(|(i, _)| *i as i64).collect::<Vec<_>>().as_slice(),
                &self.device,
            );
            let merged = self.model.merged_inputs(PsaInput::features(features.select(0, index), &ids).mask(&mask))?;
            let lengths: Vec<usize> = merged.mask.rows().iter().map(|r| r.iter().filter(|&&m| m).count()).collect();
            let max_pos = self.config.llava.text.max_position_embeddings;
            let lm = &self.model.llava.language_model;
            let request_of: Vec<usize> = run.iter().map(|(i, _)| *i).collect();
            let stop = |k: usize| cancelled(request_of[k]);
            let out =
                generate_until(lm, self.host.as_ref(), merged.inputs_embeds, merged.mask, generation, max_pos, &stop)?;
            for (k, (i, prompt)) in run.into_iter().enumerate() {
                let text = self.text.decode(&out.tokens[k], true)?;
                generated[i] = Some((prompt, text, lengths[k], out.tokens[k].len(), Finish::from(out.finish[k])));
            }
        }
        let generate_ms = gen_start.elapsed().as_secs_f64() * 1e3;
        let timings = Timings {
            batch_size: requests.len(),
            vision_ms,
            classify_ms,
            generate_ms,
            total_ms: start.elapsed().as_secs_f64() * 1e3,
        };
        let mut out = Vec::with_capacity(requests.len());
        for (((r, assessment), decision), g) in requests.iter().zip(assessments).zip(decisions).zip(generated) {
            // A row without generation was refused by its decision.
            let (prompt, answer, prompt_tokens, completion_tokens, finish) = match g {
                Some((p, text, pt, ct, f)) => (Some(p), text, pt, ct, f),
                None => {
                    let refusal = decision.as_ref().and_then(|d| d.refusal.clone()).unwrap_or_default();
                    (None, refusal, 0, 0, Finish::Refused)
                }
            };
            out.push(GuardedResponse {
                id: r.id.clone(),
                guarded: guard,
                assessment,
                decision,
                prompt,
                answer,
                prompt_tokens,
                completion_tokens,
                finish,
                timings: timings.clone(),
            });
        }
        Ok(out)
    }
}
