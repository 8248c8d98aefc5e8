//! The building blocks architectures are made of, one per file, each a struct of tensors
//! built by `new(…, vb)` whose `vb.pp(..)` paths name its parameters in checkpoints.

pub mod dropout;
pub mod embedding;
pub mod feed_forward;
pub mod linear;
pub mod norm;

pub use dropout::{Dropout, DropoutRng};
pub use embedding::{SinusoidalPositions, TokenEmbedding};
pub use feed_forward::FeedForward;
pub use linear::Linear;
pub use norm::LayerNorm;
