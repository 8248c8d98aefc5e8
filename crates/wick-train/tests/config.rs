#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic
use std::path::Path;

use wick_train::config::{Config, ConfigError, EMBEDDED_DEFAULT};

fn load(text: &str, overrides: &[&str]) -> Result<Config, ConfigError> {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Config::from_toml(text, Path::new("test.toml"), &o)
}

#[test]
fn shipped_configs_parse_and_validate() {
    load(EMBEDDED_DEFAULT, &[]).expect("embedded default");
    for name in ["toy", "reverse"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../configs")
            .join(format!("{name}.toml"));
        Config::load(&path, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn resolved_config_round_trips() {
    let cfg = load(EMBEDDED_DEFAULT, &["train.max_steps=700"]).expect("cfg");
    let again = load(&cfg.to_toml(), &[]).expect("reparse");
    assert_eq!(cfg, again);
    assert_eq!(again.train.max_steps, 700);
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    let e = load(&format!("{EMBEDDED_DEFAULT}\n[extra]\nx = 1\n"), &[])
        .expect_err("unknown section")
        .to_string();
    assert!(e.contains("test.toml") && e.contains("extra"), "{e}");
    let text = EMBEDDED_DEFAULT.replace("[model]\n", "[model]\nd_fff = 3\n");
    let e = load(&text, &[]).expect_err("unknown key").to_string();
    assert!(e.contains("d_fff"), "{e}");
    let e = load(EMBEDDED_DEFAULT, &["train.max_stepz=3"])
        .expect_err("unknown override")
        .to_string();
    assert!(e.contains("max_stepz"), "{e}");
}

#[test]
fn values_out_of_range_name_the_key() {
    let e = load(EMBEDDED_DEFAULT, &["model.n_heads=3"])
        .expect_err("heads")
        .to_string();
    assert!(
        e.contains("model.d_model") && e.contains("divisible") && e.contains("n_heads = 3"),
        "{e}"
    );
    let e = load(EMBEDDED_DEFAULT, &["model.dropout=1.5"])
        .expect_err("dropout")
        .to_string();
    assert!(e.contains("model.dropout"), "{e}");
    let e = load(EMBEDDED_DEFAULT, &["train.lr=-1"])
        .expect_err("lr")
        .to_string();
    assert!(e.contains("train.lr"), "{e}");
    let e = load(
        EMBEDDED_DEFAULT,
        &[
            "train.max_minutes=0",
            "train.max_steps=0",
            "train.schedule=inverse_sqrt",
        ],
    )
    .expect_err("no stop")
    .to_string();
    assert!(e.contains("stopping rule"), "{e}");
    let e = load(EMBEDDED_DEFAULT, &["train.max_steps=100"])
        .expect_err("cosine shorter than its warm-up")
        .to_string();
    assert!(
        e.contains("train.schedule") && e.contains("warmup_steps = 200"),
        "{e}"
    );
    let e = load(EMBEDDED_DEFAULT, &["train.accumulate=0"])
        .expect_err("accumulate")
        .to_string();
    assert!(e.contains("train.accumulate"), "{e}");
    let e = load(EMBEDDED_DEFAULT, &["train.shards=0"])
        .expect_err("shards")
        .to_string();
    assert!(e.contains("train.shards"), "{e}");
    let e = load(EMBEDDED_DEFAULT, &["model.d_model=\"big\""])
        .expect_err("type")
        .to_string();
    assert!(e.contains("d_model"), "{e}");
}

#[test]
fn overrides_set_nested_values_of_every_type() {
    let cfg = load(
        EMBEDDED_DEFAULT,
        &[
            "train.max_steps=300",
            "train.lr=5e-4",
            "model.norm=pre",
            "data.joint_vocab=false",
            "data.src_lang=de",
            "model.tie_embeddings=decoder",
        ],
    )
    .expect("overrides");
    assert_eq!(cfg.train.max_steps, 300);
    assert_eq!(cfg.train.lr, 5e-4);
    assert_eq!(cfg.model.get("norm").and_then(|v| v.as_str()), Some("pre"));
    assert!(!cfg.data.joint_vocab);
    assert_eq!(cfg.data.src_lang, "de");
    let e = load(EMBEDDED_DEFAULT, &["no_equals_sign"])
        .expect_err("syntax")
        .to_string();
    assert!(e.contains("KEY=VALUE"), "{e}");
}

#[test]
fn all_tied_needs_a_joint_vocabulary() {
    let e = load(EMBEDDED_DEFAULT, &["data.joint_vocab=false"])
        .expect_err("tie")
        .to_string();
    assert!(e.contains("model.tie_embeddings"), "{e}");
}

#[test]
fn model_arch_is_named_and_checked() {
    // No `arch`: the Transformer, written out in the resolved config.
    let cfg = load(EMBEDDED_DEFAULT, &[]).expect("cfg");
    assert_eq!(cfg.model.arch(), "transformer");
    assert!(cfg.to_toml().contains("arch = \"transformer\""));
    let cfg = load(EMBEDDED_DEFAULT, &["model.arch=transformer"]).expect("explicit arch");
    assert_eq!(cfg.model.arch(), "transformer");
    // An unknown architecture names the key and lists the known ones.
    let e = load(EMBEDDED_DEFAULT, &["model.arch=lstm9"])
        .expect_err("unknown arch")
        .to_string();
    assert!(
        e.contains("model.arch")
            && e.contains("lstm9")
            && e.contains("\"transformer\", \"rnn\", \"conv\""),
        "{e}"
    );
    // A key no architecture has: named, with the keys the architecture takes.
    let e = load(EMBEDDED_DEFAULT, &["model.hiden_size=3"])
        .expect_err("unknown key")
        .to_string();
    assert!(
        e.contains("model.hiden_size") && e.contains("d_model"),
        "{e}"
    );
    // A key of another architecture: named, with the architecture it belongs to.
    let e = load(EMBEDDED_DEFAULT, &["model.hidden_size=3"])
        .expect_err("key of the RNN")
        .to_string();
    assert!(
        e.contains("model.hidden_size") && e.contains("arch = \"rnn\""),
        "{e}"
    );
}
