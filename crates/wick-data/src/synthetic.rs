//! Synthetic sanity tasks: `copy` (output = input) and `reverse` (output = input reversed),
//! over sequences of single-letter symbols separated by spaces. A correct model learns either
//! to near 100% exact match; a broken mask or shift does not.

use std::collections::HashSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::corpus::Pair;
use crate::error::{DataError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Copy,
    Reverse,
}

/// A synthetic data set, described in `[data.synthetic]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSpec {
    /// `copy` or `reverse`.
    pub task: Task,
    /// Distinct symbols, 2–52 (`a`–`z`, `A`–`Z`).
    pub n_symbols: usize,
    /// Sequence lengths are uniform in `min_len..=max_len` symbols.
    pub min_len: usize,
    pub max_len: usize,
    pub n_train: usize,
    pub n_dev: usize,
    pub n_test: usize,
}

/// The three splits of a synthetic data set.
#[derive(Clone, Debug)]
pub struct SyntheticSplits {
    pub train: Vec<Pair>,
    pub dev: Vec<Pair>,
    pub test: Vec<Pair>,
}

const SYMBOLS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

impl SyntheticSpec {
    pub fn validate(&self) -> Result<()> {
        if !(2..=SYMBOLS.len()).contains(&self.n_symbols) {
            return Err(DataError::Invalid(format!(
                "data.synthetic.n_symbols must be in 2..=52, got {}",
                self.n_symbols
            )));
        }
        if self.min_len == 0 || self.min_len > self.max_len {
            return Err(DataError::Invalid(format!(
                "data.synthetic needs 1 <= min_len <= max_len, got {}..{}",
                self.min_len, self.max_len
            )));
        }
        if self.n_train == 0 || self.n_dev == 0 || self.n_test == 0 {
            return Err(DataError::Invalid(
                "data.synthetic.n_train, n_dev and n_test must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Generates the splits; dev and test sequences never occur in train.
    pub fn generate(&self, seed: u64) -> Result<SyntheticSplits> {
        self.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let symbols: Vec<char> = SYMBOLS.chars().take(self.n_symbols).collect();
        let mut seen = HashSet::new();
        let split = |n: usize, rng: &mut ChaCha8Rng, seen: &mut HashSet<String>, exclude: bool| {
            let mut out = Vec::with_capacity(n);
            let mut attempts = 0usize;
            while out.len() < n {
                attempts += 1;
                if attempts > 100 * n + 1000 {
                    return Err(DataError::Invalid(
                        "data.synthetic: too few distinct sequences for the requested split sizes"
                            .into(),
                    ));
                }
                let len = rng.random_range(self.min_len..=self.max_len);
                let seq: Vec<char> = (0..len)
                    .map(|_| symbols[rng.random_range(0..symbols.len())])
                    .collect();
                let src = seq
                    .iter()
                    .map(char::to_string)
                    .collect::<Vec<_>>()
                    .join(" ");
                if exclude && seen.contains(&src) {
                    continue;
                }
                seen.insert(src.clone());
                let tgt = match self.task {
                    Task::Copy => src.clone(),
                    Task::Reverse => seq
                        .iter()
                        .rev()
                        .map(char::to_string)
                        .collect::<Vec<_>>()
                        .join(" "),
                };
                out.push(Pair { src, tgt });
            }
            Ok(out)
        };
        let train = split(self.n_train, &mut rng, &mut seen, false)?;
        let dev = split(self.n_dev, &mut rng, &mut seen, true)?;
        let test = split(self.n_test, &mut rng, &mut seen, true)?;
        Ok(SyntheticSplits { train, dev, test })
    }
}
