//! The loss curve of a run as an SVG (plotters, SVG backend only: no fonts or bitmaps to build).
use std::path::Path;

use plotters::prelude::*;

use crate::trainer::StepMetrics;

/// A named curve: label, colour and the value it plots.
type Series = (&'static str, RGBColor, Box<dyn Fn(&StepMetrics) -> f64>);

/// Draws total, LM and concept losses against the optimizer step.
pub fn loss_curve(metrics: &[StepMetrics], path: &Path, title: &str) -> Result<(), String> {
    if metrics.is_empty() {
        return Err("no steps to plot".into());
    }
    let series: [Series; 3] = [
        ("total", BLACK, Box::new(|m| m.loss)),
        ("LM", BLUE, Box::new(|m| m.lm_loss)),
        ("concept CE", RED, Box::new(|m| m.ce_level + m.ce_type)),
    ];
    let max = metrics.iter().flat_map(|m| series.iter().map(move |s| (s.2)(m))).fold(0.0f64, f64::max).max(1e-6);
    let last = metrics.last().map_or(1, |m| m.step);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(1..last.max(2), 0.0..max * 1.05)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("optimizer step").y_desc("loss").draw().map_err(|e| err(&e))?;
    for (name, colour, value) in &series {
        if metrics.iter().all(|m| value(m) == 0.0) {
            continue;
        }
        chart
            .draw_series(LineSeries::new(metrics.iter().map(|m| (m.step, value(m))), colour))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw().map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// Draws a confusion matrix (rows: true class, columns: predicted class) as an SVG heat map with counts.
pub fn confusion_matrix(labels: &[&str], counts: &[Vec<usize>], path: &Path, title: &str) -> Result<(), String> {
    let n = labels.len();
    if counts.len() != n || counts.iter().any(|r| r.len() != n) {
        return Err(format!("a {n}×{n} matrix is needed"));
    }
    let cell = 110i32;
    let (left, top) = (150i32, 70i32);
    let size = ((left + cell * n as i32 + 20) as u32, (top + cell * n as i32 + 60) as u32);
    let root = SVGBackend::new(path, size).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let style = ("sans-serif", 16).into_font();
    root.draw_text(title, &("sans-serif", 20).into_font().color(&BLACK), (12, 12)).map_err(|e| err(&e))?;
    root.draw_text("predicted →", &style.color(&BLACK), (left, top - 24)).map_err(|e| err(&e))?;
    for (r, row) in counts.iter().enumerate() {
        let total = row.iter().sum::<usize>().max(1) as f64;
        let y = top + cell * r as i32;
        root.draw_text(labels[r], &style.color(&BLACK), (12, y + cell / 2 - 8)).map_err(|e| err(&e))?;
        for (c, &count) in row.iter().enumerate() {
            let x = left + cell * c as i32;
            let shade = 255 - (200.0 * count as f64 / total) as u8;
            root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], RGBColor(shade, shade, 255).filled()))
                .map_err(|e| err(&e))?;
            root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], BLACK)).map_err(|e| err(&e))?;
            root.draw_text(&count.to_string(), &style.color(&BLACK), (x + cell / 2 - 8, y + cell / 2 - 8))
                .map_err(|e| err(&e))?;
        }
    }
    for (c, label) in labels.iter().enumerate() {
        let x = left + cell * c as i32 + 8;
        root.draw_text(label, &style.color(&BLACK), (x, top + cell * n as i32 + 10)).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}

/// The confusion matrix as a PNG (grid, shades and counts drawn with the 8×8 bitmap font; no font files needed).
pub fn confusion_matrix_png(labels: &[&str], counts: &[Vec<usize>], path: &Path, title: &str) -> Result<(), String> {
    use image::{Rgb, RgbImage};

    use crate::data::demo::draw_text;
    let n = labels.len();
    if counts.len() != n || counts.iter().any(|r| r.len() != n) {
        return Err(format!("a {n}×{n} matrix is needed"));
    }
    let (cell, left, top) = (130u32, 170u32, 80u32);
    let mut img = RgbImage::from_pixel(left + cell * n as u32 + 20, top + cell * n as u32 + 50, Rgb([255, 255, 255]));
    let black = Rgb([0, 0, 0]);
    draw_text(&mut img, title, (12, 12), 2, black);
    draw_text(&mut img, "predicted ->", (left, top - 24), 2, black);
    for (r, row) in counts.iter().enumerate() {
        let total = row.iter().sum::<usize>().max(1) as f64;
        let y = top + cell * r as u32;
        draw_text(&mut img, labels[r], (12, y + cell / 2 - 8), 2, black);
        for (c, &count) in row.iter().enumerate() {
            let x = left + cell * c as u32;
            let shade = 255 - (200.0 * count as f64 / total) as u8;
            for (px, py) in (x..x + cell).flat_map(|px| (y..y + cell).map(move |py| (px, py))) {
                let edge = px == x || py == y || px == x + cell - 1 || py == y + cell - 1;
                img.put_pixel(px, py, if edge { black } else { Rgb([shade, shade, 255]) });
            }
            draw_text(&mut img, &count.to_string(), (x + cell / 2 - 12, y + cell / 2 - 8), 2, black);
        }
    }
    for (c, label) in labels.iter().enumerate() {
        draw_text(&mut img, label, (left + cell * c as u32 + 8, top + cell * n as u32 + 12), 1, black);
    }
    img.save(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A reliability diagram as a PNG: one bar per confidence bin at the bin's accuracy (grey where the bin is empty),
/// the diagonal of perfect calibration, and each bin's mean confidence as a red tick.
pub fn reliability_png(bins: &[crate::eval::ReliabilityBin], path: &Path, title: &str) -> Result<(), String> {
    use image::{Rgb, RgbImage};

    use crate::data::demo::draw_text;
    if bins.is_empty() {
        return Err("no bins to plot".into());
    }
    let (left, top, side) = (60u32, 50u32, 400u32);
    let mut img = RgbImage::from_pixel(left + side + 30, top + side + 60, Rgb([255, 255, 255]));
    let (black, blue, red, grey) = (Rgb([0, 0, 0]), Rgb([90, 120, 220]), Rgb([220, 40, 40]), Rgb([225, 225, 225]));
    draw_text(&mut img, title, (10, 12), 2, black);
    let y_of = |v: f64| top + side - (v.clamp(0.0, 1.0) * side as f64).round() as u32;
    let w = side / bins.len() as u32;
    for (k, b) in bins.iter().enumerate() {
        let x0 = left + k as u32 * w;
        let (colour, height) = if b.count == 0 { (grey, 1.0) } else { (blue, b.accuracy) };
        for x in x0 + 1..x0 + w - 1 {
            for y in y_of(height)..top + side {
                img.put_pixel(x, y, colour);
            }
        }
        if b.count > 0 {
            let y = y_of(b.confidence).min(top + side - 1);
            for x in x0 + 1..x0 + w - 1 {
                img.put_pixel(x, y, red);
            }
        }
    }
    for i in 0..side {
        img.put_pixel(left + i, top + side - i, black);
        img.put_pixel(left, top + i, black);
        img.put_pixel(left + i, top + side, black);
    }
    draw_text(&mut img, "confidence ->", (left + side / 2 - 50, top + side + 12), 1, black);
    draw_text(&mut img, "0", (left - 12, top + side - 4), 1, black);
    draw_text(&mut img, "1", (left - 12, top - 4), 1, black);
    draw_text(&mut img, "bars: accuracy  red: mean confidence", (left, top + side + 32), 1, black);
    img.save(path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_png_shades_by_row_share() {
        let path = std::env::temp_dir().join(format!("psa-confusion-{}.png", std::process::id()));
        confusion_matrix_png(&["a", "b"], &[vec![9, 1], vec![0, 5]], &path, "t").unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (170 + 260 + 20, 80 + 260 + 50));
        let at = |x: u32, y: u32| img.get_pixel(x, y).0[0];
        // Cell (0, 0) holds 90 % of its row, cell (0, 1) 10 %: darker; an empty cell stays white.
        assert!(at(170 + 5, 80 + 5) < at(170 + 130 + 5, 80 + 5));
        assert_eq!(at(170 + 5, 80 + 130 + 5), 255);
        assert!(confusion_matrix_png(&["a"], &[vec![1, 2]], &path, "t").is_err());
    }

    #[test]
    fn reliability_bars_stand_at_the_bin_accuracy() {
        let path = std::env::temp_dir().join(format!("psa-reliability-{}.png", std::process::id()));
        let (_, bins) = crate::eval::metrics::ece(&[0.95, 0.95, 0.15], &[true, false, false]).unwrap();
        reliability_png(&bins, &path, "t").unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let at = |x: u32, y: u32| img.get_pixel(x, y).0;
        // Bin 9 (x 420..460) has accuracy 0.5: blue below y = 250, white above; bin 1 has accuracy 0: no bar.
        assert_eq!(at(440, 300), [90, 120, 220]);
        assert_eq!(at(440, 200), [255, 255, 255]);
        assert_eq!(at(60 + 40 + 20, 440), [255, 255, 255]);
        // Empty bin 5 is a grey full-height bar.
        assert_eq!(at(60 + 200 + 20, 100), [225, 225, 225]);
    }
}
