//! The model contract: what the trainer, search, evaluation, translation, averaging, attention
//! plots and the run directory need from an architecture, and nothing more.
//!
//! An architecture implements [`Seq2Seq`] with its own decoding state; [`Model`] erases the
//! concrete type, so that code outside this crate works with any architecture the registry
//! ([`crate::registry`]) can build.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use candle_core::{Device, Result, Tensor};

use crate::layers::{DropoutRng, Linear};

/// Vocabulary sizes, fixed by the tokenizer(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VocabSizes {
    pub src: usize,
    pub tgt: usize,
}

/// An encoded source batch. Every tensor is batch-major, so that search can keep, reorder or
/// repeat sentences by selecting rows of all of them together.
#[derive(Clone, Debug)]
pub struct Memory {
    /// Encoder states `(b, s, d)`.
    pub states: Tensor,
    /// Source mask `(b, s)`, 1.0 for real tokens, 0.0 for padding.
    pub src_mask: Tensor,
    /// Additive attention bias `(b, 1, 1, s)` derived once from `src_mask`.
    pub src_bias: Tensor,
    /// What else the architecture keeps per sentence (final recurrent states, input
    /// embeddings, …), each `(b, …)`.
    pub extra: Vec<Tensor>,
}

impl Memory {
    fn map(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(Self {
            states: f(&self.states)?,
            src_mask: f(&self.src_mask)?,
            src_bias: f(&self.src_bias)?,
            extra: self.extra.iter().map(f).collect::<Result<_>>()?,
        })
    }

    /// Keeps batch rows `indices` (u32 `(b',)`), e.g. to expand a batch into beams.
    pub fn index_select(&self, indices: &Tensor) -> Result<Self> {
        self.map(|t| t.index_select(indices, 0))
    }

    /// Batch rows `start .. start + len`, as views.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        self.map(|t| t.narrow(0, start, len))
    }

    pub fn batch_size(&self) -> Result<usize> {
        self.states.dim(0)
    }

    pub fn device(&self) -> &Device {
        self.states.device()
    }
}

/// The layer that turns decoder states into logits: `logits = states·Wᵀ + b`.
#[derive(Clone, Debug)]
pub struct OutputLayer {
    /// `(V, d_out)`; the target embedding when the two are tied.
    pub weight: Tensor,
    /// `(V,)`, if the layer has one.
    pub bias: Option<Tensor>,
}

impl OutputLayer {
    /// # Shapes
    /// states `(…, d_out)` → logits `(…, V)`.
    pub fn project(&self, states: &Tensor) -> Result<Tensor> {
        crate::ops::affine(states, &self.weight, self.bias.as_ref(), false, None)
    }

    /// The layer laid out for decoding steps ([`Linear::for_decoding`]), for a model's copy
    /// made by [`Seq2Seq::for_decoding`]: a step's few rows against a `(V, d_out)` weight
    /// would otherwise pay for packing the weight in every call. No backward.
    pub fn for_decoding(&self) -> Result<Linear> {
        Linear::from_parts(self.weight.detach(), self.bias.as_ref().map(Tensor::detach))
            .for_decoding()
    }

    /// Logits of a decoding step: on `laid_out` where the model is a copy for decoding,
    /// else on this layer.
    ///
    /// # Shapes
    /// states `(b, d_out)` → logits `(b, V)`.
    pub fn project_step(&self, laid_out: Option<&Linear>, states: &Tensor) -> Result<Tensor> {
        match laid_out {
            Some(layer) => candle_core::Module::forward(layer, states),
            None => self.project(states),
        }
    }
}

/// One matrix product of a training step, as `wick bench matmul` times it:
/// `(m × k)·(k × n)`, `count` times per step.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ProductShape {
    pub name: String,
    /// `forward` or `backward`.
    pub pass: &'static str,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// The left operand is read transposed.
    pub lhs_t: bool,
    /// The right operand is read transposed.
    pub rhs_t: bool,
    pub count: usize,
}

/// What a training step on a batch of a given shape costs in products, for benchmarks.
#[derive(Clone, Debug, Default)]
pub struct StepCost {
    /// Multiply-add FLOPs of one forward pass, the attention products included.
    pub forward_flops: f64,
    /// The step's products of weights, forward and backward.
    pub products: Vec<ProductShape>,
}

/// An encoder-decoder that search, training and evaluation can drive.
///
/// Token ids are u32, masks f32 `{1, 0}`; `tgt_in` starts with `<s>`. `train` switches
/// dropout on; nothing else depends on it.
pub trait Seq2Seq: Send + Sync + 'static {
    /// Incremental decoding state (cached keys/values, recurrent states, input windows).
    type Cache: Send + Sync + 'static;

    fn vocab(&self) -> VocabSizes;

    fn device(&self) -> &Device;

    /// The stream every dropout layer draws from (seed it, save it, restore it).
    fn dropout_rng(&self) -> &DropoutRng;

    /// Longest source, or target with `<s>`, the model can take (a position table's size);
    /// `None` when there is no such bound.
    fn max_positions(&self) -> Option<usize>;

    /// # Shapes
    /// src `(b, s)` u32, src_mask `(b, s)` f32 → memory states `(b, s, d)`.
    fn encode(&self, src: &Tensor, src_mask: &Tensor, train: bool) -> Result<Memory>;

    /// Teacher-forced decoder states before the output layer, for every target position
    /// (losses fuse the projection with the softmax).
    ///
    /// # Shapes
    /// tgt_in `(b, t)` u32 → `(b, t, d_out)`.
    fn decoder_states(&self, memory: &Memory, tgt_in: &Tensor, train: bool) -> Result<Tensor>;

    /// The projection onto the target vocabulary.
    fn output_layer(&self) -> OutputLayer;

    /// Teacher-forced logits for every target position.
    ///
    /// # Shapes
    /// tgt_in `(b, t)` u32 → logits `(b, t, V)`.
    fn forward_t(&self, memory: &Memory, tgt_in: &Tensor, train: bool) -> Result<Tensor> {
        self.output_layer()
            .project(&self.decoder_states(memory, tgt_in, train)?)
    }

    /// What each target position attends to in the source, from a teacher-forced pass: one
    /// `(b, heads, t, s)` tensor of probabilities per attention layer (a single-attention
    /// model returns one with one head). Used for alignment plots.
    fn attention(&self, memory: &Memory, tgt_in: &Tensor) -> Result<Vec<Tensor>>;

    /// A copy for inference over many batches, with its weights laid out for decoding once.
    /// Later updates to the weights do not reach the copy; it has no backward.
    fn for_decoding(&self) -> Result<Self>
    where
        Self: Sized;

    /// A fresh decoding state for `memory`.
    fn start_decoding(&self, memory: &Memory) -> Result<Self::Cache>;

    /// Logits of the next token after feeding `tokens`: a row per row of `memory`, or `g` rows
    /// per memory row where [`Self::beams_share_memory`].
    ///
    /// # Shapes
    /// tokens `(b, 1)` u32, memory of `b` (or `b / g`) rows → logits `(b, V)`.
    fn decode_step(
        &self,
        memory: &Memory,
        tokens: &Tensor,
        cache: &mut Self::Cache,
    ) -> Result<Tensor>;

    /// Keeps (and reorders, or repeats) batch rows `indices` of a decoding state.
    fn select_cache(&self, cache: &Self::Cache, indices: &Tensor) -> Result<Self::Cache>;

    /// Rows `start .. start + len` of a decoding state, for decoding a group of sentences on
    /// its own: what derives from the memory may stay shared (a view), so that splitting a
    /// batch costs neither a copy nor memory.
    fn narrow_cache(&self, cache: &Self::Cache, start: usize, len: usize) -> Result<Self::Cache>;

    /// Whether [`Self::decode_step`] takes `g ≥ 1` consecutive rows of `tokens` per memory row
    /// (rows `i·g .. (i + 1)·g` decoding the sentence of memory row `i`), with a decoding state
    /// whose own rows follow the tokens while what it derives from the memory follows the
    /// memory. Beam search then keeps the memory once per sentence rather than once per
    /// hypothesis. `false` (the default): every row has its own memory row.
    fn beams_share_memory(&self) -> bool {
        false
    }

    /// Moves a decoding state to new rows, in place where the backend allows: row `r` of the
    /// decoder's own state (cached keys/values of decoded positions, recurrent states, input
    /// windows) becomes its old row `rows[r]`, and what derives from the memory keeps its rows
    /// `sources` (`None`: as they are). Beam search calls it every step, with `sources` when
    /// sentences leave the batch. Unless [`Self::beams_share_memory`], `sources` is `None` (each
    /// row keeps its sentence) or equal to `rows`, and the default, [`Self::select_cache`] by
    /// `rows`, is right for a state that holds nothing derived from the memory.
    fn move_cache(
        &self,
        cache: &mut Self::Cache,
        rows: &Tensor,
        sources: Option<&Tensor>,
    ) -> Result<()> {
        let _ = sources;
        *cache = self.select_cache(cache, rows)?;
        Ok(())
    }
}

/// The decoding state of a [`Model`], whatever its architecture.
pub struct DecodingState(Box<dyn Any + Send + Sync>);

impl fmt::Debug for DecodingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DecodingState")
    }
}

/// [`Seq2Seq`] with the decoding state erased, so that it can be a trait object.
trait Erased: Send + Sync {
    fn vocab(&self) -> VocabSizes;
    fn device(&self) -> &Device;
    fn dropout_rng(&self) -> &DropoutRng;
    fn max_positions(&self) -> Option<usize>;
    fn encode(&self, src: &Tensor, src_mask: &Tensor, train: bool) -> Result<Memory>;
    fn decoder_states(&self, memory: &Memory, tgt_in: &Tensor, train: bool) -> Result<Tensor>;
    fn output_layer(&self) -> OutputLayer;
    fn forward_t(&self, memory: &Memory, tgt_in: &Tensor, train: bool) -> Result<Tensor>;
    fn attention(&self, memory: &Memory, tgt_in: &Tensor) -> Result<Vec<Tensor>>;
    fn for_decoding(&self) -> Result<Arc<dyn Erased>>;
    fn start_decoding(&self, memory: &Memory) -> Result<DecodingState>;
    fn decode_step(
        &self,
        memory: &Memory,
        tokens: &Tensor,
        cache: &mut DecodingState,
    ) -> Result<Tensor>;
    fn select_cache(&self, cache: &DecodingState, indices: &Tensor) -> Result<DecodingState>;
    fn narrow_cache(
        &self,
        cache: &DecodingState,
        start: usize,
        len: usize,
    ) -> Result<DecodingState>;
    fn beams_share_memory(&self) -> bool;
    fn move_cache(
        &self,
        cache: &mut DecodingState,
        rows: &Tensor,
        sources: Option<&Tensor>,
    ) -> Result<()>;
}

fn state<C: 'static>(cache: &DecodingState) -> Result<&C> {
    cache
        .0
        .downcast_ref()
        .ok_or_else(|| candle_core::Error::Msg("decoding state of another model".into()))
}

fn state_mut<C: 'static>(cache: &mut DecodingState) -> Result<&mut C> {
    cache
        .0
        .downcast_mut()
        .ok_or_else(|| candle_core::Error::Msg("decoding state of another model".into()))
}

fn wrap<C: Send + Sync + 'static>(cache: C) -> DecodingState {
    DecodingState(Box::new(cache))
}

impl<M: Seq2Seq> Erased for M {
    fn vocab(&self) -> VocabSizes {
        Seq2Seq::vocab(self)
    }
    fn device(&self) -> &Device {
        Seq2Seq::device(self)
    }
    fn dropout_rng(&self) -> &DropoutRng {
        Seq2Seq::dropout_rng(self)
    }
    fn max_positions(&self) -> Option<usize> {
        Seq2Seq::max_positions(self)
    }
    fn encode(&self, src: &Tensor, src_mask: &Tensor, train: bool) -> Result<Memory> {
        Seq2Seq::encode(self, src, src_mask, train)
    }
    fn decoder_states(&self, memory: &Memory, tgt_in: &Tensor, train: bool) -> Result<Tensor> {
        Seq2Seq::decoder_states(self, memory, tgt_in, train)
    }
    fn output_layer(&self) -> OutputLayer {
        Seq2Seq::output_layer(self)
    }
    fn forward_t(&self, memory: &Memory, tgt_in: &Tensor, train: bool) -> Result<Tensor> {
        Seq2Seq::forward_t(self, memory, tgt_in, train)
    }
    fn attention(&self, memory: &Memory, tgt_in: &Tensor) -> Result<Vec<Tensor>> {
        Seq2Seq::attention(self, memory, tgt_in)
    }
    fn for_decoding(&self) -> Result<Arc<dyn Erased>> {
        Ok(Arc::new(Seq2Seq::for_decoding(self)?))
    }
    fn start_decoding(&self, memory: &Memory) -> Result<DecodingState> {
        Ok(wrap(Seq2Seq::start_decoding(self, memory)?))
    }
    fn decode_step(
        &self,
        memory: &Memory,
        tokens: &Tensor,
        cache: &mut DecodingState,
    ) -> Result<Tensor> {
        Seq2Seq::decode_step(self, memory, tokens, state_mut(cache)?)
    }
    fn select_cache(&self, cache: &DecodingState, indices: &Tensor) -> Result<DecodingState> {
        Ok(wrap(Seq2Seq::select_cache(self, state(cache)?, indices)?))
    }
    fn narrow_cache(
        &self,
        cache: &DecodingState,
        start: usize,
        len: usize,
    ) -> Result<DecodingState> {
        Ok(wrap(Seq2Seq::narrow_cache(
            self,
            state(cache)?,
            start,
            len,
        )?))
    }
    fn beams_share_memory(&self) -> bool {
        Seq2Seq::beams_share_memory(self)
    }
    fn move_cache(
        &self,
        cache: &mut DecodingState,
        rows: &Tensor,
        sources: Option<&Tensor>,
    ) -> Result<()> {
        Seq2Seq::move_cache(self, state_mut(cache)?, rows, sources)
    }
}

/// A model of any registered architecture. Cheap to clone (the weights are shared); `Send`
/// and `Sync`, so that threads can decode with one model.
#[derive(Clone)]
pub struct Model {
    arch: &'static str,
    inner: Arc<dyn Erased>,
    /// A copy made by [`Seq2Seq::for_decoding`]: its encoder output is detached (see
    /// `encode`).
    decoding: bool,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Model({})", self.arch)
    }
}

impl Model {
    /// Wraps an architecture's model; `arch` is its registry name.
    pub fn new<M: Seq2Seq>(arch: &'static str, model: M) -> Self {
        Self {
            arch,
            inner: Arc::new(model),
            decoding: false,
        }
    }

    /// The architecture's registry name (`model.arch`).
    pub fn arch(&self) -> &'static str {
        self.arch
    }
}

impl Seq2Seq for Model {
    type Cache = DecodingState;

    fn vocab(&self) -> VocabSizes {
        self.inner.vocab()
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn dropout_rng(&self) -> &DropoutRng {
        self.inner.dropout_rng()
    }
    fn max_positions(&self) -> Option<usize> {
        self.inner.max_positions()
    }
    /// A decoding copy's memory is detached from the ops that made it. Where the model was
    /// built over trainable variables (a model being trained, handed to a `Translator`),
    /// each op records its inputs for the backward pass, so the memory would keep every
    /// activation of the encoder alive for as long as it decodes: 120–140 MB more at the
    /// peak with the base preset's 64 sentences. A decoding copy has no backward to need them.
    fn encode(&self, src: &Tensor, src_mask: &Tensor, train: bool) -> Result<Memory> {
        let memory = self.inner.encode(src, src_mask, train)?;
        if self.decoding {
            memory.map(|t| Ok(t.detach()))
        } else {
            Ok(memory)
        }
    }
    fn decoder_states(&self, memory: &Memory, tgt_in: &Tensor, train: bool) -> Result<Tensor> {
        self.inner.decoder_states(memory, tgt_in, train)
    }
    fn output_layer(&self) -> OutputLayer {
        self.inner.output_layer()
    }
    fn forward_t(&self, memory: &Memory, tgt_in: &Tensor, train: bool) -> Result<Tensor> {
        self.inner.forward_t(memory, tgt_in, train)
    }
    fn attention(&self, memory: &Memory, tgt_in: &Tensor) -> Result<Vec<Tensor>> {
        self.inner.attention(memory, tgt_in)
    }
    fn for_decoding(&self) -> Result<Self> {
        Ok(Self {
            arch: self.arch,
            inner: self.inner.for_decoding()?,
            decoding: true,
        })
    }
    fn start_decoding(&self, memory: &Memory) -> Result<DecodingState> {
        self.inner.start_decoding(memory)
    }
    fn decode_step(
        &self,
        memory: &Memory,
        tokens: &Tensor,
        cache: &mut DecodingState,
    ) -> Result<Tensor> {
        self.inner.decode_step(memory, tokens, cache)
    }
    fn select_cache(&self, cache: &DecodingState, indices: &Tensor) -> Result<DecodingState> {
        self.inner.select_cache(cache, indices)
    }
    fn narrow_cache(
        &self,
        cache: &DecodingState,
        start: usize,
        len: usize,
    ) -> Result<DecodingState> {
        self.inner.narrow_cache(cache, start, len)
    }
    fn beams_share_memory(&self) -> bool {
        self.inner.beams_share_memory()
    }
    fn move_cache(
        &self,
        cache: &mut DecodingState,
        rows: &Tensor,
        sources: Option<&Tensor>,
    ) -> Result<()> {
        self.inner.move_cache(cache, rows, sources)
    }
}
