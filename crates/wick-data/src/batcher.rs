//! Grouping examples into batches under a token budget.
//!
//! Examples are sorted by length so each batch holds similar lengths (little padding), cut
//! greedily so that `rows × longest side ≤ max_tokens`, and the batch order is shuffled with
//! a seed: the same seed and epoch always give the same batches.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, Result};

/// Padded size of a batch: rows × the longest source or target in it.
pub fn batch_cost(lengths: &[(usize, usize)], rows: &[usize]) -> usize {
    let longest = rows
        .iter()
        .map(|&i| lengths[i].0.max(lengths[i].1))
        .max()
        .unwrap_or(0);
    rows.len() * longest
}

/// Splits example indices into batches.
///
/// `lengths[i]` is the `(source, target)` length of example `i` in batch positions. With a
/// `shuffle_seed`, ties in length are broken at random and the batch order is shuffled;
/// without, batches follow length order (for decoding).
pub fn token_batches(
    lengths: &[(usize, usize)],
    max_tokens: usize,
    max_sentences: usize,
    shuffle_seed: Option<u64>,
) -> Result<Vec<Vec<usize>>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    let mut rng = shuffle_seed.map(ChaCha8Rng::seed_from_u64);
    if let Some(rng) = rng.as_mut() {
        order.shuffle(rng);
    }
    // A stable sort keeps the shuffled order among equal lengths.
    order.sort_by_key(|&i| {
        let (s, t) = lengths[i];
        (s.max(t), s, t)
    });
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        let len = lengths[i].0.max(lengths[i].1);
        if len > max_tokens {
            return Err(DataError::Invalid(format!(
                "example {i} needs {len} positions, more than the token budget of {max_tokens}: raise the batch token budget or lower the length limit"
            )));
        }
        let new_longest = longest.max(len);
        if !current.is_empty()
            && ((current.len() + 1) * new_longest > max_tokens || current.len() >= max_sentences)
        {
            batches.push(std::mem::take(&mut current));
            longest = len;
        } else {
            longest = new_longest;
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    if let Some(rng) = rng.as_mut() {
        batches.shuffle(rng);
    }
    Ok(batches)
}

/// The shuffle seed of an epoch, so each epoch has its own order but all are reproducible.
pub fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(epoch as u64)
}
