//! The report page: sections of HTML around the SVG of [`super::svg`], with inline CSS.

use std::fmt::Write;

use super::data::RunRecord;
use super::svg::{bar_chart, escape, heatmap};
use super::{Curves, Sample};
use crate::attention::display_token;

/// Styles of the charts' text and lines, shared by the page and `curves.svg`.
pub(crate) const SVG_STYLE: &str = "\
text{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;fill:#222}\
.title{font-size:12px;font-weight:600;text-anchor:middle}\
.xtick,.value{font-size:9px;text-anchor:middle}.ytick{font-size:9px;text-anchor:end}\
.xlabel{font-size:10px;text-anchor:middle}.ylabel{font-size:10px;text-anchor:middle}\
.legend{font-size:9px}.empty{font-size:11px;text-anchor:middle;fill:#888}\
.grid{stroke:#e6e6e6;stroke-width:1}.frame{fill:none;stroke:#999;stroke-width:1}\
.htitle{font-size:11px;font-weight:600}.src{font-size:10px}.tgt{font-size:10px;text-anchor:end}";

const PAGE_STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0 auto;\
max-width:1180px;padding:18px 24px 48px;color:#222;line-height:1.45}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:30px 0 10px;border-bottom:1px solid #ddd;\
padding-bottom:4px}.sub{color:#555;margin:0 0 14px}\
.charts{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:6px 24px}\
.charts svg.chart{width:100%;height:auto}\
table{border-collapse:collapse;margin:6px 0 12px}td,th{border-bottom:1px solid #eee;\
padding:3px 12px 3px 0;text-align:left;vertical-align:top}th{font-weight:600}\
td.num{text-align:right;font-variant-numeric:tabular-nums}\
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}\
pre{background:#f6f8fa;padding:10px 12px;overflow-x:auto;border-radius:4px}\
.sample{margin:14px 0 22px}.sample table td:first-child{color:#555;width:90px}\
.maps{display:flex;flex-wrap:wrap;gap:10px;overflow-x:auto}.note{color:#666}\
.status{display:inline-block;padding:1px 8px;border-radius:10px;background:#eef;font-size:13px}";

fn num(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(serde_json::Value::String(s)) => escape(s),
        Some(other) => escape(&other.to_string()),
        None => "–".to_string(),
    }
}

fn run_name(r: &RunRecord) -> String {
    r.dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("run")
        .to_string()
}

pub(crate) fn page(
    r: &RunRecord,
    curves: &Curves,
    samples: &Result<Vec<Sample>, String>,
) -> String {
    let mut h = String::new();
    let name = run_name(r);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>wick report: {}</title><style>{PAGE_STYLE}{SVG_STYLE}</style></head><body>",
        escape(&name)
    );
    header(&mut h, r, &name);
    let _ = write!(
        h,
        "<h2 id=\"curves\">Training curves</h2><p class=\"sub\">Left: against updates; right: against training time (time spent training, so a resumed run's pause leaves no gap). Dev figures at each validation; training figures every <code>train.log_every</code> updates.</p><div class=\"charts\">"
    );
    for (id, chart) in &curves.charts {
        h.push_str(&chart.render(id));
    }
    h.push_str("</div>");
    test_scores(&mut h, r);
    samples_section(&mut h, samples);
    usage(&mut h, r);
    data_section(&mut h, r);
    let _ = write!(
        h,
        "<h2 id=\"config\">Configuration</h2><p class=\"sub\">The resolved <code>config.toml</code>: every default filled in.</p><pre>{}</pre>",
        escape(&r.config_text)
    );
    manifest_section(&mut h, r);
    h.push_str("</body></html>\n");
    h
}

fn header(h: &mut String, r: &RunRecord, name: &str) {
    let arch = r
        .manifest
        .as_ref()
        .and_then(|m| m.get("arch"))
        .and_then(|a| a.as_str())
        .unwrap_or("transformer");
    let _ = write!(h, "<h1>{}</h1>", escape(name));
    let status = match &r.state {
        Some(s) if s.finished => format!(
            "finished: {} updates, {} epochs, {:.1} min of training",
            s.step,
            s.epoch,
            s.elapsed_seconds / 60.0
        ),
        Some(s) => format!(
            "training: {} updates so far ({:.1} min)",
            s.step,
            s.elapsed_seconds / 60.0
        ),
        None => "no checkpoint yet".to_string(),
    };
    let best = match &r.state {
        Some(s) => match (s.best_step, s.best_bleu) {
            (Some(step), Some(b)) => format!("; best checkpoint: step {step}, dev BLEU {b:.2}"),
            _ => String::new(),
        },
        None => String::new(),
    };
    let _ = write!(
        h,
        "<p class=\"sub\"><span class=\"status\">{}</span> arch = {}{}. Directory <code>{}</code>.</p>",
        escape(&status),
        escape(arch),
        escape(&best),
        escape(&r.dir.display().to_string())
    );
}

fn test_scores(h: &mut String, r: &RunRecord) {
    h.push_str("<h2 id=\"test\">Test scores</h2>");
    let Some((file, e)) = &r.test else {
        let _ = write!(
            h,
            "<p class=\"note\">No test evaluation in the run directory yet: <code>wick evaluate --run {}</code> writes one.</p>",
            escape(&r.dir.display().to_string())
        );
        return;
    };
    let decoding = if e.beam <= 1 {
        "greedy".to_string()
    } else {
        format!("beam {}", e.beam)
    };
    let _ = write!(
        h,
        "<p class=\"sub\">{} sentences, checkpoint <code>{}</code>, {decoding} ({:.1} sentences/s); from <code>{}</code>. Intervals: 95% paired bootstrap, {} resamples.</p>",
        e.n_sentences,
        escape(&e.checkpoint.display().to_string()),
        e.sentences_per_s,
        escape(file),
        e.bleu_ci.resamples
    );
    let _ = write!(
        h,
        "<table><tr><th>metric</th><th>score</th><th>95% interval</th><th>signature</th></tr>\
<tr><td>BLEU</td><td class=\"num\">{:.2}</td><td class=\"num\">[{:.2}, {:.2}]</td><td><code>{}</code></td></tr>\
<tr><td>chrF2</td><td class=\"num\">{:.2}</td><td class=\"num\">[{:.2}, {:.2}]</td><td><code>{}</code></td></tr>\
<tr><td>exact match</td><td class=\"num\">{:.1}%</td><td></td><td></td></tr>\
<tr><td>reference perplexity</td><td class=\"num\">{:.2}</td><td></td><td>forced decoding, {} pairs</td></tr></table>",
        e.bleu,
        e.bleu_ci.low,
        e.bleu_ci.high,
        escape(&e.bleu_signature),
        e.chrf,
        e.chrf_ci.low,
        e.chrf_ci.high,
        escape(&e.chrf_signature),
        100.0 * e.exact_match,
        e.ref_ppl,
        e.ref_pairs_scored
    );
    let _ = write!(
        h,
        "<p class=\"sub\"><code>{}</code></p>",
        escape(&e.bleu_detail)
    );
    let bars: Vec<(String, f64)> = e.by_length.iter().map(|b| (b.label(), b.bleu)).collect();
    h.push_str("<div class=\"charts\">");
    h.push_str(&bar_chart(
        "bleu-by-length",
        "test BLEU by source length",
        "BLEU",
        &bars,
    ));
    h.push_str("<div><table><tr><th>words</th><th>sentences</th><th>BLEU</th><th>chrF2</th><th>length ratio</th></tr>");
    for b in &e.by_length {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{:.2}</td><td class=\"num\">{:.2}</td><td class=\"num\">{:.3}</td></tr>",
            b.label(),
            b.n_sentences,
            b.bleu,
            b.chrf,
            b.length_ratio
        );
    }
    h.push_str("</table></div></div>");
}

fn samples_section(h: &mut String, samples: &Result<Vec<Sample>, String>) {
    h.push_str("<h2 id=\"samples\">Test sentences and their attention</h2>");
    let samples = match samples {
        Ok(s) if s.is_empty() => {
            h.push_str("<p class=\"note\">No sentences asked for.</p>");
            return;
        }
        Ok(s) => s,
        Err(why) => {
            let _ = write!(h, "<p class=\"note\">No samples: {}.</p>", escape(why));
            return;
        }
    };
    h.push_str("<p class=\"sub\">The first test sentences, translated with the best checkpoint. Each map: what every output token (rows) attended to in the source (columns), averaged over the heads of one attention layer; darker is more.</p>");
    for s in samples {
        let a = &s.attention;
        let _ = write!(
            h,
            "<div class=\"sample\"><table><tr><td>source</td><td>{}</td></tr><tr><td>reference</td><td>{}</td></tr><tr><td>translation</td><td>{}</td></tr></table><div class=\"maps\">",
            escape(&a.source),
            escape(&s.reference),
            escape(&a.translation)
        );
        let src: Vec<String> = a.src_tokens.iter().map(|t| display_token(t)).collect();
        let tgt: Vec<String> = a.tgt_tokens.iter().map(|t| display_token(t)).collect();
        for layer in 0..a.layers.len() {
            let title = if a.layers.len() == 1 {
                "attention".to_string()
            } else {
                format!("layer {}", layer + 1)
            };
            h.push_str(&heatmap(&title, &src, &tgt, &a.mean_over_heads(layer)));
        }
        h.push_str("</div></div>");
    }
}

fn usage(h: &mut String, r: &RunRecord) {
    let dir = escape(&r.dir.display().to_string());
    h.push_str("<h2 id=\"use\">The best checkpoint, and how to use it</h2>");
    if let Some(best) = r.index.as_ref().and_then(|i| i.best.as_ref()) {
        let _ = write!(
            h,
            "<p><code>checkpoints/{}</code>: step {}, dev BLEU {:.2}.",
            escape(&best.file),
            best.step,
            best.dev_bleu
        );
        if let Some(i) = &r.index {
            let kept: Vec<String> = i
                .by_step
                .iter()
                .map(|c| format!("step-{}", c.step))
                .collect();
            if !kept.is_empty() {
                let _ = write!(
                    h,
                    " Validation checkpoints kept: {} (average them with <code>wick average</code>).",
                    escape(&kept.join(", "))
                );
            }
        }
        h.push_str("</p>");
    }
    let _ = write!(
        h,
        "<pre>wick translate --run {dir} \"Your sentence.\"\n\
wick translate --run {dir} --beam 5 &lt; input.txt &gt; output.txt\n\
wick translate --run {dir} --attention attention.svg \"Your sentence.\"\n\
wick evaluate --run {dir} --beam 5\n\
wick average --run {dir} --last 3</pre>\
<p>From Rust:</p><pre>let translator = wick_train::Translator::from_run(\"{dir}\", wick_train::Which::Best, &amp;candle_core::Device::Cpu)?;\n\
let french = translator.translate(&amp;[\"Your sentence.\"])?;</pre>"
    );
}

fn data_section(h: &mut String, r: &RunRecord) {
    h.push_str("<h2 id=\"data\">Data</h2>");
    let Some(m) = &r.manifest else {
        h.push_str("<p class=\"note\">No manifest.json.</p>");
        return;
    };
    let bad = m
        .get("bad_lines")
        .and_then(|b| b.as_array())
        .map_or(0, Vec::len);
    let _ = write!(
        h,
        "<table><tr><td>training pairs</td><td class=\"num\">{}</td></tr>\
<tr><td>dropped, longer than <code>data.max_len</code></td><td class=\"num\">{}</td></tr>\
<tr><td>dropped, malformed lines</td><td class=\"num\">{bad}</td></tr>\
<tr><td>dev pairs</td><td class=\"num\">{}</td></tr>\
<tr><td>dev sources also in train</td><td class=\"num\">{}</td></tr>\
<tr><td>test sources also in train</td><td class=\"num\">{}</td></tr>\
<tr><td>vocabulary (source / target)</td><td class=\"num\">{} / {}</td></tr>\
<tr><td>parameters</td><td class=\"num\">{}</td></tr></table>",
        num(m.get("train_pairs")),
        num(m.get("train_pairs_dropped")),
        num(m.get("dev_pairs")),
        num(m.get("dev_sources_in_train")),
        num(m.get("test_sources_in_train")),
        num(m.get("vocab_src")),
        num(m.get("vocab_tgt")),
        num(m.get("params")),
    );
    if let Some(files) = m.get("data").and_then(|d| d.as_array())
        && !files.is_empty()
    {
        h.push_str("<table><tr><th>split</th><th>file</th><th>sha256</th></tr>");
        for f in files {
            let _ = write!(
                h,
                "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                num(f.get("split")),
                num(f.get("path")),
                num(f.get("sha256"))
            );
        }
        h.push_str("</table>");
    }
    if let Some(s) = m.get("synthetic").and_then(|s| s.as_str()) {
        let _ = write!(h, "<p>Generated data: <code>{}</code></p>", escape(s));
    }
}

fn manifest_section(h: &mut String, r: &RunRecord) {
    h.push_str("<h2 id=\"manifest\">Provenance</h2>");
    let Some(m) = &r.manifest else {
        h.push_str("<p class=\"note\">No manifest.json.</p>");
        return;
    };
    h.push_str("<table>");
    for (key, label) in [
        ("wick_version", "wick version"),
        ("git_commit", "git commit"),
        ("arch", "architecture"),
        ("ops", "ops (kernels or reference)"),
        ("device", "device"),
        ("seed", "seed"),
        ("config_source", "config from"),
        ("created_unix", "created (Unix time)"),
    ] {
        let _ = write!(
            h,
            "<tr><td>{label}</td><td><code>{}</code></td></tr>",
            num(m.get(key))
        );
    }
    h.push_str("</table>");
}
