//! The experiment's PNG charts (plotters, bitmap backend): BPB per method,
//! the tokenizer comparison and the recipe training curves.

use super::MethodResult;
use plotters::prelude::*;
use std::path::Path;

pub(super) fn charts(out: &Path, rs: &[MethodResult]) -> std::result::Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let get = |m: &str| rs.iter().find(|r| r.method == m);
    let blue = RGBColor(60, 110, 200);
    let orange = RGBColor(240, 140, 40);
    // bpb.png
    {
        let methods = ["base", "expand", "finetune", "lora", "separate", "separate-deep", "joint"];
        let vals: Vec<(Option<f64>, Option<f64>)> = methods
            .iter()
            .map(|m| {
                get(m).map_or((None, None), |r| (r.story.as_ref().map(|d| d.bpb), r.recipe.as_ref().map(|d| d.bpb)))
            })
            .collect();
        let ymax = vals.iter().flat_map(|(a, b)| [a, b]).filter_map(|v| *v).fold(0.1, f64::max) * 1.1;
        let p = out.join("bpb.png");
        let root = BitMapBackend::new(&p, (800, 450)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut ch = ChartBuilder::on(&root)
            .margin(20)
            .build_cartesian_2d(0f64..methods.len() as f64, 0f64..ymax)
            .map_err(|x| e(&x))?;
        for k in 0..=(ymax * 2.0) as usize {
            let y = k as f64 / 2.0;
            ch.draw_series(LineSeries::new([(0.0, y), (methods.len() as f64, y)], RGBColor(220, 220, 220)))
                .map_err(|x| e(&x))?;
        }
        for (i, (s, r)) in vals.iter().enumerate() {
            let x = i as f64;
            if let Some(s) = s {
                ch.draw_series([Rectangle::new([(x + 0.1, 0.0), (x + 0.45, *s)], blue.filled())]).map_err(|x| e(&x))?;
            }
            if let Some(r) = r {
                ch.draw_series([Rectangle::new([(x + 0.55, 0.0), (x + 0.9, *r)], orange.filled())])
                    .map_err(|x| e(&x))?;
            }
        }
        if let Some(b) = get("base").and_then(|r| r.story.as_ref()) {
            ch.draw_series(DashedLineSeries::new([(0.0, b.bpb), (methods.len() as f64, b.bpb)], 6, 4, BLACK.into()))
                .map_err(|x| e(&x))?;
        }
        root.present().map_err(|x| e(&x))?;
    }
    // tokenizers.png
    {
        let bars = |m: [&str; 3], story: bool| -> Vec<Option<f64>> {
            m.iter()
                .map(|x| get(x).and_then(|r| if story { r.story.as_ref() } else { r.recipe.as_ref() }).map(|d| d.bpb))
                .collect()
        };
        let groups = [
            bars(["base", "story-generic", "story-generic-eq"], true),
            bars(["separate", "recipe-generic", "recipe-generic-eq"], false),
        ];
        let ymax = groups.iter().flatten().filter_map(|v| *v).fold(0.1, f64::max) * 1.1;
        let p = out.join("tokenizers.png");
        let root = BitMapBackend::new(&p, (500, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut ch = ChartBuilder::on(&root).margin(20).build_cartesian_2d(0f64..2.0, 0f64..ymax).map_err(|x| e(&x))?;
        let colors = [blue, orange, RGBColor(150, 150, 150)];
        for (i, g) in groups.iter().enumerate() {
            for (k, v) in g.iter().enumerate() {
                if let Some(v) = v {
                    let x = i as f64 + 0.08 + k as f64 * 0.28;
                    ch.draw_series([Rectangle::new([(x, 0.0), (x + 0.25, *v)], colors[k].filled())])
                        .map_err(|x| e(&x))?;
                }
            }
        }
        root.present().map_err(|x| e(&x))?;
    }
    // curves.png
    {
        let series = [
            ("expand", RGBColor(220, 40, 40)),
            ("finetune", RGBColor(40, 80, 220)),
            ("lora", RGBColor(40, 160, 60)),
            ("separate", RGBColor(0, 0, 0)),
        ];
        let xmax = series.iter().filter_map(|(m, _)| get(m)).map(|r| r.losses.len()).max().unwrap_or(1).max(1) as f64;
        let ymax = series
            .iter()
            .filter_map(|(m, _)| get(m))
            .flat_map(|r| r.losses.iter().take(5).map(|l| l.1))
            .fold(1.0, f64::max)
            * 1.05;
        let p = out.join("curves.png");
        let root = BitMapBackend::new(&p, (800, 450)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut ch =
            ChartBuilder::on(&root).margin(20).build_cartesian_2d(0f64..xmax, 0f64..ymax).map_err(|x| e(&x))?;
        for (m, c) in series {
            if let Some(r) = get(m) {
                let w = 10usize;
                let pts: Vec<(f64, f64)> = (0..r.losses.len())
                    .map(|i| {
                        let lo = i.saturating_sub(w);
                        let s: f64 = r.losses[lo..=i].iter().map(|l| l.1).sum();
                        (r.losses[i].0 as f64, (s / (i - lo + 1) as f64).min(ymax))
                    })
                    .collect();
                ch.draw_series(LineSeries::new(pts, c.stroke_width(2))).map_err(|x| e(&x))?;
            }
        }
        root.present().map_err(|x| e(&x))?;
    }
    Ok(())
}
