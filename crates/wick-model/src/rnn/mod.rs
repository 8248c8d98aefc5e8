//! Attention-based RNN encoder-decoders: `arch = "rnn"`.
//!
//! ```text
//! source ids ─ embed ─ dropout ─ [bidirectional GRU/LSTM] × encoder_layers ─ context dropout ─▶ h̄ (b, s, H)
//!                                   └─ final states ─ bridge ─▶ decoder's first state
//!
//! bahdanau (Bahdanau, Cho & Bengio, 2015), attention before the step:
//!   cᵢ = attend(sᵢ₋₁, h̄);  sᵢ = RNN([E yᵢ₋₁; cᵢ], sᵢ₋₁);  oᵢ = tanh(W_o [sᵢ; cᵢ; E yᵢ₋₁])
//! bahdanau with conditional = true (Nematus' conditional GRU, Sennrich et al., 2017):
//!   s'ᵢ = RNN₁(E yᵢ₋₁, sᵢ₋₁);  cᵢ = attend(s'ᵢ, h̄);  sᵢ = RNN(cᵢ, s'ᵢ);  oᵢ as above
//! luong_* (Luong, Pham & Manning, 2015), attention after the step:
//!   hₜ = RNN([E yₜ₋₁; õₜ₋₁] with input feeding, else E yₜ₋₁, hₜ₋₁);  cₜ = attend(hₜ, h̄);
//!   õₜ = tanh(W_c [hₜ; cₜ])
//! logits = o·W_outᵀ + b   (W_out: the target embedding unless tie_embeddings = "none")
//! ```
//!
//! The attentional vector `o` has the embedding's width, so the output layer can share the
//! target embedding. Bahdanau's own output layer is a maxout over `[sᵢ₋₁; E yᵢ₋₁; cᵢ]`; wick
//! reads the same three (with the new state, which has just seen `cᵢ`) through one `tanh`
//! layer, as Luong's attentional layer does with its two, so both families end in the same
//! kind of layer and differ only where the papers differ. Each encoder direction has half of
//! `hidden_size`, so the encoder outputs, the decoder state and every attention's query and
//! keys have one width and Luong's dot score needs no projection.
//!
//! Padding: the encoder's recurrence leaves the state unchanged at a padded position and
//! outputs zeros there (the results for the real positions are those of the unpadded
//! sentence), and attention gives padded positions zero weight.

pub mod attention;
pub mod cell;
pub mod config;

use candle_core::{D, Device, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use self::attention::SourceAttention;
use self::cell::{Recurrent, State};
pub use self::config::{AttentionKind, Cell, RnnConfig};
use crate::layers::{Dropout, DropoutRng, Linear};
use crate::mask::key_padding_bias;
use crate::model::{Memory, OutputLayer, Seq2Seq, VocabSizes};
use crate::transformer::Tying;

#[derive(Clone, Debug)]
pub struct Rnn {
    cfg: RnnConfig,
    vocab: VocabSizes,
    /// `(V_src, e)`
    src_embed: Tensor,
    /// `(V_tgt, e)`
    tgt_embed: Tensor,
    /// The output layer, `(V_tgt, e)` and `(V_tgt,)`.
    output_weight: Tensor,
    output_bias: Tensor,
    /// Forward and backward direction of each encoder layer.
    encoder: Vec<(Recurrent, Recurrent)>,
    /// `[→h_last; ←h_first]` → the decoder's first `h`, and for an LSTM its cell.
    bridge_h: Option<Linear>,
    bridge_c: Option<Linear>,
    decoder: Vec<Recurrent>,
    /// With `conditional`: the step over the previous word whose state queries the attention.
    conditional: Option<Recurrent>,
    attention: SourceAttention,
    /// The attentional layer: `[s; c; e]` (Bahdanau) or `[h; c]` (Luong) → `e`.
    combine: Linear,
    dropout: Dropout,
    /// On the encoder states, after the last layer.
    context_dropout: Dropout,
    rng: DropoutRng,
    /// The output layer laid out for decoding ([`OutputLayer::for_decoding`]), in copies
    /// made by [`Seq2Seq::for_decoding`].
    output_for_decoding: Option<Linear>,
}

/// Decoding state of an [`Rnn`]: every decoder layer's state and, with input feeding, the
/// last attentional vector.
#[derive(Clone, Debug)]
pub struct RnnCache {
    /// One per decoder layer, `(b, H)` each.
    pub layers: Vec<State>,
    /// `(b, e)`
    pub feed: Option<Tensor>,
}

impl RnnCache {
    fn map(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(Self {
            layers: self
                .layers
                .iter()
                .map(|s| s.map(&f))
                .collect::<Result<_>>()?,
            feed: self.feed.as_ref().map(&f).transpose()?,
        })
    }
}

fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let e = table.dim(1)?;
    table
        .index_select(&ids.flatten_all()?, 0)?
        .reshape((b, t, e))
}

impl Rnn {
    /// Builds the model; parameter names follow the module tree
    /// (`encoder.layers.0.forward.weight_hh`, `decoder.layers.0.bias_ih`, `attention.v`, …).
    pub fn new(
        cfg: &RnnConfig,
        vocab: VocabSizes,
        rng: DropoutRng,
        vb: VarBuilder,
    ) -> Result<Self> {
        crate::registry::ArchConfig::validate(cfg, &crate::registry::DataShape::of_vocab(vocab))
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let (e, h) = (cfg.embedding_dim, cfg.hidden_size);
        let init = Init::Randn {
            mean: 0.0,
            stdev: (e as f64).powf(-0.5),
        };
        let (src_embed, tgt_embed) = match cfg.tie_embeddings {
            Tying::All => {
                let t = vb
                    .pp("embed")
                    .get_with_hints((vocab.tgt, e), "weight", init)?;
                (t.clone(), t)
            }
            Tying::Decoder | Tying::None => (
                vb.pp("src_embed")
                    .get_with_hints((vocab.src, e), "weight", init)?,
                vb.pp("tgt_embed")
                    .get_with_hints((vocab.tgt, e), "weight", init)?,
            ),
        };
        let output_weight = match cfg.tie_embeddings {
            Tying::None => vb.pp("output").get_with_hints(
                (vocab.tgt, e),
                "weight",
                crate::init::xavier_uniform(e, vocab.tgt),
            )?,
            _ => tgt_embed.clone(),
        };
        let output_bias = vb
            .pp("output")
            .get_with_hints(vocab.tgt, "bias", Init::Const(0.0))?;
        let half = cfg.encoder_hidden();
        let mut encoder = Vec::with_capacity(cfg.encoder_layers);
        for l in 0..cfg.encoder_layers {
            let vb = vb.pp("encoder").pp("layers").pp(l);
            let d_in = if l == 0 { e } else { h };
            encoder.push((
                Recurrent::new(cfg.cell, d_in, half, vb.pp("forward"))?,
                Recurrent::new(cfg.cell, d_in, half, vb.pp("backward"))?,
            ));
        }
        let (bridge_h, bridge_c) = if cfg.bridge {
            let bridge_c = match cfg.cell {
                Cell::Lstm => Some(Linear::new(h, h, true, vb.pp("bridge").pp("c"))?),
                Cell::Gru => None,
            };
            (
                Some(Linear::new(h, h, true, vb.pp("bridge").pp("h"))?),
                bridge_c,
            )
        } else {
            (None, None)
        };
        let mut decoder = Vec::with_capacity(cfg.decoder_layers);
        for l in 0..cfg.decoder_layers {
            let d_in = if l == 0 { cfg.decoder_input() } else { h };
            decoder.push(Recurrent::new(
                cfg.cell,
                d_in,
                h,
                vb.pp("decoder").pp("layers").pp(l),
            )?);
        }
        let conditional = if cfg.conditional {
            let vb = vb.pp("decoder").pp("conditional");
            Some(Recurrent::new(cfg.cell, e, h, vb)?)
        } else {
            None
        };
        let combine_in = match cfg.attention {
            AttentionKind::Bahdanau => 2 * h + e,
            _ => 2 * h,
        };
        Ok(Self {
            cfg: cfg.clone(),
            vocab,
            src_embed,
            tgt_embed,
            output_weight,
            output_bias,
            encoder,
            bridge_h,
            bridge_c,
            decoder,
            conditional,
            attention: SourceAttention::new(cfg.attention, h, vb.pp("attention"))?,
            combine: Linear::new(combine_in, e, true, vb.pp("combine"))?,
            dropout: Dropout::new(cfg.dropout, rng.clone()),
            context_dropout: Dropout::new(cfg.context_dropout, rng.clone()),
            rng,
            output_for_decoding: None,
        })
    }

    pub fn config(&self) -> &RnnConfig {
        &self.cfg
    }

    fn is_lstm(&self) -> bool {
        matches!(self.cfg.cell, Cell::Lstm)
    }

    /// The keys [`SourceAttention::precompute`] put in the memory, after the first state.
    fn keys<'m>(&self, memory: &'m Memory) -> Option<&'m Tensor> {
        memory.extra.get(1 + usize::from(self.is_lstm()))
    }

    /// One decoding step for every row: the attentional vector `(b, e)` and the attention
    /// probabilities `(b, s)`. `emb` is the previous target token's embedding `(b, e)`.
    fn step(
        &self,
        memory: &Memory,
        emb: &Tensor,
        cache: &mut RnnCache,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let keys = self.keys(memory);
        let top = |layers: &[State]| -> Result<Tensor> {
            layers
                .last()
                .map(|s| s.h.clone())
                .ok_or_else(|| candle_core::Error::Msg("decoder without layers".into()))
        };
        let (layers, probs, combine_in) = if self.cfg.attention.is_luong() {
            let input = match &cache.feed {
                Some(feed) => Tensor::cat(&[emb, feed], D::Minus1)?,
                None => emb.clone(),
            };
            let layers = self.decoder_layers(&input, &cache.layers, train)?;
            let h = top(&layers)?;
            let (probs, context) = self.attention.attend(memory, keys, &h)?;
            let combine_in = Tensor::cat(&[&h, &context], D::Minus1)?;
            (layers, probs, combine_in)
        } else if let Some(first) = &self.conditional {
            // The first layer's step from the previous state over the word, the attention
            // with its result, then the first layer again from there over the context.
            let mut old = cache.layers.clone();
            let state = old
                .first_mut()
                .ok_or_else(|| candle_core::Error::Msg("decoder without layers".into()))?;
            *state = first.step(&first.project_inputs(emb)?, state)?;
            let (probs, context) = self.attention.attend(memory, keys, &state.h)?;
            let layers = self.decoder_layers(&context, &old, train)?;
            let combine_in = Tensor::cat(&[&top(&layers)?, &context, emb], D::Minus1)?;
            (layers, probs, combine_in)
        } else {
            let (probs, context) = self.attention.attend(memory, keys, &top(&cache.layers)?)?;
            let input = Tensor::cat(&[emb, &context], D::Minus1)?;
            let layers = self.decoder_layers(&input, &cache.layers, train)?;
            let combine_in = Tensor::cat(&[&top(&layers)?, &context, emb], D::Minus1)?;
            (layers, probs, combine_in)
        };
        let out = self
            .combine
            .forward(&self.dropout.forward_t(&combine_in, train)?)?
            .tanh()?;
        cache.layers = layers;
        if cache.feed.is_some() {
            cache.feed = Some(out.clone());
        }
        Ok((out, probs))
    }

    /// The decoder stack's step: each layer's new state from the layer below.
    fn decoder_layers(&self, input: &Tensor, old: &[State], train: bool) -> Result<Vec<State>> {
        let mut x = input.clone();
        let mut new = Vec::with_capacity(self.decoder.len());
        for (l, (layer, state)) in self.decoder.iter().zip(old).enumerate() {
            if l > 0 {
                x = self.dropout.forward_t(&x, train)?;
            }
            let s = layer.step(&layer.project_inputs(&x)?, state)?;
            x = s.h.clone();
            new.push(s);
        }
        Ok(new)
    }

    /// Teacher-forced attentional vectors `(b, t, e)` and attention `(b, t, s)`.
    fn teacher_forced(
        &self,
        memory: &Memory,
        tgt_in: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (_, t) = tgt_in.dims2()?;
        let emb = self
            .dropout
            .forward_t(&embed(&self.tgt_embed, tgt_in)?, train)?;
        let mut cache = self.start_decoding(memory)?;
        let mut outs = Vec::with_capacity(t);
        let mut probs = Vec::with_capacity(t);
        for i in 0..t {
            let (o, p) = self.step(memory, &emb.narrow(1, i, 1)?.squeeze(1)?, &mut cache, train)?;
            outs.push(o);
            probs.push(p);
        }
        Ok((Tensor::stack(&outs, 1)?, Tensor::stack(&probs, 1)?))
    }
}

impl Seq2Seq for Rnn {
    type Cache = RnnCache;

    fn vocab(&self) -> VocabSizes {
        self.vocab
    }

    fn device(&self) -> &Device {
        self.tgt_embed.device()
    }

    fn dropout_rng(&self) -> &DropoutRng {
        &self.rng
    }

    fn max_positions(&self) -> Option<usize> {
        None
    }

    /// Memory: states `h̄ (b, s, H)`; extra: the decoder's first `h (b, H)`, for an LSTM its
    /// first cell `(b, H)`, then the attention's precomputed keys `(b, s, H)` if it has any.
    fn encode(&self, src: &Tensor, src_mask: &Tensor, train: bool) -> Result<Memory> {
        let src_mask = src_mask.to_dtype(candle_core::DType::F32)?;
        let mut x = self
            .dropout
            .forward_t(&embed(&self.src_embed, src)?, train)?;
        let mut finals = None;
        for (l, (fwd, bwd)) in self.encoder.iter().enumerate() {
            if l > 0 {
                x = self.dropout.forward_t(&x, train)?;
            }
            let (out_f, last_f) = fwd.run(&x, &src_mask, false)?;
            let (out_b, last_b) = bwd.run(&x, &src_mask, true)?;
            x = Tensor::cat(&[&out_f, &out_b], D::Minus1)?;
            finals = Some((last_f, last_b));
        }
        let (last_f, last_b) =
            finals.ok_or_else(|| candle_core::Error::Msg("encoder without layers".into()))?;
        // Padded positions are zero and stay zero; with p = 0 nothing is drawn, so runs
        // without the key replay the same dropout stream.
        let x = self.context_dropout.forward_t(&x, train)?;
        let b = x.dim(0)?;
        let h = self.cfg.hidden_size;
        let first = |bridge: &Option<Linear>, f: &Tensor, bw: &Tensor| -> Result<Tensor> {
            match bridge {
                Some(layer) => layer.forward(&Tensor::cat(&[f, bw], D::Minus1)?)?.tanh(),
                None => Tensor::zeros((b, h), x.dtype(), x.device()),
            }
        };
        let mut extra = vec![first(&self.bridge_h, &last_f.h, &last_b.h)?];
        if let (Some(cf), Some(cb)) = (&last_f.c, &last_b.c) {
            extra.push(first(&self.bridge_c, cf, cb)?);
        }
        if let Some(keys) = self.attention.precompute(&x)? {
            extra.push(keys);
        }
        Ok(Memory {
            states: x,
            src_bias: key_padding_bias(&src_mask)?,
            src_mask,
            extra,
        })
    }

    fn decoder_states(&self, memory: &Memory, tgt_in: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.teacher_forced(memory, tgt_in, train)?.0)
    }

    fn output_layer(&self) -> OutputLayer {
        OutputLayer {
            weight: self.output_weight.clone(),
            bias: Some(self.output_bias.clone()),
        }
    }

    /// One `(b, 1, t, s)` alignment matrix (Bahdanau et al.'s Figure 3).
    fn attention(&self, memory: &Memory, tgt_in: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![
            self.teacher_forced(memory, tgt_in, false)?.1.unsqueeze(1)?,
        ])
    }

    fn for_decoding(&self) -> Result<Self> {
        let lay = |l: &Option<Linear>| l.as_ref().map(Linear::for_decoding).transpose();
        Ok(Self {
            encoder: self
                .encoder
                .iter()
                .map(|(f, b)| Ok((f.for_decoding()?, b.for_decoding()?)))
                .collect::<Result<_>>()?,
            bridge_h: lay(&self.bridge_h)?,
            bridge_c: lay(&self.bridge_c)?,
            decoder: self
                .decoder
                .iter()
                .map(Recurrent::for_decoding)
                .collect::<Result<_>>()?,
            conditional: self
                .conditional
                .as_ref()
                .map(Recurrent::for_decoding)
                .transpose()?,
            attention: self.attention.for_decoding()?,
            combine: self.combine.for_decoding()?,
            output_for_decoding: Some(self.output_layer().for_decoding()?),
            ..self.clone()
        })
    }

    fn start_decoding(&self, memory: &Memory) -> Result<RnnCache> {
        let h = memory
            .extra
            .first()
            .ok_or_else(|| candle_core::Error::Msg("memory of another architecture".into()))?;
        let c = if self.is_lstm() {
            Some(memory.extra.get(1).cloned().ok_or_else(|| {
                candle_core::Error::Msg("memory without the LSTM's first cell".into())
            })?)
        } else {
            None
        };
        let state = State { h: h.clone(), c };
        let feed = if self.cfg.feeds_input() {
            let b = h.dim(0)?;
            Some(Tensor::zeros(
                (b, self.cfg.embedding_dim),
                h.dtype(),
                h.device(),
            )?)
        } else {
            None
        };
        Ok(RnnCache {
            layers: vec![state; self.decoder.len()],
            feed,
        })
    }

    fn decode_step(
        &self,
        memory: &Memory,
        tokens: &Tensor,
        cache: &mut RnnCache,
    ) -> Result<Tensor> {
        let emb = embed(&self.tgt_embed, tokens)?.squeeze(1)?; // (b, e)
        let (out, _) = self.step(memory, &emb, cache, false)?;
        self.output_layer()
            .project_step(self.output_for_decoding.as_ref(), &out)
    }

    fn select_cache(&self, cache: &RnnCache, indices: &Tensor) -> Result<RnnCache> {
        // An LSTM's h and c are views of one `[h | c]` buffer.
        cache.map(|t| t.contiguous()?.index_select(indices, 0))
    }

    fn narrow_cache(&self, cache: &RnnCache, start: usize, len: usize) -> Result<RnnCache> {
        cache.map(|t| t.narrow(0, start, len))
    }
}
