//! The allocator settings of `tune_process` keep freed memory; `release_free_memory` hands it
//! back. In a test binary of its own, so that no other test allocates meanwhile.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn freed_memory_stays_until_released() {
    fn resident_mb() -> f64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: f64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096.0 / (1 << 20) as f64
    }
    wick_kernels::process::tune_process();
    let before = resident_mb();
    // Below the 64 MB mmap threshold, so it comes from the heap, and every page is written;
    // a small block after it keeps it off the top of the heap once freed, as the weights
    // freed after a model is laid out are (its layout was allocated after them).
    let block = vec![1u8; 48 << 20];
    let after_it = vec![1u8; 1 << 10];
    std::hint::black_box((&block, &after_it));
    drop(block);
    let kept = resident_mb();
    assert!(
        kept - before > 32.0,
        "the allocator was expected to keep the freed block: {before:.1} → {kept:.1} MB"
    );
    assert!(wick_kernels::process::release_free_memory());
    let after = resident_mb();
    assert!(
        kept - after > 32.0,
        "release_free_memory gave back too little: {kept:.1} → {after:.1} MB"
    );
    drop(after_it);
}
