//! Search: turning a model's next-token distributions into output sequences.

use candle_core::{D, Result, Tensor};

use crate::seq2seq::{Memory, Seq2Seq};

/// Special token ids search needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: u32,
    pub eos: u32,
}

/// Greedy decoding with the key/value cache.
///
/// `max_len[i]` bounds the number of tokens generated for sentence `i` (not counting `</s>`).
/// Returns the generated ids without `<s>` and `</s>`. Sentences that finish early stop
/// contributing output; the batch stops as soon as all are done.
pub fn greedy<M: Seq2Seq>(
    model: &M,
    memory: &Memory,
    ids: SpecialIds,
    max_len: &[usize],
) -> Result<Vec<Vec<u32>>> {
    let b = memory.batch_size()?;
    if max_len.len() != b {
        candle_core::bail!("greedy: {} length limits for a batch of {b}", max_len.len())
    }
    let device = memory.states.device();
    let mut cache = model.start_decoding(memory)?;
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut done: Vec<bool> = max_len.iter().map(|&m| m == 0).collect();
    let mut tokens = Tensor::full(ids.bos, (b, 1), device)?;
    let longest = max_len.iter().copied().max().unwrap_or(0);
    for _ in 0..longest {
        if done.iter().all(|&d| d) {
            break;
        }
        let logits = model.decode_step(memory, &tokens, &mut cache)?; // (b, V)
        let next = logits.argmax(D::Minus1)?; // (b,)
        let next_host = next.to_vec1::<u32>()?;
        for (i, &tok) in next_host.iter().enumerate() {
            if done[i] {
                continue;
            }
            if tok == ids.eos {
                done[i] = true;
            } else {
                out[i].push(tok);
                done[i] = out[i].len() >= max_len[i];
            }
        }
        tokens = next.reshape((b, 1))?;
    }
    Ok(out)
}
