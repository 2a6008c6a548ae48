//! `tandem sim failures --plot FILE.svg`: the probability of having lost data by each day of the horizon, one line per scenario.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::failures::FailureReport;

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// The empirical CDF of the first loss: the share of trials that lost data by day `d`.
pub fn loss_curve(times_s: &[f64], trials: u32, horizon_s: f64, points: usize) -> Vec<(f64, f64)> {
    let mut sorted = times_s.to_vec();
    sorted.sort_by(f64::total_cmp);
    (0..=points)
        .map(|i| {
            let t = horizon_s * i as f64 / points as f64;
            let k = sorted.partition_point(|&x| x <= t);
            (t / 86_400.0, k as f64 / trials.max(1) as f64)
        })
        .collect()
}

pub fn write_svg(report: &FailureReport, path: &Path) -> Result<()> {
    let draw = |e: &dyn std::fmt::Display| Error::Invalid(format!("plot {}: {e}", path.display()));
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let horizon_days = report.input.horizon_s / 86_400.0;
    let curves: Vec<(String, Vec<(f64, f64)>)> = report
        .scenarios
        .iter()
        .map(|s| {
            (
                format!("{} (R={}, {} hosts)", s.label, s.replicas, s.hosts),
                loss_curve(
                    &s.loss_times_s,
                    report.input.trials,
                    report.input.horizon_s,
                    200,
                ),
            )
        })
        .collect();
    let top = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(0.01)
        * 1.1;
    let title = format!(
        "P(data lost) over time: {} nodes, {} trials",
        report.input.nodes, report.input.trials
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..horizon_days, 0.0..top.min(1.0))
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .x_desc("days")
        .y_desc("share of trials that lost data")
        .draw()
        .map_err(|e| draw(&e))?;
    for (i, (label, curve)) in curves.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(curve, color.stroke_width(2)))
            .map_err(|e| draw(&e))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::MiddleRight)
        .draw()
        .map_err(|e| draw(&e))?;
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_curve_is_the_empirical_cdf() {
        let day = 86_400.0;
        let c = loss_curve(&[2.0 * day, 1.0 * day], 4, 4.0 * day, 4);
        assert_eq!(
            c,
            vec![(0.0, 0.0), (1.0, 0.25), (2.0, 0.5), (3.0, 0.5), (4.0, 0.5)]
        );
    }
}
