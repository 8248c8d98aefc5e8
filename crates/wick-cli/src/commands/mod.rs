//! One module per command; each turns its flags into a `wick-train` request and prints the
//! result.

pub(crate) mod average;
pub(crate) mod bench;
pub(crate) mod data;
pub(crate) mod evaluate;
pub(crate) mod export;
pub(crate) mod report;
pub(crate) mod score;
pub(crate) mod train;
pub(crate) mod translate;
