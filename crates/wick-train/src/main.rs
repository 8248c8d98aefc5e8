use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Candle attaches a backtrace to its errors whenever RUST_BACKTRACE is set, which turns a
    // one-line "checkpoint does not fit" into a page. Library backtraces stay available with
    // RUST_LIB_BACKTRACE=1; panics still honour RUST_BACKTRACE.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: first statement of main, before any other thread exists.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    // Candle runs large elementwise ops on its own pool of helper threads, beside the rayon
    // pool that runs the matrix products, and a helper spins 25,000 rounds after each op
    // before it sleeps: on a machine with few cores that spinning takes a core from the
    // product that follows. A user's own setting is kept.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: before any other thread exists (as above).
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "200") };
    }
    wick_train::tune_allocator();
    wick_train::report_file_size_limits();
    let cli = wick_train::cli::Cli::parse();
    match wick_train::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
