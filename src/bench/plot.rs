//! `--plot FILE.svg`: the latency distribution of each run (and of the
//! link's round trip) as cumulative curves on a log time axis (plotters,
//! SVG backend: no font files needed).

use std::path::Path;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;

use super::report::{Latency, Report};

/// Writes the plot of `r` to `path` (an .svg file).
pub fn write(r: &Report, path: &Path) -> Result<()> {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("svg") => {}
        _ => {
            bail!("--plot {}: the plot is an SVG image: give a FILE ending in .svg", path.display())
        }
    }
    let mut curves: Vec<(String, &Latency)> = vec![("link RTT".to_string(), &r.link.rtt)];
    for run in &r.runs {
        curves.push((format!("{} QD{}", run.mode, run.queue_depth), &run.latency));
    }
    let ms = |us: f64| (us / 1000.0).max(0.001);
    let lo =
        curves.iter().flat_map(|(_, l)| l.cdf.iter().map(|p| ms(p.1))).fold(f64::MAX, f64::min);
    let hi = curves.iter().flat_map(|(_, l)| l.cdf.iter().map(|p| ms(p.1))).fold(0.0, f64::max);
    let (lo, hi) = if lo <= hi { (lo / 1.5, hi * 1.5) } else { (0.001, 1.0) };
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).context("drawing the plot")?;
    let title = format!(
        "twinblock bench: {} {} -> {} (write latency distribution)",
        r.resource, r.node, r.peer
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..100.0)
        .context("drawing the plot")?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("percentile")
        .draw()
        .context("drawing the plot")?;
    let colors = [BLACK, RED, MAGENTA, BLUE, CYAN, GREEN, RGBColor(200, 120, 0)];
    for (i, (name, l)) in curves.iter().enumerate() {
        let c = colors[i % colors.len()];
        let style = if i == 0 { c.stroke_width(3) } else { c.stroke_width(2) };
        chart
            .draw_series(LineSeries::new(l.cdf.iter().map(|&(p, us)| (ms(us), p)), style))
            .context("drawing the plot")?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .context("drawing the plot")?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
