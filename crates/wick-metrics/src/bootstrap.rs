//! Paired bootstrap resampling of segments: confidence intervals of corpus scores.

use serde::{Deserialize, Serialize};

use crate::bleu::{BleuOptions, BleuStats, bleu_from_stats};
use crate::chrf::ChrfStats;

/// A percentile bootstrap confidence interval of a corpus score.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ConfidenceInterval {
    /// Mean of the resampled scores.
    pub mean: f64,
    /// 2.5th and 97.5th percentiles of the resampled scores (a 95% interval).
    pub low: f64,
    pub high: f64,
    pub resamples: usize,
    pub seed: u64,
}

impl ConfidenceInterval {
    /// Half the interval's width, the `± x` of sacreBLEU's `--confidence` output.
    pub fn half_width(&self) -> f64 {
        (self.high - self.low) / 2.0
    }
}

/// Bootstrap resampling (Koehn, 2004): draws `resamples` corpora of `n` segments with
/// replacement (ChaCha8 seeded with `seed`, so reruns agree) and scores each with `score`,
/// which gets the drawn segment indices.
pub fn bootstrap(
    n: usize,
    resamples: usize,
    seed: u64,
    mut score: impl FnMut(&[usize]) -> f64,
) -> ConfidenceInterval {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut idx = vec![0usize; n];
    let mut scores: Vec<f64> = (0..resamples)
        .map(|_| {
            for i in &mut idx {
                *i = rng.random_range(0..n.max(1));
            }
            score(&idx)
        })
        .collect();
    scores.sort_by(f64::total_cmp);
    let at = |q: f64| scores[((q * resamples as f64) as usize).min(resamples.saturating_sub(1))];
    ConfidenceInterval {
        mean: scores.iter().sum::<f64>() / resamples.max(1) as f64,
        low: if resamples > 0 { at(0.025) } else { f64::NAN },
        high: if resamples > 0 { at(0.975) } else { f64::NAN },
        resamples,
        seed,
    }
}

/// 95% bootstrap intervals of corpus BLEU and chrF from per-segment statistics.
pub fn bleu_chrf_intervals(
    bleu: &[BleuStats],
    chrf: &[ChrfStats],
    opts: BleuOptions,
    resamples: usize,
    seed: u64,
) -> (ConfidenceInterval, ConfidenceInterval) {
    let b = bootstrap(bleu.len(), resamples, seed, |idx| {
        let mut total = BleuStats::default();
        for &i in idx {
            total += bleu[i];
        }
        bleu_from_stats(&total, opts, 1).score
    });
    let c = bootstrap(chrf.len(), resamples, seed, |idx| {
        let mut total = ChrfStats::default();
        for &i in idx {
            total += &chrf[i];
        }
        total.score()
    });
    (b, c)
}
