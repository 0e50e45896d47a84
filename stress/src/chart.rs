//! `--svg`: delivery latency percentiles and throughput over time, one SVG.
//!
//! Top: switchboard's p50, p99 and p99.9 per half second (log scale), with the baselines'
//! p99 beside it. Bottom: prompt receipts per second for every contender. Scenario names
//! mark where each began.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::timeline::{Point, PERIOD};

const SIZE: (u32, u32) = (1200, 800);

/// A latency line: label, the percentile it plots, colour, stroke width.
type Line = (&'static str, fn(&Point) -> f64, RGBAColor, u32);

fn colour(contender: &str) -> RGBColor {
    match contender {
        "switchboard" => RGBColor(31, 119, 180),
        "dashmap" => RGBColor(214, 39, 40),
        "mutex" => RGBColor(255, 127, 14),
        _ => RGBColor(127, 127, 127),
    }
}

/// Splits one contender's points into runs without gaps, so lines do not bridge the time
/// another contender had the machine.
fn segments<'a>(points: &'a [Point], contender: &str) -> Vec<Vec<&'a Point>> {
    let gap = PERIOD.as_secs_f64() * 1.6;
    let mut out: Vec<Vec<&Point>> = Vec::new();
    let mut last: Option<(f64, &str)> = None;
    for p in points.iter().filter(|p| p.contender == contender) {
        let joins = last.is_some_and(|(t, s)| p.t - t <= gap && s == p.scenario);
        if !joins {
            out.push(Vec::new());
        }
        if let Some(seg) = out.last_mut() {
            seg.push(p);
        }
        last = Some((p.t, p.scenario));
    }
    out
}

/// Draws one series as dots joined by lines, segment by segment; labels the first segment.
fn series<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, impl Ranged<ValueType = f64>>>,
    segs: Vec<Vec<&Point>>,
    at: impl Fn(&Point) -> (f64, f64),
    style: ShapeStyle,
    label: &str,
) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("drawing: {e}");
    for (i, seg) in segs.into_iter().enumerate() {
        chart
            .draw_series(seg.iter().map(|p| Circle::new(at(p), 2, style.filled())))
            .map_err(|e| fail(&e))?;
        let line = chart
            .draw_series(LineSeries::new(seg.iter().map(|p| at(p)), style))
            .map_err(|e| fail(&e))?;
        if i == 0 {
            line.label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
    }
    Ok(())
}

/// Draws `points` into `path`.
///
/// # Errors
///
/// A description of what failed (creating the file, or drawing).
pub fn draw(points: &[Point], path: &Path, title: &str) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| fail(&e))?;
    let (top, bottom) = root.split_vertically(SIZE.1 / 2 - 10);
    let t_max = points.iter().map(|p| p.t).fold(1.0, f64::max);

    let lat_max = points.iter().map(|p| p.latency.p999).fold(10.0, f64::max) * 1.5;
    let lat_min = (points
        .iter()
        .map(|p| p.latency.p50)
        .fold(f64::INFINITY, f64::min)
        / 2.0)
        .clamp(0.1, 10.0);
    let mut chart = ChartBuilder::on(&top)
        .caption("delivery latency (µs, log scale)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, (lat_min..lat_max).log_scale())
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("µs")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| fail(&e))?;
    let sb = colour("switchboard");
    let lines: [Line; 3] = [
        ("switchboard p50", |p| p.latency.p50, sb.mix(0.45), 1),
        ("switchboard p99", |p| p.latency.p99, sb.mix(0.8), 2),
        ("switchboard p99.9", |p| p.latency.p999, sb.mix(1.0), 1),
    ];
    for (label, value, style, width) in lines {
        let at = |p: &Point| (p.t, value(p).max(lat_min));
        let segs = segments(points, "switchboard");
        series(&mut chart, segs, at, style.stroke_width(width), label)?;
    }
    for who in ["dashmap", "mutex", "floor"] {
        let at = |p: &Point| (p.t, p.latency.p99.max(lat_min));
        let style = colour(who).mix(0.7).stroke_width(1);
        series(
            &mut chart,
            segments(points, who),
            at,
            style,
            &format!("{who} p99"),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;

    let rate_max = points.iter().map(|p| p.rate).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("prompt receipts per second", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..rate_max)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("messages/s")
        .y_label_formatter(&|v| format!("{:.1}M", v / 1e6))
        .draw()
        .map_err(|e| fail(&e))?;
    for who in ["switchboard", "dashmap", "mutex", "floor"] {
        let style = colour(who).stroke_width(1);
        series(
            &mut chart,
            segments(points, who),
            |p| (p.t, p.rate),
            style,
            who,
        )?;
    }
    let mut last = "";
    for p in points {
        if p.scenario != last {
            last = p.scenario;
            chart
                .draw_series(std::iter::once(Text::new(
                    p.scenario,
                    (p.t, rate_max * 0.97),
                    ("sans-serif", 13),
                )))
                .map_err(|e| fail(&e))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::Percentiles;

    fn point(t: f64, contender: &'static str) -> Point {
        Point {
            t,
            scenario: "s",
            contender,
            latency: Percentiles {
                count: 1,
                p50: 1.0,
                p99: 2.0,
                p999: 3.0,
                max: 4.0,
            },
            rate: 100.0,
        }
    }

    #[test]
    fn segments_break_at_gaps() {
        let pts = vec![
            point(0.5, "switchboard"),
            point(1.0, "switchboard"),
            point(1.5, "dashmap"),
            point(5.0, "switchboard"),
        ];
        let segs = segments(&pts, "switchboard");
        assert_eq!(segs.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
    }

    #[test]
    fn draws_an_svg_file() {
        let dir = std::env::temp_dir().join(format!("stress-chart-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("chart.svg");
        let pts: Vec<_> = (1..10)
            .map(|i| point(f64::from(i) * 0.5, "switchboard"))
            .collect();
        assert_eq!(draw(&pts, &path, "test"), Ok(()));
        let svg = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(svg.contains("<svg") && svg.contains("polyline"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
