//! The `wick` command: flags ([`args`]) turned into `wick-train` requests, one module per
//! command, plus what only a terminal program needs: the progress bar and the attention
//! plots ([`plot`]).

pub mod args;
mod commands;
pub mod plot;
mod progress;

use anyhow::Result;

use crate::args::{BenchCommand, Cli, Command, DataCommand};
use crate::commands::{average, bench, data, evaluate, export, report, score, train, translate};

/// What `wick` prints with no arguments (and after `wick --help`).
pub const START_HERE: &str = "\
Start here:
  wick train                                     train the quick-start English→French model (5 min)
  wick translate --run runs/toy \"Hello!\"         translate with it
  wick evaluate --run runs/toy --beam 5          score it on the test split
  wick train --config configs/reverse.toml       a 1-minute sanity task (reverse letters)
  wick train --config configs/reverse-rnn.toml   the same with an RNN and Bahdanau attention
  wick train --config configs/reverse-conv.toml  the same with convolutional seq2seq (ConvS2S)
Every command has examples in `wick COMMAND --help`.";

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => train::cmd_train(a),
        Command::Evaluate(a) => evaluate::cmd_evaluate(a),
        Command::Translate(a) => translate::cmd_translate(a),
        Command::Score(a) => score::cmd_score(a),
        Command::Average(a) => average::cmd_average(a),
        Command::Report(a) => report::cmd_report(a),
        Command::Export(a) => export::cmd_export(a),
        Command::Bench(BenchCommand::Train(a)) => bench::cmd_bench_train(a),
        Command::Bench(BenchCommand::Decode(a)) => bench::cmd_bench_decode(a),
        Command::Bench(BenchCommand::Matmul(a)) => bench::cmd_bench_matmul(a),
        Command::Data(DataCommand::Check(a)) => data::cmd_data_check(a),
        Command::Data(DataCommand::Fetch(a)) => data::cmd_data_fetch(a),
    }
}
