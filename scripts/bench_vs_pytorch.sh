#!/usr/bin/env bash
# wick against PyTorch on the same CPU, same model, same shapes, same thread count.
#
#   scripts/bench_vs_pytorch.sh [--presets "tiny small"] [--repeats 3] [--threads 2]
#
# Presets: tiny, small, base (Transformers), rnn (GRU + Bahdanau attention), conv (ConvS2S).
# Builds wick (release), makes a Python venv with torch from PyPI (target/bench-venv, or the
# interpreter in $TORCH_PYTHON), then runs `wick bench train|decode --preset P --json` and
# scripts/reference/bench_torch.py alternately, REPEATS times each, so that a machine that is
# slower for a minute slows both sides. Prints the medians side by side with ratios
# (> 1: wick is faster / uses less memory) and writes every raw JSON line to
# target/bench-vs-pytorch.jsonl. Also times the training step's matrix products alone
# (`wick bench matmul` against torch.mm on the same shapes): what the matmul engine by itself
# costs per step on each side.
set -euo pipefail

presets="tiny small"
repeats=3
threads=2
while [[ $# -gt 0 ]]; do
    case "$1" in
        --presets) presets="$2"; shift 2 ;;
        --repeats) repeats="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "bench_vs_pytorch.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# The whole workspace, as `cargo build --release` builds it: one package alone unifies
# features differently and would rebuild Candle.
cargo build --release --quiet
wick="$root/target/release/wick"

python="${TORCH_PYTHON:-}"
if [[ -z "$python" ]]; then
    venv="$root/target/bench-venv"
    if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet torch numpy
    fi
    python="$venv/bin/python"
fi

# Both sides get the same number of threads: rayon (wick's matmuls and kernels) and
# OpenMP/MKL (torch.set_num_threads).
export RAYON_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
out="$root/target/bench-vs-pytorch.jsonl"
: > "$out"

record() { # kind preset impl json
    printf '{"kind":"%s","preset":"%s","impl":"%s","result":%s}\n' "$1" "$2" "$3" "$4" >> "$out"
}

for preset in $presets; do
    for ((r = 1; r <= repeats; r++)); do
        echo "train $preset, repeat $r/$repeats" >&2
        record train "$preset" wick "$("$wick" bench train --preset "$preset" --json)"
        record train "$preset" pytorch "$("$python" scripts/reference/bench_torch.py train --preset "$preset" --threads "$threads")"
        echo "decode $preset, repeat $r/$repeats" >&2
        # wick's line is a list (greedy, beam 5); beam has no PyTorch counterpart here.
        record decode "$preset" wick "$("$wick" bench decode --preset "$preset" --beam 5 --json)"
        record decode "$preset" pytorch "$("$python" scripts/reference/bench_torch.py decode --preset "$preset" --threads "$threads")"
        # The products of a step are listed for the Transformers only.
        [[ "$preset" == rnn || "$preset" == conv ]] && continue
        echo "matmul $preset, repeat $r/$repeats" >&2
        shapes="$("$wick" bench matmul --preset "$preset" --json)"
        record matmul "$preset" wick "$shapes"
        printf '%s\n' "$shapes" > "$root/target/bench-matmul-shapes.json"
        record matmul "$preset" pytorch "$("$python" scripts/reference/bench_torch.py matmul --shapes "$root/target/bench-matmul-shapes.json" --threads "$threads")"
    done
done

python3 - "$out" <<'EOF'
import json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1])]
def med(kind, preset, impl, key, mode=None):
    vals = []
    for r in rows:
        if (r["kind"], r["preset"], r["impl"]) != (kind, preset, impl):
            continue
        res = r["result"]
        if isinstance(res, list):
            res = next((x for x in res if x["mode"] == mode), None)
            if res is None:
                continue
        if res.get(key) is not None:
            vals.append(res[key])
    return statistics.median(vals) if vals else float("nan")

presets = list(dict.fromkeys(r["preset"] for r in rows))
print("\nTraining (median of repeats; ratio > 1 means wick is better)")
print(f"{'preset':<7} {'wick tok/s':>11} {'torch tok/s':>12} {'speed ratio':>12} {'wick MB':>9} {'torch MB':>9} {'wick work MB':>13} {'torch work MB':>14} {'RSS ratio':>10}")
for p in presets:
    wt, pt = med("train", p, "wick", "tgt_tokens_per_s"), med("train", p, "pytorch", "tgt_tokens_per_s")
    wm, pm = med("train", p, "wick", "peak_rss_mb"), med("train", p, "pytorch", "peak_rss_mb")
    ww, pw = med("train", p, "wick", "working_memory_mb"), med("train", p, "pytorch", "working_memory_mb")
    print(f"{p:<7} {wt:>11,.0f} {pt:>12,.0f} {wt / pt:>11.2f}× {wm:>9,.0f} {pm:>9,.0f} {ww:>13,.0f} {pw:>14,.0f} {pm / wm:>9.2f}×")
print("\nCached greedy decoding, 64 sentences × 24 tokens (sentences/s)")
print(f"{'preset':<7} {'wick':>8} {'torch':>8} {'ratio':>7} {'wick beam 5':>12}")
for p in presets:
    wg, pg = med("decode", p, "wick", "sentences_per_s", "greedy"), med("decode", p, "pytorch", "sentences_per_s")
    wb = med("decode", p, "wick", "sentences_per_s", "beam5")
    print(f"{p:<7} {wg:>8,.1f} {pg:>8,.1f} {wg / pg:>6.2f}× {wb:>12,.1f}")
print("\nThe training step's linear-layer and output-projection products alone (ms per step)")
print(f"{'preset':<7} {'wick':>8} {'torch':>8} {'ratio':>7} {'wick GFLOP/s':>13} {'torch GFLOP/s':>14} {'torch step':>11} {'share':>6}")
for p in presets:
    if p in ("rnn", "conv"):
        continue
    wm, pm = med("matmul", p, "wick", "total_ms"), med("matmul", p, "pytorch", "total_ms")
    wg, pg = med("matmul", p, "wick", "gflops"), med("matmul", p, "pytorch", "gflops")
    step = med("train", p, "pytorch", "ms_per_step")
    share = med("matmul", p, "wick", "share_of_step_flops")
    print(f"{p:<7} {wm:>8,.1f} {pm:>8,.1f} {pm / wm:>6.2f}× {wg:>13,.1f} {pg:>14,.1f} {step:>11,.1f} {share:>6.0%}")
EOF
echo "raw results: $out" >&2
