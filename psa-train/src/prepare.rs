//! Turning samples into training inputs: load each image, run the frozen vision tower once (or read its features
//! back from the disk cache), and tokenise the conversation with LLaVA SFT masking.
use std::path::Path;
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use psa_models::PsaVlm;
use psa_pipeline::processor::{ImageProcessor, Template, TextProcessor};
use serde::Serialize;

use crate::data::images;
use crate::data::{Encoded, Sample, encode_conversation};
use crate::error::DataError;
use crate::feature_cache::FeatureCache;

/// A sample ready for training: cached vision features, tokens with labels, concept labels.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Selected vision features `[1, patches, vision_dim]`, computed once.
    pub features: Tensor<3>,
    /// Tokens and masked labels.
    pub encoded: Encoded,
    /// Risk level.
    pub level: usize,
    /// Risk type.
    pub risk_type: usize,
}

/// What preparing a dataset did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PrepareReport {
    /// Samples prepared.
    pub prepared: usize,
    /// Features read from the disk cache.
    pub cache_hits: usize,
    /// Samples skipped because their image failed (only with `skip_bad_images`).
    pub skipped_images: Vec<String>,
    /// Samples cut at `max_len`.
    pub truncated: usize,
    /// Seconds spent in the vision tower.
    pub vision_seconds: f64,
}

/// How to prepare a dataset.
#[derive(Debug, Clone, Copy)]
pub struct PrepareOptions<'a> {
    /// The JSONL file the samples came from (named in errors).
    pub label_file: &'a Path,
    /// Image preprocessing for the model's vision tower.
    pub images: &'a ImageProcessor,
    /// Tokenizer.
    pub text: &'a TextProcessor,
    /// Conversation template.
    pub template: &'a Template,
    /// Maximum tokens per sample; longer ones are cut and counted.
    pub max_len: usize,
    /// Skip (and report) samples whose image is missing or undecodable instead of failing.
    pub skip_bad_images: bool,
    /// Disk cache of vision features, keyed by image bytes and vision tower.
    pub cache: Option<&'a FeatureCache>,
}

/// Loads images, runs the frozen vision tower once per sample (or reads the cache) and tokenises the
/// conversations; features are placed on `device`.
pub fn prepare(
    model: &PsaVlm,
    samples: &[Sample],
    opts: &PrepareOptions<'_>,
    device: &Device,
) -> Result<(Vec<Prepared>, PrepareReport), DataError> {
    let label_file = opts.label_file;
    let mut report = PrepareReport::default();
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        let key = opts.cache.and_then(|_| FeatureCache::image_key(&s.image).ok());
        let cached = match (opts.cache, &key) {
            (Some(c), Some(k)) => c.get(k, device),
            _ => None,
        };
        let features = match cached {
            Some(features) => {
                report.cache_hits += 1;
                features
            }
            None => {
                let image = match images::load(&s.image) {
                    Ok(img) => img,
                    Err(e) if opts.skip_bad_images => {
                        report.skipped_images.push(format!("{}:{}: {e}", label_file.display(), s.line));
                        continue;
                    }
                    Err(source) => return Err(DataError::Image { path: label_file.into(), line: s.line, source }),
                };
                let start = Instant::now();
                let pixels = opts.images.preprocess(&[image], device).map_err(|source| DataError::Image {
                    path: label_file.into(),
                    line: s.line,
                    source,
                })?;
                let features = model.llava.selected_features(pixels).detach();
                report.vision_seconds += start.elapsed().as_secs_f64();
                if let (Some(c), Some(k)) = (opts.cache, &key) {
                    c.put(k, &features)?;
                }
                features
            }
        };
        let encoded = encode_conversation(opts.text, opts.template, &s.messages, opts.max_len)
            .map_err(|source| DataError::Tokenize { path: label_file.into(), line: s.line, source })?;
        report.truncated += encoded.truncated as usize;
        out.push(Prepared { features, encoded, level: s.level, risk_type: s.risk_type });
    }
    report.prepared = out.len();
    Ok((out, report))
}
