//! The start-up canary of a model directory: a few held-out images, risky and benign, stored in `canary/` with the
//! verdicts the directory gave them when it was written (`canary.json`). `psa serve` and `psa batch` classify them
//! before taking work; a directory whose canary comes out differently (above all, a risky image now allowed) is not
//! served. What it catches that the manifest cannot: a directory that is intact but runs wrong here (another
//! backend, precision or build computing different verdicts).
use std::path::{Path, PathBuf};

use ::image::DynamicImage;
use burn::tensor::Device;
use psa_core::SafetyAssessment;
use psa_core::compare::max_abs_diff;
use serde::{Deserialize, Serialize};

use crate::error::PipelineError;
use crate::guard::{GuardRequest, GuardedPipeline};
use crate::processor::{Template, load_image};
use psa_import::LoadError;
use psa_import::manifest::{write_atomically, write_manifest};

/// The canary's file name inside a model directory.
pub const CANARY: &str = "canary.json";

/// How far a canary probability may move before the canary fails (f16 and bf16 bases move the quickstart
/// guard's probabilities by well under this).
pub const DEFAULT_TOLERANCE: f32 = 0.05;

/// One canary sample as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryEntry {
    /// The image, relative to the model directory (`canary/0.png`).
    pub image: String,
    /// The question asked with it.
    pub question: String,
    /// Whether the sample's label is risky (a risky sample must never come out allowed).
    pub risky: bool,
    /// The verdict the directory gave it when it was written.
    pub expected: SafetyAssessment,
}

/// `canary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryFile {
    /// Largest change of any probability that still passes.
    pub tolerance: f32,
    /// The samples.
    pub samples: Vec<CanaryEntry>,
}

/// A loaded canary: its entries and their decoded images.
#[derive(Debug, Clone)]
pub struct Canary {
    /// The stored file.
    pub file: CanaryFile,
    images: Vec<DynamicImage>,
}

/// One input to [`add_canary`]: an image, its question and whether its label is risky.
#[derive(Debug, Clone)]
pub struct CanaryInput {
    /// The image.
    pub image: DynamicImage,
    /// The question.
    pub question: String,
    /// Whether the sample is risky.
    pub risky: bool,
}

impl CanaryInput {
    /// The sample as a request under the pipeline's own policy.
    fn request(&self) -> GuardRequest {
        GuardRequest { id: None, image: self.image.clone(), question: self.question.clone(), policy: None }
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> PipelineError {
    PipelineError::Load(LoadError::BadFile { path: path.into(), reason: reason.into() })
}

impl Canary {
    /// Reads `dir/canary.json` and its images, if the directory has a canary.
    pub fn load(dir: &Path) -> Result<Option<Self>, PipelineError> {
        let path = dir.join(CANARY);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| bad(&path, e.to_string()))?;
        let file: CanaryFile = serde_json::from_str(&text).map_err(|e| bad(&path, format!("not a canary: {e}")))?;
        if file.samples.is_empty() || !(file.tolerance.is_finite() && (0.0..0.5).contains(&file.tolerance)) {
            return Err(bad(&path, "a canary needs samples and a tolerance in [0, 0.5)"));
        }
        let mut images = Vec::with_capacity(file.samples.len());
        for s in &file.samples {
            if s.image.split('/').any(|p| p.is_empty() || p == "..") || s.image.starts_with('/') {
                return Err(bad(&path, format!("canary image {:?} is not inside the directory", s.image)));
            }
            images.push(load_image(&dir.join(&s.image))?);
        }
        Ok(Some(Self { file, images }))
    }

    /// The samples as inputs to [`add_canary`] (to take their verdicts anew after a deliberate change).
    pub fn inputs(&self) -> Vec<CanaryInput> {
        self.file
            .samples
            .iter()
            .zip(&self.images)
            .map(|(s, image)| CanaryInput { image: image.clone(), question: s.question.clone(), risky: s.risky })
            .collect()
    }

    /// Classifies every sample with `pipeline` (its own policy is not involved) and compares the verdicts with the
    /// stored ones: same level and type, every probability within the tolerance, and no risky sample whose new
    /// verdict the pipeline's policy allows. Returns one line per failure (empty: the canary passed).
    pub fn failures(&self, pipeline: &GuardedPipeline) -> Result<Vec<String>, PipelineError> {
        let requests: Vec<GuardRequest> = self.inputs().iter().map(CanaryInput::request).collect();
        let verdicts = pipeline.classify(&requests)?;
        let mut failures = Vec::new();
        for (s, v) in self.file.samples.iter().zip(&verdicts) {
            let (e, got) = (&s.expected, &v.assessment);
            if let Some(fault) = got.fault(&pipeline.taxonomy) {
                failures.push(format!("{}: no valid verdict now ({fault})", s.image));
                continue;
            }
            if s.risky && !e.is_safe(&pipeline.taxonomy) && v.decision.action == psa_core::Action::Allow {
                failures.push(format!(
                    "{}: a risky canary is now allowed ({}/{}, rule {})",
                    s.image, got.level_name, got.type_name, v.decision.rule
                ));
                continue;
            }
            if (got.level, got.risk_type) != (e.level, e.risk_type) {
                failures.push(format!(
                    "{}: verdict {}/{}, written as {}/{}",
                    s.image, got.level_name, got.type_name, e.level_name, e.type_name
                ));
                continue;
            }
            // NaN, infinities and a changed class count fail the comparison itself.
            let moved = max_abs_diff(&got.level_probs, &e.level_probs)
                .and_then(|l| Ok(l.max(max_abs_diff(&got.type_probs, &e.type_probs)?)));
            match moved {
                Ok(m) if m <= f64::from(self.file.tolerance) => {}
                Ok(m) => failures
                    .push(format!("{}: probabilities moved by {m} (tolerance {})", s.image, self.file.tolerance)),
                Err(err) => failures.push(format!("{}: probabilities cannot be compared ({err})", s.image)),
            }
        }
        Ok(failures)
    }
}

/// Removes a directory's canary (`canary.json` and the `canary/` folder), if it has one.
pub fn remove_canary(dir: &Path) -> Result<(), LoadError> {
    let io = |path: &Path, e: std::io::Error| LoadError::BadFile { path: path.into(), reason: e.to_string() };
    let (file, folder) = (dir.join(CANARY), dir.join("canary"));
    if file.is_file() {
        std::fs::remove_file(&file).map_err(|e| io(&file, e))?;
    }
    if folder.is_dir() {
        std::fs::remove_dir_all(&folder).map_err(|e| io(&folder, e))?;
    }
    Ok(())
}

/// Adds a canary to a complete model directory: loads the directory as it is on disk (so the stored verdicts are
/// the ones it gives, calibration included), classifies `inputs`, writes `canary/N.png` and `canary.json`, and
/// rewrites the manifest over everything. Returns the entries written.
pub fn add_canary(
    dir: &Path,
    inputs: &[CanaryInput],
    template: Template,
    device: &Device,
) -> Result<Vec<CanaryEntry>, PipelineError> {
    if inputs.is_empty() {
        return Err(bad(dir, "a canary needs at least one sample"));
    }
    let opts = psa_import::LoadOptions::default();
    let pipeline = GuardedPipeline::load_with_options(dir, None, template, device, &opts)?;
    let requests: Vec<GuardRequest> = inputs.iter().map(CanaryInput::request).collect();
    let verdicts = pipeline.classify(&requests)?;
    // Samples of an earlier canary would otherwise stay in the folder, and in the manifest.
    remove_canary(dir)?;
    let folder = dir.join("canary");
    std::fs::create_dir_all(&folder).map_err(|e| bad(&folder, e.to_string()))?;
    let mut samples = Vec::with_capacity(inputs.len());
    for (k, (input, verdict)) in inputs.iter().zip(verdicts).enumerate() {
        if let Some(fault) = verdict.assessment.fault(&pipeline.taxonomy) {
            return Err(bad(dir, format!("canary sample {k} has no valid verdict: {fault}")));
        }
        let name = format!("canary/{k}.png");
        let path: PathBuf = dir.join(&name);
        DynamicImage::ImageRgb8(input.image.to_rgb8()).save(&path).map_err(|e| bad(&path, e.to_string()))?;
        samples.push(CanaryEntry {
            image: name,
            question: input.question.clone(),
            risky: input.risky,
            expected: verdict.assessment,
        });
    }
    let file = CanaryFile { tolerance: DEFAULT_TOLERANCE, samples };
    let path = dir.join(CANARY);
    let text = serde_json::to_string_pretty(&file).map_err(|e| bad(&path, e.to_string()))?;
    write_atomically(&path, text.as_bytes())?;
    write_manifest(dir)?;
    Ok(file.samples)
}
