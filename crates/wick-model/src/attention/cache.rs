//! Keys and values kept for incremental decoding.

use candle_core::{Result, Tensor};

use crate::ops::index_select_prefix;

/// Keys and values cached for incremental decoding: `(b, t, 2·d)`, each row the packed K and
/// V of one position, as the projections produce them (the fused kernel reads heads in place).
#[derive(Clone, Debug)]
pub struct KvCache {
    pub kv: Tensor,
}

impl KvCache {
    /// Keeps the rows `indices` (u32, `(b',)`) of the batch, for beam reordering and for
    /// dropping finished sentences.
    pub fn index_select(&self, indices: &Tensor) -> Result<Self> {
        Ok(Self {
            kv: self.kv.index_select(indices, 0)?,
        })
    }

    /// Rows `start .. start + len` of the batch, as a view.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            kv: self.kv.narrow(0, start, len)?,
        })
    }
}

/// Rows a decoding cache's buffer holds at first and grows by: most sentences end within
/// them, so the buffer is seldom copied.
const STEP_CACHE_BLOCK: usize = 32;

/// Self-attention keys and values of the positions decoded so far, `(b, t, 2·d)` as in
/// [`KvCache`], written into a buffer `(b, capacity, 2·d)` that grows by `STEP_CACHE_BLOCK`
/// rows: a step writes one row per sentence, where concatenating copied the whole cache every
/// step (5–7% of a greedy step, perf), and the attention kernel reads the rows in place.
/// Written by hand rather than with candle-nn's `kv_cache::Cache` because beam search reorders
/// the cache every step, and that type can only be rebuilt by copying the rows twice.
/// Not `Clone`: the buffer is written in place, so a copy would share it.
#[derive(Debug, Default)]
pub struct StepKvCache {
    buf: Option<Tensor>,
    len: usize,
}

impl StepKvCache {
    /// The cached rows, `(b, t, 2·d)`: a view into the buffer.
    pub fn kv(&self) -> Result<Option<Tensor>> {
        self.buf
            .as_ref()
            .map(|b| b.narrow(1, 0, self.len))
            .transpose()
    }

    /// Writes the rows of new positions, `(b, n, 2·d)`, after the cached ones.
    pub fn append(&mut self, rows: &Tensor) -> Result<()> {
        let n = rows.dim(1)?;
        let buf = match self.buf.take() {
            None => {
                let (b, _, w) = rows.dims3()?;
                let cap = n.div_ceil(STEP_CACHE_BLOCK).max(1) * STEP_CACHE_BLOCK;
                Tensor::zeros((b, cap, w), rows.dtype(), rows.device())?
            }
            Some(buf) if self.len + n > buf.dim(1)? => {
                let (b, cap, w) = buf.dims3()?;
                let extra = (self.len + n - cap).div_ceil(STEP_CACHE_BLOCK) * STEP_CACHE_BLOCK;
                let more = Tensor::zeros((b, extra, w), buf.dtype(), buf.device())?;
                Tensor::cat(&[&buf, &more], 1)?
            }
            Some(buf) => buf,
        };
        buf.slice_set(rows, 1, self.len)?;
        self.buf = Some(buf);
        self.len += n;
        Ok(())
    }

    /// Keeps the rows `indices` (u32, `(b',)`) of the batch, for beam reordering and for
    /// dropping finished sentences: one copy of the positions held, into a buffer with the
    /// same room.
    pub fn index_select(&self, indices: &Tensor) -> Result<Self> {
        Ok(Self {
            buf: (self.buf.as_ref())
                .map(|b| index_select_prefix(b, indices, self.len))
                .transpose()?,
            len: self.len,
        })
    }
}
