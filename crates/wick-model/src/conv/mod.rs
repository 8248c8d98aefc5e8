//! Convolutional sequence to sequence learning (Gehring et al., 2017): `arch = "conv"`.
//!
//! ```text
//! encoder: e = dropout(E x + P)  →  fc1 (e→h)  →  [ h = (GLU(conv(dropout(h))) + h)·√½ ] × L_enc
//!          →  fc2 (h→e) = z  ;  memory: z for the scores, (z + e)·√½ for the values
//! decoder: g = dropout(E y + P)  →  fc1  →  per layer l:
//!            x = GLU(causal conv(dropout(h)))                 (k − 1 zeros on the left)
//!            d = (W_in x + g)·√½;  a = softmax(d·zᵀ);  c = a·(z + e)·√½ · s·√(1/s)
//!            x = (W_out c + x)·√½;  h = (x + h)·√½
//!          →  fc2 (h→e)  →  dropout  →  output layer (the target embedding unless untied)
//! ```
//!
//! As in the paper: learned positions, GLUs, residuals scaled by √½, an attention in every
//! decoder layer over `z` and `z + e`, the context rescaled by `s·√(1/s)` for `s` real source
//! tokens, weight normalisation on every convolution and projection (initialised for the
//! variance their inputs have), and the encoder's gradients scaled by `1/(2·L_dec)` because
//! every decoder attention sends gradients into it. Two details follow fairseq's
//! implementation rather than the paper's text: the `(z + e)` sum is scaled by √½, and so is
//! the attention's query `W_in x + g`. Embeddings are not weight-normalised (N(0, 0.1)).
//!
//! A decoding step keeps, per decoder layer, the last `k − 1` inputs of its convolution.

pub mod config;
pub mod layers;

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

pub use self::config::ConvConfig;
use self::layers::{GatedConv, WeightNormLinear};
use crate::layers::{Dropout, DropoutRng, Linear};
use crate::mask::key_padding_bias;
use crate::model::{Memory, OutputLayer, Seq2Seq, VocabSizes};
use crate::transformer::Tying;

const HALF_SQRT: f64 = std::f64::consts::FRAC_1_SQRT_2;

/// One decoder block: a causal gated convolution and its attention.
#[derive(Clone, Debug)]
struct DecoderLayer {
    conv: GatedConv,
    /// `W_in`: h → e, the query.
    attn_in: WeightNormLinear,
    /// `W_out`: e → h, the context back into the residual stream.
    attn_out: WeightNormLinear,
}

#[derive(Clone, Debug)]
pub struct ConvS2S {
    cfg: ConvConfig,
    vocab: VocabSizes,
    /// `(V_src, e)`, `(V_tgt, e)`
    src_embed: Tensor,
    tgt_embed: Tensor,
    /// Learned positions `(max_positions, e)`.
    src_positions: Tensor,
    tgt_positions: Tensor,
    enc_in: WeightNormLinear,
    enc_layers: Vec<GatedConv>,
    enc_out: WeightNormLinear,
    dec_in: WeightNormLinear,
    dec_layers: Vec<DecoderLayer>,
    dec_out: WeightNormLinear,
    /// Untied output layer; `None` when the target embedding is the output layer.
    output: Option<WeightNormLinear>,
    /// The output layer's bias when tied.
    output_bias: Tensor,
    dropout: Dropout,
    rng: DropoutRng,
    /// The output layer laid out for decoding ([`OutputLayer::for_decoding`]), in copies
    /// made by [`Seq2Seq::for_decoding`].
    output_for_decoding: Option<Linear>,
}

/// Decoding state of a [`ConvS2S`]: each decoder layer's last `k − 1` convolution inputs.
#[derive(Clone, Debug)]
pub struct ConvCache {
    /// `(b, k − 1, h)` per decoder layer.
    pub windows: Vec<Tensor>,
    /// Target positions fed so far.
    pub offset: usize,
}

fn embed(table: &Tensor, positions: &Tensor, ids: &Tensor, offset: usize) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let e = table.dim(1)?;
    let max = positions.dim(0)?;
    if offset + t > max {
        candle_core::bail!(
            "sequence of {} positions exceeds model.max_positions = {max}",
            offset + t
        )
    }
    table
        .index_select(&ids.flatten_all()?, 0)?
        .reshape((b, t, e))?
        .broadcast_add(&positions.narrow(0, offset, t)?.unsqueeze(0)?)
}

/// `x` forwards, `scale·∂` backwards (fairseq's `GradMultiply`): `x` exactly, since the
/// two scaled terms cancel.
fn scale_gradient(x: &Tensor, scale: f64) -> Result<Tensor> {
    let scaled = x.affine(scale, 0.0)?;
    x.detach() + (&scaled - scaled.detach())?
}

impl ConvS2S {
    /// Builds the model; parameter names follow the module tree
    /// (`encoder.layers.0.weight_v`, `decoder.layers.1.attn_in.weight_g`, …).
    pub fn new(
        cfg: &ConvConfig,
        vocab: VocabSizes,
        rng: DropoutRng,
        vb: VarBuilder,
    ) -> Result<Self> {
        crate::registry::ArchConfig::validate(cfg, &crate::registry::DataShape::of_vocab(vocab))
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let (e, h, k) = (cfg.embedding_dim, cfg.hidden_size, cfg.kernel_size);
        let p = cfg.dropout as f64;
        let normal = Init::Randn {
            mean: 0.0,
            stdev: 0.1,
        };
        let (src_embed, tgt_embed) = match cfg.tie_embeddings {
            Tying::All => {
                let t = vb
                    .pp("embed")
                    .get_with_hints((vocab.tgt, e), "weight", normal)?;
                (t.clone(), t)
            }
            Tying::Decoder | Tying::None => (
                vb.pp("src_embed")
                    .get_with_hints((vocab.src, e), "weight", normal)?,
                vb.pp("tgt_embed")
                    .get_with_hints((vocab.tgt, e), "weight", normal)?,
            ),
        };
        let positions = |name: &str| {
            vb.pp(name)
                .get_with_hints((cfg.max_positions, e), "weight", normal)
        };
        // fairseq's Linear: N(0, (1 − p)/in) for an input after dropout p.
        let linear = |d_in: usize, d_out: usize, p: f64, vb: VarBuilder| {
            WeightNormLinear::new(d_in, d_out, ((1.0 - p) / d_in as f64).sqrt(), vb)
        };
        let enc = vb.pp("encoder");
        let dec = vb.pp("decoder");
        let enc_layers = (0..cfg.encoder_layers)
            .map(|l| GatedConv::new(h, h, k, cfg.dropout, enc.pp("layers").pp(l)))
            .collect::<Result<_>>()?;
        let dec_layers = (0..cfg.decoder_layers)
            .map(|l| {
                let vb = dec.pp("layers").pp(l);
                Ok(DecoderLayer {
                    conv: GatedConv::new(h, h, k, cfg.dropout, vb.pp("conv"))?,
                    attn_in: linear(h, e, 0.0, vb.pp("attn_in"))?,
                    attn_out: linear(e, h, 0.0, vb.pp("attn_out"))?,
                })
            })
            .collect::<Result<_>>()?;
        let output = match cfg.tie_embeddings {
            Tying::None => Some(linear(e, vocab.tgt, p, vb.pp("output"))?),
            _ => None,
        };
        let output_bias = match &output {
            Some(layer) => layer.bias().clone(),
            None => vb
                .pp("output")
                .get_with_hints(vocab.tgt, "bias", Init::Const(0.0))?,
        };
        Ok(Self {
            cfg: cfg.clone(),
            vocab,
            src_embed,
            tgt_embed,
            src_positions: positions("src_positions")?,
            tgt_positions: positions("tgt_positions")?,
            enc_in: linear(e, h, p, enc.pp("fc_in"))?,
            enc_layers,
            enc_out: linear(h, e, 0.0, enc.pp("fc_out"))?,
            dec_in: linear(e, h, p, dec.pp("fc_in"))?,
            dec_layers,
            dec_out: linear(h, e, 0.0, dec.pp("fc_out"))?,
            output,
            output_bias,
            dropout: Dropout::new(cfg.dropout, rng.clone()),
            rng,
            output_for_decoding: None,
        })
    }

    pub fn config(&self) -> &ConvConfig {
        &self.cfg
    }

    /// A decoder layer's attention and its output: `x (b, t, h)` after the convolution, `g
    /// (b, t, e)` the target embeddings → `(b, t, h)` and probabilities `(b, t, s)`.
    fn attend(
        &self,
        layer: &DecoderLayer,
        memory: &Memory,
        x: &Tensor,
        g: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, s, _) = memory.states.dims3()?;
        let [values, scale] = memory.extra.as_slice() else {
            candle_core::bail!("memory of another architecture")
        };
        let d = ((layer.attn_in.forward(x)? + g)? * HALF_SQRT)?; // (b, t, e)
        let scores = d.matmul(&memory.states.t()?)?; // (b, t, s)
        let bias = memory.src_bias.reshape((b, 1, s))?;
        let probs = crate::ops::softmax_last_dim(&scores.broadcast_add(&bias)?)?;
        let context = probs.matmul(values)?.broadcast_mul(scale)?; // (b, t, e)
        let out = ((layer.attn_out.forward(&context)? + x)? * HALF_SQRT)?;
        Ok((out, probs))
    }

    /// Teacher-forced decoder outputs `(b, t, e)` and each layer's attention `(b, t, s)`.
    fn decode_all(
        &self,
        memory: &Memory,
        tgt_in: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let g = self.dropout.forward_t(
            &embed(&self.tgt_embed, &self.tgt_positions, tgt_in, 0)?,
            train,
        )?;
        let mut h = self.dec_in.forward(&g)?;
        let mut probs = Vec::with_capacity(self.dec_layers.len());
        for layer in &self.dec_layers {
            let k = layer.conv.kernel();
            let x = layer
                .conv
                .forward(&self.dropout.forward_t(&h, train)?, k - 1, 0)?;
            let (x, p) = self.attend(layer, memory, &x, &g)?;
            h = ((x + h)? * HALF_SQRT)?;
            probs.push(p);
        }
        let out = self.dropout.forward_t(&self.dec_out.forward(&h)?, train)?;
        Ok((out, probs))
    }
}

impl Seq2Seq for ConvS2S {
    type Cache = ConvCache;

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
        Some(self.cfg.max_positions)
    }

    /// Memory: states `z (b, s, e)`; extra: the values `(z + e)·√½ (b, s, e)` and each
    /// sentence's context scale `√s (b, 1, 1)`.
    fn encode(&self, src: &Tensor, src_mask: &Tensor, train: bool) -> Result<Memory> {
        let src_mask = src_mask.to_dtype(candle_core::DType::F32)?;
        let b = src_mask.dim(0)?;
        let keep = src_mask.unsqueeze(2)?; // (b, s, 1)
        let e = self
            .dropout
            .forward_t(&embed(&self.src_embed, &self.src_positions, src, 0)?, train)?;
        let mut h = self.enc_in.forward(&e)?;
        let pad = (self.cfg.kernel_size - 1) / 2;
        for conv in &self.enc_layers {
            // Zeros at padded positions, as at the sentence's edges: a real position's
            // window never sees what the padding holds.
            let x = self.dropout.forward_t(&h, train)?.broadcast_mul(&keep)?;
            h = ((conv.forward(&x, pad, pad)? + h)? * HALF_SQRT)?;
        }
        let z = self.enc_out.forward(&h)?.broadcast_mul(&keep)?;
        let z = scale_gradient(&z, 1.0 / (2.0 * self.cfg.decoder_layers as f64))?;
        let values = ((&z + &e)? * HALF_SQRT)?;
        // s·√(1/s) = √s for s real source tokens.
        let scale = src_mask.sum_keepdim(1)?.sqrt()?.reshape((b, 1, 1))?;
        Ok(Memory {
            states: z,
            src_bias: key_padding_bias(&src_mask)?,
            src_mask,
            extra: vec![values, scale],
        })
    }

    fn decoder_states(&self, memory: &Memory, tgt_in: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.decode_all(memory, tgt_in, train)?.0)
    }

    fn output_layer(&self) -> OutputLayer {
        let weight = match &self.output {
            Some(layer) => layer.weight().unwrap_or_else(|_| self.tgt_embed.clone()),
            None => self.tgt_embed.clone(),
        };
        OutputLayer {
            weight,
            bias: Some(self.output_bias.clone()),
        }
    }

    /// One `(b, 1, t, s)` tensor per decoder layer.
    fn attention(&self, memory: &Memory, tgt_in: &Tensor) -> Result<Vec<Tensor>> {
        self.decode_all(memory, tgt_in, false)?
            .1
            .iter()
            .map(|p| p.unsqueeze(1))
            .collect()
    }

    fn for_decoding(&self) -> Result<Self> {
        Ok(Self {
            enc_in: self.enc_in.for_decoding()?,
            enc_layers: self
                .enc_layers
                .iter()
                .map(GatedConv::for_decoding)
                .collect::<Result<_>>()?,
            enc_out: self.enc_out.for_decoding()?,
            dec_in: self.dec_in.for_decoding()?,
            dec_layers: self
                .dec_layers
                .iter()
                .map(|l| {
                    Ok(DecoderLayer {
                        conv: l.conv.for_decoding()?,
                        attn_in: l.attn_in.for_decoding()?,
                        attn_out: l.attn_out.for_decoding()?,
                    })
                })
                .collect::<Result<_>>()?,
            dec_out: self.dec_out.for_decoding()?,
            output: self
                .output
                .as_ref()
                .map(WeightNormLinear::for_decoding)
                .transpose()?,
            output_for_decoding: Some(self.output_layer().for_decoding()?),
            ..self.clone()
        })
    }

    fn start_decoding(&self, memory: &Memory) -> Result<ConvCache> {
        let b = memory.batch_size()?;
        let windows = self
            .dec_layers
            .iter()
            .map(|l| {
                Tensor::zeros(
                    (b, l.conv.kernel() - 1, self.cfg.hidden_size),
                    memory.states.dtype(),
                    memory.device(),
                )
            })
            .collect::<Result<_>>()?;
        Ok(ConvCache { windows, offset: 0 })
    }

    fn decode_step(
        &self,
        memory: &Memory,
        tokens: &Tensor,
        cache: &mut ConvCache,
    ) -> Result<Tensor> {
        let g = embed(&self.tgt_embed, &self.tgt_positions, tokens, cache.offset)?; // (b, 1, e)
        let mut h = self.dec_in.forward(&g)?; // (b, 1, h)
        for (layer, window) in self.dec_layers.iter().zip(cache.windows.iter_mut()) {
            let k = layer.conv.kernel();
            let full = Tensor::cat(&[&*window, &h], 1)?; // (b, k, h)
            let (b, _, d) = full.dims3()?;
            let x = layer.conv.window(&full.reshape((b, 1, k * d))?)?;
            *window = full.narrow(1, 1, k - 1)?;
            let (x, _) = self.attend(layer, memory, &x, &g)?;
            h = ((x + h)? * HALF_SQRT)?;
        }
        cache.offset += 1;
        let out = self.dec_out.forward(&h)?.squeeze(1)?; // (b, e)
        self.output_layer()
            .project_step(self.output_for_decoding.as_ref(), &out)
    }

    fn select_cache(&self, cache: &ConvCache, indices: &Tensor) -> Result<ConvCache> {
        Ok(ConvCache {
            windows: cache
                .windows
                .iter()
                // Each window is a view of the last step's `(b, k, h)` inputs.
                .map(|w| w.contiguous()?.index_select(indices, 0))
                .collect::<Result<_>>()?,
            offset: cache.offset,
        })
    }

    fn narrow_cache(&self, cache: &ConvCache, start: usize, len: usize) -> Result<ConvCache> {
        Ok(ConvCache {
            windows: cache
                .windows
                .iter()
                .map(|w| w.narrow(0, start, len))
                .collect::<Result<_>>()?,
            offset: cache.offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_gradient_keeps_values_and_scales_gradients() -> Result<()> {
        let x = candle_core::Var::new(&[1.5f32, -2.25, 3.0], &Device::Cpu)?;
        let y = scale_gradient(x.as_tensor(), 0.25)?;
        assert_eq!(y.to_vec1::<f32>()?, vec![1.5, -2.25, 3.0]);
        let grads = (y * 2.0)?.sum_all()?.backward()?;
        let g = grads.get(x.as_tensor()).map(|g| g.to_vec1::<f32>());
        assert_eq!(g.transpose()?, Some(vec![0.5, 0.5, 0.5]));
        Ok(())
    }
}
