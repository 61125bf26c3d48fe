//! `meanflow plot`: training curves from a run's metrics.jsonl into a PNG.
use std::path::Path;

use meanflow::plot::{plot_run, read_metrics, MetricsPoint};

fn write_metrics(dir: &Path, lines: &[String]) {
    std::fs::write(dir.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
}

/// 40 log lines as `train` writes them, plus one skipped step.
fn metrics_lines() -> Vec<String> {
    let mut lines: Vec<String> = (1..=40)
        .map(|i| {
            let s = i as f64 * 25.0;
            serde_json::json!({
                "step": i * 25, "loss": 3.0 * (-s / 400.0).exp() + 0.2, "mse": 2.0 * (-s / 300.0).exp() + 0.4,
                "v_loss": (-s / 500.0).exp() + 0.05, "grad_norm": 1.0, "lr": 1e-4, "steps_per_s": 10.0, "elapsed_s": s / 10.0,
            })
            .to_string()
        })
        .collect();
    lines.insert(10, serde_json::json!({"step": 263, "skipped": true, "reason": "non-finite loss"}).to_string());
    lines
}

#[test]
fn plot_draws_the_three_curves() {
    let tmp = tempfile::tempdir().unwrap();
    write_metrics(tmp.path(), &metrics_lines());
    let points = read_metrics(&tmp.path().join("metrics.jsonl")).unwrap();
    assert_eq!(points.len(), 40, "the skipped step is left out");
    assert_eq!(points[0], MetricsPoint { step: 25, loss: 3.0 * (-25.0f64 / 400.0).exp() + 0.2, mse: 2.0 * (-25.0f64 / 300.0).exp() + 0.4, v_loss: (-25.0f64 / 500.0).exp() + 0.05 });

    let (png, n) = plot_run(tmp.path(), None).unwrap();
    assert_eq!((png, n), (tmp.path().join("metrics.png"), 40));
    let img = image::open(tmp.path().join("metrics.png")).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (900, 540));
    let first = *img.get_pixel(0, 0);
    assert!(img.pixels().any(|p| *p != first), "the image is one colour");
    // Each series' colour is drawn (its line and legend), and text is rendered (dark grey
    // anti-aliased glyph pixels besides pure black).
    for (name, rgb) in [("loss", [31, 119, 180]), ("mse", [255, 127, 14]), ("v-loss", [44, 160, 44])] {
        let count = img.pixels().filter(|p| p.0 == rgb).count();
        assert!(count > 200, "{name}: {count} pixels of {rgb:?}");
    }
    let grey = img.pixels().filter(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2] && p.0[0] > 20 && p.0[0] < 160).count();
    assert!(grey > 100, "anti-aliased text pixels: {grey}");

    // --out elsewhere, into a folder that does not exist yet.
    let out = tmp.path().join("figs/curves.png");
    plot_run(tmp.path(), Some(&out)).unwrap();
    assert_eq!(image::open(&out).unwrap().width(), 900);
}

#[test]
fn bad_metrics_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let e = plot_run(tmp.path(), None).err().unwrap().to_string();
    assert!(e.contains("metrics.jsonl") && e.contains("cannot read"), "{e}");
    let mut lines = metrics_lines();
    lines[2] = "{\"step\": 75, \"loss\": 0.5".into(); // cut mid-line
    write_metrics(tmp.path(), &lines);
    let e = plot_run(tmp.path(), None).err().unwrap().to_string();
    assert!(e.contains("metrics.jsonl") && e.contains("line 3") && e.contains("not JSON"), "{e}");
    lines[2] = "{\"step\": 75, \"loss\": 0.5}".into(); // no mse
    write_metrics(tmp.path(), &lines);
    let e = plot_run(tmp.path(), None).err().unwrap().to_string();
    assert!(e.contains("line 3") && e.contains("\"mse\""), "{e}");
    write_metrics(tmp.path(), &[]);
    let e = plot_run(tmp.path(), None).err().unwrap().to_string();
    assert!(e.contains("metrics.jsonl") && e.contains("no logged steps"), "{e}");
    assert!(!tmp.path().join("metrics.png").exists());
}
