//! Classifier metrics on host-side numbers: accuracy, confusion matrices, macro-F1, AUROC, precision and recall,
//! and expected calibration error with its reliability bins.
use serde::{Deserialize, Serialize};

/// Bins of the reliability diagram and the expected calibration error.
pub const ECE_BINS: usize = 10;

/// Fraction of positions where `pred` equals `truth` (`None` for no samples).
pub fn accuracy(truth: &[usize], pred: &[usize]) -> Option<f64> {
    (!truth.is_empty()).then(|| truth.iter().zip(pred).filter(|(t, p)| t == p).count() as f64 / truth.len() as f64)
}

/// `classes × classes` counts: rows are the true class, columns the predicted one.
pub fn confusion(truth: &[usize], pred: &[usize], classes: usize) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0; classes]; classes];
    for (&t, &p) in truth.iter().zip(pred) {
        if t < classes && p < classes {
            m[t][p] += 1;
        }
    }
    m
}

/// Unweighted mean of the per-class F1 over the classes that occur in the truth or the predictions (scikit-learn's
/// `f1_score(average="macro")`); `None` for an empty matrix.
pub fn macro_f1(confusion: &[Vec<usize>]) -> Option<f64> {
    let n = confusion.len();
    let mut scores = Vec::new();
    for c in 0..n {
        let tp = confusion[c][c];
        let row: usize = confusion[c].iter().sum();
        let col: usize = confusion.iter().map(|r| r[c]).sum();
        if row + col == 0 {
            continue;
        }
        scores.push(2.0 * tp as f64 / (row + col) as f64);
    }
    (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64)
}

/// Area under the ROC curve of `scores` for `positive` labels, ties counted half (Mann–Whitney U); `None` when
/// either class is absent.
pub fn auroc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mid_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += (i..=j).filter(|&k| positive[order[k]]).count() as f64 * mid_rank;
        i = j + 1;
    }
    let u = rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos * n_neg) as f64)
}

/// Precision and recall of `flagged` against `positive` (`None` where the denominator is zero).
pub fn precision_recall(flagged: &[bool], positive: &[bool]) -> (Option<f64>, Option<f64>) {
    let tp = flagged.iter().zip(positive).filter(|(f, p)| **f && **p).count() as f64;
    let flagged_n = flagged.iter().filter(|&&f| f).count() as f64;
    let pos_n = positive.iter().filter(|&&p| p).count() as f64;
    ((flagged_n > 0.0).then(|| tp / flagged_n), (pos_n > 0.0).then(|| tp / pos_n))
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// Lower edge of the confidence interval (the bin is `(lower, upper]`, the first also holds 0).
    pub lower: f64,
    /// Upper edge.
    pub upper: f64,
    /// Samples in the bin.
    pub count: usize,
    /// Mean confidence of those samples.
    pub confidence: f64,
    /// Fraction of them predicted correctly.
    pub accuracy: f64,
}

/// Expected calibration error over [`ECE_BINS`] equal-width bins, `Σ (n_b / n)·|accuracy_b − confidence_b|`, and the
/// bins; `None` for no samples.
pub fn ece(confidence: &[f64], correct: &[bool]) -> Option<(f64, Vec<ReliabilityBin>)> {
    if confidence.is_empty() {
        return None;
    }
    let b = ECE_BINS;
    let mut bins: Vec<ReliabilityBin> = (0..b)
        .map(|k| ReliabilityBin {
            lower: k as f64 / b as f64,
            upper: (k + 1) as f64 / b as f64,
            count: 0,
            confidence: 0.0,
            accuracy: 0.0,
        })
        .collect();
    for (&c, &ok) in confidence.iter().zip(correct) {
        let k = ((c * b as f64).ceil() as usize).clamp(1, b) - 1;
        bins[k].count += 1;
        bins[k].confidence += c;
        bins[k].accuracy += f64::from(u8::from(ok));
    }
    let n = confidence.len() as f64;
    let mut total = 0.0;
    for bin in bins.iter_mut().filter(|bin| bin.count > 0) {
        bin.confidence /= bin.count as f64;
        bin.accuracy /= bin.count as f64;
        total += bin.count as f64 / n * (bin.accuracy - bin.confidence).abs();
    }
    Some((total, bins))
}

/// Top-label confidence and correctness of probability rows against true classes, for [`ece`].
pub fn top_label(probs: &[Vec<f64>], truth: &[usize]) -> (Vec<f64>, Vec<bool>) {
    probs
        .iter()
        .zip(truth)
        .map(|(p, &t)| {
            let best = p.iter().enumerate().fold(0, |b, (i, &x)| if x > p[b] { i } else { b });
            (p[best], best == t)
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_confusion_and_macro_f1_by_hand() {
        let truth = [0, 0, 1, 1, 2, 2];
        let pred = [0, 1, 1, 1, 0, 2];
        assert_eq!(accuracy(&truth, &pred), Some(4.0 / 6.0));
        let m = confusion(&truth, &pred, 4);
        assert_eq!(m[0], vec![1, 1, 0, 0]);
        assert_eq!(m[2], vec![1, 0, 1, 0]);
        // F1: class 0 = 2·1/(2+2) = 0.5, class 1 = 2·2/(2+3) = 0.8, class 2 = 2·1/(2+1) = 2/3; class 3 absent.
        let f1 = macro_f1(&m).unwrap();
        assert!((f1 - (0.5 + 0.8 + 2.0 / 3.0) / 3.0).abs() < 1e-12, "{f1}");
        assert_eq!(accuracy(&[], &[]), None);
        assert_eq!(macro_f1(&confusion(&[], &[], 2)), None);
    }

    #[test]
    fn auroc_counts_pairs_and_ties() {
        // Positives 0.9, 0.4; negatives 0.4, 0.1: pairs (0.9>0.4) (0.9>0.1) (0.4=0.4 → ½) (0.4>0.1) → 3.5 / 4.
        let a = auroc(&[0.9, 0.4, 0.4, 0.1], &[true, true, false, false]).unwrap();
        assert!((a - 0.875).abs() < 1e-12, "{a}");
        assert_eq!(auroc(&[0.1, 0.9], &[false, true]), Some(1.0));
        assert_eq!(auroc(&[0.1, 0.9], &[true, true]), None);
    }

    #[test]
    fn precision_recall_by_hand() {
        let (p, r) = precision_recall(&[true, true, false, false], &[true, false, true, true]);
        assert_eq!((p, r), (Some(0.5), Some(1.0 / 3.0)));
        assert_eq!(precision_recall(&[false], &[false]), (None, None));
    }

    #[test]
    fn ece_by_hand() {
        // Bin (0.9, 1]: confidences 0.95, 0.95, one right → |0.5 − 0.95| · 2/4; bin (0.5, 0.6]: 0.6, 0.6 both right
        // → |1 − 0.6| · 2/4. ECE = 0.225 + 0.2 = 0.425.
        let (e, bins) = ece(&[0.95, 0.95, 0.6, 0.6], &[true, false, true, true]).unwrap();
        assert!((e - 0.425).abs() < 1e-12, "{e}");
        assert_eq!((bins[9].count, bins[5].count, bins[6].count), (2, 2, 0));
        assert!((bins[5].confidence - 0.6).abs() < 1e-12 && bins[5].accuracy == 1.0);
        assert_eq!(ece(&[0.0], &[false]).unwrap().1[0].count, 1);
        let (conf, ok) = top_label(&[vec![0.2, 0.8], vec![0.7, 0.3]], &[1, 1]);
        assert_eq!((conf, ok), (vec![0.8, 0.7], vec![true, false]));
    }
}
