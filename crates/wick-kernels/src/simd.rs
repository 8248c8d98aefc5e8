//! Vectorisable row maths shared by the kernels: `exp` without libm, sums and maxima in eight
//! lanes. Always inlined, so that each kernel's AVX-512 / AVX2 build compiles them with its
//! own vector width.

/// `e^x` for f32 without a libm call, so that loops over rows vectorise: x = n·ln 2 + r with
/// |r| ≤ ln 2 / 2, e^r by its degree-6 Taylor polynomial (truncation < 1.5e-7 relative),
/// 2^n by writing the exponent bits. Inputs below −87 give exactly 0 (e^−87 is at the edge
/// of the normal range), which keeps masked attention scores (−1e9) exactly out.
/// Hand-written because libm's `expf` is scalar, and softmax and the cross-entropy over the
/// vocabulary spent ~15% of a training step's instructions in it.
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2^23 rounds to the nearest integer and leaves it in the low mantissa bits.
    const ROUNDER: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + ROUNDER;
    let n = t - ROUNDER;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let n_int = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    if x < -87.0 { 0.0 } else { p * scale }
}

/// `dst[j] = e^(src[j] − shift)`; returns the sum. Always inlined so that it is compiled
/// with the vector width of the kernel it sits in.
#[inline(always)]
pub(crate) fn exp_shifted(dst: &mut [f32], src: &[f32], shift: f32) -> f32 {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = fast_exp(s - shift);
    }
    lane_sum(dst)
}

/// Σ x with eight partial sums, which vectorise; a single running sum would stay scalar to
/// keep the order of float additions.
#[inline(always)]
pub(crate) fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Σ aᵢ·bᵢ with eight partial sums, like [`lane_sum`], without a buffer of products.
#[inline(always)]
pub(crate) fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Index of the first element equal to `value`, eight at a time: a scalar `position` scan
/// over the vocabulary cost a fifth of the cross-entropy row kernel.
#[inline(always)]
pub(crate) fn first_equal(x: &[f32], value: f32) -> Option<usize> {
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for (i, c) in chunks.enumerate() {
        let mut hit = false;
        for &v in c {
            hit |= v == value;
        }
        if hit {
            return c.iter().position(|&v| v == value).map(|j| i * 8 + j);
        }
    }
    rest.iter()
        .position(|&v| v == value)
        .map(|j| x.len() - rest.len() + j)
}

/// max x (−∞ for an empty row; NaNs are skipped), in eight lanes like [`lane_sum`].
#[inline(always)]
pub(crate) fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for l in 0..8 {
            // A compare and select (one vector max): `f32::max` would add NaN fix-ups.
            if c[l] > acc[l] {
                acc[l] = c[l];
            }
        }
    }
    acc.iter().copied().fold(rest, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let got = fast_exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_7;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(fast_exp(0.0), 1.0);
        assert_eq!(fast_exp(-87.5), 0.0);
        assert_eq!(fast_exp(-1e9), 0.0);
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
        let mut dst = [0f32; 19];
        let src: Vec<f32> = (0..19).map(|i| i as f32 * 0.25 - 2.0).collect();
        let sum = exp_shifted(&mut dst, &src, 1.0);
        let want: f32 = src.iter().map(|s| (s - 1.0).exp()).sum();
        assert!((sum - want).abs() < 1e-5 * want);
    }
}
