//! `wick-train`: configuration, training, evaluation and the `wick` command-line tool.

pub mod attention;
pub mod average;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod datacheck;
pub mod device;
pub mod evaluate;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod prepare;
pub mod run;
pub mod schedule;
pub mod step;
pub mod trainer;
pub mod translate;

/// Keeps freed memory in the process instead of returning it to the kernel after every op.
///
/// Candle allocates a fresh buffer for every intermediate and gradient; with glibc's defaults
/// large buffers are `mmap`ed and unmapped each time, and the kernel zeroes every new page.
/// Raising the thresholds made a plain Candle training step 1.7× faster on this project's
/// benchmark machine (`../shared/notes/performance.md`). Safe to call once at start-up.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Runs Candle's own elementwise ops on the calling thread (`CANDLE_NUM_THREADS=1`) unless
/// the user set `CANDLE_NUM_THREADS` themselves.
///
/// wick's kernels and products run on rayon's pool, one thread per core. Candle 0.11 keeps a
/// second pool for its elementwise ops, whose worker spins for a while after each op before it
/// sleeps, on a core that rayon's threads need next (a profile of a two-thread training step
/// showed the pool's wait loops), and whose callers queue on one lock. The Candle ops left in a
/// step (gradient sums in backward, copies) are memory-bound and small. Measured A/B on the
/// benchmark presets (same binary): tiny training 1.05–1.08× faster, small training and
/// decoding unchanged within the noise.
///
/// Also fixes the thread count once, in `RAYON_NUM_THREADS`, unless the user set it: Candle's
/// `get_num_threads`, which every product asks, otherwise counts the physical cores anew at
/// each call by reading `/proc/cpuinfo` (1,305 `openat` calls to decode 64 sentences with the
/// tiny preset; base greedy 0.94–0.97 s against 0.91–0.93 s with the variable set). The
/// value is Candle's own count, so rayon's pool gets the same number of threads.
/// Call first thing in `main`, before any thread exists.
pub fn tune_thread_pools() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called at the start of main, before any other thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        // SAFETY: as above.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
}

/// Makes a write past the process's file-size limit (`ulimit -f`) fail with an error wick
/// reports (EFBIG, like ENOSPC on a full disk) instead of killing the process with SIGXFSZ
/// mid-write. Call once at start-up.
pub fn report_file_size_limits() {
    #[cfg(unix)]
    // SAFETY: installing SIG_IGN for one signal has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
