//! Register-tiled dot products and small matrix products of the attention core.

/// Dot product of two head rows. `FMA` is true only inside the kernels' AVX2+FMA builds
/// (see [`forward_sentence`]), which take the intrinsic version: LLVM vectorises the portable
/// loop into one accumulator chain and a scalar horizontal sum, which at d_k = 32 cost more
/// than the products (measured in `perf annotate`). Always inlined, here and below, so that
/// the kernels' builds compile it with their features.
#[inline(always)]
pub(super) fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is set only in code compiled for, and dispatched to, CPUs with AVX2
        // and FMA.
        return unsafe { dot_fma(a, b) };
    }
    dot_portable(a, b)
}

/// Eight independent accumulators, which the compiler turns into SIMD lanes (a single
/// running sum would have to stay scalar to keep the order of float additions).
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Two 8-lane fused multiply-add chains and one shuffle-based horizontal sum. Written with
/// intrinsics because the compiler does not produce this shape from portable code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    // SAFETY: every load reads 8 floats at i + 8 ≤ n (or i + 16 ≤ n) of both slices.
    unsafe {
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            let (x, y) = (
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
            );
            acc1 = _mm256_fmadd_ps(x, y, acc1);
            i += 16;
        }
        if i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let mut s = _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)));
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }
}

/// Eight dot products with one vector: `out[i] = q · keys[i·stride ..][.. q.len()]`. `FMA` as
/// in [`dot`]; with it and `q.len()` a multiple of 8, [`dot8_fma`].
#[inline(always)]
pub(super) fn dot8<const FMA: bool>(q: &[f32], keys: &[f32], stride: usize) -> [f32; 8] {
    let n = q.len();
    #[cfg(target_arch = "x86_64")]
    if FMA && n.is_multiple_of(8) && keys.len() >= 7 * stride + n {
        // SAFETY: as in `dot`; the key rows lie within `keys` (checked above).
        return unsafe { dot8_fma(q, keys, stride) };
    }
    std::array::from_fn(|i| dot::<FMA>(q, &keys[i * stride..][..n]))
}

/// [`dot8`] as eight FMA chains, one per key, and one transposing reduction of the eight
/// accumulators (six horizontal adds, two lane permutes, one add) in place of eight separate
/// horizontal sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot8_fma(q: &[f32], keys: &[f32], stride: usize) -> [f32; 8] {
    use std::arch::x86_64::*;
    let n = q.len();
    let mut out = [0f32; 8];
    // SAFETY: the caller checked n % 8 == 0 and keys.len() ≥ 7·stride + n, so every load
    // reads 8 floats within q or within key row i < 8.
    unsafe {
        let (pq, pk) = (q.as_ptr(), keys.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut c = 0;
        while c < n {
            let x = _mm256_loadu_ps(pq.add(c));
            for (i, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(x, _mm256_loadu_ps(pk.add(i * stride + c)), *acc);
            }
            c += 8;
        }
        // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7]: two rounds
        // leave each key's four partial sums per 128-bit half, the permutes line the halves up.
        let h01 = _mm256_hadd_ps(acc[0], acc[1]);
        let h23 = _mm256_hadd_ps(acc[2], acc[3]);
        let h45 = _mm256_hadd_ps(acc[4], acc[5]);
        let h67 = _mm256_hadd_ps(acc[6], acc[7]);
        let h0123 = _mm256_hadd_ps(h01, h23);
        let h4567 = _mm256_hadd_ps(h45, h67);
        let low = _mm256_permute2f128_ps::<0x20>(h0123, h4567);
        let high = _mm256_permute2f128_ps::<0x31>(h0123, h4567);
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(low, high));
    }
    out
}

/// A row-major matrix operand inside a larger buffer: row `i` starts at `data[i · stride]`.
#[derive(Clone, Copy)]
pub(super) struct Strided<'a> {
    data: &'a [f32],
    stride: usize,
}

impl<'a> Strided<'a> {
    pub(super) fn new(data: &'a [f32], stride: usize) -> Self {
        Self { data, stride }
    }

    /// The operand from row `row`, column `col` on.
    pub(super) fn at(self, row: usize, col: usize) -> Self {
        Self::new(&self.data[row * self.stride + col..], self.stride)
    }
}

/// `out (m, n) = a (m, k) · b (k, n)`, with `out`'s rows `ldo` apart: the per-head products of
/// the attention core (m, n and k are sequence lengths and d_k, a few dozen). Tiles of 4 rows
/// × 16 (or 8, then 1) columns keep their sums in registers and take each row of `b` as a
/// vector, so no dot product needs a horizontal sum; a dot product per score with a 32-wide
/// d_k spent as long on its horizontal sum as on the products (the kernel ran at a few
/// GFLOP/s in a one-thread profile of the small preset's training step). Too small for
/// `gemm`, whose packing would cost more than the product. `FMA` as in [`dot`].
#[inline(always)]
pub(super) fn small_product<const FMA: bool>(
    (m, n, k): (usize, usize, usize),
    a: Strided,
    b: Strided,
    out: &mut [f32],
    ldo: usize,
) {
    let mut j = 0;
    while j + 16 <= n {
        product_columns::<FMA, 16>(m, k, a, b.at(0, j), &mut out[j..], ldo);
        j += 16;
    }
    if j + 8 <= n {
        product_columns::<FMA, 8>(m, k, a, b.at(0, j), &mut out[j..], ldo);
        j += 8;
    }
    while j < n {
        product_columns::<FMA, 1>(m, k, a, b.at(0, j), &mut out[j..], ldo);
        j += 1;
    }
}

/// [`small_product`] for `C` columns of `b` and `out`, four rows at a time.
#[inline(always)]
fn product_columns<const FMA: bool, const C: usize>(
    m: usize,
    k: usize,
    a: Strided,
    b: Strided,
    out: &mut [f32],
    ldo: usize,
) {
    let mut i = 0;
    while i + 4 <= m {
        product_tile::<FMA, 4, C>(k, a.at(i, 0), b, &mut out[i * ldo..], ldo);
        i += 4;
    }
    while i < m {
        row_tile::<FMA, C>(k, &a.data[i * a.stride..][..k], b, &mut out[i * ldo..][..C]);
        i += 1;
    }
}

/// `x·y + acc`, fused when `FMA` (see [`dot`]).
#[inline(always)]
pub(super) fn madd<const FMA: bool>(x: f32, y: f32, acc: f32) -> f32 {
    if FMA { x.mul_add(y, acc) } else { acc + x * y }
}

#[inline(always)]
fn product_tile<const FMA: bool, const R: usize, const C: usize>(
    k: usize,
    a: Strided,
    b: Strided,
    out: &mut [f32],
    ldo: usize,
) {
    let rows: [&[f32]; R] = std::array::from_fn(|r| &a.data[r * a.stride..][..k]);
    let mut acc = [[0f32; C]; R];
    for kk in 0..k {
        let bk = &b.data[kk * b.stride..][..C];
        for (acc, row) in acc.iter_mut().zip(&rows) {
            let x = row[kk];
            for (acc, &y) in acc.iter_mut().zip(bk) {
                *acc = madd::<FMA>(x, y, *acc);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        out[r * ldo..][..C].copy_from_slice(acc);
    }
}

/// [`product_tile`] for a single row `a` `(k,)`, with the sum over k split four ways. One row
/// gives only C/8 chains of dependent multiply-adds, each waiting on the last one's latency:
/// a decoding step's `(1, tk)·(tk, d_k)` product of probabilities and values ran at one
/// multiply-add per four cycles (perf annotate, small preset).
#[inline(always)]
fn row_tile<const FMA: bool, const C: usize>(k: usize, a: &[f32], b: Strided, out: &mut [f32]) {
    let mut acc = [[0f32; C]; 4];
    let mut kk = 0;
    while kk + 4 <= k {
        for (u, acc) in acc.iter_mut().enumerate() {
            let x = a[kk + u];
            for (acc, &y) in acc.iter_mut().zip(&b.data[(kk + u) * b.stride..][..C]) {
                *acc = madd::<FMA>(x, y, *acc);
            }
        }
        kk += 4;
    }
    for (kk, &x) in a.iter().enumerate().skip(kk) {
        for (acc, &y) in acc[0].iter_mut().zip(&b.data[kk * b.stride..][..C]) {
            *acc = madd::<FMA>(x, y, *acc);
        }
    }
    for (c, out) in out.iter_mut().enumerate() {
        *out = (acc[0][c] + acc[1][c]) + (acc[2][c] + acc[3][c]);
    }
}
