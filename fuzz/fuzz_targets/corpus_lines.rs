//! Corpus readers on arbitrary bytes, plain and as gzip: they may reject input, never panic,
//! and every line they accept is a well-formed pair.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wick_data::corpus::{decompressing, read_raw_lines_from, scan_tsv};

fuzz_target!(|data: &[u8]| {
    for name in ["fuzz.tsv", "fuzz.tsv.gz"] {
        let path = Path::new(name);
        let mut reader = decompressing(path, Box::new(Cursor::new(data.to_vec())));
        let Ok(lines) = read_raw_lines_from(&mut reader, path) else {
            continue;
        };
        let n = lines.len();
        let scan = scan_tsv(path, lines);
        assert_eq!(scan.lines, n);
        assert_eq!(scan.pairs.len() + scan.bad.len(), n);
        for p in &scan.pairs {
            assert!(!p.src.trim().is_empty() && !p.tgt.trim().is_empty());
            assert!(!p.src.contains('\t') && !p.tgt.contains('\t'));
            assert!(!p.src.contains('\n') && !p.src.contains('\0'));
        }
        for b in &scan.bad {
            assert!(b.line >= 1 && b.line <= n);
        }
    }
});
