//! `report.html`: a run at a glance, in one self-contained file (inline SVG and CSS, no
//! scripts, no network): training and dev curves against updates and against training time,
//! the test scores with their confidence intervals and by source length, a few test
//! sentences with their attention, the best checkpoint and how to use it, the data summary,
//! the resolved config and the manifest. Also `curves.svg`, the curves alone, to embed
//! elsewhere.
//!
//! Everything comes from the run directory (metrics, progress, manifest, eval JSON), so a report can be made for
//! a run that is still training, for a resumed one, and for any architecture.

mod data;
mod html;
pub(crate) mod svg;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;

use self::data::RunRecord;
use self::svg::{LineChart, Series, Style};
use crate::attention::AttentionMap;
use crate::checkpoint::write_atomic;
use crate::prepare::{Split, load_split};
use crate::run::{Run, Which};
use crate::translator::Translator;

/// What `wick report` needs.
pub struct ReportRequest<'a> {
    pub run_dir: &'a Path,
    /// Where the HTML goes (default `<run>/report.html`); `curves.svg` goes beside it.
    pub output: Option<PathBuf>,
    /// Test sentences shown translated, with their attention (0: none).
    pub samples: usize,
    pub device: &'a Device,
}

/// The files a report wrote.
#[derive(Clone, Debug)]
pub struct ReportFiles {
    pub html: PathBuf,
    pub curves: PathBuf,
}

/// One test sentence as the report shows it.
pub(crate) struct Sample {
    pub reference: String,
    pub attention: AttentionMap,
}

/// Writes the report of the run in `req.run_dir`.
pub fn write_report(req: ReportRequest) -> Result<ReportFiles> {
    let record = RunRecord::read(req.run_dir)?;
    let samples = samples(req.run_dir, req.samples, req.device).unwrap_or_else(|e| {
        // A run without a checkpoint yet, or one whose model cannot load here: the report
        // says so instead of failing.
        Err(format!("{e:#}"))
    });
    let html_path = req
        .output
        .clone()
        .unwrap_or_else(|| req.run_dir.join("report.html"));
    let curves_path = html_path.with_file_name("curves.svg");
    let curves = curves_grid(&record);
    let page = html::page(&record, &curves, &samples);
    write_atomic(&html_path, page.as_bytes())
        .with_context(|| format!("writing the report {}", html_path.display()))?;
    write_atomic(&curves_path, curves.standalone().as_bytes())
        .with_context(|| format!("writing {}", curves_path.display()))?;
    Ok(ReportFiles {
        html: html_path,
        curves: curves_path,
    })
}

/// The first `n` sentences of the test split (the dev split when there is none), translated
/// with the best checkpoint and the run's decoding settings.
fn samples(dir: &Path, n: usize, device: &Device) -> Result<Result<Vec<Sample>, String>> {
    if n == 0 {
        return Ok(Ok(Vec::new()));
    }
    let run = Run::open(dir)?;
    let pairs = match load_split(&run.config, Split::Test) {
        Ok(p) if !p.is_empty() => p,
        _ => load_split(&run.config, Split::Dev)?,
    };
    if !run.checkpoint_path(&Which::Best).is_file() {
        return Ok(Err(
            "no best checkpoint yet: the run has not validated".to_string()
        ));
    }
    let translator = Translator::from_run(dir, Which::Best, device)?.on_callers_pool();
    let out = pairs
        .iter()
        .take(n)
        .map(|p| {
            Ok(Sample {
                reference: p.tgt.clone(),
                attention: translator.attention(&p.src)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Ok(out))
}

/// The curves: loss, dev scores, learning rate and speed, against updates and against
/// training time.
pub(crate) struct Curves {
    pub charts: Vec<(String, LineChart)>,
}

impl Curves {
    /// The charts as one SVG document, two columns (updates | training time).
    fn standalone(&self) -> String {
        let (w, h) = (380.0, 230.0);
        let rows = self.charts.len().div_ceil(2);
        let mut out = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} {}" width="{}" height="{}"><style>{}</style><rect width="100%" height="100%" fill="white"/>"#,
            2.0 * w,
            rows as f64 * h,
            2.0 * w,
            rows as f64 * h,
            html::SVG_STYLE
        );
        for (i, (id, chart)) in self.charts.iter().enumerate() {
            let (x, y) = ((i % 2) as f64 * w, (i / 2) as f64 * h);
            out.push_str(&format!(r#"<g transform="translate({x} {y})">"#));
            out.push_str(&chart.render(id));
            out.push_str("</g>");
        }
        out.push_str("</svg>");
        out
    }
}

fn series(name: &str, points: Vec<(f64, f64)>, style: Style) -> Series {
    Series {
        name: name.to_string(),
        points,
        style,
    }
}

fn curves_grid(r: &RunRecord) -> Curves {
    let v = &r.validations;
    let p = &r.progress;
    let mut charts = Vec::new();
    for (axis, label) in [("step", "updates"), ("time", "training time (min)")] {
        let vx = |i: usize| match axis {
            "step" => v[i].step as f64,
            _ => v[i].minutes(),
        };
        let px = |i: usize| match axis {
            "step" => p[i].step as f64,
            _ => p[i].train_seconds / 60.0,
        };
        let from_v = |f: &dyn Fn(usize) -> f64| (0..v.len()).map(|i| (vx(i), f(i))).collect();
        let from_p = |f: &dyn Fn(usize) -> f64| (0..p.len()).map(|i| (px(i), f(i))).collect();
        // The training log where the run has one, else the validations' window averages.
        let (train_loss, lr, speed): (Vec<_>, Vec<_>, Vec<_>) = if p.is_empty() {
            (
                from_v(&|i| v[i].train_loss),
                from_v(&|i| v[i].lr),
                from_v(&|i| v[i].tgt_tokens_per_s),
            )
        } else {
            (
                from_p(&|i| p[i].train_loss),
                from_p(&|i| p[i].lr),
                from_p(&|i| p[i].tgt_tokens_per_s),
            )
        };
        let chart = |title: &str, y: &str, series: Vec<Series>| LineChart {
            title: title.to_string(),
            x_label: label.to_string(),
            y_label: y.to_string(),
            series,
        };
        charts.push((
            format!("loss-{axis}"),
            chart(
                "loss (label-smoothed, per target token)",
                "loss",
                vec![
                    series("train", train_loss, Style::Line),
                    series("dev", from_v(&|i| v[i].dev_loss), Style::LineAndMarkers),
                ],
            ),
        ));
        charts.push((
            format!("scores-{axis}"),
            chart(
                "dev BLEU and chrF2",
                "score",
                vec![
                    series("BLEU", from_v(&|i| v[i].dev_bleu), Style::LineAndMarkers),
                    series("chrF2", from_v(&|i| v[i].dev_chrf), Style::LineAndMarkers),
                ],
            ),
        ));
        charts.push((
            format!("lr-{axis}"),
            chart("learning rate", "lr", vec![series("lr", lr, Style::Line)]),
        ));
        charts.push((
            format!("speed-{axis}"),
            chart(
                "training speed",
                "target tokens/s",
                vec![series("tokens/s", speed, Style::Line)],
            ),
        ));
    }
    // Two columns: each quantity against updates beside itself against time.
    let (by_step, by_time) = charts.split_at(4);
    let charts = by_step
        .iter()
        .zip(by_time)
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect();
    Curves { charts }
}
