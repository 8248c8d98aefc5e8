//! Inference products on int8 weights: `y = x·Wᵀ + b` with W quantized once per output row
//! and x quantized per row on the fly, summed in 32-bit integers (CTranslate2's int8 scheme).
//!
//! Weights: each row j of W `(out, in)` is scaled so that its largest magnitude is 127,
//! `s_w[j] = 127 / max|W_j|`, and rounded half to even. Inputs: each row i of x the same way,
//! `s_x[i] = 127 / max|x_i|`, rounded half away from zero. Then
//!
//! ```text
//! y[i, j] = (Σ_k xq[i, k] · wq[j, k]) / (s_x[i] · s_w[j]) + b[j]
//! ```
//!
//! The sums are exact in i32 (the shifted products below are at most 255 · 127, and k stays
//! under 2¹⁶ inputs), so every kernel below gives the same bits as the portable one. On CPUs with AVX512-VNNI one `vpdpbusd` multiplies 64 pairs
//! of bytes and adds them in groups of four to 16 sums; it takes unsigned × signed bytes, so
//! the inputs go in shifted to `xq + 128` and `128 · Σ_k wq[j, k]` (kept per row of W) is
//! taken off the sums. Weights are packed for it once: for each block of [`PANEL`] outputs and
//! each group of 4 inputs, the 4 bytes of every output side by side (`(⌈out/64⌉, ⌈in/4⌉, 64,
//! 4)`), so that the kernel reads each panel front to back with four 64-byte loads per group.

use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};
use multiversion::multiversion;
use rayon::prelude::*;

use crate::storage::{SendPtr, slice, with_last_dim};

/// Output features per panel: four AVX-512 registers of 16 i32 sums.
pub const PANEL: usize = 64;

/// Inputs per `vpdpbusd` lane.
const GROUP: usize = 4;

/// Rows per register tile: 6 rows × 4 registers of sums, 4 of weights, 1 broadcast input.
const TILE_ROWS: usize = 6;

/// Inputs per product below which the shifted sums (each term ≤ 255 · 127) fit in an i32.
const MAX_INPUTS: usize = 1 << 16;

/// Below this many multiply-adds a product runs on one thread.
const PAR_MIN_WORK: usize = 1 << 18;

/// A weight `(out, in)` as int8 rows with one scale each, packed for the product.
#[derive(Clone, Debug)]
pub struct QuantizedWeight {
    out: usize,
    k: usize,
    /// `(⌈out/PANEL⌉, ⌈k/4⌉, PANEL, 4)` int8, zero past `out` and past `k`.
    panels: Vec<i8>,
    /// `1 / s_w[j]`.
    inv_scale: Vec<f32>,
    /// `Σ_k wq[j, k]`, which the shifted inputs add 128 times.
    row_sum: Vec<i32>,
}

/// `max|v|` over the values that are not NaN (0 for none), in 16 independent lanes: a
/// single running maximum is a chain the compiler cannot split into vector lanes (the order
/// of `f32::max` is fixed), so the quantization of a row ran one value at a time. The maximum
/// does not depend on the order, so the result is that of the chain.
#[inline(always)]
fn amax(v: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = v.chunks_exact(16);
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            let a = x.abs();
            // `a > m` is false for NaN, which f32::max also passes over.
            *m = if a > *m { a } else { *m };
        }
    }
    let tail = chunks.remainder().iter().map(|x| x.abs());
    lanes
        .into_iter()
        .chain(tail)
        .fold(0f32, |m, a| if a > m { a } else { m })
}

/// `127 / max|v|`, or 1 for an all-zero `v`: the scale that maps `v` onto −127 … 127.
#[inline(always)]
fn scale_of(v: &[f32]) -> f32 {
    let amax = amax(v);
    if amax > 0.0 && amax.is_finite() {
        127.0 / amax
    } else {
        1.0
    }
}

/// A weight value in int8: rounded half to even, as CTranslate2 quantizes weights.
fn quantize(x: f32, scale: f32) -> i8 {
    (x * scale).round_ties_even().clamp(-127.0, 127.0) as i8
}

/// An input value in int8: rounded half away from zero, as Candle's `round` (the composed
/// twin, `wick_model::ops::reference::affine_int8`) rounds, so that both quantize alike.
///
/// Written with a truncating conversion instead of `f32::round`, which is a library call the
/// compiler cannot vectorize. Clamping first to the integer bounds gives the same result
/// (rounding is monotone) and keeps the conversion in range; NaN goes to 0 as `as i8` sends
/// it. The conversion is the unchecked one: `as` saturates, and its range checks compiled
/// into compares and lane inserts around every vector of conversions (perf: quantizing the
/// inputs took as long as the VNNI sums).
#[inline]
fn quantize_input(x: f32, scale: f32) -> i8 {
    let v = (x * scale).clamp(-127.0, 127.0);
    let v = if v.is_nan() { 0.0 } else { v };
    // SAFETY: v is finite and within ±127, so it fits an i32 after truncation.
    let t = unsafe { v.to_int_unchecked::<i32>() }; // toward zero
    let frac = v - t as f32; // exact: |v| < 2²³
    (t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)) as i8
}

impl QuantizedWeight {
    /// Quantizes and packs an `(out, in)` f32 weight on the CPU. A preparation of data, not
    /// a product: allowed where kernels are barred, so that the composed path can multiply
    /// by the same int8 weights ([`Self::dequantize`]).
    pub fn quantize(w: &Tensor) -> Result<Self> {
        if !w.device().is_cpu() || w.dtype() != candle_core::DType::F32 {
            bail!(
                "int8 quantization takes an f32 weight on the CPU, got {:?} on {:?}",
                w.dtype(),
                w.device()
            )
        }
        let (out, k) = w.dims2()?;
        let values = w.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let groups = k.div_ceil(GROUP);
        let n_panels = out.div_ceil(PANEL);
        let mut panels = vec![0i8; n_panels * groups * PANEL * GROUP];
        let mut inv_scale = vec![1f32; out];
        let mut row_sum = vec![0i32; out];
        for j in 0..out {
            let row = &values[j * k..(j + 1) * k];
            let s = scale_of(row);
            inv_scale[j] = 1.0 / s;
            let (p, c) = (j / PANEL, j % PANEL);
            for (kk, &x) in row.iter().enumerate() {
                let q = quantize(x, s);
                row_sum[j] += i32::from(q);
                let (g, t) = (kk / GROUP, kk % GROUP);
                panels[((p * groups + g) * PANEL + c) * GROUP + t] = q;
            }
        }
        Ok(Self {
            out,
            k,
            panels,
            inv_scale,
            row_sum,
        })
    }

    pub fn out_features(&self) -> usize {
        self.out
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    /// Bytes the packed weight holds (int8 values, scales and row sums).
    pub fn size_bytes(&self) -> usize {
        self.panels.len() + 8 * self.out
    }

    /// Weight `(j, kk)` as stored (int8).
    fn q(&self, j: usize, kk: usize) -> i8 {
        let groups = self.k.div_ceil(GROUP);
        let (p, c, g, t) = (j / PANEL, j % PANEL, kk / GROUP, kk % GROUP);
        self.panels[((p * groups + g) * PANEL + c) * GROUP + t]
    }

    /// The weight the products use, `wq / s_w`, as an `(out, in)` f32 tensor: what the
    /// composed path multiplies by, and what the tests compare with.
    pub fn dequantize(&self) -> Result<Tensor> {
        let mut w = Vec::with_capacity(self.out * self.k);
        for j in 0..self.out {
            for kk in 0..self.k {
                w.push(f32::from(self.q(j, kk)) * self.inv_scale[j]);
            }
        }
        Tensor::from_vec(w, (self.out, self.k), &candle_core::Device::Cpu)
    }
}

/// `y = x·Wᵀ + b`, then `max(y, 0)` with `relu`, on int8 weights and inputs quantized per
/// row. No autograd.
///
/// # Shapes
/// x `(…, in)`, b `(out,)` → `(…, out)`.
pub fn affine(
    x: &Tensor,
    w: &Arc<QuantizedWeight>,
    bias: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    affine_with(x, w, bias, relu, Kernel::Best)
}

/// Which kernel runs the sums (tests force the portable one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
enum Kernel {
    Best,
    Portable,
}

fn affine_with(
    x: &Tensor,
    w: &Arc<QuantizedWeight>,
    bias: Option<&Tensor>,
    relu: bool,
    kernel: Kernel,
) -> Result<Tensor> {
    crate::enter("int8-affine", &[x])?;
    if let Some(b) = bias {
        crate::enter("int8-affine", &[b])?;
    }
    let op = I8Affine {
        w: Arc::clone(w),
        relu,
        kernel,
    };
    let x = x.contiguous()?;
    match bias {
        Some(b) => x.apply_op2_no_bwd(&b.contiguous()?, &op),
        None => x.apply_op1_no_bwd(&op),
    }
}

/// One output row of a tile: `dst[j] = (s[j] − 128·row_sum[j]) · inv_x · inv_w[j]`, plus
/// `bias[j]`, rectified with `relu`, written straight into the output. Compiled for the CPU's
/// vector width with the branches resolved outside the loop: built for baseline x86-64,
/// through a row on the stack and a copy out, it took most of the time the VNNI sums took.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn epilogue_row(
    dst: &mut [MaybeUninit<f32>],
    s: &[i32],
    row_sum: &[i32],
    inv_w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    inv_x: f32,
) {
    match (bias, relu) {
        (Some(b), true) => fill_row::<true, true>(dst, s, row_sum, inv_w, b, inv_x),
        (Some(b), false) => fill_row::<true, false>(dst, s, row_sum, inv_w, b, inv_x),
        (None, true) => fill_row::<false, true>(dst, s, row_sum, inv_w, &[], inv_x),
        (None, false) => fill_row::<false, false>(dst, s, row_sum, inv_w, &[], inv_x),
    }
}

#[inline(always)]
fn fill_row<const BIAS: bool, const RELU: bool>(
    dst: &mut [MaybeUninit<f32>],
    s: &[i32],
    row_sum: &[i32],
    inv_w: &[f32],
    bias: &[f32],
    inv_x: f32,
) {
    let n = dst.len();
    let (s, row_sum, inv_w) = (&s[..n], &row_sum[..n], &inv_w[..n]);
    let bias = if BIAS { &bias[..n] } else { bias };
    // Sixteen columns at a time, slices of a fixed length the compiler turns into one vector
    // of each operation: over the whole row at once it vectorized only rows longer than a
    // panel (64 columns), so every panel's row ran one value at a time (perf: the epilogue
    // took longer than the VNNI sums).
    let full = n - n % 16;
    for base in (0..full).step_by(16) {
        let d = &mut dst[base..base + 16];
        let (s, r, w) = (
            &s[base..base + 16],
            &row_sum[base..base + 16],
            &inv_w[base..base + 16],
        );
        let b: &[f32] = if BIAS { &bias[base..base + 16] } else { &[] };
        for i in 0..16 {
            let b = if BIAS { b[i] } else { 0.0 };
            d[i].write(output::<BIAS, RELU>(s[i], r[i], w[i], b, inv_x));
        }
    }
    for j in full..n {
        let b = if BIAS { bias[j] } else { 0.0 };
        dst[j].write(output::<BIAS, RELU>(s[j], row_sum[j], inv_w[j], b, inv_x));
    }
}

/// One output: `(s − 128·row_sum)·inv_x·inv_w`, plus `bias` with `BIAS`, rectified with `RELU`.
#[inline(always)]
fn output<const BIAS: bool, const RELU: bool>(
    s: i32,
    row_sum: i32,
    inv_w: f32,
    bias: f32,
    inv_x: f32,
) -> f32 {
    let mut v = (s - 128 * row_sum) as f32 * inv_x * inv_w;
    if BIAS {
        v += bias;
    }
    if RELU {
        v = v.max(0.0);
    }
    v
}

struct I8Affine {
    w: Arc<QuantizedWeight>,
    relu: bool,
    kernel: Kernel,
}

/// Rows of x quantized and shifted for the kernel: `xq + 128` as bytes, `⌈k/4⌉·4` per row
/// (the padding multiplies zero weights), and `1 / s_x` per row.
struct QuantizedRows {
    kp: usize,
    shifted: Vec<u8>,
    inv_scale: Vec<f32>,
}

/// One row of x into `dst` as `xq + 128`; returns `1 / s_x`. Compiled for the CPU's vector
/// width: built for baseline x86-64, the scale and the rounding went one value at a time.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
fn quantize_row(row: &[f32], dst: &mut [u8]) -> f32 {
    let s = scale_of(row);
    for (d, &v) in dst.iter_mut().zip(row) {
        *d = (i16::from(quantize_input(v, s)) + 128) as u8;
    }
    1.0 / s
}

fn quantize_rows(x: &[f32], k: usize) -> QuantizedRows {
    let rows = x.len() / k;
    let kp = k.div_ceil(GROUP) * GROUP;
    let mut shifted = vec![128u8; rows * kp];
    let mut inv_scale = vec![1f32; rows];
    let work = |((row, dst), inv): ((&[f32], &mut [u8]), &mut f32)| {
        *inv = quantize_row(row, dst);
    };
    if rows * k >= crate::storage::PAR_MIN_ELEMS {
        (x.par_chunks_exact(k).zip(shifted.par_chunks_exact_mut(kp)))
            .zip(inv_scale.par_iter_mut())
            .for_each(work);
    } else {
        (x.chunks_exact(k).zip(shifted.chunks_exact_mut(kp)))
            .zip(inv_scale.iter_mut())
            .for_each(work);
    }
    QuantizedRows {
        kp,
        shifted,
        inv_scale,
    }
}

impl I8Affine {
    fn run(&self, x: &[f32], lx: &Layout, bias: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        let w = &*self.w;
        let (n, k) = (w.out, w.k);
        if lx.dims().last() != Some(&k) || k == 0 {
            bail!("int8 product: input {:?} does not end in {k}", lx.dims())
        }
        if k >= MAX_INPUTS {
            bail!("int8 product: {k} inputs, the i32 sums hold under {MAX_INPUTS}")
        }
        if let Some(b) = bias
            && b.len() != n
        {
            bail!("int8 product: bias of {} for {n} outputs", b.len())
        }
        let rows = x.len() / k;
        let xq = quantize_rows(x, k);
        let vnni = self.kernel == Kernel::Best && vnni_available();
        let n_panels = n.div_ceil(PANEL);
        // Not zeroed: the tasks below write every element (all rows × all panels).
        let mut y: Vec<f32> = Vec::with_capacity(rows * n);
        let out = SendPtr(y.as_mut_ptr());
        let task = |p: usize| {
            let (c0, cols) = (p * PANEL, PANEL.min(n - p * PANEL));
            let groups = xq.kp / GROUP;
            let panel = &w.panels[p * groups * PANEL * GROUP..(p + 1) * groups * PANEL * GROUP];
            let mut sums = [[0i32; PANEL]; TILE_ROWS];
            // As few tiles as cover the rows, of balanced sizes (13 rows: 5, 4, 4 rather than
            // 6, 6, 1): each tile streams the whole panel once.
            let n_tiles = rows.div_ceil(TILE_ROWS);
            let mut r0 = 0;
            for t in 0..n_tiles {
                let r = (rows - r0).div_ceil(n_tiles - t);
                let tile = &xq.shifted[r0 * xq.kp..(r0 + r) * xq.kp];
                if vnni {
                    vnni_tile(tile, xq.kp, panel, &mut sums[..r]);
                } else {
                    portable_tile(tile, xq.kp, panel, &mut sums[..r]);
                }
                let row_sum = &w.row_sum[c0..c0 + cols];
                let inv_w = &w.inv_scale[c0..c0 + cols];
                let b = bias.map(|b| &b[c0..c0 + cols]);
                for (i, s) in sums[..r].iter().enumerate() {
                    // SAFETY: row r0 + i, columns c0 .. c0 + cols lie inside the `rows × n`
                    // output, which outlives the loop, and no other task writes them (tasks
                    // own whole panels); as MaybeUninit, the slice may cover memory not yet
                    // written.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            out.get_mut()
                                .add((r0 + i) * n + c0)
                                .cast::<MaybeUninit<f32>>(),
                            cols,
                        )
                    };
                    let inv_x = xq.inv_scale[r0 + i];
                    epilogue_row(dst, &s[..cols], row_sum, inv_w, b, self.relu, inv_x);
                }
                r0 += r;
            }
        };
        let split = !crate::scope::products_whole() && rayon::current_num_threads() > 1;
        if split && rows * n * k >= PAR_MIN_WORK {
            (0..n_panels).into_par_iter().for_each(task);
        } else {
            (0..n_panels).for_each(task);
        }
        // SAFETY: the tasks wrote all `rows × n` elements (every row of every panel), within
        // the capacity reserved above.
        unsafe { y.set_len(rows * n) };
        Ok((CpuStorage::F32(y), with_last_dim(lx, n)))
    }
}

impl CustomOp1 for I8Affine {
    fn name(&self) -> &'static str {
        "wick-int8-affine"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(slice(s, l, "int8 product input")?, l, None)
    }
}

impl CustomOp2 for I8Affine {
    fn name(&self) -> &'static str {
        "wick-int8-affine"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(sx, lx, "int8 product input")?;
        let b = slice(sb, lb, "int8 product bias")?;
        self.run(x, lx, Some(b))
    }
}

/// Whether this CPU runs the VNNI kernel.
pub fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `sums[r][c] = Σ_k shifted[r][k] · wq[c][k]` for one panel, in plain integer arithmetic.
fn portable_tile(shifted: &[u8], kp: usize, panel: &[i8], sums: &mut [[i32; PANEL]]) {
    for (r, s) in sums.iter_mut().enumerate() {
        let x = &shifted[r * kp..(r + 1) * kp];
        *s = [0; PANEL];
        for (g, w) in panel.chunks_exact(PANEL * GROUP).enumerate() {
            let xg = &x[g * GROUP..(g + 1) * GROUP];
            for (c, wc) in w.chunks_exact(GROUP).enumerate() {
                s[c] += xg
                    .iter()
                    .zip(wc)
                    .map(|(&a, &b)| i32::from(a) * i32::from(b))
                    .sum::<i32>();
            }
        }
    }
}

/// [`portable_tile`] with `vpdpbusd`: for each group of 4 inputs, four 64-byte loads of the
/// panel and, per row, one broadcast of its 4 input bytes and four `vpdpbusd`.
fn vnni_tile(shifted: &[u8], kp: usize, panel: &[i8], sums: &mut [[i32; PANEL]]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the caller checked `vnni_available()`; the slices have the lengths the
        // kernel reads (`kp` bytes per row, `kp / 4` groups of `PANEL · 4` in the panel).
        unsafe {
            match sums.len() {
                1 => vnni_rows::<1>(shifted, kp, panel, sums),
                2 => vnni_rows::<2>(shifted, kp, panel, sums),
                3 => vnni_rows::<3>(shifted, kp, panel, sums),
                4 => vnni_rows::<4>(shifted, kp, panel, sums),
                5 => vnni_rows::<5>(shifted, kp, panel, sums),
                _ => vnni_rows::<TILE_ROWS>(shifted, kp, panel, sums),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    portable_tile(shifted, kp, panel, sums)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_rows<const R: usize>(
    shifted: &[u8],
    kp: usize,
    panel: &[i8],
    sums: &mut [[i32; PANEL]],
) {
    use std::arch::x86_64::*;
    let groups = kp / GROUP;
    assert!(shifted.len() >= R * kp && panel.len() >= groups * PANEL * GROUP && sums.len() >= R);
    // SAFETY: the loads read group g of the panel, the `PANEL · 4` bytes at g · 256, and the
    // 4 bytes at r · kp + 4g of input row r < R (kp is a multiple of 4); the stores write 16
    // i32 at offset 16·v of a 64-element row: all in bounds by the assert above. The caller
    // checked that the CPU has the features this function is compiled for.
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); 4]; R];
        let wp = panel.as_ptr();
        let xp = shifted.as_ptr();
        for g in 0..groups {
            // Four loads written out: a closure would not inherit this function's features.
            let at = wp.add(g * PANEL * GROUP);
            let w = [
                _mm512_loadu_si512(at.cast()),
                _mm512_loadu_si512(at.add(64).cast()),
                _mm512_loadu_si512(at.add(128).cast()),
                _mm512_loadu_si512(at.add(192).cast()),
            ];
            for (r, a) in acc.iter_mut().enumerate() {
                // The row's 4 bytes of this group, broadcast straight from memory. Indexed
                // byte by byte, each came with a bounds check and the four were assembled in
                // scalar registers: 12 instructions per row and group beside 4 `vpdpbusd`.
                let x4 = xp.add(r * kp + g * GROUP).cast::<i32>().read_unaligned();
                let xb = _mm512_set1_epi32(x4);
                for (a, &wv) in a.iter_mut().zip(&w) {
                    *a = _mm512_dpbusd_epi32(*a, xb, wv);
                }
            }
        }
        for (s, a) in sums.iter_mut().zip(&acc) {
            for (v, &av) in a.iter().enumerate() {
                _mm512_storeu_si512(s[v * 16..].as_mut_ptr().cast(), av);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The sums as the definition has them: Σ_k xq·wq in i64, then the same float steps.
    fn reference(
        x: &[f32],
        k: usize,
        w: &QuantizedWeight,
        bias: Option<&[f32]>,
        relu: bool,
    ) -> Vec<f32> {
        let rows = x.len() / k;
        let mut y = Vec::new();
        for i in 0..rows {
            let row = &x[i * k..(i + 1) * k];
            let s = scale_of(row);
            for j in 0..w.out {
                let sum: i64 = row
                    .iter()
                    .enumerate()
                    .map(|(kk, &v)| i64::from(quantize_input(v, s)) * i64::from(w.q(j, kk)))
                    .sum();
                let mut v = sum as i32 as f32 * (1.0 / s) * w.inv_scale[j];
                if let Some(b) = bias {
                    v += b[j];
                }
                y.push(if relu { v.max(0.0) } else { v });
            }
        }
        y
    }

    /// The input quantization rounds half away from zero (`f32::round`, as Candle's `round`),
    /// clamps to ±127 and sends NaN to 0, at the halves, the bounds and beyond.
    #[test]
    fn input_quantization_rounds_half_away_from_zero() {
        let below_half = 0.5f32.next_down();
        let mut values = vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1e30,
            -1e30,
        ];
        for v in [
            0.5,
            1.5,
            2.5,
            126.5,
            127.5,
            128.0,
            below_half,
            1.0 + below_half,
            3.7,
            0.2,
        ] {
            values.extend([v, -v]);
        }
        for x in values {
            let want = if x.is_nan() {
                0
            } else {
                x.round().clamp(-127.0, 127.0) as i8
            };
            assert_eq!(quantize_input(x, 1.0), want, "{x}");
        }
    }

    /// Every kernel against the definition, bit for bit, over shapes that are not multiples
    /// of the group (4), the tile (6) or the panel (64); and within int8's error of the f32
    /// product.
    #[test]
    fn int8_product_matches_its_definition() -> Result<()> {
        let dev = Device::Cpu;
        for &(rows, k, out) in &[
            (1, 1, 1),
            (2, 9, 65),
            (5, 7, 3),
            (6, 64, 64),
            (13, 33, 130),
            (7, 300, 70),
            (64, 128, 512),
            (320, 96, 1000),
        ] {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
            let wt = Tensor::randn(0f32, 1.0, (out, k), &dev)?;
            let b = Tensor::randn(0f32, 1.0, out, &dev)?;
            let w = Arc::new(QuantizedWeight::quantize(&wt)?);
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let bs = b.to_vec1::<f32>()?;
            for relu in [false, true] {
                for bias in [None, Some(&b)] {
                    let want = reference(&xs, k, &w, bias.map(|_| bs.as_slice()), relu);
                    for kernel in [Kernel::Best, Kernel::Portable] {
                        let got = affine_with(&x, &w, bias, relu, kernel)?
                            .flatten_all()?
                            .to_vec1::<f32>()?;
                        assert_eq!(
                            got, want,
                            "rows {rows} k {k} out {out} relu {relu} {kernel:?}"
                        );
                    }
                }
            }
            // Within int8's error of the f32 product: per element, each of the k terms is off
            // by at most half a step of x's scale times |w| plus half of w's times |x|.
            let exact = x.matmul(&wt.t()?)?.flatten_all()?.to_vec1::<f32>()?;
            let got = affine(&x, &w, None, false)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let ws = wt.flatten_all()?.to_vec1::<f32>()?;
            for i in 0..rows {
                let xr = &xs[i * k..(i + 1) * k];
                let xmax = xr.iter().fold(0f32, |m, v| m.max(v.abs()));
                for j in 0..out {
                    let wr = &ws[j * k..(j + 1) * k];
                    let wmax = wr.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let bound =
                        k as f32 * (0.5 * xmax / 127.0 * wmax + 0.5 * wmax / 127.0 * xmax) * 1.01
                            + 1e-5;
                    let (g, e) = (got[i * out + j], exact[i * out + j]);
                    assert!(
                        (g - e).abs() <= bound,
                        "({i}, {j}): {g} vs {e}, bound {bound}"
                    );
                }
            }
        }
        Ok(())
    }

    /// The lane-wise maximum against the single running one it replaces, on rows of every
    /// length around the lane count, with NaN, ±∞ and −0 in every position.
    #[test]
    fn lane_maximum_equals_the_running_maximum() {
        let naive = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            -3.5,
            1e-30,
        ];
        for len in 0..40 {
            let base: Vec<f32> = (0..len).map(|i| ((i * 7919) % 23) as f32 - 11.0).collect();
            assert_eq!(amax(&base).to_bits(), naive(&base).to_bits(), "{base:?}");
            for pos in 0..len {
                for &special in &specials {
                    let mut v = base.clone();
                    v[pos] = special;
                    assert_eq!(amax(&v).to_bits(), naive(&v).to_bits(), "{v:?}");
                }
            }
        }
        assert_eq!(amax(&[f32::NAN; 20]), 0.0);
    }

    #[test]
    fn input_rounding_is_half_away_from_zero() {
        let reference = |v: f32| (v.round().clamp(-127.0, 127.0)) as i8;
        let mut values = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            0.49999997,
            -0.49999997,
            126.5,
            -126.5,
            127.0,
            127.4,
            200.0,
            -1e9,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        values.extend((0..20_000).map(|i| (i as f32 - 10_000.0) * 0.0137));
        for v in values {
            assert_eq!(quantize_input(v, 1.0), reference(v), "{v}");
        }
    }

    #[test]
    fn dequantized_weights_round_half_to_even_per_row() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::from_vec(vec![0.5f32, -1.0, 0.0, 0.0, 2.0, 1.0], (3, 2), &dev)?;
        let q = QuantizedWeight::quantize(&w)?;
        // Row 0: scale 127 → 63.5 rounds to 64; row 1 all zero; row 2: scale 63.5.
        assert_eq!(
            (q.q(0, 0), q.q(0, 1), q.q(1, 0), q.q(2, 0), q.q(2, 1)),
            (64, -127, 0, 127, 64)
        );
        let back = q.dequantize()?.flatten_all()?.to_vec1::<f32>()?;
        let (a, b) = (1.0f32 / 127.0, 1.0f32 / 63.5);
        assert_eq!(
            back,
            vec![64.0 * a, -127.0 * a, 0.0, 0.0, 127.0 * b, 64.0 * b]
        );
        Ok(())
    }

    #[test]
    fn int8_product_rejects_mismatched_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let w = Arc::new(QuantizedWeight::quantize(&Tensor::zeros(
            (70, 10),
            candle_core::DType::F32,
            &dev,
        )?)?);
        let x = Tensor::zeros((4, 11), candle_core::DType::F32, &dev)?;
        assert!(affine(&x, &w, None, false).is_err());
        let x = Tensor::zeros((4, 10), candle_core::DType::F32, &dev)?;
        let b = Tensor::zeros(69, candle_core::DType::F32, &dev)?;
        assert!(affine(&x, &w, Some(&b), false).is_err());
        Ok(())
    }
}
