use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    wick_train::tune_allocator();
    let cli = wick_train::cli::Cli::parse();
    match wick_train::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
