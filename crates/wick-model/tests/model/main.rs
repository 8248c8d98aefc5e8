//! The model test suite, as one test executable (`scripts/gpu_check.sh` runs it on a GPU with
//! `WICK_TEST_DEVICE=cuda`): golden values against PyTorch, invariants of the Transformer,
//! search, each on the kernel path and on the forced reference path; and every kernel against
//! its composed twin.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

#[macro_use]
mod common;
mod architectures;
mod attention_ops;
mod golden;
mod invariants;
mod ops;
mod search;
