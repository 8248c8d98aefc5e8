//! The interface between models, search and training.

use candle_core::{Result, Tensor};

/// An encoded source batch.
#[derive(Clone, Debug)]
pub struct Memory {
    /// Encoder states `(b, s, d)`.
    pub states: Tensor,
    /// Source mask `(b, s)`, 1.0 for real tokens, 0.0 for padding.
    pub src_mask: Tensor,
    /// Additive attention bias `(b, 1, 1, s)` derived once from `src_mask`.
    pub src_bias: Tensor,
}

impl Memory {
    /// Keeps batch rows `indices` (u32 `(b',)`), e.g. to expand a batch into beams.
    pub fn index_select(&self, indices: &Tensor) -> Result<Self> {
        Ok(Self {
            states: self.states.index_select(indices, 0)?,
            src_mask: self.src_mask.index_select(indices, 0)?,
            src_bias: self.src_bias.index_select(indices, 0)?,
        })
    }

    /// Batch rows `start .. start + len`, as views.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            states: self.states.narrow(0, start, len)?,
            src_mask: self.src_mask.narrow(0, start, len)?,
            src_bias: self.src_bias.narrow(0, start, len)?,
        })
    }

    pub fn batch_size(&self) -> Result<usize> {
        self.states.dim(0)
    }
}

/// An encoder-decoder that search and the trainer can drive.
pub trait Seq2Seq {
    /// Incremental decoding state.
    type Cache;

    /// # Shapes
    /// src `(b, s)` u32, src_mask `(b, s)` f32 → memory states `(b, s, d)`.
    fn encode(&self, src: &Tensor, src_mask: &Tensor, train: bool) -> Result<Memory>;

    /// Teacher-forced logits for every target position.
    ///
    /// # Shapes
    /// tgt_in `(b, t)` u32 → logits `(b, t, V)`.
    fn forward_t(&self, memory: &Memory, tgt_in: &Tensor, train: bool) -> Result<Tensor>;

    /// Cross-attention probabilities of a teacher-forced pass, one `(b, h, t, s)` tensor per
    /// decoder layer (what the model attends to; used for alignment plots).
    fn cross_attention(&self, memory: &Memory, tgt_in: &Tensor) -> Result<Vec<Tensor>>;

    /// A fresh cache for decoding from `memory`.
    fn start_decoding(&self, memory: &Memory) -> Result<Self::Cache>;

    /// Logits of the next token after feeding `tokens`.
    ///
    /// # Shapes
    /// tokens `(b, 1)` u32 → logits `(b, V)`.
    fn decode_step(
        &self,
        memory: &Memory,
        tokens: &Tensor,
        cache: &mut Self::Cache,
    ) -> Result<Tensor>;

    /// Keeps (and reorders, or repeats) batch rows `indices` of a cache.
    fn select_cache(&self, cache: &Self::Cache, indices: &Tensor) -> Result<Self::Cache>;

    /// Rows `start .. start + len` of a cache, for decoding a group of sentences on its own:
    /// what the cache derived from the memory may stay shared (a view), so that splitting a
    /// batch costs neither a copy nor memory.
    fn narrow_cache(&self, cache: &Self::Cache, start: usize, len: usize) -> Result<Self::Cache>;

    /// [`Self::select_cache`] for a selection under which every row keeps its source: row `r`
    /// becomes row `indices[r]`, and both rows decode the same sentence (beam search moving
    /// hypotheses within each sentence). What the cache derived from the memory is already
    /// right for every row and need not be copied.
    fn reorder_within_sources(&self, cache: &Self::Cache, indices: &Tensor) -> Result<Self::Cache> {
        self.select_cache(cache, indices)
    }
}
