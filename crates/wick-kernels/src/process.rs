//! Process-wide settings that the CPU fast path measures faster with, for programs that own
//! their process (the `wick` binary calls [`tune_process`] first thing in `main`).

/// What [`tune_process`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuning {
    /// The thread-pool environment variables were set (or were set by the user already).
    pub thread_pools: bool,
}

/// Tunes the process for wick's kernels; safe to call at any time, effective in full only
/// while the process has a single thread:
///
/// - The allocator keeps freed memory instead of returning it to the kernel after every op
///   (glibc). Candle allocates a fresh buffer for every intermediate and gradient; with
///   glibc's defaults large buffers are `mmap`ed and unmapped each time, and the kernel
///   zeroes every new page. Raising the thresholds made a plain Candle training step 1.7×
///   faster on the project's benchmark machine.
/// - A write past the file-size limit (`ulimit -f`) fails with an error (EFBIG, like ENOSPC
///   on a full disk) instead of killing the process with SIGXFSZ mid-write.
/// - Candle's own elementwise ops run on the calling thread (`CANDLE_NUM_THREADS=1`) unless
///   the variable is set: wick's kernels and products run on rayon's pool, one thread per
///   core, and Candle keeps a second pool whose workers spin after each op on the cores
///   rayon's threads need next (training the small benchmark presets 5–8% faster without it).
///   `RAYON_NUM_THREADS` is fixed to Candle's count of physical cores unless set, so that
///   rayon's pool matches what Candle counts. Environment variables can only be changed
///   soundly while no other thread runs, so these two are set only when this process has one
///   thread (read from `/proc/self/status`; Linux only); otherwise they are left alone.
/// - Candle attaches a backtrace to its errors whenever `RUST_BACKTRACE` is set, which turns
///   a one-line "checkpoint does not fit" into a page; `RUST_LIB_BACKTRACE=0` (unless set)
///   keeps library errors short while panics still honour `RUST_BACKTRACE`. Set under the
///   same single-thread condition.
pub fn tune_process() -> Tuning {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters and takes the allocator's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
    #[cfg(unix)]
    // SAFETY: installing SIG_IGN for one signal has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    if !single_threaded() {
        let set = |k: &str| std::env::var_os(k).is_some();
        return Tuning {
            thread_pools: set("CANDLE_NUM_THREADS") && set("RAYON_NUM_THREADS"),
        };
    }
    let defaults = [
        ("RUST_LIB_BACKTRACE", "0".to_string()),
        ("CANDLE_NUM_THREADS", "1".to_string()),
        (
            "RAYON_NUM_THREADS",
            candle_core::utils::get_num_threads().to_string(),
        ),
    ];
    for (key, value) in defaults {
        if std::env::var_os(key).is_none() {
            // SAFETY: this process has a single thread (checked above), so no other thread
            // can read or write the environment while it changes.
            unsafe { std::env::set_var(key, value) };
        }
    }
    Tuning { thread_pools: true }
}

/// Returns the allocator's free memory to the kernel (glibc's `malloc_trim`: the free pages
/// inside every heap, and the free top of the main one), and says whether any went.
/// [`tune_process`] has the allocator keep what is freed, which training needs for speed;
/// after a one-off phase that frees much, such as a model loaded and laid out for decoding
/// (the weights as trained go), the process would otherwise go on holding that memory while
/// it decodes. Elsewhere than glibc: nothing, `false`.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only hands free pages back and takes the allocator's own locks.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Whether this process runs exactly one thread (Linux: `Threads:` of `/proc/self/status`;
/// elsewhere unknown, so `false`).
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse::<usize>().ok())
        })
        == Some(1)
}
