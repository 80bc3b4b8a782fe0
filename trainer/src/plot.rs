//! `metrics.svg`: the run's loss and kNN top-1 per epoch, redrawn after every epoch, so a run
//! can be looked at in any browser without Python. Plain SVG (lines and text), no fonts or
//! plotting library needed.

use crate::metrics::EpochMetrics;
use anyhow::Result;
use std::fmt::Write;
use std::path::Path;

/// Size of the whole figure, in SVG pixels.
pub const WIDTH: u32 = 900;
pub const HEIGHT: u32 = 360;

/// Writes the two panels (loss, kNN top-1 %) of `rows` to `path`, atomically.
pub fn write_metrics_svg(path: &Path, rows: &[EpochMetrics]) -> Result<()> {
    let loss: Vec<(f64, f64)> = rows.iter().map(|r| (r.epoch as f64, r.loss)).collect();
    let knn: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.knn_top1.is_finite())
        .map(|r| (r.epoch as f64, 100.0 * r.knn_top1))
        .collect();
    let mut svg = String::new();
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    )?;
    writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#)?;
    let half = WIDTH as f64 / 2.0;
    panel(
        &mut svg,
        0.0,
        "training loss",
        &loss,
        "#1f77b4",
        "no epoch yet",
    )?;
    panel(
        &mut svg,
        half,
        "kNN top-1 (%)",
        &knn,
        "#d62728",
        "no kNN monitor (no labelled split, or knn.every = 0)",
    )?;
    svg.push_str("</svg>\n");
    crate::records::write_atomically(path, svg.as_bytes())
}

/// One panel at horizontal offset `x0`: frame, axis ranges, the line and its points.
fn panel(
    svg: &mut String,
    x0: f64,
    title: &str,
    points: &[(f64, f64)],
    colour: &str,
    empty: &str,
) -> Result<()> {
    let (left, right) = (x0 + 60.0, x0 + WIDTH as f64 / 2.0 - 20.0);
    let (top, bottom) = (40.0, HEIGHT as f64 - 40.0);
    writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="14">{title}</text>"#,
        (left + right) / 2.0
    )?;
    writeln!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        right - left,
        bottom - top
    )?;
    if points.is_empty() {
        writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#888">{empty}</text>"##,
            (left + right) / 2.0,
            (top + bottom) / 2.0
        )?;
        return Ok(());
    }
    let range = |values: Vec<f64>| {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // A flat line (one epoch) still needs a span to be drawn in.
        let pad = if hi > lo {
            0.05 * (hi - lo)
        } else {
            lo.abs().max(1.0) * 0.05
        };
        (lo - pad, hi + pad)
    };
    let (x_lo, x_hi) = match points.len() {
        1 => (points[0].0 - 1.0, points[0].0 + 1.0),
        _ => (points[0].0, points[points.len() - 1].0),
    };
    let (y_lo, y_hi) = range(points.iter().map(|p| p.1).collect());
    let to_x = |x: f64| left + (x - x_lo) / (x_hi - x_lo) * (right - left);
    let to_y = |y: f64| bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top);
    let line: Vec<String> = points
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", to_x(x), to_y(y)))
        .collect();
    writeln!(
        svg,
        r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
        line.join(" ")
    )?;
    for &(x, y) in points {
        writeln!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}"/>"#,
            to_x(x),
            to_y(y)
        )?;
    }
    // Axis labels: the value range on the left, the epochs below.
    for (y, anchor_y) in [(y_hi, top + 4.0), (y_lo, bottom)] {
        writeln!(
            svg,
            r#"<text x="{}" y="{anchor_y}" text-anchor="end">{}</text>"#,
            left - 6.0,
            short(y)
        )?;
    }
    let (first, last) = (points[0].0, points[points.len() - 1].0);
    writeln!(
        svg,
        r#"<text x="{left}" y="{}" text-anchor="start">epoch {first}</text>"#,
        bottom + 16.0
    )?;
    if points.len() > 1 {
        writeln!(
            svg,
            r#"<text x="{right}" y="{}" text-anchor="end">epoch {last}</text>"#,
            bottom + 16.0
        )?;
    }
    let (_, latest) = points[points.len() - 1];
    writeln!(
        svg,
        r#"<text x="{right}" y="{}" text-anchor="end" fill="{colour}">last: {}</text>"#,
        top - 6.0,
        short(latest)
    )?;
    Ok(())
}

/// Four significant digits, as a person reads an axis.
fn short(value: f64) -> String {
    if value != 0.0 && (value.abs() < 1e-2 || value.abs() >= 1e5) {
        format!("{value:.3e}")
    } else {
        let decimals = (3 - value.abs().log10().floor() as i32).clamp(0, 4) as usize;
        format!("{value:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(epoch: usize, loss: f64, knn: f64) -> EpochMetrics {
        EpochMetrics {
            epoch,
            loss,
            z_std: 0.05,
            knn_top1: knn,
            pairs_per_s: 10.0,
            seconds: 1.0,
        }
    }

    #[test]
    fn draws_one_point_per_epoch_in_each_panel() {
        let dir = tempfile_dir();
        let path = dir.join("metrics.svg");
        let rows = [row(1, 5.0, 0.2), row(2, 4.5, 0.25), row(3, 4.2, 0.3)];
        write_metrics_svg(&path, &rows).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with(&format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}""#
        )));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 6);
        assert!(svg.contains("last: 4.200"), "{svg}");
        assert!(svg.contains("last: 30.00"), "{svg}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn says_when_there_is_no_knn() {
        let dir = tempfile_dir();
        let path = dir.join("metrics.svg");
        write_metrics_svg(&path, &[row(1, 5.0, f64::NAN)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("no kNN monitor"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "plot-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
