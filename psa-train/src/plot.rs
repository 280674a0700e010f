//! Plots of runs and evaluations as SVG (plotters' SVG backend: text is left to the viewer, so no fonts or bitmaps
//! are built): the loss curve, confusion matrices and reliability diagrams.
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::eval::ReliabilityBin;
use crate::trainer::StepMetrics;

/// Why a plot was not written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Nothing to draw.
    #[error("{0}")]
    Empty(&'static str),
    /// Labels and counts of different sizes.
    #[error("a {labels}×{labels} matrix is needed")]
    NotSquare {
        /// Number of labels.
        labels: usize,
    },
    /// Drawing or writing the file failed.
    #[error("{}: {source}", .path.display())]
    Draw {
        /// The SVG file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: DrawingAreaErrorKind<std::io::Error>,
    },
}

/// A named curve: label, colour and the value it plots.
type Series = (&'static str, RGBColor, Box<dyn Fn(&StepMetrics) -> f64>);

/// Draws total, LM and concept losses against the optimizer step.
pub fn loss_curve(metrics: &[StepMetrics], path: &Path, title: &str) -> Result<(), PlotError> {
    if metrics.is_empty() {
        return Err(PlotError::Empty("no steps to plot"));
    }
    let series: [Series; 3] = [
        ("total", BLACK, Box::new(|m| m.loss)),
        ("LM", BLUE, Box::new(|m| m.lm_loss)),
        ("concept CE", RED, Box::new(|m| m.ce_level + m.ce_type)),
    ];
    let max = metrics.iter().flat_map(|m| series.iter().map(move |s| (s.2)(m))).fold(0.0f64, f64::max).max(1e-6);
    let last = metrics.last().map_or(1, |m| m.step);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    let err = |source| PlotError::Draw { path: path.into(), source };
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(1..last.max(2), 0.0..max * 1.05)
        .map_err(err)?;
    chart.configure_mesh().x_desc("optimizer step").y_desc("loss").draw().map_err(err)?;
    for (name, colour, value) in &series {
        if metrics.iter().all(|m| value(m) == 0.0) {
            continue;
        }
        chart
            .draw_series(LineSeries::new(metrics.iter().map(|m| (m.step, value(m))), colour))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)
}

/// Draws a confusion matrix (rows: true class, columns: predicted class) as a heat map with counts: each cell is
/// shaded by its share of the row.
pub fn confusion_matrix(labels: &[&str], counts: &[Vec<usize>], path: &Path, title: &str) -> Result<(), PlotError> {
    let n = labels.len();
    if counts.len() != n || counts.iter().any(|r| r.len() != n) {
        return Err(PlotError::NotSquare { labels: n });
    }
    let cell = 110i32;
    let (left, top) = (150i32, 70i32);
    let size = ((left + cell * n as i32 + 20) as u32, (top + cell * n as i32 + 60) as u32);
    let root = SVGBackend::new(path, size).into_drawing_area();
    let err = |source| PlotError::Draw { path: path.into(), source };
    root.fill(&WHITE).map_err(err)?;
    let style = ("sans-serif", 16).into_font();
    root.draw_text(title, &("sans-serif", 20).into_font().color(&BLACK), (12, 12)).map_err(err)?;
    root.draw_text("predicted →", &style.color(&BLACK), (left, top - 24)).map_err(err)?;
    for (r, row) in counts.iter().enumerate() {
        let total = row.iter().sum::<usize>().max(1) as f64;
        let y = top + cell * r as i32;
        root.draw_text(labels[r], &style.color(&BLACK), (12, y + cell / 2 - 8)).map_err(err)?;
        for (c, &count) in row.iter().enumerate() {
            let x = left + cell * c as i32;
            let shade = 255 - (200.0 * count as f64 / total) as u8;
            root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], RGBColor(shade, shade, 255).filled()))
                .map_err(err)?;
            root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], BLACK)).map_err(err)?;
            root.draw_text(&count.to_string(), &style.color(&BLACK), (x + cell / 2 - 8, y + cell / 2 - 8))
                .map_err(err)?;
        }
    }
    for (c, label) in labels.iter().enumerate() {
        let x = left + cell * c as i32 + 8;
        root.draw_text(label, &style.color(&BLACK), (x, top + cell * n as i32 + 10)).map_err(err)?;
    }
    root.present().map_err(err)
}

/// Colour of the accuracy bars.
const BAR: RGBColor = RGBColor(90, 120, 220);
/// Colour of empty bins' bars.
const EMPTY: RGBColor = RGBColor(225, 225, 225);

/// A reliability diagram: one bar per confidence bin at the bin's accuracy (a grey full-height bar where the bin is
/// empty), the diagonal of perfect calibration, and each bin's mean confidence as a red tick.
pub fn reliability(bins: &[ReliabilityBin], path: &Path, title: &str) -> Result<(), PlotError> {
    if bins.is_empty() {
        return Err(PlotError::Empty("no bins to plot"));
    }
    let (left, top, side) = (60i32, 50i32, 400i32);
    let root = SVGBackend::new(path, ((left + side + 30) as u32, (top + side + 60) as u32)).into_drawing_area();
    let err = |source| PlotError::Draw { path: path.into(), source };
    root.fill(&WHITE).map_err(err)?;
    let y_of = |v: f64| top + side - (v.clamp(0.0, 1.0) * side as f64).round() as i32;
    let w = side / bins.len() as i32;
    for (k, b) in bins.iter().enumerate() {
        let x0 = left + k as i32 * w;
        let (colour, height) = if b.count == 0 { (EMPTY, 1.0) } else { (BAR, b.accuracy) };
        root.draw(&Rectangle::new([(x0 + 1, y_of(height)), (x0 + w - 1, top + side)], colour.filled())).map_err(err)?;
        if b.count > 0 {
            let y = y_of(b.confidence);
            root.draw(&PathElement::new(vec![(x0 + 1, y), (x0 + w - 1, y)], RED.stroke_width(2))).map_err(err)?;
        }
    }
    let axes = vec![(left, top), (left, top + side), (left + side, top + side)];
    root.draw(&PathElement::new(axes, BLACK)).map_err(err)?;
    root.draw(&PathElement::new(vec![(left, top + side), (left + side, top)], BLACK)).map_err(err)?;
    let text = ("sans-serif", 14).into_font().color(&BLACK);
    root.draw_text(title, &("sans-serif", 18).into_font().color(&BLACK), (10, 12)).map_err(err)?;
    root.draw_text("confidence →", &text, (left + side / 2 - 40, top + side + 12)).map_err(err)?;
    root.draw_text("0", &text, (left - 14, top + side - 8)).map_err(err)?;
    root.draw_text("1", &text, (left - 14, top - 8)).map_err(err)?;
    root.draw_text("bars: accuracy   red: mean confidence", &text, (left, top + side + 34)).map_err(err)?;
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svg(name: &str, draw: impl FnOnce(&Path)) -> String {
        let path = std::env::temp_dir().join(format!("psa-{name}-{}.svg", std::process::id()));
        draw(&path);
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn confusion_cells_are_shaded_by_row_share() {
        let text = svg("confusion", |p| confusion_matrix(&["a", "b"], &[vec![9, 1], vec![0, 5]], p, "t").unwrap());
        // 255 − 200·share per cell: 90 % → 75, 10 % → 235, 0 % → 255 (white), 100 % → 55.
        for fill in ["#4B4BFF", "#EBEBFF", "#FFFFFF", "#3737FF"] {
            assert!(text.contains(fill), "{fill} missing");
        }
        assert!(confusion_matrix(&["a"], &[vec![1, 2]], Path::new("x.svg"), "t").is_err());
    }

    #[test]
    fn reliability_bars_stand_at_the_bin_accuracy() {
        let (_, bins) = crate::eval::metrics::ece(&[0.95, 0.95, 0.15], &[true, false, false]).unwrap();
        let text = svg("reliability", |p| reliability(&bins, p, "t").unwrap());
        let bars: Vec<&str> = text.lines().filter(|l| l.contains("<rect") && l.contains("#5A78DC")).collect();
        // Bins 1 (accuracy 0) and 9 (accuracy 0.5) hold samples: bin 9's bar rises from y = 450 to 450 − 0.5·400.
        assert_eq!(bars.len(), 2, "{bars:?}");
        assert!(bars.iter().any(|b| b.contains(r#"x="421""#) && b.contains(r#"y="250""#)), "{bars:?}");
        // The eight empty bins are grey full-height bars.
        let empty = text.lines().filter(|l| l.contains("<rect") && l.contains("#E1E1E1") && l.contains(r#"y="50""#));
        assert_eq!(empty.count(), 8);
    }
}
