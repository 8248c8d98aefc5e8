#!/usr/bin/env bash
# Multi30k in the papers' preprocessing: lowercased, punctuation-normalized, Moses-tokenized
# (with Moses' XML escapes), the form of the official `data/task1/tok/*.lc.norm.tok.*` files
# that published small-model results are trained and scored on.
#
#   scripts/prepare_multi30k_lc.sh [SRC_DIR] [OUT_DIR]
#   scripts/prepare_multi30k_lc.sh ../shared/data/multi30k runs/data/multi30k-lc
#
# Reads SRC_DIR/{train,val,test2016}.{en,de}.gz (the raw splits) and writes
# OUT_DIR/{train,val,test2016}.lc.norm.tok.{en,de}.gz with sacremoses 0.2.0's steps
# (`lower()`, MosesPunctNormalizer, MosesTokenizer with escape=True). Before writing it checks
# that test2016 comes out byte-identical to SRC_DIR/tok/ (the official files), so the steps
# are the official ones. The output stays outside git (the corpus is research/education use
# only; see ../shared/data/README.md). configs/multi30k-en-de-lc.toml trains on it.
set -euo pipefail
if [ $# -gt 2 ]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-$root/../shared/data/multi30k} out=${2:-$root/runs/data/multi30k-lc}
venv="$root/target/paper-bleu-venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "sacremoses==0.2.0" "sacrebleu==2.6.0"
fi
for f in train val test2016; do for l in en de; do
    [ -f "$src/$f.$l.gz" ] || { echo "error: $src/$f.$l.gz not found" >&2; exit 1; }
done; done
mkdir -p "$out"
"$venv/bin/python" - "$src" "$out" <<'PY'
import gzip, sys
from sacremoses import MosesPunctNormalizer, MosesTokenizer
src, out = sys.argv[1:]

def prepare(path, lang):
    norm, tok = MosesPunctNormalizer(lang), MosesTokenizer(lang)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        # Tabs occur once in train.de (line 7366); Moses treats them as spaces.
        return [tok.tokenize(norm.normalize(line.rstrip("\n").lower()), return_str=True, escape=True)
                for line in f]

for lang in ("en", "de"):
    official = f"{src}/tok/test2016.lc.norm.tok.{lang}.gz"
    with gzip.open(official, "rt", encoding="utf-8") as f:
        want = [line.rstrip("\n") for line in f]
    got = prepare(f"{src}/test2016.{lang}.gz", lang)
    bad = [i + 1 for i, (a, b) in enumerate(zip(got, want)) if a != b]
    if len(got) != len(want) or bad:
        sys.exit(f"error: test2016.{lang} does not reproduce {official} (lines {bad[:5]}); "
                 "is sacremoses 0.2.0 installed?")
    for split in ("train", "val", "test2016"):
        lines = got if split == "test2016" else prepare(f"{src}/{split}.{lang}.gz", lang)
        # mtime 0: the same input gives byte-identical files, so run manifests' hashes repeat.
        with open(f"{out}/{split}.lc.norm.tok.{lang}.gz", "wb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as g:
            g.write("".join(l + "\n" for l in lines).encode("utf-8"))
        print(f"{out}/{split}.lc.norm.tok.{lang}.gz: {len(lines)} lines", file=sys.stderr)
PY
