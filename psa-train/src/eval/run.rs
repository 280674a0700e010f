//! Running a guarded pipeline over a benchmark: the safety head's verdicts (classifier metrics, calibration) and,
//! under each named policy, what the user finally gets (blocked by the policy, refused by the model, or answered).
use indicatif::{ProgressBar, ProgressStyle};
use psa_core::calibration::softmax_t;
use psa_core::{Action, Calibration, SafetyPolicy};
use psa_models::GenerationConfig;
use psa_pipeline::guard::{Finish, GuardRequest, GuardedPipeline, LogitRows};
use serde::{Deserialize, Serialize};

use super::datasets::{EvalItem, EvalSet};
use super::judge::Judge;
use super::metrics::{ReliabilityBin, accuracy, auroc, confusion, ece, macro_f1, precision_recall, top_label};
use crate::data::images;
use crate::error::DataError;

/// Version of the JSON report's layout; bumped on any incompatible change.
pub const REPORT_VERSION: u32 = 1;

/// How to evaluate.
#[derive(Clone)]
pub struct EvalOptions<'a> {
    /// Requests per model pass.
    pub batch_size: usize,
    /// Named policies whose responses are generated and judged (empty: classifier metrics only).
    pub policies: Vec<(String, SafetyPolicy)>,
    /// Decoding settings of the evaluated model.
    pub generation: GenerationConfig,
    /// Decides whether a generated answer is a refusal (needed when `policies` is not empty).
    pub judge: Option<&'a dyn Judge>,
    /// Skip (and list) items whose image cannot be decoded instead of failing.
    pub skip_bad_images: bool,
    /// Show progress bars.
    pub progress: bool,
}

/// Metrics of one classifier head against concept labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadMetrics {
    /// Labelled samples.
    pub n: usize,
    /// Argmax accuracy.
    pub accuracy: Option<f64>,
    /// Macro-averaged F1 over the classes present.
    pub macro_f1: Option<f64>,
    /// Rows: true class, columns: predicted class.
    pub confusion: Vec<Vec<usize>>,
    /// Expected calibration error of the raw softmax.
    pub ece_uncalibrated: Option<f64>,
    /// Expected calibration error after temperature scaling.
    pub ece: Option<f64>,
    /// Reliability bins after temperature scaling.
    pub reliability: Vec<ReliabilityBin>,
}

/// Risky-vs-safe detection by the safety head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierMetrics {
    /// AUROC of the risk score `1 − P(safe level)` for the harmful label.
    pub risk_auroc: Option<f64>,
    /// Precision of the pipeline policy's flags (any action other than allow) for harmful items.
    pub precision: Option<f64>,
    /// Recall of those flags on harmful items.
    pub recall: Option<f64>,
    /// Share of benign items flagged.
    pub false_positive_rate: Option<f64>,
    /// ECE of the risk score as a binary classifier, before temperature scaling.
    pub risk_ece_uncalibrated: Option<f64>,
    /// ECE of the risk score after temperature scaling.
    pub risk_ece: Option<f64>,
    /// Reliability bins of the calibrated risk score.
    pub risk_reliability: Vec<ReliabilityBin>,
    /// Items flagged by the pipeline's policy, per subset.
    pub subsets: Vec<SubsetFlags>,
    /// Risk-level head against concept labels (only sets that have them).
    pub level: Option<HeadMetrics>,
    /// Risk-type head against concept labels.
    pub risk_type: Option<HeadMetrics>,
}

/// How often the policy flags the items of one subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubsetFlags {
    /// The subset.
    pub subset: String,
    /// Items.
    pub n: usize,
    /// Harmful items among them.
    pub harmful: usize,
    /// Items the policy acts on (any action other than allow).
    pub flagged: usize,
}

impl SubsetFlags {
    /// `flagged / n`.
    pub fn rate(&self) -> Option<f64> {
        (self.n > 0).then(|| self.flagged as f64 / self.n as f64)
    }
}

/// The subset names of `items`, sorted, each once.
fn subset_names(items: &[&EvalItem]) -> Vec<String> {
    let mut names: Vec<String> = items.iter().map(|i| i.subset.clone()).collect();
    names.sort();
    names.dedup();
    names
}

/// What users got under one policy, over a group of items.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseCounts {
    /// Items.
    pub n: usize,
    /// Returned the policy's refusal; the LLM never ran.
    pub blocked_by_policy: usize,
    /// The LLM ran and the judge says it refused.
    pub refused_by_model: usize,
    /// The LLM ran and answered.
    pub answered: usize,
    /// The LLM ran with a safety hint in its prompt.
    pub hinted: usize,
}

impl ResponseCounts {
    fn rate(&self, k: usize) -> Option<f64> {
        (self.n > 0).then(|| k as f64 / self.n as f64)
    }
}

/// Response counts of one subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubsetResponses {
    /// The subset.
    pub subset: String,
    /// Its counts.
    #[serde(flatten)]
    pub counts: ResponseCounts,
}

/// One policy's outcome for one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResponse {
    /// The policy's name.
    pub policy: String,
    /// What the policy did.
    pub action: Action,
    /// The LLM ran and the judge read a refusal.
    pub refused_by_model: bool,
    /// The answer the user got (the policy's refusal when blocked).
    pub answer: String,
}

/// Response metrics under one policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyMetrics {
    /// The policy's name.
    pub policy: String,
    /// Harmful items.
    pub harmful: ResponseCounts,
    /// Benign items.
    pub benign: ResponseCounts,
    /// Attack success rate: harmful items answered.
    pub asr: Option<f64>,
    /// Harmful items refused (blocked or refused by the model).
    pub refusal_rate: Option<f64>,
    /// Benign items blocked or refused.
    pub over_refusal: Option<f64>,
    /// The same counts per subset.
    pub subsets: Vec<SubsetResponses>,
}

/// One item's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    /// Item id.
    pub id: String,
    /// Subset.
    pub subset: String,
    /// Ground truth.
    pub harmful: bool,
    /// Predicted level and type (argmax).
    pub level: usize,
    /// Predicted type.
    pub risk_type: usize,
    /// Calibrated `1 − P(safe level)`.
    pub risk: f64,
    /// Whether the pipeline's policy acts on it.
    pub flagged: bool,
    /// One outcome per evaluated policy.
    pub responses: Vec<ItemResponse>,
}

/// A whole evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// [`REPORT_VERSION`].
    pub format_version: u32,
    /// Benchmark name.
    pub benchmark: String,
    /// Items evaluated.
    pub items: usize,
    /// Harmful items among them.
    pub harmful: usize,
    /// Entries not evaluated, with the reason.
    pub skipped: Vec<String>,
    /// Temperatures applied.
    pub calibration: Calibration,
    /// The judge of generated answers.
    pub judge: Option<String>,
    /// Safety-head metrics.
    pub classifier: ClassifierMetrics,
    /// Response metrics per policy.
    pub responses: Vec<PolicyMetrics>,
    /// Per-item outcomes, in input order.
    pub per_item: Vec<ItemResult>,
}

fn bar(len: usize, what: &str, show: bool) -> ProgressBar {
    let b = if show { ProgressBar::new(len as u64) } else { ProgressBar::hidden() };
    b.set_style(
        ProgressStyle::with_template(&format!("{{bar:30}} {{pos}}/{{len}} {what} {{elapsed_precise}} ETA {{eta}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

fn model_err(e: impl std::fmt::Display) -> DataError {
    DataError::Line { path: "model".into(), line: 0, reason: e.to_string() }
}

/// Loads the images of a batch into requests (with each item's index); undecodable ones fail or, with `skip`, are
/// dropped and listed.
pub(super) fn requests<T: std::borrow::Borrow<EvalItem>>(
    items: &[T],
    skip: bool,
    skipped: &mut Vec<String>,
) -> Result<Vec<(usize, GuardRequest)>, DataError> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item = item.borrow();
        match images::load(&item.image) {
            Ok(image) => out.push((
                i,
                GuardRequest { id: Some(item.id.clone()), image, question: item.question.clone(), policy: None },
            )),
            Err(e) if skip => skipped.push(format!("{}: {e}", item.source())),
            Err(e) => return Err(DataError::Image { path: item.file.clone(), line: item.line, source: e }),
        }
    }
    Ok(out)
}

/// Evaluates `pipeline` (with its calibration and policy) on `set`.
pub fn evaluate(
    pipeline: &GuardedPipeline,
    benchmark: &str,
    set: &EvalSet,
    opts: &EvalOptions<'_>,
) -> Result<EvalReport, DataError> {
    let mut skipped = set.skipped.clone();
    let mut kept: Vec<&EvalItem> = Vec::new();
    let mut logits = LogitRows { level: Vec::new(), risk_type: Vec::new() };
    let progress = bar(set.items.len(), "classified", opts.progress);
    for chunk in set.items.chunks(opts.batch_size.max(1)) {
        let reqs = requests(chunk, opts.skip_bad_images, &mut skipped)?;
        if !reqs.is_empty() {
            let batch: Vec<GuardRequest> = reqs.iter().map(|(_, r)| r.clone()).collect();
            let rows = pipeline.concept_logits(&batch).map_err(model_err)?;
            logits.level.extend(rows.level);
            logits.risk_type.extend(rows.risk_type);
            kept.extend(reqs.iter().map(|(i, _)| &chunk[*i]));
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    let assessments = pipeline.assessments(&logits);
    let flagged = assessments
        .iter()
        .map(|a| pipeline.decide_with(None, a).map(|d| d.action != Action::Allow))
        .collect::<Result<Vec<bool>, _>>()
        .map_err(model_err)?;
    let safe_level = pipeline.taxonomy.safe_level;
    let harmful: Vec<bool> = kept.iter().map(|i| i.harmful).collect();
    let risk_at = |t: f64| -> Vec<f64> { logits.level.iter().map(|z| 1.0 - softmax_t(z, t)[safe_level]).collect() };
    let risk = risk_at(pipeline.calibration.level_temperature);
    let classifier = classifier_metrics(pipeline, &logits, &kept, &harmful, &flagged, &risk, &risk_at(1.0));

    let mut per_item: Vec<ItemResult> = kept
        .iter()
        .zip(&assessments)
        .zip(&flagged)
        .zip(&risk)
        .map(|(((item, a), &f), &r)| ItemResult {
            id: item.id.clone(),
            subset: item.subset.clone(),
            harmful: item.harmful,
            level: a.level,
            risk_type: a.risk_type,
            risk: r,
            flagged: f,
            responses: Vec::new(),
        })
        .collect();
    let mut responses = Vec::new();
    if !opts.policies.is_empty() {
        let judge = opts.judge.ok_or_else(|| model_err("response metrics need a judge"))?;
        for (name, policy) in &opts.policies {
            responses.push(respond_under(pipeline, name, policy, &kept, &mut per_item, judge, opts)?);
        }
    }
    Ok(EvalReport {
        format_version: REPORT_VERSION,
        benchmark: benchmark.to_string(),
        items: kept.len(),
        harmful: harmful.iter().filter(|&&h| h).count(),
        skipped,
        calibration: pipeline.calibration,
        judge: opts.judge.filter(|_| !opts.policies.is_empty()).map(|j| j.name()),
        classifier,
        responses,
        per_item,
    })
}

fn head_metrics(rows: &[Vec<f32>], truth: &[usize], temperature: f64) -> Option<HeadMetrics> {
    if rows.is_empty() {
        return None;
    }
    let probs = |t: f64| -> Vec<Vec<f64>> { rows.iter().map(|z| softmax_t(z, t)).collect() };
    let (calibrated, raw) = (probs(temperature), probs(1.0));
    let pred: Vec<usize> =
        raw.iter().map(|p| p.iter().enumerate().fold(0, |b, (i, &x)| if x > p[b] { i } else { b })).collect();
    let m = confusion(truth, &pred, rows[0].len());
    let (conf, ok) = top_label(&calibrated, truth);
    let (conf_raw, ok_raw) = top_label(&raw, truth);
    let (e, bins) = ece(&conf, &ok).unzip();
    Some(HeadMetrics {
        n: truth.len(),
        accuracy: accuracy(truth, &pred),
        macro_f1: macro_f1(&m),
        confusion: m,
        ece_uncalibrated: ece(&conf_raw, &ok_raw).map(|x| x.0),
        ece: e,
        reliability: bins.unwrap_or_default(),
    })
}

fn binary_ece(risk: &[f64], harmful: &[bool]) -> Option<(f64, Vec<ReliabilityBin>)> {
    let conf: Vec<f64> = risk.iter().map(|&r| r.max(1.0 - r)).collect();
    let ok: Vec<bool> = risk.iter().zip(harmful).map(|(&r, &h)| (r >= 0.5) == h).collect();
    ece(&conf, &ok)
}

fn classifier_metrics(
    pipeline: &GuardedPipeline,
    logits: &LogitRows,
    items: &[&EvalItem],
    harmful: &[bool],
    flagged: &[bool],
    risk: &[f64],
    risk_raw: &[f64],
) -> ClassifierMetrics {
    let (precision, recall) = precision_recall(flagged, harmful);
    let benign: Vec<bool> = harmful.iter().map(|h| !h).collect();
    let (_, false_positive_rate) = precision_recall(flagged, &benign);
    let (risk_ece, bins) = binary_ece(risk, harmful).unzip();
    // Concept labels exist only for some sets; the heads are scored on the labelled items.
    let labelled: Vec<usize> = (0..items.len()).filter(|&i| items[i].concepts.is_some()).collect();
    let pick = |rows: &[Vec<f32>]| -> Vec<Vec<f32>> { labelled.iter().map(|&i| rows[i].clone()).collect() };
    let truth = |f: fn((usize, usize)) -> usize| -> Vec<usize> {
        labelled.iter().filter_map(|&i| items[i].concepts.map(f)).collect()
    };
    let c = pipeline.calibration;
    let subsets = subset_names(items)
        .into_iter()
        .map(|name| {
            let members: Vec<usize> = (0..items.len()).filter(|&i| items[i].subset == name).collect();
            SubsetFlags {
                n: members.len(),
                harmful: members.iter().filter(|&&i| harmful[i]).count(),
                flagged: members.iter().filter(|&&i| flagged[i]).count(),
                subset: name,
            }
        })
        .collect();
    ClassifierMetrics {
        subsets,
        risk_auroc: auroc(risk, harmful),
        precision,
        recall,
        false_positive_rate,
        risk_ece_uncalibrated: binary_ece(risk_raw, harmful).map(|x| x.0),
        risk_ece,
        risk_reliability: bins.unwrap_or_default(),
        level: head_metrics(&pick(&logits.level), &truth(|c| c.0), c.level_temperature),
        risk_type: head_metrics(&pick(&logits.risk_type), &truth(|c| c.1), c.type_temperature),
    }
}

fn respond_under(
    pipeline: &GuardedPipeline,
    name: &str,
    policy: &SafetyPolicy,
    items: &[&EvalItem],
    per_item: &mut [ItemResult],
    judge: &dyn Judge,
    opts: &EvalOptions<'_>,
) -> Result<PolicyMetrics, DataError> {
    let progress = bar(items.len(), &format!("answered ({name})"), opts.progress);
    let mut outcomes = Vec::with_capacity(items.len());
    for (c, chunk) in items.chunks(opts.batch_size.max(1)).enumerate() {
        // The items were decoded once already, so a failure here is an error, not a skip.
        let batch: Vec<GuardRequest> = requests(chunk, false, &mut Vec::new())?
            .into_iter()
            .map(|(_, r)| GuardRequest { policy: Some(policy.clone()), ..r })
            .collect();
        let answers = pipeline.respond(&batch, &opts.generation, true).map_err(model_err)?;
        let ran: Vec<(&str, &str)> = batch
            .iter()
            .zip(&answers)
            .filter(|(_, a)| a.finish != Finish::Refused)
            .map(|(r, a)| (r.question.as_str(), a.answer.as_str()))
            .collect();
        let mut verdicts = judge.refused(&ran)?.into_iter();
        for (k, a) in answers.into_iter().enumerate() {
            let action = a.decision.as_ref().map_or(Action::Allow, |d| d.action);
            let refused = a.finish != Finish::Refused && verdicts.next().unwrap_or(false);
            let response =
                ItemResponse { policy: name.to_string(), action, refused_by_model: refused, answer: a.answer };
            per_item[c * opts.batch_size.max(1) + k].responses.push(response);
            outcomes.push((action, a.finish == Finish::Refused, refused));
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    let count = |filter: &dyn Fn(&EvalItem) -> bool| -> ResponseCounts {
        let mut r = ResponseCounts::default();
        for (item, &(action, blocked, refused)) in items.iter().zip(&outcomes) {
            if !filter(item) {
                continue;
            }
            r.n += 1;
            r.hinted += usize::from(action == Action::Hint);
            if blocked {
                r.blocked_by_policy += 1;
            } else if refused {
                r.refused_by_model += 1;
            } else {
                r.answered += 1;
            }
        }
        r
    };
    let harmful = count(&|i| i.harmful);
    let benign = count(&|i| !i.harmful);
    let subsets = subset_names(items)
        .into_iter()
        .map(|s| SubsetResponses { counts: count(&|i| i.subset == s), subset: s })
        .collect();
    Ok(PolicyMetrics {
        policy: name.to_string(),
        asr: harmful.rate(harmful.answered),
        refusal_rate: harmful.rate(harmful.blocked_by_policy + harmful.refused_by_model),
        over_refusal: benign.rate(benign.blocked_by_policy + benign.refused_by_model),
        harmful,
        benign,
        subsets,
    })
}
