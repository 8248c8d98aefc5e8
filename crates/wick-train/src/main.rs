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
    wick_train::tune_thread_pools();
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
