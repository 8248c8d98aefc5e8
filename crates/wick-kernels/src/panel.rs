//! Inference's matrix products, on weights packed in advance into panels.
//!
//! A decoding step multiplies a few rows (64 sentences greedy, 320 with beam 5) by every
//! decoder weight and by the vocabulary projection. `gemm` copies ("packs") the weight into
//! its kernel's tile layout inside every call: 17% of a one-thread greedy profile of the base
//! preset (perf), because the weights are far larger than the rows. Here each weight is
//! packed once (when a model is laid out for decoding) into the layout a register-tiled
//! kernel streams through: for each block of [`PANEL`] output features, a contiguous
//! `(in, PANEL)` panel. The encoder runs on it as well: on its 768–1,536 rows it beat `gemm`
//! with its packing too (base preset, 64 sentences: 0.37–0.39 s against 0.42–0.43 s).
//! Written by hand because `gemm` has no entry point for an operand packed in advance.
//!
//! Forward only (decoding keeps no autograd graph); `wick-model`'s tests hold it to the
//! composed affine layer.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail,
};
use multiversion::multiversion;
use multiversion::target::selected_target;
use rayon::prelude::*;

use crate::storage::{SendPtr, slice, with_last_dim};

/// Output features per panel: four AVX-512 registers, eight AVX2 ones.
pub const PANEL: usize = 64;

/// Rows per register tile. With AVX-512: 6 rows × 4 registers of sums, 4 of weights and one
/// broadcast input = 29 of the 32 registers.
const TILE_ROWS: usize = 6;

/// Below this many multiply-adds a product runs on one thread.
const PAR_MIN_WORK: usize = 1 << 18;

/// `(out, in)` weight → `(⌈out/PANEL⌉, in, PANEL)` panels: panel p holds the columns
/// `p·PANEL …` of Wᵀ, zero past `out`. CPU, f32.
pub fn pack(w: &Tensor) -> Result<Tensor> {
    crate::enter("pack-panels", &[w])?;
    w.contiguous()?.apply_op1_no_bwd(&Pack)
}

/// `y = x·Wᵀ + b`, then `max(y, 0)` with `relu`, W given as [`pack`]ed panels, for `out`
/// output features. No autograd.
///
/// # Shapes
/// x `(…, in)`, panels `(⌈out/PANEL⌉, in, PANEL)`, b `(out,)` → `(…, out)`.
pub fn affine(
    x: &Tensor,
    panels: &Tensor,
    bias: Option<&Tensor>,
    out: usize,
    relu: bool,
) -> Result<Tensor> {
    let op = PanelAffine {
        out,
        relu,
        wide: true,
    };
    apply(x, panels, bias, &op)
}

fn apply(x: &Tensor, panels: &Tensor, bias: Option<&Tensor>, op: &PanelAffine) -> Result<Tensor> {
    crate::enter("panel-affine", &[x, panels])?;
    if let Some(b) = bias {
        crate::enter("panel-affine", &[b])?;
    }
    let x = x.contiguous()?;
    match bias {
        Some(b) => x.apply_op3_no_bwd(panels, &b.contiguous()?, op),
        None => x.apply_op2_no_bwd(panels, op),
    }
}

struct Pack;

impl CustomOp1 for Pack {
    fn name(&self) -> &'static str {
        "wick-pack-panels"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (out, k) = l.shape().dims2()?;
        let w = slice(s, l, "panel packing")?;
        let n_panels = out.div_ceil(PANEL);
        let mut packed = vec![0f32; n_panels * k * PANEL];
        if k > 0 {
            packed
                .par_chunks_mut(k * PANEL)
                .enumerate()
                .for_each(|(p, panel)| {
                    let rows = &w[p * PANEL * k..((p + 1) * PANEL).min(out) * k];
                    for (j, row) in rows.chunks_exact(k).enumerate() {
                        for (kk, &v) in row.iter().enumerate() {
                            panel[kk * PANEL + j] = v;
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(packed), Shape::from((n_panels, k, PANEL))))
    }
}

struct PanelAffine {
    out: usize,
    relu: bool,
    /// Use the full-panel AVX-512 tile where the CPU has it; `false` forces the 16-column
    /// tiles of the AVX2 version, so that the tests cover them on any machine.
    wide: bool,
}

impl PanelAffine {
    fn run(
        &self,
        x: &[f32],
        lx: &Layout,
        panels: &[f32],
        lp: &Layout,
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let n = self.out;
        let (n_panels, k, width) = lp.shape().dims3()?;
        if width != PANEL || n_panels != n.div_ceil(PANEL) {
            bail!(
                "panel product: panels {:?} do not hold {n} outputs in blocks of {PANEL}",
                lp.dims()
            )
        }
        if lx.dims().last() != Some(&k) || k == 0 {
            bail!("panel product: input {:?} does not end in {k}", lx.dims())
        }
        if let Some(b) = bias
            && b.len() != n
        {
            bail!("panel product: bias of {} for {n} outputs", b.len())
        }
        let rows = x.len() / k;
        // Not zeroed: the tasks below write every element (all row blocks × all panels).
        let mut y: Vec<f32> = Vec::with_capacity(rows * n);
        let threads = rayon::current_num_threads();
        // Tasks own whole panels, so each thread streams its own part of the weights (larger
        // than the caches on the base preset) once per call; rows are split as well only when
        // there are too few panels to go round.
        let row_blocks = if n_panels >= 2 * threads {
            1
        } else {
            (2 * threads)
                .div_ceil(n_panels.max(1))
                .min(rows.div_ceil(TILE_ROWS))
                .max(1)
        };
        let rows_per_block = rows.div_ceil(row_blocks).next_multiple_of(TILE_ROWS).max(1);
        let row_blocks = rows.div_ceil(rows_per_block);
        let out = SendPtr(y.as_mut_ptr());
        let task = |t: usize| {
            let (p, rb) = (t / row_blocks, t % row_blocks);
            let (r0, r1) = (rb * rows_per_block, ((rb + 1) * rows_per_block).min(rows));
            let (c0, cols) = (p * PANEL, PANEL.min(n - p * PANEL));
            let mut b = [0f32; PANEL];
            if let Some(bias) = bias {
                b[..cols].copy_from_slice(&bias[c0..c0 + cols]);
            }
            // The next panel's first depth slice, which the next task (on this thread,
            // mostly) reads first: prefetched during this panel's last slice.
            let next = ((p + 1) * k * PANEL).min(panels.len());
            let following = &panels[next..(next + KC * PANEL).min(panels.len())];
            let (x, panel) = (
                &x[r0 * k..r1 * k],
                &panels[p * k * PANEL..(p + 1) * k * PANEL],
            );
            if cols == PANEL {
                // Straight into the output: through a block of its own, the copy out (and
                // the block's zeroing) took a tenth of a greedy decoding step.
                // SAFETY: rows r0..r1, columns c0..c0 + PANEL of the `rows × n` output
                // belong to this task alone (tasks split the rows and the panels), and the
                // output outlives the loop.
                let dst = unsafe { Block::new(out.get_mut().add(r0 * n + c0), n, r1 - r0) };
                panel_block(x, panel, following, &b, self.relu, self.wide, dst);
            } else {
                // The last panel is narrower than the tiles, which write PANEL columns.
                let mut block = vec![0f32; (r1 - r0) * PANEL];
                // SAFETY: `block` holds r1 − r0 rows of PANEL, and nothing else refers to it
                // until panel_block returns.
                let dst = unsafe { Block::new(block.as_mut_ptr(), PANEL, r1 - r0) };
                panel_block(x, panel, following, &b, self.relu, self.wide, dst);
                for (i, row) in block.chunks_exact(PANEL).enumerate() {
                    // SAFETY: row r0 + i, columns c0 .. c0 + cols lie inside the `rows × n`
                    // output, which outlives the loop, and no other task writes them.
                    unsafe {
                        let dst = out.get_mut().add((r0 + i) * n + c0);
                        std::ptr::copy_nonoverlapping(row.as_ptr(), dst, cols);
                    }
                }
            }
        };
        let tasks = n_panels * row_blocks;
        if threads > 1 && rows * n * k >= PAR_MIN_WORK {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
        // SAFETY: the tasks wrote all `rows × n` elements (row blocks cover 0..rows, panels
        // cover 0..n), within the capacity reserved above.
        unsafe { y.set_len(rows * n) };
        Ok((CpuStorage::F32(y), with_last_dim(lx, n)))
    }
}

impl CustomOp2 for PanelAffine {
    fn name(&self) -> &'static str {
        "wick-panel-affine"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sp: &CpuStorage,
        lp: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(sx, lx, "panel product input")?;
        let p = slice(sp, lp, "panels")?;
        self.run(x, lx, p, lp, None)
    }
}

impl CustomOp3 for PanelAffine {
    fn name(&self) -> &'static str {
        "wick-panel-affine"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sp: &CpuStorage,
        lp: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(sx, lx, "panel product input")?;
        let p = slice(sp, lp, "panels")?;
        let b = slice(sb, lb, "panel product bias")?;
        self.run(x, lx, p, lp, Some(b))
    }
}

/// Depth of one pass over the rows: a `(KC, PANEL)` slice of the panel (32 KB) stays in the
/// L1 cache while every tile of rows is multiplied by it. Without this blocking each tile
/// re-read the whole panel from L2, and 1,536 rows ran at 60% of `gemm`'s speed.
const KC: usize = 128;

/// Where a task's sums go: `PANEL` columns of each of its rows, row r at `ptr + r · ld` (the
/// product's output, or a block of its own for a narrow last panel).
#[derive(Clone, Copy)]
struct Block {
    ptr: *mut f32,
    ld: usize,
    rows: usize,
}

impl Block {
    /// # Safety
    /// For every row r < `rows`, `ptr + r · ld .. + PANEL` must be valid for writes (and for
    /// reads once stored), and nothing else may access it while the block is used.
    unsafe fn new(ptr: *mut f32, ld: usize, rows: usize) -> Self {
        Self { ptr, ld, rows }
    }

    /// The block without its first `r` rows.
    fn skip(self, r: usize) -> Self {
        debug_assert!(r <= self.rows);
        Self {
            ptr: self.ptr.wrapping_add(r * self.ld),
            ld: self.ld,
            rows: self.rows - r,
        }
    }

    /// Copies columns `off .. off + W` of row `r` into `dst`.
    ///
    /// # Safety
    /// `r` is a row of the block, `off + W ≤ PANEL`, and those columns were stored.
    #[inline(always)]
    unsafe fn load<const W: usize>(self, r: usize, off: usize, dst: &mut [f32; W]) {
        debug_assert!(r < self.rows && off + W <= PANEL);
        // SAFETY: the caller's promise, and `new`'s.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.add(r * self.ld + off), dst.as_mut_ptr(), W)
        }
    }

    /// Stores `src` in columns `off .. off + W` of row `r` (through a pointer, not a slice:
    /// the output is not initialised before its first store).
    ///
    /// # Safety
    /// `r` is a row of the block and `off + W ≤ PANEL`.
    #[inline(always)]
    unsafe fn store<const W: usize>(self, r: usize, off: usize, src: &[f32; W]) {
        debug_assert!(r < self.rows && off + W <= PANEL);
        // SAFETY: the caller's promise, and `new`'s.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(r * self.ld + off), W) }
    }
}

/// One panel times a block of rows: `block` (its rows of `PANEL`) = x `(rows, k)` · panel
/// `(k, PANEL)` + bias, rectified with `relu`.
///
/// The rows are cut into as few tiles of at most [`TILE_ROWS`] as cover them, of balanced
/// sizes, each run by the kernel compiled for its exact row count: 32 rows (a thread's half
/// of 64 greedy sentences) are tiles of 6, 6, 5, 5, 5, 5, where tiles of 6 with a last one of
/// 2 padded to 6 did 36 rows' multiply-adds.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn panel_block(
    x: &[f32],
    panel: &[f32],
    following: &[f32],
    bias: &[f32; PANEL],
    relu: bool,
    wide: bool,
    block: Block,
) {
    const AVX512: bool = selected_target!().supports_feature_str("avx512f");
    const FMA: bool = selected_target!().supports_feature_str("fma");
    let k = panel.len() / PANEL;
    let rows = block.rows;
    let n_tiles = rows.div_ceil(TILE_ROWS);
    let wide = AVX512 && wide;
    let mut k0 = 0;
    while k0 < k {
        let k1 = (k0 + KC).min(k);
        let ahead = if k1 < k {
            &panel[k1 * PANEL..(k1 + KC).min(k) * PANEL]
        } else {
            following
        };
        let mut r0 = 0;
        for t in 0..n_tiles {
            let pass = Pass {
                panel: &panel[k0 * PANEL..k1 * PANEL],
                first: k0 == 0,
                last: k1 == k,
                relu,
                depth: (k, k0, k1),
                wide,
                ahead,
                prefetch: (t, n_tiles),
            };
            // At most TILE_ROWS: the rows left never exceed TILE_ROWS per tile left.
            let n = (rows - r0).div_ceil(n_tiles - t);
            let (xt, yt) = (&x[r0 * k..(r0 + n) * k], block.skip(r0));
            match n {
                1 => rows_tile::<1, FMA>(xt, &pass, bias, yt),
                2 => rows_tile::<2, FMA>(xt, &pass, bias, yt),
                3 => rows_tile::<3, FMA>(xt, &pass, bias, yt),
                4 => rows_tile::<4, FMA>(xt, &pass, bias, yt),
                5 => rows_tile::<5, FMA>(xt, &pass, bias, yt),
                _ => {
                    debug_assert_eq!(n, TILE_ROWS);
                    rows_tile::<TILE_ROWS, FMA>(xt, &pass, bias, yt)
                }
            }
            r0 += n;
        }
        k0 = k1;
    }
}

/// One depth slice of a panel, and whether it is the first (sums start from the bias) and
/// the last (the ReLU applies).
struct Pass<'a> {
    panel: &'a [f32],
    first: bool,
    last: bool,
    relu: bool,
    /// The input's depth k and the slice `k0 .. k1` of it.
    depth: (usize, usize, usize),
    /// One 64-column tile (AVX-512) rather than four of 16 (AVX2).
    wide: bool,
    /// The slice of panel the next pass reads, `(depth, PANEL)` (may be empty).
    ahead: &'a [f32],
    /// `(t, n)`: this is tile t of the pass's n, and prefetches rows t, t + n, … of `ahead`.
    prefetch: (usize, usize),
}

/// Asks for row `kk` of `ahead` (`PANEL` values) to be brought into the L1 cache.
///
/// Why: a decoding step streams every weight from memory once (the base preset's 121 MB do not
/// fit the caches), and a pass's first tile read its 32 KB slice at the kernel's pace, faster
/// than one core's share of memory bandwidth, while the other tiles read none: loads stalled in
/// the first tile. The tiles of each pass now share out the next slice's rows between them, so
/// the stream is spread over the whole pass. One thread, 32 rows by weights that come from
/// memory (`(2048, 512)`, `(512, 2048)`, the `(16000, 512)` projection): 89–96 → 96–108
/// GFLOP/s; base greedy (two threads) 0.90–0.91 → 0.86–0.87 s. Prefetching into L2 only
/// (`T2`) gained about a third of that, and prefetching all of the next slice in the first
/// tile (a burst again) lost 5%.
#[inline(always)]
fn prefetch_row(ahead: &[f32], kk: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(row) = ahead.get(kk * PANEL..(kk + 1) * PANEL) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        for line in row.chunks(16) {
            // SAFETY: a prefetch only hints the cache; the address lies inside `ahead`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
        }
    }
}

/// `[row(0), …, row(R − 1)]`, by a loop that is always inlined: `std::array::from_fn` was
/// left as a call in the kernel, and took 2–5% of a decoding step (perf).
#[inline(always)]
fn rows_of<'a, const R: usize>(row: impl Fn(usize) -> &'a [f32]) -> [&'a [f32]; R] {
    let mut rows: [&[f32]; R] = [&[]; R];
    for (r, x) in rows.iter_mut().enumerate() {
        *x = row(r);
    }
    rows
}

/// A tile of exactly `R` rows (x `(R, k)`, out `R` rows of the block) over one depth slice.
#[inline(always)]
fn rows_tile<const R: usize, const FMA: bool>(
    x: &[f32],
    pass: &Pass,
    bias: &[f32; PANEL],
    out: Block,
) {
    let (k, k0, k1) = pass.depth;
    let xs = rows_of::<R>(|r| &x[r * k + k0..r * k + k1]);
    if pass.wide {
        tile::<R, PANEL, FMA>(&xs, pass, 0, bias, out);
    } else {
        // 16 columns at a time: up to 6 × 2 AVX2 registers of sums.
        for off in (0..PANEL).step_by(16) {
            tile::<R, 16, FMA>(&xs, pass, off, bias, out);
        }
    }
}

/// Columns `off .. off + W` of a tile of `R` rows over one depth slice, the sums held in
/// registers and carried between slices in `out`. Inlined into [`panel_block`]'s versions so
/// that it is compiled for each one's instruction set.
#[inline(always)]
fn tile<const R: usize, const W: usize, const FMA: bool>(
    xs: &[&[f32]; R],
    pass: &Pass,
    off: usize,
    bias: &[f32; PANEL],
    out: Block,
) {
    let k = xs[0].len();
    let xs = rows_of::<R>(|r| &xs[r][..k]);
    let panel = &pass.panel[..k * PANEL];
    let mut acc = [[0f32; W]; R];
    for (r, a) in acc.iter_mut().enumerate() {
        if pass.first {
            a.copy_from_slice(&bias[off..off + W]);
        } else {
            // SAFETY: row r < R of this tile's rows, W columns from off within PANEL, stored
            // by the previous depth slice.
            unsafe { out.load(r, off, a) };
        }
    }
    let (mut next_prefetch, stride) = pass.prefetch;
    for kk in 0..k {
        if off == 0 && kk == next_prefetch {
            prefetch_row(pass.ahead, kk);
            next_prefetch += stride;
        }
        let w = &panel[kk * PANEL + off..kk * PANEL + off + W];
        for (a, x) in acc.iter_mut().zip(&xs) {
            let xv = x[kk];
            for (a, &w) in a.iter_mut().zip(w) {
                *a = if FMA { xv.mul_add(w, *a) } else { *a + xv * w };
            }
        }
    }
    let relu = pass.relu && pass.last;
    for (r, a) in acc.iter_mut().enumerate() {
        if relu {
            for v in a.iter_mut() {
                *v = v.max(0.0);
            }
        }
        // SAFETY: row r < R of this tile's rows, W columns from off within PANEL.
        unsafe { out.store(r, off, a) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// The panel product against x·Wᵀ + b composed from Candle ops, over shapes whose rows,
    /// depths and outputs are not multiples of the tile (6), the depth slice (128) or the
    /// panel (64), so that every tile height 1–6 runs, with and without bias and ReLU, in
    /// 64-column (AVX-512, where the CPU has it) and 16-column tiles; the larger ones run on
    /// several threads.
    #[test]
    fn panel_product_matches_matmul() -> Result<()> {
        let dev = Device::Cpu;
        for &(rows, k, out) in &[
            (1, 1, 1),
            (2, 9, 65),
            (5, 7, 3),
            (6, 64, 64),
            (13, 33, 130),
            (7, 300, 70),
            (32, 200, 130),
            (64, 128, 512),
            (320, 96, 1000),
        ] {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
            let w = Tensor::randn(0f32, 1.0, (out, k), &dev)?;
            let b = Tensor::randn(0f32, 1.0, out, &dev)?;
            let panels = pack(&w)?;
            assert_eq!(panels.dims(), &[out.div_ceil(PANEL), k, PANEL]);
            for (relu, wide) in [(false, true), (true, true), (false, false), (true, false)] {
                for bias in [None, Some(&b)] {
                    let mut want = x.matmul(&w.t()?)?;
                    if let Some(b) = bias {
                        want = want.broadcast_add(b)?;
                    }
                    if relu {
                        want = want.relu()?;
                    }
                    let op = PanelAffine { out, relu, wide };
                    let got = apply(&x, &panels, bias, &op)?;
                    let err = (got - &want)?
                        .abs()?
                        .flatten_all()?
                        .max(0)?
                        .to_scalar::<f32>()?;
                    let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                    assert!(
                        err <= 1e-5 * scale.max(1.0),
                        "rows {rows} k {k} out {out} relu {relu} wide {wide} bias {}: error {err}",
                        bias.is_some()
                    );
                }
            }
        }
        // Leading dimensions are kept: (b, t, k) → (b, t, out).
        let x = Tensor::randn(0f32, 1.0, (2, 3, 10), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (70, 10), &dev)?;
        let y = affine(&x, &pack(&w)?, None, 70, false)?;
        assert_eq!(y.dims(), &[2, 3, 70]);
        Ok(())
    }

    #[test]
    fn panel_product_rejects_mismatched_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::zeros((70, 10), candle_core::DType::F32, &dev)?;
        let panels = pack(&w)?;
        let x = Tensor::zeros((4, 11), candle_core::DType::F32, &dev)?;
        assert!(affine(&x, &panels, None, 70, false).is_err());
        let x = Tensor::zeros((4, 10), candle_core::DType::F32, &dev)?;
        assert!(affine(&x, &panels, None, 200, false).is_err());
        let b = Tensor::zeros(69, candle_core::DType::F32, &dev)?;
        assert!(affine(&x, &panels, Some(&b), 70, false).is_err());
        Ok(())
    }
}
