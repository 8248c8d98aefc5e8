//! Per-thread settings of the kernels, and how parallel work inherits them.
//!
//! Two settings apply to the thread that starts a kernel:
//! - whole products ([`with_whole_products`]): a product runs on the calling thread instead
//!   of being split into one block per thread, for callers that already keep every thread
//!   busy with work of its own (training shards, groups of sentences);
//! - barred kernels ([`bar_kernels`]): every kernel call fails. `wick_model::ops` sets it to
//!   force its composed reference path, so a test can prove that path never reaches a kernel.
//!
//! Both are thread-local, so tests running in parallel cannot see each other's settings.
//! Work handed to other threads takes the settings along through [`Scope`].

use std::cell::Cell;

thread_local! {
    static WHOLE_PRODUCTS: Cell<bool> = const { Cell::new(false) };
    static BARRED: Cell<bool> = const { Cell::new(false) };
}

/// Restores a thread-local flag when dropped (also on unwinding).
struct Restore(&'static std::thread::LocalKey<Cell<bool>>, bool);

impl Drop for Restore {
    fn drop(&mut self) {
        self.0.set(self.1);
    }
}

fn with_flag<R>(
    key: &'static std::thread::LocalKey<Cell<bool>>,
    value: bool,
    f: impl FnOnce() -> R,
) -> R {
    let _restore = Restore(key, key.replace(value));
    f()
}

/// Runs `f` with the products this thread starts left whole instead of split into one block
/// per thread. Results are the same either way; idle threads may still steal the work.
pub fn with_whole_products<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&WHOLE_PRODUCTS, true, f)
}

/// Whether this thread's products run whole ([`with_whole_products`]).
pub fn products_whole() -> bool {
    WHOLE_PRODUCTS.get()
}

/// Runs `f` with every kernel barred on this thread (and in work it hands on through
/// [`Scope`]): a kernel call returns an error instead of running.
pub fn bar_kernels<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&BARRED, true, f)
}

/// Whether kernels are barred on this thread ([`bar_kernels`]).
pub fn kernels_barred() -> bool {
    BARRED.get()
}

/// This thread's settings, captured to be set again on the threads that run parts of its
/// work:
///
/// ```
/// use rayon::prelude::*;
/// use wick_kernels::scope::{Scope, bar_kernels, kernels_barred};
///
/// let barred: Vec<bool> = bar_kernels(|| {
///     let scope = Scope::current();
///     (0..4).into_par_iter().map(|_| scope.enter(kernels_barred)).collect()
/// });
/// assert!(barred.iter().all(|&b| b));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope {
    whole_products: bool,
    barred: bool,
}

impl Scope {
    pub fn current() -> Self {
        Self {
            whole_products: products_whole(),
            barred: kernels_barred(),
        }
    }

    /// Runs `f` on this thread with the captured settings, restoring the thread's own after.
    pub fn enter<R>(self, f: impl FnOnce() -> R) -> R {
        with_flag(&WHOLE_PRODUCTS, self.whole_products, || {
            with_flag(&BARRED, self.barred, f)
        })
    }
}
