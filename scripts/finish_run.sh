#!/usr/bin/env bash
# The end of a recipe, choices made on dev only: average checkpoints, pick the checkpoint and
# the length penalty by dev BLEU with beam search, then score test once with that choice.
#
#   scripts/finish_run.sh RUN_DIR [PAPER_REF]
#   scripts/finish_run.sh runs/multi30k-en-de ../shared/data/multi30k/tok/test2016.lc.norm.tok.de.gz
#
# Candidates: best.safetensors and the averages of the last K and best K validation
# checkpoints (K = $AVERAGE, default 5), each decoded on dev with beam $BEAM (default 5) at
# α = 1.0; the winner is decoded on dev again at each α in $ALPHAS (default "0.6 1.0 1.4").
# Test is translated once, with the winning checkpoint and α. With PAPER_REF (an official
# tokenized lowercased reference), also prints Multi30k's paper BLEU (scripts/paper_bleu.sh;
# PAPER_TOKENIZED=1 for a model trained on already tokenized text, which it scores as it is).
# Writes RUN_DIR/finish.json with every dev score and the final test report.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
run=$1 paper_ref=${2:-}
root=$(cd "$(dirname "$0")/.." && pwd)
wick=${WICK:-$root/target/release/wick}
beam=${BEAM:-5} k=${AVERAGE:-5} alphas=${ALPHAS:-"0.6 1.0 1.4"}
[ -x "$wick" ] || { echo "error: $wick not found; run cargo build --release first or set WICK" >&2; exit 1; }
[ -f "$run/config.toml" ] || { echo "error: $run is not a wick run directory (no config.toml)" >&2; exit 1; }
command -v jq >/dev/null || { echo "error: this script needs jq" >&2; exit 1; }

log="$run/finish.jsonl"
: > "$log"
dev_bleu() { # checkpoint alpha → dev BLEU; the full report goes to finish.jsonl
    "$wick" evaluate --run "$run" --checkpoint "$1" --split dev --beam "$beam" \
        --length-penalty "$2" --output "$run/hyp.dev.$1.beam$beam.lp$2.txt" --json \
        | jq -c --arg c "$1" --arg a "$2" '{split: "dev", checkpoint: $c, alpha: ($a|tonumber), bleu, chrf}' \
        | tee -a "$log" | jq -r .bleu
}

candidates=(best)
for sel in last best; do
    if "$wick" average --run "$run" --"$sel" "$k" >&2; then
        candidates+=("avg-$sel-$k.safetensors")
    fi
done
best_ckpt="" best_score=-1
for c in "${candidates[@]}"; do
    s=$(dev_bleu "$c" 1.0)
    printf "dev BLEU, beam %s, α 1.0: %.2f  %s\n" "$beam" "$s" "$c" >&2
    if awk -v a="$s" -v b="$best_score" 'BEGIN { exit !(a > b) }'; then best_ckpt=$c best_score=$s; fi
done
best_alpha=1.0
for a in $alphas; do
    [ "$a" = "1.0" ] && continue
    s=$(dev_bleu "$best_ckpt" "$a")
    printf "dev BLEU, beam %s, α %s: %.2f  %s\n" "$beam" "$a" "$s" "$best_ckpt" >&2
    if awk -v a="$s" -v b="$best_score" 'BEGIN { exit !(a > b) }'; then best_alpha=$a best_score=$s; fi
done
printf "chosen on dev: %s, α %s (dev BLEU %.2f)\n" "$best_ckpt" "$best_alpha" "$best_score" >&2

hyp="$run/hyp.test.$best_ckpt.beam$beam.lp$best_alpha.txt"
"$wick" evaluate --run "$run" --checkpoint "$best_ckpt" --split test --beam "$beam" \
    --length-penalty "$best_alpha" --output "$hyp" --json > "$run/finish.test.json"
jq -r '"test: BLEU \(.bleu*100|round/100) [\(.bleu_ci.low*100|round/100), \(.bleu_ci.high*100|round/100)], chrF2 \(.chrf*100|round/100), \(.sentences_per_s*10|round/10) sentences/s\n  \(.bleu_detail)\n  \(.signature)"' "$run/finish.test.json"
paper=null
if [ -n "$paper_ref" ]; then
    lang=$(sed -n 's/^tgt_lang *= *"\([^"]*\)".*/\1/p' "$run/config.toml" | head -1)
    tok_flag=()
    [ "${PAPER_TOKENIZED:-0}" = 1 ] && tok_flag=(--tokenized)
    paper=$("$root/scripts/paper_bleu.sh" "${tok_flag[@]}" "$hyp" "$lang" "$paper_ref" | tail -1)
    echo "paper BLEU (lowercased, Moses-tokenized): $paper"
fi
jq -s --arg c "$best_ckpt" --argjson a "$best_alpha" --argjson p "$paper" \
    --slurpfile t "$run/finish.test.json" \
    '{chosen: {checkpoint: $c, alpha: $a}, dev: ., test: $t[0], paper_bleu: $p}' "$log" > "$run/finish.json"
rm -f "$log" "$run/finish.test.json"
echo "translations: $hyp; all scores: $run/finish.json"
