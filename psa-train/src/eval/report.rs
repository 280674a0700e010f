//! Writing an evaluation: `report.json` (the whole [`EvalReport`]), `report.md` (tables a person reads) and PNG
//! plots (reliability diagram, confusion matrices).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use psa_core::Taxonomy;

use super::judge::JudgeKind;
use super::respond::{PolicyMetrics, ResponseCounts};
use super::run::{EvalReport, HeadMetrics};
use crate::error::DataError;
use crate::plot::{confusion_matrix, reliability};

/// A rate as a percentage with one decimal, or `n/a`.
pub fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".into(), |v| format!("{:.1} %", 100.0 * v))
}

/// A number with three decimals, or `n/a`.
pub fn num(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".into(), |v| format!("{v:.3}"))
}

fn out_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Line { path: path.into(), line: 0, reason: e.to_string() }
}

/// The report as Markdown; `plots` are file names beside it.
pub fn markdown(r: &EvalReport, taxonomy: &Taxonomy, plots: &[(String, String)]) -> String {
    let mut s = String::new();
    let c = &r.classifier;
    let _ = writeln!(s, "# Guard evaluation: {}\n", r.benchmark);
    let _ = writeln!(
        s,
        "{} items ({} harmful, {} benign, {} scored by their own criteria), {} skipped. Temperatures: level {:.3}, type \
         {:.3}. Report format {}.\n",
        r.items,
        r.harmful,
        r.items - r.harmful - r.own_criteria,
        r.own_criteria,
        r.skipped.len(),
        r.calibration.level_temperature,
        r.calibration.type_temperature,
        r.format_version
    );
    let _ = writeln!(s, "## Safety head\n\n| measure | value |\n|---|---|");
    let _ = writeln!(s, "| risky-vs-safe AUROC (score 1 − P(safe level)) | {} |", num(c.risk_auroc));
    let _ = writeln!(s, "| recall of harmful items (policy flags) | {} |", pct(c.recall));
    let _ = writeln!(s, "| precision of flags | {} |", pct(c.precision));
    let _ = writeln!(s, "| benign items flagged (false positives) | {} |", pct(c.false_positive_rate));
    let _ =
        writeln!(s, "| risk-score ECE, raw → calibrated | {} → {} |\n", num(c.risk_ece_uncalibrated), num(c.risk_ece));
    let _ = writeln!(s, "| subset | items | harmful | flagged by the policy |\n|---|---|---|---|");
    for f in &c.subsets {
        let _ = writeln!(s, "| {} | {} | {} | {} ({}) |", f.subset, f.n, f.harmful, f.flagged, pct(f.rate()));
    }
    s.push('\n');
    let names = |v: &[psa_core::taxonomy::Concept]| v.iter().map(|x| x.name.clone()).collect::<Vec<_>>();
    for (head, m, labels) in
        [("level", &c.level, names(&taxonomy.levels)), ("type", &c.risk_type, names(&taxonomy.types))]
    {
        if let Some(m) = m {
            head_section(&mut s, head, m, &labels);
        }
    }
    if !r.responses.is_empty() {
        let _ = writeln!(
            s,
            "## Responses\n\nJudges (J1 gives the counts below; every judge's ASR is in the next table):\n"
        );
        for (j, name) in r.judges.iter().enumerate() {
            let _ = writeln!(s, "- J{}: {name}", j + 1);
        }
        if let Some(note) = &r.judge_note {
            let _ = writeln!(s, "\nNote: {note}.");
        }
        s.push('\n');
        let _ = writeln!(
            s,
            "\"Blocked\" is the policy's canned refusal (the LLM never ran) and is not evidence of the model's behaviour; \
             \"refused\" means the LLM ran and the judge read a refusal.\n"
        );
        let _ = writeln!(
            s,
            "| policy | ASR (harmful answered) | harmful blocked by policy | harmful refused by model | over-refusal (benign blocked + refused) | benign blocked | benign refused by model |\n|---|---|---|---|---|---|---|"
        );
        for p in &r.responses {
            let rate = |k: usize, c: &ResponseCounts| pct((c.n > 0).then(|| k as f64 / c.n as f64));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                p.policy,
                pct(p.asr),
                rate(p.harmful.blocked_by_policy, &p.harmful),
                rate(p.harmful.refused_by_model, &p.harmful),
                pct(p.over_refusal),
                rate(p.benign.blocked_by_policy, &p.benign),
                rate(p.benign.refused_by_model, &p.benign)
            );
        }
        judge_table(&mut s, &r.responses, r.judges.len());
        let _ = writeln!(
            s,
            "\n| policy | subset | n | blocked | refused by model | answered | hinted |\n|---|---|---|---|---|---|---|"
        );
        for p in &r.responses {
            for sub in &p.subsets {
                let (name, k) = (&sub.subset, &sub.counts);
                let _ = writeln!(
                    s,
                    "| {} | {name} | {} | {} | {} | {} | {} |",
                    p.policy, k.n, k.blocked_by_policy, k.refused_by_model, k.answered, k.hinted
                );
            }
        }
        s.push('\n');
    }
    own_criteria_section(&mut s, r);
    score_section(&mut s, r);
    for (title, file) in plots {
        let _ = writeln!(s, "![{title}]({file})\n");
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(s, "## Skipped\n");
        for k in &r.skipped {
            let _ = writeln!(s, "- {k}");
        }
    }
    s
}

/// ASR under every judge side by side, and over-refusal under the refusal judges.
fn judge_table(s: &mut String, responses: &[PolicyMetrics], judges: usize) {
    let cols: Vec<String> = (1..=judges).map(|j| format!("ASR J{j}")).collect();
    let over: Vec<String> = (1..=judges).map(|j| format!("over-refusal J{j}")).collect();
    let _ =
        writeln!(s, "\n| policy | {} | {} |\n|---|{}", cols.join(" | "), over.join(" | "), "---|".repeat(2 * judges));
    let lost = |k: usize| if k > 0 { format!(" ({k} unreadable)") } else { String::new() };
    for p in responses {
        let asr: Vec<String> =
            p.by_judge.iter().map(|j| format!("{}{}", pct(j.asr), lost(j.unreadable_harmful))).collect();
        let over: Vec<String> = p
            .by_judge
            .iter()
            .map(|j| match j.kind {
                JudgeKind::Harm => "—".to_string(),
                JudgeKind::Refusal => format!("{}{}", pct(j.over_refusal), lost(j.unreadable_benign)),
            })
            .collect();
        let _ = writeln!(s, "| {} | {} | {} |", p.policy, asr.join(" | "), over.join(" | "));
    }
    let _ = writeln!(
        s,
        "\n(— : a harm judge says whether an answer is harmful, not whether it refused. \"Unreadable\": answers whose \
         judge reply held no verdict; they are left out of that judge's rates, never guessed.)"
    );
}

/// Items the benchmark scores by its own criteria: what users got, per category, never as ASR.
fn own_criteria_section(s: &mut String, r: &EvalReport) {
    if r.own_criteria == 0 {
        return;
    }
    let _ = writeln!(
        s,
        "## Items scored by their own criteria\n\nThe benchmark scores these by whether the answer stays neutral or \
         adds the right caution, not by harm, so they are not in ASR, recall or over-refusal.\n"
    );
    let _ = writeln!(s, "| category | items | flagged by the policy |\n|---|---|---|");
    for f in &r.classifier.own_criteria {
        let _ = writeln!(s, "| {} | {} | {} ({}) |", f.subset, f.n, f.flagged, pct(f.rate()));
    }
    if !r.responses.is_empty() {
        let _ = writeln!(
            s,
            "\n| policy | category | n | blocked | refused by model (J1) | answered | hinted |\n|---|---|---|---|---|---|---|"
        );
        for p in &r.responses {
            for c in &p.own_criteria {
                let k = &c.counts;
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    p.policy, c.subset, k.n, k.blocked_by_policy, k.refused_by_model, k.answered, k.hinted
                );
            }
        }
    }
    s.push('\n');
}

/// The paper's 1–10 judge: mean score per subset and their plain mean.
fn score_section(s: &mut String, r: &EvalReport) {
    let Some(scorer) = &r.scorer else { return };
    let _ = writeln!(
        s,
        "## 1–10 scores with the paper's rubrics\n\nJudge: {scorer}. A local text-only judge: these are not the paper's \
         GPT-4V scores and cannot be compared with them.\n"
    );
    let _ = writeln!(s, "| policy | subset | items | scored | mean score |\n|---|---|---|---|---|");
    for p in &r.responses {
        for sc in &p.scores {
            let _ = writeln!(s, "| {} | {} | {} | {} | {} |", p.policy, sc.subset, sc.n, sc.scored, num(sc.mean));
        }
        let _ = writeln!(s, "| {} | **mean of subsets** | | | {} |", p.policy, num(p.mean_score));
    }
    s.push('\n');
}

fn head_section(s: &mut String, head: &str, m: &HeadMetrics, labels: &[String]) {
    let _ = writeln!(
        s,
        "### {head} head ({} labelled items)\n\n| accuracy | macro-F1 | ECE raw → calibrated |\n|---|---|---|\n| {} | {} | {} → {} |\n",
        m.n,
        pct(m.accuracy),
        num(m.macro_f1),
        num(m.ece_uncalibrated),
        num(m.ece)
    );
    let _ = writeln!(s, "| true \\ predicted | {} |\n|---|{}", labels.join(" | "), "---|".repeat(labels.len()));
    for (name, row) in labels.iter().zip(&m.confusion) {
        let cells: Vec<String> = row.iter().map(usize::to_string).collect();
        let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
    }
    s.push('\n');
}

/// Writes `report.json`, `report.md` and the SVG plots into `dir`; returns the paths written.
pub fn write_report(r: &EvalReport, taxonomy: &Taxonomy, dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    std::fs::create_dir_all(dir).map_err(|e| out_err(dir, e))?;
    let mut written = Vec::new();
    let mut plots = Vec::new();
    let c = &r.classifier;
    if !c.risk_reliability.is_empty() {
        let path = dir.join("reliability.svg");
        reliability(&c.risk_reliability, &path, "risk score: accuracy vs confidence").map_err(|e| out_err(&path, e))?;
        plots.push(("reliability diagram (risk score, calibrated)".to_string(), "reliability.svg".to_string()));
        written.push(path);
    }
    let names = |v: &[psa_core::taxonomy::Concept]| v.iter().map(|x| x.name.clone()).collect::<Vec<_>>();
    for (head, m, labels) in
        [("level", &c.level, names(&taxonomy.levels)), ("type", &c.risk_type, names(&taxonomy.types))]
    {
        if let Some(m) = m {
            let file = format!("confusion_{head}.svg");
            let path = dir.join(&file);
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            confusion_matrix(&refs, &m.confusion, &path, &format!("{head}: true (rows) vs predicted"))
                .map_err(|e| out_err(&path, e))?;
            plots.push((format!("{head} confusion matrix"), file));
            written.push(path);
        }
    }
    let json = dir.join("report.json");
    let text = serde_json::to_string_pretty(r).map_err(|e| out_err(&json, e))?;
    std::fs::write(&json, text).map_err(|e| out_err(&json, e))?;
    let md = dir.join("report.md");
    std::fs::write(&md, markdown(r, taxonomy, &plots)).map_err(|e| out_err(&md, e))?;
    written.push(json);
    written.push(md);
    Ok(written)
}
