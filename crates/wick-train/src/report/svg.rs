//! Hand-written SVG: line charts, bar charts and attention heatmaps, self-contained (no fonts,
//! scripts or links), so a report opens anywhere and `curves.svg` can be embedded elsewhere.
//!
//! Every plotted point carries its value (`data-x`, `data-y`), which the tests read back.

use std::fmt::Write;

/// Text safe inside SVG/HTML elements and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Colours of the series, in order (colour-blind safe, Okabe–Ito).
const COLOURS: [&str; 6] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9",
];

/// How a series is drawn: a line through every point, or markers on sparse points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    Line,
    LineAndMarkers,
}

#[derive(Clone, Debug)]
pub(crate) struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
}

#[derive(Clone, Debug)]
pub(crate) struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const W: f64 = 380.0;
const H: f64 = 230.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 40.0;

/// Round tick values covering `[lo, hi]`, about five of them.
pub(crate) fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    (0..)
        .map(|i| first + i as f64 * step)
        .take_while(|v| *v <= hi + step * 1e-9)
        .collect()
}

/// A tick's label: no more decimals than the step needs.
fn tick_label(v: f64, step: f64) -> String {
    // The fewest decimals that write every multiple of the step exactly (0.25: two).
    let decimals = (0..6)
        .find(|d| {
            let scaled = step * 10f64.powi(*d);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(6) as usize;
    let s = format!("{v:.decimals$}");
    if s == "-0" { "0".to_string() } else { s }
}

/// The range shown for values `lo..hi`: a little margin, and never empty.
fn padded(lo: f64, hi: f64, from_zero: bool) -> (f64, f64) {
    let (lo, hi) = if from_zero && lo >= 0.0 {
        (0.0, hi)
    } else {
        (lo, hi)
    };
    if hi - lo < 1e-12 {
        let d = if lo.abs() > 1e-12 {
            lo.abs() * 0.1
        } else {
            1.0
        };
        return (lo - d, hi + d);
    }
    let m = (hi - lo) * 0.05;
    (if from_zero && lo == 0.0 { 0.0 } else { lo - m }, hi + m)
}

impl LineChart {
    /// The chart as an `<svg>` element, `W × H` user units.
    pub(crate) fn render(&self, id: &str) -> String {
        let pts: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg class="chart" id="{id}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}">"#,
            escape(&self.title)
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="16" class="title">{}</text>"#,
            W / 2.0,
            escape(&self.title)
        );
        if pts.is_empty() {
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" class="empty">no data yet</text></svg>"#,
                W / 2.0,
                H / 2.0
            );
            return svg;
        }
        let (x0, x1) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (y0, y1) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let (x0, x1) = padded(x0, x1, true);
        let (y0, y1) = padded(y0, y1, false);
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| TOP + ph - (y - y0) / (y1 - y0) * ph;
        // Grid and axes.
        let yt = ticks(y0, y1);
        let ystep = if yt.len() > 1 { yt[1] - yt[0] } else { 1.0 };
        for v in &yt {
            let y = sy(*v);
            let _ = write!(
                svg,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="ytick">{}</text>"#,
                LEFT + pw,
                LEFT - 5.0,
                y + 3.5,
                tick_label(*v, ystep)
            );
        }
        let xt = ticks(x0, x1);
        let xstep = if xt.len() > 1 { xt[1] - xt[0] } else { 1.0 };
        for v in &xt {
            let x = sx(*v);
            let _ = write!(
                svg,
                r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" class="grid"/><text x="{x:.1}" y="{:.1}" class="xtick">{}</text>"#,
                TOP + ph,
                TOP + ph + 14.0,
                tick_label(*v, xstep)
            );
        }
        let _ = write!(
            svg,
            r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" class="frame"/><text x="{:.1}" y="{:.1}" class="xlabel">{}</text><text x="12" y="{:.1}" class="ylabel" transform="rotate(-90 12 {:.1})">{}</text>"#,
            LEFT + pw / 2.0,
            H - 6.0,
            escape(&self.x_label),
            TOP + ph / 2.0,
            TOP + ph / 2.0,
            escape(&self.y_label)
        );
        // Series, then the legend: a row above the plot, right-aligned.
        let legend_width: f64 = self
            .series
            .iter()
            .map(|s| 30.0 + 5.5 * s.name.chars().count() as f64)
            .sum();
        let mut lx = LEFT + pw - legend_width;
        for (i, s) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let finite: Vec<&(f64, f64)> = s
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            let line: Vec<String> = finite
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
                .collect();
            let _ = write!(
                svg,
                r#"<g class="series" data-name="{}"><polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.6"/>"#,
                escape(&s.name),
                line.join(" ")
            );
            let r = if s.style == Style::LineAndMarkers {
                2.6
            } else {
                0.0
            };
            for (x, y) in &finite {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="{r}" fill="{colour}" data-x="{x}" data-y="{y}"/>"#,
                    sx(*x),
                    sy(*y)
                );
            }
            svg.push_str("</g>");
            let ly = TOP - 9.0;
            let _ = write!(
                svg,
                r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}" class="legend">{}</text>"#,
                lx + 14.0,
                lx + 18.0,
                ly + 3.5,
                escape(&s.name)
            );
            lx += 30.0 + 5.5 * s.name.chars().count() as f64;
        }
        svg.push_str("</svg>");
        svg
    }
}

/// Bars of one value per labelled group (BLEU by source length).
pub(crate) fn bar_chart(id: &str, title: &str, y_label: &str, bars: &[(String, f64)]) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" id="{id}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}"><text x="{}" y="16" class="title">{}</text>"#,
        escape(title),
        W / 2.0,
        escape(title)
    );
    let top = bars.iter().map(|b| b.1).fold(0f64, f64::max).max(1e-9);
    let (_, y1) = padded(0.0, top, true);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let yt = ticks(0.0, y1);
    let ystep = if yt.len() > 1 { yt[1] - yt[0] } else { 1.0 };
    for v in &yt {
        let y = TOP + ph - v / y1 * ph;
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="ytick">{}</text>"#,
            LEFT + pw,
            LEFT - 5.0,
            y + 3.5,
            tick_label(*v, ystep)
        );
    }
    let slot = pw / bars.len().max(1) as f64;
    for (i, (label, v)) in bars.iter().enumerate() {
        let h = v / y1 * ph;
        let x = LEFT + i as f64 * slot + slot * 0.15;
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}" data-x="{}" data-y="{v}"/><text x="{:.1}" y="{:.1}" class="xtick">{}</text><text x="{:.1}" y="{:.1}" class="value">{v:.1}</text>"#,
            TOP + ph - h,
            slot * 0.7,
            COLOURS[0],
            escape(label),
            x + slot * 0.35,
            TOP + ph + 14.0,
            escape(label),
            x + slot * 0.35,
            TOP + ph - h - 3.0
        );
    }
    let _ = write!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" class="frame"/><text x="{:.1}" y="{:.1}" class="xlabel">source length (words)</text><text x="12" y="{:.1}" class="ylabel" transform="rotate(-90 12 {:.1})">{}</text></svg>"#,
        LEFT + pw / 2.0,
        H - 6.0,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        escape(y_label)
    );
    svg
}

/// An attention matrix `[target][source]` as a heatmap: source tokens across the top, target
/// tokens down the left, darker where the weight is larger.
pub(crate) fn heatmap(title: &str, src: &[String], tgt: &[String], weights: &[Vec<f32>]) -> String {
    const CELL: f64 = 18.0;
    let label_w = 7.0 * tgt.iter().map(|t| t.chars().count()).max().unwrap_or(1) as f64 + 12.0;
    let label_h = 7.0 * src.iter().map(|t| t.chars().count()).max().unwrap_or(1) as f64 + 14.0;
    let (w, h) = (
        label_w + CELL * src.len() as f64 + 6.0,
        24.0 + label_h + CELL * tgt.len() as f64 + 6.0,
    );
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="heatmap" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w:.0} {h:.0}" width="{w:.0}" height="{h:.0}" role="img" aria-label="{}"><text x="4" y="15" class="htitle">{}</text>"#,
        escape(title),
        escape(title)
    );
    let top = 24.0 + label_h;
    for (j, s) in src.iter().enumerate() {
        let x = label_w + CELL * j as f64 + CELL * 0.65;
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" class="src" transform="rotate(-60 {x:.1} {:.1})">{}</text>"#,
            top - 4.0,
            top - 4.0,
            escape(s)
        );
    }
    for (i, t) in tgt.iter().enumerate() {
        let y = top + CELL * i as f64;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" class="tgt">{}</text>"#,
            label_w - 4.0,
            y + CELL * 0.7,
            escape(t)
        );
        for (j, wgt) in weights
            .get(i)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            // Light to dark blue; the weight itself in the title (a tooltip).
            let a = wgt.clamp(0.0, 1.0);
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{y:.1}" width="{CELL}" height="{CELL}" fill="rgb({},{},{})" data-y="{wgt}"><title>{} → {}: {wgt:.3}</title></rect>"#,
                label_w + CELL * j as f64,
                (247.0 - a * 239.0) as u8,
                (251.0 - a * 203.0) as u8,
                (255.0 - a * 148.0) as u8,
                escape(t),
                escape(src.get(j).map(String::as_str).unwrap_or("")),
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        // At most about five ticks, on a 1-2-2.5-5 step.
        assert_eq!(ticks(3.17, 4.92), vec![3.5, 4.0, 4.5]);
        let t = ticks(0.0, 0.9);
        let want = [0.0, 0.2, 0.4, 0.6, 0.8];
        assert!(t.len() == want.len() && t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12));
        assert_eq!(tick_label(0.5, 0.25), "0.50");
        assert_eq!(tick_label(0.75, 0.25), "0.75");
        assert_eq!(tick_label(0.6000000000000001, 0.2), "0.6");
        assert_eq!(tick_label(2000.0, 500.0), "2000");
        assert_eq!(ticks(1.0, 1.0), vec![1.0]);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape(r#"<a & "b">"#), "&lt;a &amp; &quot;b&quot;&gt;");
        let svg = heatmap("x<y", &["&".into()], &["</s>".into()], &[vec![1.0]]);
        assert!(svg.contains("&lt;/s&gt;") && svg.contains("&amp;") && !svg.contains("x<y"));
    }

    #[test]
    fn points_carry_their_values() {
        let chart = LineChart {
            title: "t".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: vec![Series {
                name: "dev".into(),
                points: vec![(100.0, 3.5), (200.0, 2.25), (300.0, f64::NAN)],
                style: Style::LineAndMarkers,
            }],
        };
        let svg = chart.render("c");
        assert!(svg.contains(r#"data-x="100" data-y="3.5""#));
        assert!(svg.contains(r#"data-x="200" data-y="2.25""#));
        assert!(!svg.contains("NaN"), "non-finite points are left out");
        let empty = LineChart {
            series: vec![],
            ..chart
        };
        assert!(empty.render("e").contains("no data yet"));
    }
}
