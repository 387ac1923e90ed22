//! The plots of Experiment 2: throughput and one-way latency against the size of the group,
//! for FIFO and total order (over IP multicast too, when measured), as SVG files a browser
//! opens.

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;

use crate::baseline::Baseline;
use crate::experiments::{Order, Repeated, Run, Spread};

const SIZE: (u32, u32) = (720, 440);
const FIFO: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const TOTAL: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const FIFO_MULTICAST: RGBColor = RGBColor(0x17, 0xbe, 0xcf);
const TOTAL_MULTICAST: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const RAW: RGBColor = RGBColor(0x7f, 0x7f, 0x7f);

/// One line of a plot: its label, colour, dash, points (peers, value), and the range of
/// each point over the rounds, when it was measured several times (peers, min, max).
struct Line {
    label: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
    ranges: Vec<(f64, f64, f64)>,
}

/// The runs of one line: Experiment 2's plain runs on loopback of `order`, over IP
/// multicast or not.
fn plotted(r: &Run, (order, multicast): (Order, bool)) -> bool {
    r.plan.experiment == 2
        && r.plan.order == order
        && r.plan.multicast == multicast
        && !r.plan.sealed
        && r.plan.hosts == crate::experiments::Hosts::Loopback
}

fn series(runs: &[Run], kind: (Order, bool), value: impl Fn(&Run) -> f64) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = runs
        .iter()
        .filter(|r| plotted(r, kind))
        .map(|r| (r.plan.peers as f64, value(r)))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// The range over rounds of the figure `spread` picks, for the runs measured in rounds.
fn ranges(
    runs: &[Run],
    kind: (Order, bool),
    spread: impl Fn(&Repeated) -> Spread,
) -> Vec<(f64, f64, f64)> {
    runs.iter()
        .filter(|r| plotted(r, kind))
        .filter_map(|r| {
            let s = spread(r.repeated.as_ref()?);
            Some((r.plan.peers as f64, s.min, s.max))
        })
        .collect()
}

fn color((order, multicast): (Order, bool)) -> RGBColor {
    match (order, multicast) {
        (Order::Fifo, false) => FIFO,
        (Order::Total, false) => TOTAL,
        (Order::Fifo, true) => FIFO_MULTICAST,
        (Order::Total, true) => TOTAL_MULTICAST,
    }
}

fn name((order, multicast): (Order, bool)) -> String {
    match multicast {
        false => order.name().to_owned(),
        true => format!("{} multicast", order.name()),
    }
}

/// Draws Experiment 2's runs among `runs` into `dir`: `experiment2-throughput.svg` (the
/// slowest receiver's deliveries per second, with the raw-UDP baseline's lossless rate as a
/// dashed grey line when measured) and `experiment2-latency.svg` (p50 and p99), both on a
/// log scale (the figures span orders of magnitude).
/// Returns the files written; none if no Experiment 2 run is among `runs`.
pub fn experiment2(
    runs: &[Run],
    baselines: &[Baseline],
    dir: &Path,
) -> Result<Vec<PathBuf>, String> {
    // Each order, over unicast and then over IP multicast (lines without points are left
    // out).
    let orders = [
        (Order::Fifo, false),
        (Order::Total, false),
        (Order::Fifo, true),
        (Order::Total, true),
    ];
    if !runs.iter().any(|r| r.plan.experiment == 2) {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut raw: Vec<(f64, f64)> = baselines
        .iter()
        .filter(|b| b.lossless.is_some())
        .map(|b| (b.peers as f64, b.lossless_rate()))
        .collect();
    raw.sort_by(|a, b| a.0.total_cmp(&b.0));
    let throughput: Vec<Line> = orders
        .iter()
        .map(|&o| Line {
            label: name(o),
            color: color(o),
            dashed: false,
            points: series(runs, o, |r| r.summary.slowest_throughput),
            ranges: ranges(runs, o, |r| r.throughput),
        })
        .chain(std::iter::once(Line {
            label: "raw UDP, nothing lost".to_owned(),
            color: RAW,
            dashed: true,
            points: raw,
            ranges: Vec::new(),
        }))
        .filter(|l| !l.points.is_empty())
        .collect();
    let latency: Vec<Line> = orders
        .iter()
        .flat_map(|&o| {
            [
                Line {
                    label: format!("{} p50", name(o)),
                    color: color(o),
                    dashed: false,
                    points: series(runs, o, |r| r.latency_p50_us()),
                    ranges: ranges(runs, o, |r| r.latency_p50_us),
                },
                Line {
                    label: format!("{} p99", name(o)),
                    color: color(o),
                    dashed: true,
                    points: series(runs, o, |r| r.latency_p99_us()),
                    ranges: ranges(runs, o, |r| r.latency_p99_us),
                },
            ]
        })
        .filter(|l| !l.points.is_empty())
        .collect();
    let files = [
        (
            dir.join("experiment2-throughput.svg"),
            "Experiment 2: one sender, slowest receiver",
            "messages delivered per second (log scale)",
            throughput,
            // Throughput falls with the group's size: the lower left is free.
            SeriesLabelPosition::LowerLeft,
        ),
        (
            dir.join("experiment2-latency.svg"),
            "Experiment 2: one-way latency",
            "latency (µs, log scale)",
            latency,
            // Latency grows with it: the upper left is free.
            SeriesLabelPosition::UpperLeft,
        ),
    ];
    let mut written = Vec::new();
    for (path, title, y_desc, lines, legend) in files {
        draw(&path, title, y_desc, &lines, legend)
            .map_err(|e| format!("cannot draw {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn draw(
    path: &Path,
    title: &str,
    y_desc: &str,
    lines: &[Line],
    legend: SeriesLabelPosition,
) -> Result<(), Box<dyn std::error::Error>> {
    let all = || {
        lines.iter().flat_map(|l| {
            l.points
                .iter()
                .copied()
                .chain(l.ranges.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)]))
        })
    };
    let x_max = all().map(|p| p.0).fold(2.0, f64::max);
    let y_max = all().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let y_min = all()
        .map(|p| p.1)
        .filter(|v| *v > 0.0)
        .fold(y_max, f64::min);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70);
    let x = 0f64..x_max + 1.0;
    let y = ((y_min / 2.0).max(1.0)..y_max).log_scale();
    let mut chart = builder.build_cartesian_2d(x, y)?;
    finish(&mut chart, y_desc, lines, legend)?;
    root.present()?;
    Ok(())
}

/// The grid, the lines and the legend of a chart.
fn finish<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    y_desc: &str,
    lines: &[Line],
    legend: SeriesLabelPosition,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .bold_line_style(RGBColor(0xcc, 0xcc, 0xcc))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("peers in the group")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| e.to_string())?;
    for line in lines {
        draw_line(chart, line)?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

fn draw_line<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    line: &Line,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let style = ShapeStyle::from(line.color).stroke_width(2);
    let color = line.color;
    if line.dashed {
        chart
            .draw_series(DashedLineSeries::new(
                line.points.iter().copied(),
                6,
                4,
                style,
            ))
            .map_err(|e| e.to_string())?
            .label(&line.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    } else {
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), style))
            .map_err(|e| e.to_string())?
            .label(&line.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .draw_series(
            line.points
                .iter()
                .map(|&p| Circle::new(p, 3, ShapeStyle::from(color).filled())),
        )
        .map_err(|e| e.to_string())?;
    // The range over the rounds: a bar from the lowest to the highest.
    chart
        .draw_series(line.ranges.iter().map(|&(x, lo, hi)| {
            PathElement::new(
                vec![(x, lo), (x, hi)],
                ShapeStyle::from(color).stroke_width(1),
            )
        }))
        .map_err(|e| e.to_string())?;
    Ok(())
}
