use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // First, while this is the only thread: allocator, signal and thread-pool settings.
    wick_kernels::process::tune_process();
    if let Err(message) = wick_model::ops::reference_ops_from_env() {
        eprintln!("error: {message}");
        return ExitCode::FAILURE;
    }
    if std::env::args_os().len() <= 1 {
        println!(
            "wick {}: train, evaluate and use attention-based translation models.\n\n{}",
            env!("CARGO_PKG_VERSION"),
            wick_cli::START_HERE
        );
        return ExitCode::SUCCESS;
    }
    let cli = wick_cli::args::Cli::parse();
    match wick_cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
