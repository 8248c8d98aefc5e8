#!/usr/bin/env bash
# Multi30k "paper BLEU": lowercased, Moses-tokenized BLEU against the official tokenized
# references, the number papers report for test2016.
#
#   scripts/paper_bleu.sh [--tokenized] HYP LANG REF
#   scripts/paper_bleu.sh runs/multi30k-en-de/hyp.test.best.beam5.txt de \
#       ../shared/data/multi30k/tok/test2016.lc.norm.tok.de.gz
#
# HYP is wick's detokenized output (one sentence per line), LANG the target language, REF the
# official `*.lc.norm.tok.*` file (plain or .gz). The hypotheses go through the same steps that
# made the references (sacremoses 0.2.0: lowercase, MosesPunctNormalizer, MosesTokenizer with
# escaping; these reproduce the official files exactly, see ../shared/data/README.md), then
# sacreBLEU scores with --tokenize none -lc. Prints sacreBLEU's line, then the score alone.
# With --tokenized, HYP is already in the references' form (a model trained on
# scripts/prepare_multi30k_lc.sh's output) and is scored as it is: running Moses over it again
# would escape its escapes (`&quot;` → `&amp;quot;`).
# Python packages come from a venv under target/paper-bleu-venv, made on first use.
set -euo pipefail
tokenized=0
if [ "${1:-}" = "--tokenized" ]; then tokenized=1; shift; fi
if [ $# -ne 3 ]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
hyp=$1 lang=$2 ref=$3
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/target/paper-bleu-venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "sacremoses==0.2.0" "sacrebleu==2.6.0"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
case "$ref" in
    *.gz) gzip -dc "$ref" > "$tmp/ref" ;;
    *) cp "$ref" "$tmp/ref" ;;
esac
if [ "$tokenized" = 1 ]; then
    cp "$hyp" "$tmp/hyp.tok"
else
"$venv/bin/python" - "$hyp" "$lang" "$tmp/hyp.tok" <<'PY'
import sys
from sacremoses import MosesPunctNormalizer, MosesTokenizer
hyp, lang, out = sys.argv[1:]
norm, tok = MosesPunctNormalizer(lang), MosesTokenizer(lang)
with open(hyp, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as o:
    for line in f:
        s = norm.normalize(line.rstrip("\n").lower())
        o.write(tok.tokenize(s, return_str=True, escape=True) + "\n")
PY
fi
n_hyp=$(wc -l < "$tmp/hyp.tok") n_ref=$(wc -l < "$tmp/ref")
if [ "$n_hyp" -ne "$n_ref" ]; then
    echo "error: $hyp has $n_hyp lines but $ref has $n_ref" >&2
    exit 1
fi
"$venv/bin/sacrebleu" "$tmp/ref" -i "$tmp/hyp.tok" --tokenize none -lc -m bleu --force
"$venv/bin/sacrebleu" "$tmp/ref" -i "$tmp/hyp.tok" --tokenize none -lc -m bleu -b --force
