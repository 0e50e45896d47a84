//! `--svg`: the comparison a reader came for, in one SVG of four bands.
//!
//! 1. Broadcast cost per recipient against members, log-log, for the floor, switchboard and
//!    the two baselines: warm (solid, dots), burst (thin, triangles) and cold (dashed, crosses).
//! 2. Churn, mixed and memory as bars grouped per design.
//! 3. Every ratio against its target line: a bar per ratio on a log axis, green where the target
//!    is met, red where it is missed, the target a black tick.
//! 4. The soak's delivery latency over time (switchboard's p50, p99, p99.9).
//!
//! A band whose scenario did not run says so instead of drawing nothing.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::{meets, Report, TARGETS};
use crate::timeline::{Point, PERIOD};

const SIZE: (u32, u32) = (1400, 2050);
/// Heights of the first three bands; the soak takes the rest.
const BANDS: [u32; 3] = [640, 420, 560];

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

/// Turns a plotters error into the message `draw` returns.
fn fail(e: &dyn std::fmt::Display) -> String {
    format!("drawing: {e}")
}

/// Draws the report's figures and the soak's `points` into `path`.
///
/// # Errors
///
/// A description of what failed (creating the file, or drawing).
pub fn draw(report: &Report, points: &[Point], path: &Path, title: &str) -> Result<(), String> {
    let base = SVGBackend::new(path, SIZE).into_drawing_area();
    base.fill(&WHITE).map_err(|e| fail(&e))?;
    let root = base
        .titled(title, ("sans-serif", 22))
        .map_err(|e| fail(&e))?;
    let mut y = 0;
    let breaks: Vec<u32> = BANDS
        .iter()
        .map(|h| {
            y += h;
            y
        })
        .collect();
    let bands = root.split_by_breakpoints::<u32, u32, _, _>([], breaks);
    let [cost, bars, ratios, soak] = bands.as_slice() else {
        return Err("drawing: the layout did not split into four bands".into());
    };
    cost_band(cost, report)?;
    bar_band(bars, report)?;
    ratio_band(&base, ratios, report)?;
    soak_band(soak, points)?;
    base.present().map_err(|e| fail(&e))?;
    Ok(())
}

/// Says in `area` that its scenario did not run.
fn absent<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, what: &str) -> Result<(), String> {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        format!("{what}: did not run"),
        (
            i32::try_from(w / 10).unwrap_or(0),
            i32::try_from(h / 2).unwrap_or(0),
        ),
        ("sans-serif", 16),
    ))
    .map_err(|e| fail(&e))
}

/// The three forms of broadcast cost, per recipient, for one contender: `(form, points)`.
type Forms = [(&'static str, Vec<(f64, f64)>); 3];

fn forms(report: &Report, who: &str) -> Forms {
    let rows = report
        .scenarios
        .fanout
        .as_ref()
        .map_or(&[][..], |f| &f.rows[..]);
    let per = |members: usize, ns: Option<f64>| {
        ns.filter(|ns| *ns > 0.0)
            .map(|ns| (members as f64, ns / members.max(1) as f64))
    };
    [
        (
            "warm",
            rows.iter()
                .filter_map(|r| per(r.members, r.cost(who)))
                .collect(),
        ),
        (
            "burst",
            rows.iter()
                .filter_map(|r| per(r.members, r.burst(who)))
                .collect(),
        ),
        (
            "cold",
            rows.iter()
                .filter_map(|r| per(r.members, r.cold(who).map(|c| c.first_ns)))
                .collect(),
        ),
    ]
}

fn cost_band<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    report: &Report,
) -> Result<(), String> {
    let who = crate::scenarios::fanout::CONTENDERS;
    let all: Vec<(&str, Forms)> = who.iter().map(|&w| (w, forms(report, w))).collect();
    let values = all
        .iter()
        .flat_map(|(_, f)| f.iter().flat_map(|(_, p)| p.iter().copied()));
    let (mut x_max, mut y_min, mut y_max) = (0.0f64, f64::INFINITY, 0.0f64);
    for (x, y) in values {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if x_max == 0.0 {
        return absent(area, "fanout");
    }
    let mut chart = ChartBuilder::on(area)
        .caption(
            "broadcast cost per recipient (ns, log-log): warm ●, burst ▲, cold ✕ (dashed)",
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            // Room on the right for the legend, clear of the largest size.
            (5.0..x_max * 15.0).log_scale(),
            (y_min / 1.6..y_max * 1.6).log_scale(),
        )
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("members of the session")
        .y_desc("ns per recipient")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| fail(&e))?;
    for (name, forms) in &all {
        let c = colour(name);
        for (form, pts) in forms {
            if pts.is_empty() {
                continue;
            }
            let label = format!("{name} {form}");
            match *form {
                "warm" => {
                    let style = c.stroke_width(2);
                    chart
                        .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
                        .map_err(|e| fail(&e))?;
                    chart
                        .draw_series(LineSeries::new(pts.iter().copied(), style))
                        .map_err(|e| fail(&e))?
                        .label(label)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
                }
                "burst" => {
                    let style = c.mix(0.8).stroke_width(1);
                    chart
                        .draw_series(pts.iter().map(|&p| TriangleMarker::new(p, 5, c.filled())))
                        .map_err(|e| fail(&e))?;
                    chart
                        .draw_series(LineSeries::new(pts.iter().copied(), style))
                        .map_err(|e| fail(&e))?
                        .label(label)
                        .legend(move |(x, y)| TriangleMarker::new((x + 11, y), 5, style.filled()));
                }
                _ => {
                    let style = c.stroke_width(2);
                    chart
                        .draw_series(pts.iter().map(|&p| Cross::new(p, 5, style)))
                        .map_err(|e| fail(&e))?;
                    chart
                        .draw_series(DashedLineSeries::new(pts.iter().copied(), 8, 6, style))
                        .map_err(|e| fail(&e))?
                        .label(label)
                        .legend(move |(x, y)| Cross::new((x + 11, y), 5, style));
                }
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))
}

/// One bar panel: per design (in order), one bar per series, with the design's name below.
struct Bars<'a> {
    caption: &'a str,
    unit: fn(f64) -> String,
    /// Series names (the caption says which is which), drawn lighter to darker in a group.
    series: &'a [&'a str],
    /// `(design, one value per series)`.
    groups: Vec<(&'static str, Vec<f64>)>,
}

fn bars<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, b: &Bars<'_>) -> Result<(), String> {
    if b.groups.is_empty() {
        return absent(area, b.caption);
    }
    let max = b
        .groups
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0, f64::max)
        .max(1e-9);
    let k = b.groups.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(b.caption, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(5)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..k, -max * 0.14..max * 1.18)
        .map_err(|e| fail(&e))?;
    let unit = b.unit;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_label_formatter(&|v| if *v < 0.0 { String::new() } else { unit(*v) })
        .draw()
        .map_err(|e| fail(&e))?;
    let n = b.series.len() as f64;
    for (g, (design, values)) in b.groups.iter().enumerate() {
        let c = colour(design);
        let x0 = g as f64 + 0.12;
        let w = 0.76 / n;
        for (s, v) in values.iter().enumerate() {
            let shade = if b.series.len() > 1 && s == 0 {
                0.45
            } else {
                1.0
            };
            let left = x0 + w * s as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(left, 0.0), (left + w * 0.94, *v)],
                    c.mix(shade).filled(),
                )))
                .map_err(|e| fail(&e))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    unit(*v),
                    (left, v + max * 0.03),
                    ("sans-serif", 10),
                )))
                .map_err(|e| fail(&e))?;
        }
        chart
            .draw_series(std::iter::once(Text::new(
                *design,
                (x0, -max * 0.09),
                ("sans-serif", 13),
            )))
            .map_err(|e| fail(&e))?;
    }
    Ok(())
}

fn per_s(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else {
        format!("{:.0}k", v / 1e3)
    }
}

fn bytes(v: f64) -> String {
    format!("{v:.0}")
}

fn bar_band<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    report: &Report,
) -> Result<(), String> {
    let panels = area.split_evenly((1, 4));
    let s = &report.scenarios;
    let churn: Vec<_> = crate::scenarios::churn::CONTENDERS
        .iter()
        .filter_map(|&w| {
            let c = s.churn.as_ref()?.contenders.get(w)?;
            Some((w, vec![c.ops_per_s]))
        })
        .collect();
    let mixed = |f: fn(&crate::scenarios::mixed::Mixed) -> f64| -> Vec<_> {
        crate::scenarios::churn::CONTENDERS
            .iter()
            .filter_map(|&w| {
                let m = s.mixed.as_ref()?.contenders.get(w)?;
                Some((w, vec![f(m)]))
            })
            .collect()
    };
    let clients = report.config.memory_clients;
    let memory: Vec<_> = crate::scenarios::memory::CONTENDERS
        .iter()
        .filter_map(|&w| {
            let b = s.memory.as_ref()?.at(w, clients)?;
            Some((w, vec![b.idle_per_client, b.total_per_client]))
        })
        .collect();
    let specs = [
        Bars {
            caption: "churn ops/s (higher is better)",
            unit: per_s,
            series: &["ops"],
            groups: churn,
        },
        Bars {
            caption: "mixed: deliveries/s",
            unit: per_s,
            series: &["delivered"],
            groups: mixed(|m| m.delivered_per_s),
        },
        Bars {
            caption: "mixed: churn ops/s under load",
            unit: per_s,
            series: &["churn"],
            groups: mixed(|m| m.churn_per_s),
        },
        Bars {
            caption: "bytes per client: idle (light) | active (dark); lower is better",
            unit: bytes,
            series: &["idle", "active"],
            groups: memory,
        },
    ];
    for (panel, spec) in panels.iter().zip(&specs) {
        bars(panel, spec)?;
    }
    Ok(())
}

fn ratio_band<DB: DrawingBackend>(
    base: &DrawingArea<DB, Shift>,
    area: &DrawingArea<DB, Shift>,
    report: &Report,
) -> Result<(), String> {
    let mut rows: Vec<(String, Option<f64>, f64, bool)> = report
        .ratios
        .by_key()
        .into_iter()
        .zip(TARGETS)
        .map(|((key, v), (_, target, higher))| (key.to_owned(), v, target, higher))
        .collect();
    rows.push((
        "registry_bytes_per_client / 100".into(),
        report.registry_bytes_per_client.map(|b| b / 100.0),
        crate::report::REGISTRY_BYTES_TARGET / 100.0,
        false,
    ));
    let n = rows.len() as f64;
    let (lo, hi) = (0.1f64, 20.0f64);
    let (left, right) = area.split_horizontally(440);
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "every ratio against its target (black tick); green met, red missed, grey not measured",
            ("sans-serif", 15),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(5)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..n)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc("ratio (log scale)")
        .x_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(|e| fail(&e))?;
    let (_, ys) = chart.plotting_area().get_pixel_range();
    let row_px = f64::from(ys.end - ys.start) / n;
    let (lx, _) = left.get_base_pixel();
    for (i, (key, value, target, higher)) in rows.iter().enumerate() {
        // Row i from the top.
        let y = n - i as f64 - 1.0;
        let met = value.map(|v| meets(v, *target, *higher));
        let fill = match met {
            Some(true) => RGBColor(44, 160, 44),
            Some(false) => RGBColor(214, 39, 40),
            None => RGBColor(190, 190, 190),
        };
        let v = value.unwrap_or(lo * 1.5).clamp(lo, hi);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(lo, y + 0.2), (v, y + 0.8)],
                fill.mix(0.8).filled(),
            )))
            .map_err(|e| fail(&e))?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(*target, y + 0.05), (*target, y + 0.95)],
                BLACK.stroke_width(3),
            )))
            .map_err(|e| fail(&e))?;
        let shown = value.map_or_else(|| "n/a".into(), |v| format!("{v:.2}"));
        chart
            .draw_series(std::iter::once(Text::new(
                shown,
                (v * 1.06, y + 0.35),
                ("sans-serif", 12),
            )))
            .map_err(|e| fail(&e))?;
        let label = format!("{key}  {} {target}", if *higher { "≥" } else { "≤" });
        let py = ys.start + (row_px * (i as f64 + 0.35)) as i32;
        base.draw(&Text::new(label, (lx + 10, py), ("sans-serif", 13)))
            .map_err(|e| fail(&e))?;
    }
    Ok(())
}

fn soak_band<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    points: &[Point],
) -> Result<(), String> {
    let soak: Vec<Point> = points
        .iter()
        .filter(|p| p.scenario == "soak")
        .cloned()
        .collect();
    if soak.is_empty() {
        return absent(area, "soak");
    }
    let t0 = soak.iter().map(|p| p.t).fold(f64::INFINITY, f64::min) - PERIOD.as_secs_f64();
    let t_max = soak.iter().map(|p| p.t - t0).fold(1.0, f64::max);
    let lat_max = soak.iter().map(|p| p.latency.p999).fold(10.0, f64::max) * 1.5;
    let lat_min = (soak
        .iter()
        .map(|p| p.latency.p50)
        .fold(f64::INFINITY, f64::min)
        / 2.0)
        .clamp(0.1, 10.0);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "soak: switchboard delivery latency over time (µs, log scale)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max * 1.02, (lat_min..lat_max).log_scale())
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds into the soak")
        .y_desc("µs")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| fail(&e))?;
    let sb = colour("switchboard");
    let lines: [Line; 3] = [
        ("p50", |p| p.latency.p50, sb.mix(0.45), 1),
        ("p99", |p| p.latency.p99, sb.mix(0.8), 2),
        ("p99.9", |p| p.latency.p999, sb.mix(1.0), 1),
    ];
    for (label, value, style, width) in lines {
        let at = |p: &Point| (p.t - t0, value(p).max(lat_min));
        let segs = segments(&soak, "switchboard");
        series(&mut chart, segs, at, style.stroke_width(width), label)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::Percentiles;

    fn point(t: f64, contender: &'static str) -> Point {
        Point {
            t,
            scenario: "soak",
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
        let report = crate::report::tests::empty_report();
        assert_eq!(draw(&report, &pts, &path, "test"), Ok(()));
        let svg = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(svg.contains("<svg") && svg.contains("polyline"));
        assert!(
            svg.contains("fanout: did not run"),
            "an absent band says so"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
