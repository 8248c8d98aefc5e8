//! Keys and values kept for incremental decoding.

use candle_core::{DType, Result, Tensor};

use crate::ops::{self, index_select_prefix};

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

/// Positions a decoding cache's buffer holds at first and grows by. Small, so that the room
/// past the positions held, which every buffer of every layer carries, stays small: with 32,
/// peak memory decoding the Multi30k test split was 12–17 MB higher (of 52–70 MB), at the same
/// speed (a copy every 8 steps is small beside the attention's reads of the whole cache).
const STEP_CACHE_BLOCK: usize = 8;

/// Self-attention keys and values of the positions decoded so far, `(b, t, 2·d)` as in
/// [`KvCache`], written into a buffer `(b, capacity, 2·d)` that grows by `STEP_CACHE_BLOCK`
/// rows: a step writes one row per sentence, where concatenating copied the whole cache every
/// step (5–7% of a greedy step, perf), and the attention kernel reads the rows in place.
/// Written by hand rather than with candle-nn's `kv_cache::Cache` because beam search reorders
/// the cache every step, and that type can only be rebuilt by copying the rows twice.
///
/// On the kernel path a reorder ([`Self::select_in_place`]) copies the held positions into a
/// spare buffer of the same room, which the caller keeps between reorders, and takes it as
/// its own; the buffer it leaves becomes the spare. So beam search allocates nothing per step
/// and writes only the positions held (a new buffer per step, zeroed past the held positions,
/// wrote the whole room and went through the allocator for tens of megabytes a step), and
/// the layers of a decoder, reordered one after another, share one spare: `layers + 1`
/// buffers in all rather than two per layer. Any buffer may have more rows than are in use
/// (sentences leave the batch); the first `b` are.
/// Not `Clone`: the buffers are written in place, so a copy would share them.
#[derive(Debug, Default)]
pub struct StepKvCache {
    /// `(≥ b, capacity, 2·d)`; its first `b` rows hold the state.
    front: Option<Tensor>,
    /// Rows in use.
    b: usize,
    /// Positions held.
    len: usize,
}

/// The first `b` rows of `buf` along dim 0 (a contiguous view).
fn first_rows(buf: &Tensor, b: usize) -> Result<Tensor> {
    if buf.dim(0)? == b {
        Ok(buf.clone())
    } else {
        buf.narrow(0, 0, b)
    }
}

impl StepKvCache {
    /// The rows in use, `(b, capacity, 2·d)`.
    fn buf(&self) -> Result<Option<Tensor>> {
        self.front
            .as_ref()
            .map(|f| first_rows(f, self.b))
            .transpose()
    }

    /// The cached rows, `(b, t, 2·d)`: a view into the buffer.
    pub fn kv(&self) -> Result<Option<Tensor>> {
        self.buf()?.map(|b| b.narrow(1, 0, self.len)).transpose()
    }

    /// Writes the rows of new positions, `(b, n, 2·d)`, after the cached ones.
    pub fn append(&mut self, rows: &Tensor) -> Result<()> {
        let (b, n, w) = rows.dims3()?;
        let buf = match self.buf()? {
            None => {
                let cap = n.div_ceil(STEP_CACHE_BLOCK).max(1) * STEP_CACHE_BLOCK;
                let buf = Tensor::zeros((b, cap, w), rows.dtype(), rows.device())?;
                self.front = Some(buf.clone());
                self.b = b;
                buf
            }
            Some(buf) if self.len + n > buf.dim(1)? => {
                let (b, cap, w) = buf.dims3()?;
                let extra = (self.len + n - cap).div_ceil(STEP_CACHE_BLOCK) * STEP_CACHE_BLOCK;
                let more = Tensor::zeros((b, extra, w), buf.dtype(), buf.device())?;
                let buf = Tensor::cat(&[&buf, &more], 1)?;
                // A spare of the old room is not taken by the next reorder (it checks the
                // room) and goes then.
                self.front = Some(buf.clone());
                buf
            }
            Some(buf) => buf,
        };
        if b != self.b {
            candle_core::bail!("decoding cache: {b} new rows for a batch of {}", self.b)
        }
        buf.slice_set(rows, 1, self.len)?;
        self.len += n;
        Ok(())
    }

    /// Keeps the rows `indices` (u32, `(b',)`) of the batch, for beam reordering and for
    /// dropping finished sentences: one copy of the positions held, into a buffer with the
    /// same room.
    pub fn index_select(&self, indices: &Tensor) -> Result<Self> {
        let front = (self.buf()?)
            .map(|b| index_select_prefix(&b, indices, self.len))
            .transpose()?;
        Ok(Self {
            front,
            b: indices.dim(0)?,
            len: self.len,
        })
    }

    /// [`Self::index_select`] in place: on the kernel path into `spare` (taken if it has the
    /// rows and the room, else a new buffer), and the buffer left behind becomes the spare
    /// (see the type's documentation); elsewhere as a new buffer, leaving `spare` as it is.
    /// Callers pass the same spare to every layer's cache: they have one room and one width.
    pub fn select_in_place(&mut self, indices: &Tensor, spare: &mut Option<Tensor>) -> Result<()> {
        let Some(src) = self.buf()? else {
            // Nothing decoded yet: the first append sets the rows.
            return Ok(());
        };
        if !(ops::kernels_on(src.device()) && src.dtype() == DType::F32) {
            *self = self.index_select(indices)?;
            return Ok(());
        }
        let ids = indices.to_vec1::<u32>()?;
        let (_, cap, w) = src.dims3()?;
        let fits = |t: &Tensor| -> Result<bool> {
            let (rows, room, width) = t.dims3()?;
            Ok(rows >= ids.len() && room == cap && width == w)
        };
        let back = match spare.take() {
            Some(t) if fits(&t)? => t,
            _ => Tensor::zeros((ids.len(), cap, w), src.dtype(), src.device())?,
        };
        ops::select_prefix_into(&first_rows(&back, ids.len())?, &src, &ids, self.len)?;
        *spare = self.front.replace(back);
        self.b = ids.len();
        Ok(())
    }
}
