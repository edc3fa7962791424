//! Hand-written SVG plots (no plotting dependency): spot prices and cumulative cost over time,
//! and cost per policy.

use std::fmt::Write as _;

use crate::metrics::RunReport;
use crate::params::Policy;
use crate::price::HOUR_MS;
use crate::scenario::Scenario;

const W: f64 = 900.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A "nice" tick step for a span (1, 2 or 5 x a power of ten).
fn tick_step(span: f64, ticks: f64) -> f64 {
    let raw = (span / ticks).max(1e-12);
    let pow = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * pow).find(|s| *s >= raw).unwrap_or(10.0 * pow)
}

struct Frame {
    x_max: f64,
    y_max: f64,
    svg: String,
}

impl Frame {
    fn new(title: &str, x_label: &str, y_label: &str, x_max: f64, y_max: f64, x_ticks: bool) -> Self {
        let (x_max, y_max) = (x_max.max(1e-9), y_max.max(1e-9) * 1.05);
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>
"#,
            (LEFT + W - RIGHT) / 2.0,
            escape(title),
            (LEFT + W - RIGHT) / 2.0,
            H - 10.0,
            escape(x_label),
            (TOP + H - BOTTOM) / 2.0,
            (TOP + H - BOTTOM) / 2.0,
            escape(y_label)
        );
        let frame = Frame { x_max, y_max, svg };
        frame.axes(x_ticks)
    }

    fn x(&self, v: f64) -> f64 {
        LEFT + v / self.x_max * (W - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        H - BOTTOM - v / self.y_max * (H - TOP - BOTTOM)
    }

    fn axes(mut self, x_ticks: bool) -> Self {
        let (x0, y0, x1, y1) = (self.x(0.0), self.y(0.0), self.x(self.x_max), self.y(self.y_max));
        let _ = writeln!(self.svg, r#"<path d="M{x0},{y1} V{y0} H{x1}" stroke="black" fill="none"/>"#);
        let step = tick_step(self.y_max, 6.0);
        let mut v = 0.0;
        while v <= self.y_max {
            let y = self.y(v);
            let _ = writeln!(
                self.svg,
                r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                x0 - 6.0,
                y + 4.0,
                fmt_num(v)
            );
            v += step;
        }
        let step = tick_step(self.x_max, 8.0);
        let mut v = 0.0;
        while x_ticks && v <= self.x_max + 1e-9 {
            let x = self.x(v);
            let _ = writeln!(self.svg, r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>"#, y0 + 18.0, fmt_num(v));
            v += step;
        }
        self
    }

    fn line(&mut self, points: &[(f64, f64)], colour: &str, step: bool) {
        let mut d = String::new();
        let mut prev_y = None;
        for &(x, y) in points {
            let (px, py) = (self.x(x), self.y(y));
            match prev_y {
                None => {
                    let _ = write!(d, "M{px:.1},{py:.1}");
                }
                Some(last) if step => {
                    let _ = write!(d, " L{px:.1},{last:.1} L{px:.1},{py:.1}");
                }
                Some(_) => {
                    let _ = write!(d, " L{px:.1},{py:.1}");
                }
            }
            prev_y = Some(py);
        }
        let _ = writeln!(self.svg, r#"<path d="{d}" stroke="{colour}" stroke-width="1.5" fill="none"/>"#);
    }

    fn legend(&mut self, i: usize, colour: &str, label: &str) {
        let (x, y) = (W - RIGHT + 15.0, TOP + 10.0 + 18.0 * i as f64);
        let _ = writeln!(
            self.svg,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{colour}"/><text x="{}" y="{}">{}</text>"#,
            y - 10.0,
            x + 18.0,
            y,
            escape(label)
        );
    }

    fn finish(mut self) -> String {
        self.svg.push_str("</svg>\n");
        self.svg
    }
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Spot price of up to `max_markets` markets (the first zone's types first) over the run.
pub fn price_svg(sc: &Scenario, max_markets: usize) -> String {
    let hours = sc.horizon_ms as f64 / HOUR_MS as f64;
    let shown: Vec<_> = sc.markets.iter().take(max_markets).collect();
    let y_max = shown.iter().flat_map(|m| m.spot.points().iter().map(|p| p.1)).fold(0.0, f64::max);
    let mut f = Frame::new("Spot price per market", "hours", "USD per instance-hour", hours, y_max, true);
    for (i, m) in shown.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut pts: Vec<(f64, f64)> =
            m.spot.points().iter().filter(|p| p.0 <= sc.horizon_ms).map(|p| (p.0 as f64 / HOUR_MS as f64, p.1)).collect();
        pts.push((hours, m.spot.at(sc.horizon_ms)));
        f.line(&pts, colour, true);
        f.legend(i, colour, &m.key.label());
    }
    f.finish()
}

/// Cumulative cost of every policy over the run.
pub fn cost_over_time_svg(report: &RunReport) -> String {
    let y_max = report.results.iter().flat_map(|r| r.cost_series.iter().map(|p| p.1)).fold(0.0, f64::max);
    let mut f = Frame::new("Cumulative cost per policy", "hours", "USD", report.days * 24.0, y_max, true);
    for (i, r) in report.results.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        f.line(&r.cost_series, colour, false);
        f.legend(i, colour, &r.policy);
    }
    f.finish()
}

/// Cost per useful hour of every policy relative to on-demand, as bars.
pub fn cost_per_policy_svg(report: &RunReport) -> String {
    let bars: Vec<(String, f64)> = report
        .results
        .iter()
        .filter_map(|r| {
            let p = Policy::ALL.into_iter().find(|p| p.name() == r.policy)?;
            Some((r.policy.clone(), report.cost_vs_ondemand(p)?))
        })
        .collect();
    let y_max = bars.iter().map(|b| b.1).fold(1.0, f64::max);
    let mut f = Frame::new("Cost per useful hour, relative to on-demand", "", "x on-demand", bars.len().max(1) as f64, y_max, false);
    for (i, (name, v)) in bars.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let (x0, x1) = (f.x(i as f64 + 0.2), f.x(i as f64 + 0.8));
        let (y0, y1) = (f.y(0.0), f.y(*v));
        let _ = writeln!(
            f.svg,
            r#"<rect x="{x0:.1}" y="{y1:.1}" width="{:.1}" height="{:.1}" fill="{colour}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{v:.3}</text><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x1 - x0,
            y0 - y1,
            (x0 + x1) / 2.0,
            y1 - 5.0,
            (x0 + x1) / 2.0,
            y0 + 18.0,
            escape(name)
        );
    }
    f.finish()
}
