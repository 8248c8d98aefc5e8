//! The Transformer encoder-decoder (Vaswani et al., 2017): `arch = "transformer"`.

pub mod config;
pub(crate) mod cost;
pub mod decoder;
pub mod encoder;

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

pub use self::config::{NormPosition, TransformerConfig, Tying};
use self::decoder::{Decoder, DecoderOutput, LayerCache};
use self::encoder::Encoder;
use crate::attention::{KvCache, StepKvCache};
use crate::layers::{DropoutRng, Linear, SinusoidalPositions, TokenEmbedding};
use crate::mask::key_padding_bias;
use crate::model::{Memory, OutputLayer, Seq2Seq, VocabSizes};
use crate::ops;

#[derive(Clone, Debug)]
pub struct Transformer {
    cfg: TransformerConfig,
    vocab: VocabSizes,
    src_embed: TokenEmbedding,
    tgt_embed: TokenEmbedding,
    /// `(V, d)`; the target embedding's matrix unless `tie_embeddings = "none"`.
    output_weight: Tensor,
    positions: SinusoidalPositions,
    encoder: Encoder,
    decoder: Decoder,
    dropout_rng: DropoutRng,
    /// The output projection laid out for decoding, in a copy made by
    /// [`Seq2Seq::for_decoding`] (whose encoder and decoder are laid out too); `None`: laid
    /// out anew by every `start_decoding`.
    output_for_decoding: Option<Linear>,
}

/// Decoding state of a [`Transformer`]. Not `Clone`: the layers' caches are written in place.
#[derive(Debug)]
pub struct TransformerCache {
    pub layers: Vec<LayerCache>,
    /// Number of target positions already fed.
    pub offset: usize,
    /// The decoder and the output projection, copied at the start of the call with their
    /// weights laid out for decoding ([`Linear::for_decoding`]).
    decoder: Decoder,
    output: Linear,
    /// The buffer the layers' self-attention caches reorder into, one for all of them
    /// (`StepKvCache::select_in_place`).
    spare: Option<Tensor>,
}

impl TransformerCache {
    fn map_layers(&self, f: impl Fn(&LayerCache) -> Result<LayerCache>) -> Result<Self> {
        Ok(Self {
            layers: self.layers.iter().map(f).collect::<Result<_>>()?,
            offset: self.offset,
            decoder: self.decoder.clone(),
            output: self.output.clone(),
            spare: None,
        })
    }
}

impl Transformer {
    /// Builds the model; parameter names follow the module tree
    /// (`encoder.layers.0.ffn.fc1.weight`, `tgt_embed.weight`, …).
    pub fn new(
        cfg: &TransformerConfig,
        vocab: VocabSizes,
        dropout_rng: DropoutRng,
        vb: VarBuilder,
    ) -> Result<Self> {
        crate::registry::ArchConfig::validate(cfg, &crate::registry::DataShape::of_vocab(vocab))
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let d = cfg.d_model;
        let (src_embed, tgt_embed) = match cfg.tie_embeddings {
            Tying::All => {
                let e = TokenEmbedding::new(vocab.tgt, d, vb.pp("embed"))?;
                (e.clone(), e)
            }
            Tying::Decoder | Tying::None => (
                TokenEmbedding::new(vocab.src, d, vb.pp("src_embed"))?,
                TokenEmbedding::new(vocab.tgt, d, vb.pp("tgt_embed"))?,
            ),
        };
        let output_weight = match cfg.tie_embeddings {
            Tying::None => vb.pp("output_proj").get_with_hints(
                (vocab.tgt, d),
                "weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: (d as f64).powf(-0.5),
                },
            )?,
            _ => tgt_embed.weight().clone(),
        };
        Ok(Self {
            cfg: cfg.clone(),
            vocab,
            src_embed,
            tgt_embed,
            output_weight,
            positions: SinusoidalPositions::new(cfg.max_positions, d, vb.device())?,
            encoder: Encoder::new(cfg, &dropout_rng, vb.pp("encoder"))?,
            decoder: Decoder::new(cfg, &dropout_rng, vb.pp("decoder"))?,
            dropout_rng,
            output_for_decoding: None,
        })
    }

    fn output_projection_for_decoding(&self) -> Result<Linear> {
        match &self.output_for_decoding {
            Some(l) => Ok(l.clone()),
            None => Linear::from_parts(self.output_weight.clone(), None).for_decoding(),
        }
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    /// The teacher-forced decoder over `tgt_in` `(b, t)`.
    fn decode_full(
        &self,
        memory: &Memory,
        tgt_in: &Tensor,
        want_attention: bool,
        train: bool,
    ) -> Result<DecoderOutput> {
        self.check_ids("tgt_in", tgt_in)?;
        self.decoder.forward_t(
            &self.tgt_embed,
            &self.positions,
            tgt_in,
            &memory.states,
            &memory.src_bias,
            want_attention,
            train,
        )
    }

    fn check_ids(&self, what: &str, ids: &Tensor) -> Result<()> {
        if ids.dtype() != candle_core::DType::U32 {
            candle_core::bail!("{what} must be u32 token ids, got {:?}", ids.dtype())
        }
        Ok(())
    }
}

/// `f(start, len)` over the batch's groups of sentences (`search::sentence_groups`), one
/// per thread, each running its products whole, with every output concatenated along the
/// batch (dim 0).
///
/// Why: inference over a batch as one chain of ops split op by op across threads makes the
/// threads meet after every op. Encoding 64 sentences of the base preset took 0.43 s on two
/// threads that way, and 0.41 s for 32 of them on one thread alone.
fn in_sentence_groups(
    device: &Device,
    b: usize,
    f: impl Fn(usize, usize) -> Result<Vec<Tensor>> + Sync,
) -> Result<Vec<Tensor>> {
    let groups = crate::search::sentence_groups(device, b);
    if groups.len() <= 1 {
        return f(0, b);
    }
    let scope = ops::Scope::current();
    let parts: Vec<Vec<Tensor>> = groups
        .into_par_iter()
        .map(|(start, len)| scope.enter(|| ops::with_whole_products(|| f(start, len))))
        .collect::<Result<_>>()?;
    (0..parts[0].len())
        .map(|i| Tensor::cat(&parts.iter().map(|p| &p[i]).collect::<Vec<_>>(), 0))
        .collect()
}

impl Seq2Seq for Transformer {
    type Cache = TransformerCache;

    fn vocab(&self) -> VocabSizes {
        self.vocab
    }

    fn device(&self) -> &Device {
        self.output_weight.device()
    }

    fn dropout_rng(&self) -> &DropoutRng {
        &self.dropout_rng
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.cfg.max_positions)
    }

    fn decoder_states(&self, memory: &Memory, tgt_in: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.decode_full(memory, tgt_in, false, train)?.hidden)
    }

    /// The output projection `(V, d)` (the shared embedding when tied), without a bias.
    fn output_layer(&self) -> OutputLayer {
        OutputLayer {
            weight: self.output_weight.clone(),
            bias: None,
        }
    }

    /// A copy for decoding many batches, with the weights of every linear layer and of the
    /// output projection laid out for few-row products ([`Linear::for_decoding`]) here, once.
    /// The decoder's were laid out at the start of every batch (the base preset's 33 M
    /// weights: 10–30 ms of each call of 64 sentences, 87–96 ms the first time, with fresh
    /// pages); the encoder's, in this layout rather than `gemm`'s own packing at every
    /// product, encode 64 sentences of the base preset in 0.37–0.39 s instead of 0.42–0.43 s
    /// (two threads). Shares the embeddings and layer norms.
    fn for_decoding(&self) -> Result<Self> {
        Ok(Self {
            encoder: self.encoder.for_decoding()?,
            decoder: self.decoder.for_decoding()?,
            output_for_decoding: Some(self.output_projection_for_decoding()?),
            ..self.clone()
        })
    }

    fn encode(&self, src: &Tensor, src_mask: &Tensor, train: bool) -> Result<Memory> {
        self.check_ids("src", src)?;
        if src.dims() != src_mask.dims() {
            candle_core::bail!(
                "src {:?} and src_mask {:?} differ in shape",
                src.dims(),
                src_mask.dims()
            )
        }
        let src_bias = key_padding_bias(src_mask)?; // (b, 1, 1, s)
        let encode = |start: usize, len: usize| {
            let (src, bias) = (src.narrow(0, start, len)?, src_bias.narrow(0, start, len)?);
            let states =
                (self.encoder).forward_t(&self.src_embed, &self.positions, &src, &bias, train)?;
            Ok(vec![states])
        };
        let states = if train {
            encode(0, src.dim(0)?)?
        } else {
            in_sentence_groups(src.device(), src.dim(0)?, encode)?
        }
        .swap_remove(0);
        Ok(Memory {
            states,
            src_mask: src_mask.clone(),
            src_bias,
            extra: Vec::new(),
        })
    }

    /// The cross-attention probabilities, one `(b, heads, t, s)` tensor per decoder layer.
    fn attention(&self, memory: &Memory, tgt_in: &Tensor) -> Result<Vec<Tensor>> {
        Ok(self
            .decode_full(memory, tgt_in, true, false)?
            .cross_attention)
    }

    fn start_decoding(&self, memory: &Memory) -> Result<Self::Cache> {
        // Clones of the layout when this model is a `for_decoding` copy.
        let (decoder, output) = (
            self.decoder.for_decoding()?,
            self.output_projection_for_decoding()?,
        );
        let states = &memory.states;
        let memory_kv = in_sentence_groups(states.device(), states.dim(0)?, |start, len| {
            let states = states.narrow(0, start, len)?;
            let layers = decoder.layers().iter();
            layers.map(|l| Ok(l.memory_kv(&states)?.kv)).collect()
        })?;
        let layers = memory_kv
            .into_iter()
            .map(|kv| LayerCache {
                self_kv: StepKvCache::default(),
                memory_kv: KvCache { kv },
            })
            .collect();
        Ok(TransformerCache {
            layers,
            offset: 0,
            decoder,
            output,
            spare: None,
        })
    }

    fn decode_step(
        &self,
        memory: &Memory,
        tokens: &Tensor,
        cache: &mut Self::Cache,
    ) -> Result<Tensor> {
        let (b, one) = tokens.dims2()?;
        if one != 1 {
            candle_core::bail!(
                "decode_step takes one token per sentence, got {:?}",
                tokens.dims()
            )
        }
        let hidden = cache.decoder.forward_step(
            &self.tgt_embed,
            &self.positions,
            tokens,
            cache.offset,
            &mut cache.layers,
            &memory.src_bias,
        )?; // (b, 1, d)
        cache.offset += 1;
        let d = hidden.dim(2)?;
        cache.output.forward(&hidden.reshape((b, d))?) // (b, V)
    }

    fn select_cache(&self, cache: &Self::Cache, indices: &Tensor) -> Result<Self::Cache> {
        cache.map_layers(|l| l.index_select(indices))
    }

    fn narrow_cache(&self, cache: &Self::Cache, start: usize, len: usize) -> Result<Self::Cache> {
        let device = self.output_weight.device();
        let rows = Tensor::arange(start as u32, (start + len) as u32, device)?;
        cache.map_layers(|l| l.narrow(start, len, &rows))
    }

    /// The cross-attention takes `g` rows per memory row (`CrossAttention::forward_step`).
    fn beams_share_memory(&self) -> bool {
        true
    }

    fn move_cache(
        &self,
        cache: &mut Self::Cache,
        rows: &Tensor,
        sources: Option<&Tensor>,
    ) -> Result<()> {
        for layer in &mut cache.layers {
            layer.select_in_place(rows, sources, &mut cache.spare)?;
        }
        Ok(())
    }
}
