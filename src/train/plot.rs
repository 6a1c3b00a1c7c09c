//! Line charts as SVG: axes with round-number ticks, axis labels, a title and a legend.
//!
//! SVG is text, so a chart is a few hundred lines of markup that any browser shows and any
//! diff reads; no plotting or image crate enters the build (the first build's time is a
//! promise in the README).

use std::fmt::Write;

/// One curve: a name for the legend, a colour and its points `(x, y)`; non-finite points
/// are skipped.
#[derive(Clone, Debug)]
pub struct Series {
    /// The legend's text.
    pub name: String,
    /// Any SVG colour (`"#1f77b4"`, `"crimson"`).
    pub color: String,
    /// The points, in drawing order.
    pub points: Vec<(f64, f64)>,
    /// Drawn thin and faint (many noisy points, like per-step losses) instead of solid.
    pub faint: bool,
}

/// One chart: a title, axis labels and its series.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Shown above the plot area.
    pub title: String,
    /// Under the x axis.
    pub x_label: String,
    /// Beside the y axis.
    pub y_label: String,
    /// The curves.
    pub series: Vec<Series>,
}

const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 320.0;
const LEFT: f64 = 62.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 48.0;

/// Charts side by side in one SVG document.
///
/// ```
/// use tensorforge::train::plot::{Chart, Series, svg};
/// let loss = Series { name: "train".into(), color: "#1f77b4".into(), points: vec![(1.0, 2.0), (2.0, 1.0)], faint: false };
/// let chart = Chart { title: "loss".into(), x_label: "epoch".into(), y_label: "loss".into(), series: vec![loss] };
/// let doc = svg(&[chart]);
/// assert!(doc.starts_with("<svg") && doc.contains(">epoch</text>") && doc.contains(">train</text>"));
/// ```
pub fn svg(charts: &[Chart]) -> String {
    let width = PANEL_W * charts.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{PANEL_H}" viewBox="0 0 {width} {PANEL_H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, c) in charts.iter().enumerate() {
        panel(&mut s, c, i as f64 * PANEL_W);
    }
    s.push_str("</svg>\n");
    s
}

/// Round tick positions covering `[lo, hi]`: steps of 1, 2 or 5 times a power of ten.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = hi - lo;
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= 6.0).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    (0..=12).map(|k| first + k as f64 * step).take_while(|t| *t <= hi + step * 1e-9).collect()
}

/// A tick label without float noise (`0.30000000000000004` → `0.3`).
fn label(v: f64) -> String {
    let t = format!("{:.6}", v);
    let t = t.trim_end_matches('0').trim_end_matches('.');
    if t == "-0" { "0".into() } else { t.into() }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The data range of every finite point, widened when it is a single value.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        (0.0, 1.0)
    } else if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

fn panel(s: &mut String, c: &Chart, x0: f64) {
    let pts = || c.series.iter().flat_map(|se| se.points.iter().copied());
    let (xlo, xhi) = range(pts().map(|p| p.0));
    let (ylo, yhi) = range(pts().map(|p| p.1));
    let (pw, ph) = (PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM);
    let sx = |x: f64| x0 + LEFT + (x - xlo) / (xhi - xlo) * pw;
    let sy = |y: f64| TOP + ph - (y - ylo) / (yhi - ylo) * ph;

    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        x0 + LEFT + pw / 2.0,
        escape(&c.title)
    );
    // Grid lines and tick labels, then the axes over them.
    for t in ticks(ylo, yhi) {
        let y = sy(t);
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 + LEFT,
            x0 + LEFT + pw,
            x0 + LEFT - 6.0,
            y + 4.0,
            label(t)
        );
    }
    for t in ticks(xlo, xhi) {
        let x = sx(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#e0e0e0"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP,
            TOP + ph,
            TOP + ph + 16.0,
            label(t)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{:.1}" y="{TOP}" width="{pw:.1}" height="{ph:.1}" fill="none" stroke="black"/>"#,
        x0 + LEFT
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        x0 + LEFT + pw / 2.0,
        PANEL_H - 10.0,
        escape(&c.x_label)
    );
    let (lx, ly) = (x0 + 16.0, TOP + ph / 2.0);
    let _ = writeln!(
        s,
        r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="middle" transform="rotate(-90 {lx:.1} {ly:.1})">{}</text>"#,
        escape(&c.y_label)
    );
    // Curves, faint ones first so the solid ones stay on top.
    let mut order: Vec<&Series> = c.series.iter().collect();
    order.sort_by_key(|se| !se.faint);
    for se in order {
        let path: Vec<String> = se
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let (width, opacity) = if se.faint { (1.0, 0.35) } else { (2.0, 1.0) };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="{width}" stroke-opacity="{opacity}" points="{}"/>"#,
            escape(&se.color),
            path.join(" ")
        );
    }
    // Legend in the top-right corner of the plot area, on a box that keeps it readable over
    // the curves.
    if !c.series.is_empty() {
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="124" height="{:.1}" fill="white" fill-opacity="0.85" stroke="#c0c0c0"/>"##,
            x0 + LEFT + pw - 126.0,
            TOP + 2.0,
            16.0 * c.series.len() as f64 + 6.0
        );
    }
    for (k, se) in c.series.iter().enumerate() {
        let y = TOP + 14.0 + 16.0 * k as f64;
        let x = x0 + LEFT + pw - 120.0;
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2"/><text x="{:.1}" y="{y:.1}">{}</text>"#,
            y - 4.0,
            x + 18.0,
            y - 4.0,
            escape(&se.color),
            x + 24.0,
            escape(&se.name)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 1.0), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        let t = ticks(0.013, 2.31);
        assert!(t.len() >= 3 && t.len() <= 7, "{t:?}");
        assert!(t.iter().all(|v| (0.013..=2.31).contains(v)));
        assert_eq!(label(0.30000000000000004), "0.3");
        assert_eq!(label(-0.0), "0");
        assert_eq!(label(25.0), "25");
    }

    #[test]
    fn empty_and_constant_series_still_draw() {
        let c = |pts: Vec<(f64, f64)>| Chart {
            title: "t<1>".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![Series { name: "a&b".into(), color: "red".into(), points: pts, faint: false }],
        };
        for doc in [svg(&[c(vec![])]), svg(&[c(vec![(1.0, 3.0), (1.0, 3.0)])]), svg(&[c(vec![(0.0, f64::NAN)])])] {
            assert!(doc.contains("t&lt;1&gt;") && doc.contains("a&amp;b") && !doc.contains("NaN"), "{doc}");
        }
    }
}
