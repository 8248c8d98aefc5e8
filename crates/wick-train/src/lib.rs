//! `wick-train`: train, evaluate and use attention-based translation models, as a library.
//!
//! ```text
//! Config ([data] [model] [train] [decode]) ──train()──▶ run directory ──Translator──▶ text
//!                                            │ config.toml, tokenizer, checkpoints,
//!                                            │ metrics.jsonl, manifest.json
//!                                            ├──evaluate()──▶ BLEU, chrF, CIs
//!                                            └──average()───▶ averaged checkpoint
//! ```
//!
//! The `wick` binary (crate `wick-cli`) is a thin layer over this crate: every command turns
//! its flags into one of the requests here. Nothing here names a concrete architecture:
//! models come from `[model] arch = …` through `wick_model`'s registry.
//!
//! ```no_run
//! use wick_train::{Config, TrainRequest, Translator, Which, train};
//!
//! # fn main() -> anyhow::Result<()> {
//! let config = Config::load("configs/toy.toml".as_ref(), &[])?;
//! let summary = train(TrainRequest::new(config, "runs/toy"))?;
//! let translator = Translator::from_run(&summary.run_dir, Which::Best, &candle_core::Device::Cpu)?;
//! println!("{}", translator.translate(&["How are you?"])?[0]);
//! # Ok(())
//! # }
//! ```

pub mod attention;
pub mod average;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod datacheck;
pub mod device;
pub mod evaluate;
pub mod export;
pub mod optim;
pub mod prepare;
pub mod report;
pub mod run;
pub mod schedule;
pub mod step;
pub mod trainer;
pub mod translator;

pub use config::{Config, DecodeConfig};
pub use run::{Run, Which};
pub use trainer::{
    Progress, ResumeRequest, StderrProgress, TrainRequest, TrainSummary, resume, train,
};
pub use translator::{Candidate, Translator};
pub use wick_model::ops::WeightFormat;
