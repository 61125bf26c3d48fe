//! Training curves: `metrics.jsonl` of a run folder (one JSON object per log step, written
//! by `train`) drawn as loss, mse and v-loss against step on a log scale, into a PNG.
//!
//! Drawn with `plotters` into an RGB buffer (bitmap backend) and encoded with `image`.
//! Text uses plotters' `ab_glyph` renderer with DejaVu Sans embedded from the `dejavu`
//! crate: no system fonts or fontconfig are needed.
use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::error::{Error, Result};

/// One logged step.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsPoint {
    pub step: u64,
    pub loss: f64,
    pub mse: f64,
    pub v_loss: f64,
}

/// Reads a `metrics.jsonl`. Lines of skipped (non-finite) steps are left out; a line that
/// is not a JSON object with `step`, `loss`, `mse` and `v_loss` is an error naming the file
/// and line. An empty log is an error.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsPoint>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read the metrics log: {e}")))?;
    let mut points = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: &str| Error::file(path, format!("line {}: {m}", i + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&format!("not JSON ({e})")))?;
        if v.get("skipped").and_then(|s| s.as_bool()) == Some(true) {
            continue;
        }
        let num = |k: &str| v.get(k).and_then(|x| x.as_f64()).ok_or_else(|| bad(&format!("no number {k:?}")));
        let step = v.get("step").and_then(|x| x.as_u64()).ok_or_else(|| bad("no integer \"step\""))?;
        points.push(MetricsPoint { step, loss: num("loss")?, mse: num("mse")?, v_loss: num("v_loss")? });
    }
    if points.is_empty() {
        return Err(Error::file(path, "no logged steps to plot"));
    }
    Ok(points)
}

/// A curve: its legend name, colour and (step, value) points.
type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

fn register_font() {
    static FONT: Once = Once::new();
    FONT.call_once(|| {
        // DejaVu Sans is a valid TrueType font: registration cannot fail.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws loss, mse and v-loss against step (log y; non-positive values left out) into a
/// `width` x `height` PNG at `out`.
pub fn plot_metrics(points: &[MetricsPoint], title: &str, out: &Path, (width, height): (u32, u32)) -> Result<()> {
    register_font();
    let err = |e: &dyn std::fmt::Display| Error::file(out, format!("plotting failed: {e}"));
    let series: [Series; 3] = [
        ("loss", RGBColor(31, 119, 180), points.iter().map(|p| (p.step as f64, p.loss)).collect()),
        ("mse", RGBColor(255, 127, 14), points.iter().map(|p| (p.step as f64, p.mse)).collect()),
        ("v-loss", RGBColor(44, 160, 44), points.iter().map(|p| (p.step as f64, p.v_loss)).collect()),
    ];
    let ys = || series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).filter(|y| y.is_finite() && *y > 0.0);
    let (ymin, ymax) = (ys().fold(f64::INFINITY, f64::min), ys().fold(0.0, f64::max));
    if !ymin.is_finite() {
        return Err(Error::file(out, "no positive finite loss values to plot on a log scale"));
    }
    let (ymin, ymax) = (ymin / 1.2, ymax * 1.2);
    let x0 = points.iter().map(|p| p.step).min().unwrap_or(0) as f64;
    let x1 = (points.iter().map(|p| p.step).max().unwrap_or(1) as f64).max(x0 + 1.0);

    let mut buf = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, (ymin..ymax).log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss (log scale)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.3}"))
            .draw()
            .map_err(|e| err(&e))?;
        for (name, color, data) in &series {
            let data: Vec<(f64, f64)> = data.iter().copied().filter(|(_, y)| y.is_finite() && *y > 0.0).collect();
            let color = *color;
            chart
                .draw_series(LineSeries::new(data, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    image::RgbImage::from_raw(width, height, buf)
        .expect("buffer of width x height x 3")
        .save_with_format(out, image::ImageFormat::Png)
        .map_err(|e| Error::file(out, format!("cannot write PNG: {e}")))
}

/// `meanflow plot RUN_DIR`: reads `RUN_DIR/metrics.jsonl`, writes `out` (default
/// `RUN_DIR/metrics.png`), 900 x 540. Returns the PNG path and the number of points.
pub fn plot_run(run_dir: &Path, out: Option<&Path>) -> Result<(std::path::PathBuf, usize)> {
    let metrics = run_dir.join("metrics.jsonl");
    let points = read_metrics(&metrics)?;
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| run_dir.join("metrics.png"));
    let title = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| run_dir.display().to_string());
    plot_metrics(&points, &title, &out, (900, 540))?;
    Ok((out, points.len()))
}
