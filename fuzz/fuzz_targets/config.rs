//! The config parser on arbitrary text, and `--set` overrides on the embedded default: errors
//! are fine, panics are not, and an accepted config survives a round trip through its
//! resolved TOML unchanged.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wick_train::config::{Config, EMBEDDED_DEFAULT};

fn round_trip(cfg: &Config) {
    let again = Config::from_toml(&cfg.to_toml(), Path::new("resolved.toml"), &[])
        .expect("a resolved config parses");
    assert_eq!(&again, cfg);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::from_toml(text, Path::new("fuzz.toml"), &[]) {
        round_trip(&cfg);
    }
    let overrides: Vec<String> = text.lines().map(str::to_string).collect();
    if let Ok(cfg) = Config::from_toml(EMBEDDED_DEFAULT, Path::new("toy.toml"), &overrides) {
        round_trip(&cfg);
    }
});
