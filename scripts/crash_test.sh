#!/usr/bin/env bash
# Crash test: trains a small model, SIGKILLs it WICK_CRASH_KILLS times (default 12; half of
# them while a checkpoint is being written, half at random moments), resumes after each kill,
# and checks that every checkpoint on disk loads after every kill and that the final weights,
# best checkpoint, kept checkpoints and validation log equal those of an uninterrupted run.
#
#   scripts/crash_test.sh                 # 12 kills, seed 1
#   WICK_CRASH_KILLS=30 WICK_CRASH_SEED=5 scripts/crash_test.sh
#
# The test suite runs the same check with 3 kills (tests/crash.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
export WICK_CRASH_KILLS="${WICK_CRASH_KILLS:-12}"
export WICK_CRASH_SEED="${WICK_CRASH_SEED:-1}"
exec cargo test --release -p wick-cli --test crash -- --ignored --nocapture many_kills
