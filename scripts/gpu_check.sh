#!/usr/bin/env bash
# wick on an NVIDIA GPU, in about five minutes: the model test suite on the GPU, the reverse
# task trained to ≥ 99% exact match, one minute of the quick-start training (tokens/s), and
# the toy test split decoded (sentences/s, BLEU).
#
#   scripts/gpu_check.sh [--device cuda|cuda:N|cpu] [--out DIR]
#
# With a Rust toolchain it builds what it runs (`--features cuda`). On a GPU machine without
# one, give binaries built elsewhere (`cargo build --release --features cuda -p wick-cli`, and
# the model tests' executable that `cargo test --release --features cuda -p wick-model
# --no-run` names):
#
#   WICK_BIN=path/to/wick WICK_MODEL_TESTS=path/to/model-tests scripts/gpu_check.sh
#
# The CUDA libraries (libcublas, libcurand, libnvrtc, and the driver's libcuda) must be on
# LD_LIBRARY_PATH; the nvidia-* Python wheels of a PyTorch install carry them. `--device cpu`
# runs the same checks on the CPU, on the composed path a GPU runs (WICK_REFERENCE_OPS=1), to
# try the script where there is no GPU. Exits non-zero when a check fails.
set -euo pipefail

device=cuda
out=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

# On the CPU, the composed path a GPU runs (wick's CPU kernels would run otherwise).
[[ "$device" == cpu ]] && export WICK_REFERENCE_OPS=1

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${out:-$(mktemp -d)}"
mkdir -p "$out"

if [[ -z "${WICK_BIN:-}" || -z "${WICK_MODEL_TESTS:-}" ]]; then
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: no cargo here: set WICK_BIN and WICK_MODEL_TESTS to prebuilt binaries" >&2
        exit 1
    fi
    features=()
    [[ "$device" == cuda* ]] && features=(--features cuda)
    echo "== building wick and the model tests ${features[*]}"
    cargo build --release "${features[@]}" -p wick-cli --bin wick
    WICK_BIN="$root/target/release/wick"
    WICK_MODEL_TESTS=$(cargo test --release "${features[@]}" -p wick-model --test model --no-run \
        --message-format=json 2>/dev/null \
        | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
fi
echo "wick: $WICK_BIN"
echo "model tests: $WICK_MODEL_TESTS"

started=$SECONDS
step() { echo; echo "== $* ($((SECONDS - started)) s)"; }

step "model tests on $device (golden values, invariants, search, both paths)"
WICK_TEST_DEVICE="$device" "$WICK_MODEL_TESTS" --test-threads 1 -q

step "reverse task on $device (≥ 99% exact match)"
"$WICK_BIN" train --config configs/reverse.toml --device "$device" --run-dir "$out/reverse" \
    --samples 0 2>&1 | tail -n 12
exact=$("$WICK_BIN" evaluate --run "$out/reverse" --device "$device" --json \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["exact_match"])')
echo "exact match: $exact"
python3 -c "import sys; sys.exit(0 if float('$exact') >= 0.99 else 1)" \
    || { echo "error: the reverse task reached $exact exact match, below 0.99" >&2; exit 1; }

step "quick-start training on $device, one minute"
"$WICK_BIN" train --device "$device" --run-dir "$out/toy" --set train.max_minutes=1 \
    --set train.validate_every=1000000 --samples 2 2>&1 | tail -n 16

step "toy test split decoded on $device"
"$WICK_BIN" evaluate --run "$out/toy" --device "$device"
"$WICK_BIN" evaluate --run "$out/toy" --device "$device" --beam 5 | tail -n 3

step "done"
echo "runs in $out"
