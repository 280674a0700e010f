//! Writing an evaluation: `report.json` (the whole [`EvalReport`]), `report.md` (tables a person reads) and PNG
//! plots (reliability diagram, confusion matrices).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use psa_core::Taxonomy;

use super::run::{EvalReport, HeadMetrics, ResponseCounts};
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
        "{} items ({} harmful, {} benign), {} skipped. Temperatures: level {:.3}, type {:.3}. Report format {}.\n",
        r.items,
        r.harmful,
        r.items - r.harmful,
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
        let _ = writeln!(s, "## Responses\n\nJudge: {}\n", r.judge.as_deref().unwrap_or("none"));
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
