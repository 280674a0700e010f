//! Running a guarded pipeline over a benchmark: the safety head's verdicts (classifier metrics, calibration) and,
//! under each named policy, what the user finally gets (blocked by the policy, refused by the model, or answered).
use indicatif::{ProgressBar, ProgressStyle};
use psa_core::calibration::softmax_t;
use psa_core::{Action, Calibration, SafetyPolicy};
use psa_models::GenerationConfig;
use psa_pipeline::guard::{GuardRequest, GuardedPipeline, LogitRows};
use serde::{Deserialize, Serialize};

use super::datasets::{EvalItem, EvalSet};
use super::judge::{Judge, JudgeKind};
use super::metrics::{ReliabilityBin, accuracy, auroc, confusion, ece, macro_f1, precision_recall, top_label};
use super::paper::ScoreJudge;
use super::respond::{ItemResponse, PolicyMetrics, respond_under};
use crate::data::images;
use crate::error::DataError;

/// Version of the JSON report's layout; bumped on any incompatible change.
pub const REPORT_VERSION: u32 = 2;

/// How to evaluate.
#[derive(Clone)]
pub struct EvalOptions<'a> {
    /// Requests per model pass.
    pub batch_size: usize,
    /// Named policies whose responses are generated and judged (empty: classifier metrics only).
    pub policies: Vec<(String, SafetyPolicy)>,
    /// Decoding settings of the evaluated model.
    pub generation: GenerationConfig,
    /// Judges of the generated answers (needed when `policies` is not empty). The first must be a refusal judge:
    /// its verdicts give the refused-by-model counts; every judge's ASR is reported side by side.
    pub judges: Vec<&'a dyn Judge>,
    /// The paper's 1–10 judge, scoring what the user got for items with a rubric.
    pub scorer: Option<&'a ScoreJudge>,
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
    /// Items the benchmark scores by their own criteria, flagged per category (not in recall or precision).
    pub own_criteria: Vec<SubsetFlags>,
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
pub(super) fn subset_names(items: &[&EvalItem]) -> Vec<String> {
    let mut names: Vec<String> = items.iter().map(|i| i.subset.clone()).collect();
    names.sort();
    names.dedup();
    names
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
    /// Scored by the benchmark's own criteria, not in the harm metrics.
    pub own_criteria: bool,
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
    /// Harmful items among them (items scored by their own criteria are neither harmful nor benign).
    pub harmful: usize,
    /// Items scored by the benchmark's own criteria.
    pub own_criteria: usize,
    /// Entries not evaluated, with the reason.
    pub skipped: Vec<String>,
    /// Temperatures applied.
    pub calibration: Calibration,
    /// The judges of generated answers, the refusal judge whose counts are reported first.
    pub judges: Vec<String>,
    /// Why no LLM judged the answers, when none did.
    pub judge_note: Option<String>,
    /// The paper's 1–10 judge, when one scored the answers.
    pub scorer: Option<String>,
    /// Safety-head metrics.
    pub classifier: ClassifierMetrics,
    /// Response metrics per policy.
    pub responses: Vec<PolicyMetrics>,
    /// Per-item outcomes, in input order.
    pub per_item: Vec<ItemResult>,
}

pub(super) fn bar(len: usize, what: &str, show: bool) -> ProgressBar {
    let b = if show { ProgressBar::new(len as u64) } else { ProgressBar::hidden() };
    b.set_style(
        ProgressStyle::with_template(&format!("{{bar:30}} {{pos}}/{{len}} {what} {{elapsed_precise}} ETA {{eta}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

pub(super) fn model_err(e: impl std::fmt::Display) -> DataError {
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
    let risk_at = |t: f64| -> Vec<f64> { logits.level.iter().map(|z| 1.0 - softmax_t(z, t)[safe_level]).collect() };
    let risk = risk_at(pipeline.calibration.level_temperature);
    // The harm metrics read only items the benchmark scores by harm; the others are flagged per category apart.
    let main: Vec<usize> = (0..kept.len()).filter(|&i| !kept[i].own_criteria).collect();
    let pick = |v: &[f64]| -> Vec<f64> { main.iter().map(|&i| v[i]).collect() };
    let rows = |v: &[Vec<f32>]| -> Vec<Vec<f32>> { main.iter().map(|&i| v[i].clone()).collect() };
    let main_items: Vec<&EvalItem> = main.iter().map(|&i| kept[i]).collect();
    let harmful: Vec<bool> = main_items.iter().map(|i| i.harmful).collect();
    let main_logits = LogitRows { level: rows(&logits.level), risk_type: rows(&logits.risk_type) };
    let main_flagged: Vec<bool> = main.iter().map(|&i| flagged[i]).collect();
    let mut classifier = classifier_metrics(
        pipeline,
        &main_logits,
        &main_items,
        &harmful,
        &main_flagged,
        &pick(&risk),
        &pick(&risk_at(1.0)),
    );
    classifier.own_criteria = own_criteria_flags(&kept, &flagged);

    let mut per_item: Vec<ItemResult> = kept
        .iter()
        .zip(&assessments)
        .zip(&flagged)
        .zip(&risk)
        .map(|(((item, a), &f), &r)| ItemResult {
            id: item.id.clone(),
            subset: item.subset.clone(),
            harmful: item.harmful,
            own_criteria: item.own_criteria,
            level: a.level,
            risk_type: a.risk_type,
            risk: r,
            flagged: f,
            responses: Vec::new(),
        })
        .collect();
    let mut responses = Vec::new();
    if !opts.policies.is_empty() {
        match opts.judges.first() {
            None => return Err(model_err("response metrics need a judge")),
            Some(j) if j.kind() != JudgeKind::Refusal => {
                return Err(model_err(format!("the first judge must be a refusal judge, not {}", j.name())));
            }
            Some(_) => {}
        }
        for (name, policy) in &opts.policies {
            responses.push(respond_under(pipeline, name, policy, &kept, &mut per_item, opts)?);
        }
    }
    let judged = !opts.policies.is_empty();
    let judges: Vec<String> = opts.judges.iter().filter(|_| judged).map(|j| j.name()).collect();
    let judge_note = (judged && opts.judges.len() < 2).then(|| {
        "no LLM judge: only the refusal-phrase list read the answers (pass a judge model to add the HarmBench- and \
         Llama-Guard-style judges)"
            .to_string()
    });
    Ok(EvalReport {
        format_version: REPORT_VERSION,
        benchmark: benchmark.to_string(),
        items: kept.len(),
        harmful: harmful.iter().filter(|&&h| h).count(),
        own_criteria: kept.len() - main.len(),
        skipped,
        calibration: pipeline.calibration,
        judges,
        judge_note,
        scorer: opts.scorer.filter(|_| judged).map(ScoreJudge::name),
        classifier,
        responses,
        per_item,
    })
}

/// The categories of the items scored by their own criteria, sorted, each once.
pub(super) fn own_criteria_categories(items: &[&EvalItem]) -> Vec<String> {
    let mut categories: Vec<String> =
        items.iter().filter(|i| i.own_criteria).map(|i| i.category.clone().unwrap_or_default()).collect();
    categories.sort();
    categories.dedup();
    categories
}

/// How often the policy flags the items scored by their own criteria, per category.
fn own_criteria_flags(items: &[&EvalItem], flagged: &[bool]) -> Vec<SubsetFlags> {
    own_criteria_categories(items)
        .into_iter()
        .map(|c| {
            let members: Vec<usize> = (0..items.len())
                .filter(|&i| items[i].own_criteria && items[i].category.as_deref().unwrap_or_default() == c)
                .collect();
            SubsetFlags {
                n: members.len(),
                harmful: 0,
                flagged: members.iter().filter(|&&i| flagged[i]).count(),
                subset: c,
            }
        })
        .collect()
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
        own_criteria: Vec::new(),
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
