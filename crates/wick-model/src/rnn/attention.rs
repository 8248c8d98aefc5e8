//! The RNN decoder's single attention over the encoder outputs `h̄ (b, s, H)`, queried by one
//! decoder state `q (b, H)` per step:
//!
//! | `attention` | score(q, h̄ⱼ) | what is computed once per sentence |
//! |---|---|---|
//! | `bahdanau`, `luong_concat` | `vᵀ tanh(W_q q + W_k h̄ⱼ)` | `W_k h̄` `(b, s, H)` |
//! | `luong_dot` | `qᵀ h̄ⱼ` | nothing |
//! | `luong_general` | `qᵀ W h̄ⱼ` | `W h̄` `(b, s, H)` |
//!
//! The keys computed once go into [`Memory::extra`], so that search reorders them with the
//! rest of the memory and a decoding step costs one small product per sentence.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::AttentionKind;
use crate::layers::Linear;
use crate::model::Memory;
use crate::ops;

#[derive(Clone, Debug)]
pub struct SourceAttention {
    kind: AttentionKind,
    /// `W_k` (additive) or `W` (general), applied to the encoder outputs once.
    key: Option<Linear>,
    /// `W_q` (additive).
    query: Option<Linear>,
    /// `v`, `(1, H)` (additive).
    v: Option<Tensor>,
}

impl SourceAttention {
    /// Parameters under `vb`: `key.weight`, `query.weight`, `v` (additive, no biases, as in
    /// both papers), or `key.weight` (general), or none (dot).
    pub fn new(kind: AttentionKind, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let additive = kind.is_additive();
        let key = match kind {
            AttentionKind::LuongDot => None,
            _ => Some(Linear::new(hidden, hidden, false, vb.pp("key"))?),
        };
        let query = if additive {
            Some(Linear::new(hidden, hidden, false, vb.pp("query"))?)
        } else {
            None
        };
        let v = if additive {
            Some(vb.get_with_hints((1, hidden), "v", crate::init::xavier_uniform(hidden, 1))?)
        } else {
            None
        };
        Ok(Self {
            kind,
            key,
            query,
            v,
        })
    }

    pub fn for_decoding(&self) -> Result<Self> {
        Ok(Self {
            key: self.key.as_ref().map(Linear::for_decoding).transpose()?,
            query: self.query.as_ref().map(Linear::for_decoding).transpose()?,
            ..self.clone()
        })
    }

    /// The per-sentence keys to keep in the memory, if this scoring has any.
    ///
    /// # Shapes
    /// encoder outputs `(b, s, H)` → `(b, s, H)`
    pub fn precompute(&self, states: &Tensor) -> Result<Option<Tensor>> {
        self.key.as_ref().map(|k| k.forward(states)).transpose()
    }

    /// Attention probabilities and the context vector for one query per sentence. `keys` is
    /// what [`Self::precompute`] returned for this memory.
    ///
    /// # Shapes
    /// q `(b, H)` → probabilities `(b, s)`, context `(b, H)`
    pub fn attend(
        &self,
        memory: &Memory,
        keys: Option<&Tensor>,
        q: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, s, _) = memory.states.dims3()?;
        let scores = match (self.kind.is_additive(), &self.query, &self.v, keys) {
            (true, Some(query), Some(v), Some(keys)) => {
                ops::additive_scores(keys, &query.forward(q)?, &v.squeeze(0)?)?
            }
            (false, _, _, keys) => {
                let keys = keys.unwrap_or(&memory.states);
                keys.matmul(&q.unsqueeze(2)?)?.squeeze(2)? // (b, s)
            }
            _ => candle_core::bail!("attention {:?}: its keys are missing", self.kind),
        };
        let bias = memory.src_bias.reshape((b, s))?;
        let probs = ops::softmax_last_dim(&scores.broadcast_add(&bias)?)?; // (b, s)
        let context = probs.unsqueeze(1)?.matmul(&memory.states)?.squeeze(1)?; // (b, H)
        Ok((probs, context))
    }
}
