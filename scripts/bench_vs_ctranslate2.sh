#!/usr/bin/env bash
# Decoding speed of wick against CTranslate2 on the same models and sentences, alternated.
#
#   scripts/bench_vs_ctranslate2.sh [RUN_DIR …]
#   REPEATS=3 scripts/bench_vs_ctranslate2.sh runs/toy runs/multi30k-en-de-lc
#   PRESETS="tiny small base" scripts/bench_vs_ctranslate2.sh
#
# For each run: exports its best checkpoint with `wick export --format ctranslate2` (float32,
# and int8 with --quantization int8), then REPEATS times, alternately, times
#   - wick: `wick bench decode --run RUN --beam 5 --no-uncached [--quantize int8]` (greedy and
#     beam 5 over the run's test split, text to output ids, weights laid out before timing);
#   - CTranslate2 (scripts/bench_ctranslate2.py) on the same sentences and the same length
#     penalty value, in both of its 2-thread configurations (inter_threads=2, intra_threads=1
#     and 1/2), of which the faster counts;
# both at float32 and int8, 2 threads each. Then the same for each Transformer preset in
# $PRESETS (default "tiny small"; PRESETS= for none) on a fixed shape, $SHAPE (default
# "64 24 24": 64 random sources of 24 tokens, exactly 24 output tokens each): the preset's
# random model is written as a run (`wick bench decode --preset P --write-run`) and exported,
# and the engines decode it with `bench decode --preset P` and `bench_ctranslate2.py --fixed`.
# Peak RSS: wick's per mode from `bench decode` (the peak is reset between modes),
# CTranslate2's from /usr/bin/time with one process per beam. BLEU of each engine's output on
# a run's test split comes from `wick evaluate` and sacrebleu.
# Writes one JSON line per measurement to $OUT (default target/bench-ct2.jsonl) and prints
# the medians. CTranslate2 4.8.5 comes from PyPI into target/export-venv (or set PYTHON).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
presets=${PRESETS-tiny small}
read -r fixed_b fixed_s fixed_t <<< "${SHAPE:-64 24 24}"
[[ $# -ge 1 || -n "$presets" ]] || { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
repeats=${REPEATS:-3}
out=${OUT:-$root/target/bench-ct2.jsonl}
wick=${WICK:-$root/target/release/wick}
[[ -x "$wick" ]] || cargo build --release -p wick-cli
if [[ -z "${PYTHON:-}" ]]; then
  venv=$root/target/export-venv
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "ctranslate2==4.8.5" "tokenizers==0.22.1" "safetensors==0.6.2" \
    "sacrebleu==2.6.0" numpy
  PYTHON=$venv/bin/python
fi
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=1
: > "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rss() { # the peak RSS (MB) /usr/bin/time wrote to $1
  awk '{ printf "%.1f", $1 / 1024 }' "$1"
}

record_wick() { # NAME PRECISION REPEAT: `bench decode --json` in $work/wick.json → $out
  "$PYTHON" - "$work/wick.json" "$(rss "$work/rss")" "$@" >> "$out" <<'EOF'
import json, sys
timings, rss, name, precision, r = json.load(open(sys.argv[1])), float(sys.argv[2]), *sys.argv[3:]
for t in timings:
    beam = 1 if t["mode"] == "greedy" else int(t["mode"].removeprefix("beam"))
    print(json.dumps({"engine": "wick", "run": name, "precision": precision, "repeat": int(r),
        "beam": beam, "sentences_per_s": t["sentences_per_s"], "tokens_per_s": t["tokens_per_s"],
        "seconds": t["seconds"], "peak_rss_mb": t.get("peak_rss_mb", rss)}))
EOF
}

record_ct2() { # NAME PRECISION REPEAT: bench_ctranslate2.py's lines in $work/ct2.json → $out
  "$PYTHON" - "$work/ct2.json" "$(rss "$work/rss")" "$@" >> "$out" <<'EOF'
import json, sys
path, rss, name, precision, r = sys.argv[1], float(sys.argv[2]), *sys.argv[3:]
for line in open(path):
    t = json.loads(line)
    t.update({"run": name, "precision": precision, "repeat": int(r), "peak_rss_mb": rss,
              "engine": f"ctranslate2 inter {t['inter_threads']} intra {t['intra_threads']}"})
    print(json.dumps(t))
EOF
}

time_ct2() { # NAME PRECISION REPEAT DIR ARGS…: bench_ctranslate2.py in both 2-thread configurations
  local name=$1 precision=$2 r=$3 dir=$4
  shift 4
  for threads in "2 1" "1 2"; do
    read -r inter intra <<< "$threads"
    for beam in 1 5; do  # a process per beam, so that each peak RSS is that beam's alone
      /usr/bin/time -f %M -o "$work/rss" "$PYTHON" scripts/bench_ctranslate2.py "$dir" "$@" \
        --beam "$beam" --inter "$inter" --intra "$intra" > "$work/ct2.json"
      record_ct2 "$name" "$precision" "$r"
    done
  done
}

for run in "$@"; do
  name=$(basename "$run")
  "$wick" export --run "$run" --format ctranslate2 --force "$work/$name-f32" > /dev/null
  "$wick" export --run "$run" --format ctranslate2 --quantization int8 --force "$work/$name-int8" > /dev/null
  # The test split's sources and references, as wick reads them.
  "$PYTHON" - "$run" "$work/$name" <<'EOF'
import gzip, sys, tomllib
from pathlib import Path
run, prefix = Path(sys.argv[1]), sys.argv[2]
test = tomllib.loads((run / "config.toml").read_text())["data"]["test"]
def lines(p):
    p = Path(p)
    raw = gzip.open(p, "rt", encoding="utf-8") if p.suffix == ".gz" else open(p, encoding="utf-8")
    return raw.read().splitlines()
if isinstance(test, str) or "tsv" in test:  # `test = "x.tsv"` or `test = { tsv = "x.tsv" }`
    pairs = [l.split("\t") for l in lines(test if isinstance(test, str) else test["tsv"])]
    src, ref = [p[0] for p in pairs], [p[1] for p in pairs]
else:
    src, ref = lines(test["src"]), lines(test["tgt"])
Path(prefix + ".src").write_text("".join(s + "\n" for s in src), encoding="utf-8")
Path(prefix + ".ref").write_text("".join(s + "\n" for s in ref), encoding="utf-8")
EOF
  alpha=$(sed -n 's/^length_penalty *= *\([0-9.]*\).*/\1/p' "$run/config.toml" | head -1)
  a=$(sed -n 's/^max_len_a *= *\([0-9.]*\).*/\1/p' "$run/config.toml" | head -1)
  b=$(sed -n 's/^max_len_b *= *\([0-9]*\).*/\1/p' "$run/config.toml" | head -1)
  for r in $(seq 1 "$repeats"); do
    for precision in float32 int8; do
      flag=(); dir=$work/$name-f32
      [[ $precision == int8 ]] && { flag=(--quantize int8); dir=$work/$name-int8; }
      /usr/bin/time -f %M -o "$work/rss" "$wick" bench decode --run "$run" --beam 5 --no-uncached \
        "${flag[@]}" --json > "$work/wick.json"
      record_wick "$name" "$precision" "$r"
      time_ct2 "$name" "$precision" "$r" "$dir" "$work/$name.src" --alpha "$alpha" \
        --max-len-a "$a" --max-len-b "$b" --refs "$work/$name.ref" \
        --hyp-prefix "$work/$name.ct2.$precision"
    done
  done
  # BLEU of wick's outputs (not timed), for the table.
  for precision in float32 int8; do
    flag=(); [[ $precision == int8 ]] && flag=(--quantize int8)
    for beam in 1 5; do
      "$wick" evaluate --run "$run" --beam "$beam" "${flag[@]}" --output "$work/$name.wick.$precision.$beam" --json \
        | jq -c --arg n "$name" --arg p "$precision" --argjson b "$beam" \
          '{engine: "wick", run: $n, precision: $p, beam: $b, bleu: (.bleu*100|round/100), chrf: (.chrf*100|round/100)}' >> "$out"
    done
  done
done

for preset in $presets; do
  name="preset $preset, $fixed_b × $fixed_s → $fixed_t"
  "$wick" bench decode --preset "$preset" --write-run "$work/preset-$preset" > /dev/null
  "$wick" export --run "$work/preset-$preset" --format ctranslate2 "$work/preset-$preset-f32" > /dev/null
  "$wick" export --run "$work/preset-$preset" --format ctranslate2 --quantization int8 \
    "$work/preset-$preset-int8" > /dev/null
  for r in $(seq 1 "$repeats"); do
    for precision in float32 int8; do
      flag=(); dir=$work/preset-$preset-f32
      [[ $precision == int8 ]] && { flag=(--quantize int8); dir=$work/preset-$preset-int8; }
      /usr/bin/time -f %M -o "$work/rss" "$wick" bench decode --preset "$preset" --beam 5 \
        --batch-size "$fixed_b" --src-len "$fixed_s" --steps "$fixed_t" "${flag[@]}" --json \
        > "$work/wick.json"
      record_wick "$name" "$precision" "$r"
      time_ct2 "$name" "$precision" "$r" "$dir" --fixed "$fixed_b" "$fixed_s" "$fixed_t"
    done
  done
done

"$PYTHON" - "$out" <<'EOF'
import collections, json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
speed = collections.defaultdict(list)
bleu = {}
for r in rows:
    if "sentences_per_s" in r:
        speed[(r["run"], r["precision"], r["beam"], r["engine"])].append(r)
    elif "bleu" in r:
        bleu[(r["run"], r["precision"], r["beam"], "wick")] = (r["bleu"], r["chrf"])
for r in rows:
    if "sentences_per_s" in r and "bleu" in r and r["engine"].startswith("ctranslate2"):
        bleu[(r["run"], r["precision"], r["beam"], "ctranslate2")] = (r["bleu"], r["chrf"])
print("| run | precision | beam | wick sent/s | CTranslate2 sent/s (config) | wick / CT2 | peak RSS MB wick / CT2 | BLEU wick / CT2 |")
print("|---|---|---|---|---|---|---|---|")
for key in sorted({k[:3] for k in speed}):
    med = lambda rs, f: statistics.median(x[f] for x in rs)
    w = speed[key + ("wick",)]
    cts = [(e, rs) for (rn, p, b, e), rs in speed.items() if (rn, p, b) == key and e.startswith("ctranslate2")]
    e, c = max(cts, key=lambda x: med(x[1], "sentences_per_s"))
    ws, cs = med(w, "sentences_per_s"), med(c, "sentences_per_s")
    bw, bc = bleu.get(key + ("wick",), ("?", "?")), bleu.get(key + ("ctranslate2",), ("?", "?"))
    print(f"| {key[0]} | {key[1]} | {key[2]} | {ws:,.1f} | {cs:,.1f} ({e.removeprefix('ctranslate2 ')}) | "
          f"{ws / cs:.2f}× | {med(w, 'peak_rss_mb'):,.0f} / {med(c, 'peak_rss_mb'):,.0f} | {bw[0]} / {bc[0]} |")
EOF
