#!/usr/bin/env bash
# Holds `wick export --format ctranslate2` to CTranslate2 itself.
#
#   scripts/check_export.sh [WORK_DIR]
#
# Trains two short runs of the quick-start recipe (post-norm with one tied embedding and a
# joint vocabulary; pre-norm with untied embeddings and separate vocabularies), then for
# each run:
#   1. exports it with every quantization and checks that model.bin, config.json and the
#      vocabularies are byte for byte what CTranslate2's own Python serialiser writes for
#      the same weights (scripts/reference/ct2_export.py; bfloat16 needs torch in that
#      Python and is skipped without it);
#   2. exporting twice gives the same bytes;
#   3. translates the toy test split (1,000 sentences) with CTranslate2 as the export's
#      README says and compares with `wick translate`: greedy float32 must agree on ≥ 99.5%
#      of the lines and on every one of the first 100; beam 5 at α = 0 (where both length
#      penalties are 1) on ≥ 99.5%; int8 agreement is reported.
# CTranslate2 comes from PyPI into target/export-venv (or set PYTHON to an interpreter that
# has ctranslate2, tokenizers, safetensors and numpy). Exits non-zero on the first failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work=${1:-$(mktemp -d)}
mkdir -p "$work"
target_dir=${CARGO_TARGET_DIR:-$root/target}
wick=${WICK:-$target_dir/release/wick}
[[ -x "$wick" ]] || cargo build --release -p wick-cli
if [[ -z "${PYTHON:-}" ]]; then
  venv=$root/target/export-venv
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet "ctranslate2==4.8.5" "tokenizers==0.22.1" "safetensors==0.6.2" numpy
  PYTHON=$venv/bin/python
fi
has_torch=$("$PYTHON" -c 'import importlib.util as u; print(int(u.find_spec("torch") is not None))')
fail() { echo "FAIL: $*" >&2; exit 1; }

cut -f1 data/toy/test.tsv > "$work/test.src"

train() { # name, extra --set flags…
  local name=$1; shift
  [[ -f "$work/$name/checkpoints/best.safetensors" ]] && return
  rm -rf "${work:?}/$name"
  "$wick" train --config configs/toy.toml --run-dir "$work/$name" --samples 0 \
    --set train.max_steps=600 --set train.max_minutes=4 --set train.validate_every=600 \
    --set train.valid_max_sentences=100 "$@" > "$work/$name.log" 2>&1 \
    || { tail -20 "$work/$name.log"; fail "training $name"; }
}
train post
train pre --set model.norm=pre --set model.tie_embeddings=none --set data.joint_vocab=false

for run in post pre; do
  echo "== $run"
  for q in none int8 int8_float32 int8_float16 int8_bfloat16 int16 float16 bfloat16; do
    out=$work/$run-$q ref=$work/$run-$q.ref
    rm -rf "$out" "$ref" "$out.again"
    flag=(); [[ $q != none ]] && flag=(--quantization "$q")
    "$wick" export --run "$work/$run" --format ctranslate2 "${flag[@]}" "$out" > /dev/null 2>&1 \
      || { "$wick" export --run "$work/$run" --format ctranslate2 "${flag[@]}" "$out"; fail "export $run $q"; }
    "$wick" export --run "$work/$run" --format ctranslate2 "${flag[@]}" "$out.again" > /dev/null 2>&1
    for f in "$out"/*; do
      cmp -s "$f" "$out.again/$(basename "$f")" || fail "$run $q: $(basename "$f") differs between two exports"
    done
    if [[ $q == *bfloat16 && $has_torch == 0 ]]; then
      echo "  $q: exported; byte comparison skipped (CTranslate2's bfloat16 conversion needs torch)"
      continue
    fi
    "$PYTHON" scripts/reference/ct2_export.py "$work/$run" "$work/$run/checkpoints/best.safetensors" "$ref" "$q"
    for f in "$ref"/*; do
      name=$(basename "$f")
      cmp -s "$f" "$out/$name" || fail "$run $q: $name differs from CTranslate2's own ($f)"
    done
    echo "  $q: model.bin ($(stat -c %s "$out/model.bin") bytes), config.json, vocabularies identical to CTranslate2's"
  done

  "$wick" translate --run "$work/$run" --beam 1 < "$work/test.src" > "$work/$run.wick.greedy"
  "$PYTHON" scripts/check_ctranslate2.py "$work/$run-none" "$work/test.src" "$work/$run.wick.greedy" \
    "$work/$run.ct2.greedy" --beam 1 --min-agree 0.995 --exact-first 100
  "$wick" translate --run "$work/$run" --beam 5 --length-penalty 0 < "$work/test.src" > "$work/$run.wick.beam5"
  "$PYTHON" scripts/check_ctranslate2.py "$work/$run-none" "$work/test.src" "$work/$run.wick.beam5" \
    "$work/$run.ct2.beam5" --beam 5 --alpha 0 --min-agree 0.995
  "$PYTHON" scripts/check_ctranslate2.py "$work/$run-int8" "$work/test.src" "$work/$run.wick.greedy" \
    "$work/$run.ct2.int8.greedy" --beam 1 --compute-type int8
done
# transformers: needs torch and transformers in $PYTHON (not installed by this script: torch
# from PyPI brings the CUDA libraries); skipped without them.
has_hf=$("$PYTHON" -c 'import importlib.util as u; print(int(all(u.find_spec(m) is not None for m in ("torch", "transformers"))))')
if [[ $has_hf == 1 ]]; then
  echo "== transformers"
  cut -f2 data/toy/test.tsv > "$work/test.ref"
  cargo build --release --example logits 2> /dev/null
  out=$work/post-hf
  rm -rf "$out" "$out.again"
  "$wick" export --run "$work/post" --format transformers "$out" > /dev/null
  "$wick" export --run "$work/post" --format transformers "$out.again" > /dev/null
  for f in "$out"/*; do
    [[ -f $f ]] || continue
    cmp -s "$f" "$out.again/$(basename "$f")" || fail "transformers: $(basename "$f") differs between two exports"
  done
  "$PYTHON" scripts/check_transformers.py prepare "$out" "$work/test.src" "$work/test.ref" "$work/hf-batch.json"
  "$target_dir/release/examples/logits" "$work/post" "$work/hf-batch.json" "$work/hf-wick-logits.safetensors"
  "$PYTHON" scripts/check_transformers.py compare "$out" "$work/hf-batch.json" "$work/hf-wick-logits.safetensors"
  "$PYTHON" scripts/check_transformers.py generate "$out" "$work/test.src" "$work/post.wick.greedy" "$work/post.hf.greedy"
  if "$wick" export --run "$work/pre" --format transformers "$work/pre-hf" 2> "$work/pre-hf.err"; then
    fail "a pre-norm run was exported to transformers"
  fi
  grep -q 'pre-norm' "$work/pre-hf.err" || fail "the pre-norm refusal does not say why: $(cat "$work/pre-hf.err")"
else
  echo "== transformers: skipped ($PYTHON has no torch and transformers)"
fi
echo "export checks passed ($work)"
