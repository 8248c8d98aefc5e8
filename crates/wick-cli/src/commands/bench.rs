//! `wick bench train|decode|matmul`: speed on fixed shapes and on a run's test split.

use anyhow::{Result, bail};
use wick_train::bench::{BenchRequest, bench_train};
use wick_train::config::Config;
use wick_train::device::parse_device;
use wick_train::prepare::load_split;
use wick_train::run::Run;

use crate::args::{BenchDecodeArgs, BenchMatmulArgs, BenchTrainArgs};

pub(crate) fn cmd_bench_train(a: BenchTrainArgs) -> Result<()> {
    let (model, vocab) = match &a.config {
        Some(path) => (Config::load(path, &[])?.model, a.vocab),
        None => a.preset.config(),
    };
    let (batch_size, src_len, tgt_len) = a.shape.dims()?;
    if a.steps == 0 {
        bail!("--steps must be positive")
    }
    if a.shards == 0 {
        bail!("--shards must be positive")
    }
    let device = parse_device(&a.device)?;
    let r = bench_train(BenchRequest {
        model,
        vocab,
        batch_size,
        src_len,
        tgt_len,
        steps: a.steps,
        warmup: 3,
        shards: a.shards,
        device,
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "params {}  batch {}x({}+{})  {:.1} ms/step (min {:.1}, max {:.1}; gradients of {} shards {:.0}, update {:.0})  {:.0} target tokens/s  {:.1} GFLOP/s matmul  peak RSS {:.0} MB (working {:.0} MB)",
            r.params,
            r.batch_size,
            r.src_len,
            r.tgt_len,
            r.ms_per_step,
            r.ms_per_step_min,
            r.ms_per_step_max,
            r.shards,
            r.gradients_ms,
            r.update_ms,
            r.tgt_tokens_per_s,
            r.gflops,
            r.peak_rss_mb.unwrap_or(0.0),
            r.working_memory_mb.unwrap_or(0.0)
        );
    }
    Ok(())
}

pub(crate) fn cmd_bench_matmul(a: BenchMatmulArgs) -> Result<()> {
    let (b, s, t) = a.shape.dims()?;
    if a.repeats == 0 {
        bail!("--repeats must be positive")
    }
    let device = parse_device(&a.device)?;
    let (cfg, vocab) = a.preset.config();
    let cost = wick_train::bench::step_cost(&cfg, vocab, b, s, t)?;
    let timings = wick_train::bench::bench_matmul(&cost.products, a.repeats, &device)?;
    let per_step = |pass: &str| -> f64 {
        timings
            .iter()
            .filter(|t| t.shape.pass == pass)
            .map(|t| t.ms * t.shape.count as f64)
            .sum()
    };
    let (forward_ms, backward_ms) = (per_step("forward"), per_step("backward"));
    let flops: f64 = timings
        .iter()
        .map(|t| 2.0 * (t.shape.m * t.shape.k * t.shape.n * t.shape.count) as f64)
        .sum();
    // What share of the step's matmul FLOPs (as `wick bench train` counts them) these cover.
    let step_flops = 3.0 * cost.forward_flops;
    let total_ms = forward_ms + backward_ms;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "preset": a.preset.name(),
                "threads": rayon::current_num_threads(),
                "products": timings,
                "forward_ms": forward_ms,
                "backward_ms": backward_ms,
                "total_ms": total_ms,
                "gflops": flops / total_ms / 1e6,
                "share_of_step_flops": flops / step_flops,
            })
        );
        return Ok(());
    }
    println!(
        "{:<26} {:>9} {:>22} {:>6} {:>9} {:>8}",
        "product", "pass", "(m×k)·(k×n)", "count", "ms", "GFLOP/s"
    );
    for t in &timings {
        let s = &t.shape;
        let dims = format!(
            "({}×{}{})·({}×{}{})",
            s.m,
            s.k,
            if s.lhs_t { "ᵀ" } else { "" },
            s.k,
            s.n,
            if s.rhs_t { "ᵀ" } else { "" }
        );
        println!(
            "{:<26} {:>9} {:>22} {:>6} {:>9.3} {:>8.1}",
            s.name, s.pass, dims, s.count, t.ms, t.gflops
        );
    }
    println!(
        "per step: forward {forward_ms:.1} ms, backward {backward_ms:.1} ms, total {total_ms:.1} ms at {:.1} GFLOP/s ({:.0}% of the step's matmul FLOPs; the rest is the attention core)",
        flops / total_ms / 1e6,
        100.0 * flops / step_flops
    );
    Ok(())
}

pub(crate) fn cmd_bench_decode(a: BenchDecodeArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let timings = match (&a.run, a.preset) {
        (Some(run_dir), _) => {
            let run = Run::open(run_dir)?;
            let mut sources: Vec<String> = load_split(&run.config, a.split)?
                .into_iter()
                .map(|p| p.src)
                .collect();
            if let Some(n) = a.limit {
                sources.truncate(n);
            }
            if sources.is_empty() {
                bail!("nothing to decode: the {} split is empty", a.split.name())
            }
            wick_train::bench::bench_decode(wick_train::bench::DecodeBenchRequest {
                run: &run,
                which: a.checkpoint.clone(),
                sources,
                beam: a.beam,
                uncached: !a.no_uncached,
                repeats: a.repeats,
                device: &device,
                weights: a.quantize.unwrap_or_default(),
            })?
        }
        (None, Some(preset)) => {
            let (model, vocab) = preset.config();
            if let Some(dir) = &a.write_run {
                wick_train::bench::write_preset_run(preset.name(), &model, vocab, dir)?;
                println!(
                    "wrote the {} preset (random weights, vocabulary {vocab}) as run {}",
                    preset.name(),
                    dir.display()
                );
                return Ok(());
            }
            if a.batch_size == 0 || a.src_len == 0 || a.steps == 0 {
                bail!("--batch-size, --src-len and --steps must be positive")
            }
            wick_train::bench::bench_decode_preset(wick_train::bench::PresetDecodeRequest {
                model,
                vocab,
                batch_size: a.batch_size,
                src_len: a.src_len,
                steps: a.steps,
                beam: a.beam,
                repeats: a.repeats,
                device,
                weights: a.quantize.unwrap_or_default(),
            })?
        }
        (None, None) => bail!("give --run DIR or --preset tiny|small|base|rnn|conv"),
    };
    if a.json {
        println!("{}", serde_json::to_string(&timings)?);
        return Ok(());
    }
    let base = timings[0].seconds;
    for t in &timings {
        let peak = t
            .peak_rss_mb
            .map(|mb| format!(", peak RSS {mb:.0} MB"))
            .unwrap_or_default();
        println!(
            "{:<16} {:>5} sentences  {:>7.2} s  {:>8.1} sentences/s  {:>8.0} tokens/s  ({:.2}× the time of cached greedy{peak})",
            t.mode,
            t.sentences,
            t.seconds,
            t.sentences_per_s,
            t.tokens_per_s,
            t.seconds / base
        );
    }
    if let Some(layout) = timings[0].layout_seconds {
        println!(
            "(the weights' layout for decoding, once per model before the runs above: {layout:.2} s)"
        );
    }
    Ok(())
}
