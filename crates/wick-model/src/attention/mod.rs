//! Attention: how a decoder position looks at the source (and at earlier target positions).

pub mod cache;
pub mod multi_head;

pub use cache::{KvCache, StepKvCache};
pub use multi_head::{CrossAttention, SelfAttention};
