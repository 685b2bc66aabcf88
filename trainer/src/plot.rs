//! Loss-curve PNG (plotters, bitmap backend, no fonts needed): training loss
//! (light: raw, dark: moving average) and the periodic valid loss (red) against
//! the step; y from 0 to the first losses. Values are in `train_log.csv`.

use crate::train::LogRow;
use crate::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

/// Draws the curve into `path` (atomically).
pub fn loss_curve(path: &Path, rows: &[LogRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let err = |e: String| Error::Plot { path: path.to_path_buf(), msg: e };
    crate::fsio::write_atomic_with(path, |tmp| {
        let root = BitMapBackend::new(tmp, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let x_max = rows.last().map_or(1, |r| r.step).max(1) as f64;
        let y_max = rows.iter().take(5).map(|r| r.loss).fold(0.0, f64::max).max(0.1) * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(|e| err(e.to_string()))?;
        // Grid: a line per unit of loss and per tenth of the run.
        let grey = RGBColor(220, 220, 220);
        for k in 0..=(y_max as usize) {
            let y = k as f64;
            chart.draw_series(LineSeries::new([(0.0, y), (x_max, y)], &grey)).map_err(|e| err(e.to_string()))?;
        }
        for k in 0..=10 {
            let x = x_max * k as f64 / 10.0;
            chart.draw_series(LineSeries::new([(x, 0.0), (x, y_max)], &grey)).map_err(|e| err(e.to_string()))?;
        }
        let raw = rows.iter().map(|r| (r.step as f64, r.loss.min(y_max)));
        chart.draw_series(LineSeries::new(raw, &RGBColor(160, 180, 230))).map_err(|e| err(e.to_string()))?;
        let w = (rows.len() / 50).max(1);
        let smooth: Vec<(f64, f64)> = (0..rows.len())
            .map(|i| {
                let lo = i.saturating_sub(w);
                let s: f64 = rows[lo..=i].iter().map(|r| r.loss).sum();
                (rows[i].step as f64, (s / (i - lo + 1) as f64).min(y_max))
            })
            .collect();
        chart.draw_series(LineSeries::new(smooth, BLUE.stroke_width(2))).map_err(|e| err(e.to_string()))?;
        let valid: Vec<(f64, f64)> =
            rows.iter().filter_map(|r| r.valid_loss.map(|v| (r.step as f64, v.min(y_max)))).collect();
        chart.draw_series(LineSeries::new(valid.clone(), RED.stroke_width(2))).map_err(|e| err(e.to_string()))?;
        chart.draw_series(valid.iter().map(|&p| Circle::new(p, 3, RED.filled()))).map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))
    })
}
