//! Architectures by name. `[model] arch = "…"` picks one (default `"transformer"`), and the
//! architecture's own keys sit beside `arch` in the same table, so `--set model.KEY=…` works
//! for every architecture.
//!
//! Adding an architecture: a module in this crate with a config type implementing
//! [`ArchConfig`] (its keys, their defaults, one validation that names them) and a model
//! implementing [`crate::Seq2Seq`]; then one line in `BUILTIN`. Nothing outside this crate
//! changes. Programs that bring their own architecture add it at run time with [`register`].

use std::collections::HashSet;
use std::fmt;
use std::sync::RwLock;

use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::conv::ConvConfig;
use crate::layers::DropoutRng;
use crate::model::{Model, Seq2Seq, StepCost, VocabSizes};
use crate::rnn::RnnConfig;
use crate::transformer::TransformerConfig;

/// The architecture a `[model]` table without `arch` describes.
pub const DEFAULT_ARCH: &str = "transformer";

/// Every architecture this crate offers: one line each.
static BUILTIN: &[Architecture] = &[
    Architecture::of::<TransformerConfig>(),
    Architecture::of::<RnnConfig>(),
    Architecture::of::<ConvConfig>(),
];

/// Architectures added at run time by [`register`].
static REGISTERED: RwLock<Vec<Architecture>> = RwLock::new(Vec::new());

/// A problem with a `[model]` key: `key` is its name inside `[model]` (empty when the problem
/// is the table as a whole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl KeyError {
    pub fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// The key as the config file spells it: `model.KEY`, or `model`.
    pub fn path(&self) -> String {
        if self.key.is_empty() {
            "model".to_string()
        } else {
            format!("model.{}", self.key)
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path(), self.message)
    }
}

impl std::error::Error for KeyError {}

/// What the rest of a run fixes that an architecture's keys must agree with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataShape {
    /// One vocabulary for both sides (`data.joint_vocab`).
    pub joint_vocab: bool,
    /// Longest training pair in subword tokens (`data.max_len`), when known.
    pub max_len: Option<usize>,
    /// The tokenizers' sizes, once they exist.
    pub vocab: Option<VocabSizes>,
}

impl DataShape {
    /// Both vocabularies, once known, have entries.
    pub fn check_vocab(&self) -> Result<(), KeyError> {
        match self.vocab {
            Some(v) if v.src == 0 || v.tgt == 0 => Err(KeyError::new("", "empty vocabulary")),
            _ => Ok(()),
        }
    }

    /// A position table of `max_positions` (`model.max_positions`) covers `<s>`, one token
    /// and, once known, the longest training pair with `<s>`/`</s>`.
    pub fn check_max_positions(&self, max_positions: usize) -> Result<(), KeyError> {
        if max_positions < 2 {
            return Err(KeyError::new(
                "max_positions",
                "must be at least 2 (<s> and one token)",
            ));
        }
        match self.max_len {
            Some(max_len) if max_positions < max_len + 2 => Err(KeyError::new(
                "max_positions",
                format!(
                    "{max_positions} is too small for data.max_len = {max_len} (needs max_len + 2)"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// What a model built for these vocabularies can check: a joint vocabulary has one size.
    pub fn of_vocab(vocab: VocabSizes) -> Self {
        Self {
            joint_vocab: vocab.src == vocab.tgt,
            max_len: None,
            vocab: Some(vocab),
        }
    }
}

/// An architecture's configuration: its `[model]` keys (every one with a default, unknown
/// ones refused), their validation, and how to build the model.
pub trait ArchConfig:
    Serialize + DeserializeOwned + Default + Clone + fmt::Debug + PartialEq + Send + Sync + 'static
{
    /// `model.arch` of this architecture.
    const NAME: &'static str;
    /// One line for listings.
    const ABOUT: &'static str;
    type Model: Seq2Seq;

    /// Every constraint on the keys, reported with the key's name.
    fn validate(&self, data: &DataShape) -> Result<(), KeyError>;

    /// The model, with parameters named by `vb`'s paths.
    fn build(
        &self,
        vocab: VocabSizes,
        dropout: DropoutRng,
        vb: VarBuilder,
    ) -> candle_core::Result<Self::Model>;

    /// The products of a training step on `b` sentences of `s` source and `t` target tokens,
    /// for `wick bench`; `None` (the default) if the architecture does not list them.
    fn step_cost(&self, _vocab: VocabSizes, _b: usize, _s: usize, _t: usize) -> Option<StepCost> {
        None
    }
}

type Table = toml::Table;

/// A registry entry: an [`ArchConfig`] with its type erased.
#[derive(Clone, Copy)]
pub struct Architecture {
    pub name: &'static str,
    pub about: &'static str,
    defaults: fn() -> Result<Table, String>,
    resolve: fn(&Table) -> Result<Table, String>,
    validate: fn(&Table, &DataShape) -> Result<(), KeyError>,
    build: fn(&Table, VocabSizes, DropoutRng, VarBuilder) -> candle_core::Result<Model>,
    step_cost: fn(&Table, VocabSizes, usize, usize, usize) -> Option<StepCost>,
}

impl fmt::Debug for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Architecture({})", self.name)
    }
}

fn to_table<T: Serialize>(value: &T) -> Result<Table, String> {
    match toml::Value::try_from(value) {
        Ok(toml::Value::Table(t)) => Ok(t),
        Ok(other) => Err(format!("expected a table, got {other}")),
        Err(e) => Err(e.to_string()),
    }
}

fn typed<C: ArchConfig>(keys: &Table) -> Result<C, String> {
    toml::Value::Table(keys.clone())
        .try_into()
        .map_err(|e: toml::de::Error| e.message().trim().to_string())
}

fn defaults_of<C: ArchConfig>() -> Result<Table, String> {
    to_table(&C::default())
}

fn resolve_of<C: ArchConfig>(keys: &Table) -> Result<Table, String> {
    to_table(&typed::<C>(keys)?)
}

fn validate_of<C: ArchConfig>(keys: &Table, data: &DataShape) -> Result<(), KeyError> {
    typed::<C>(keys)
        .map_err(|m| KeyError::new("", m))?
        .validate(data)
}

fn build_of<C: ArchConfig>(
    keys: &Table,
    vocab: VocabSizes,
    dropout: DropoutRng,
    vb: VarBuilder,
) -> candle_core::Result<Model> {
    let cfg = typed::<C>(keys).map_err(candle_core::Error::Msg)?;
    cfg.validate(&DataShape::of_vocab(vocab))
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    Ok(Model::new(C::NAME, cfg.build(vocab, dropout, vb)?))
}

fn step_cost_of<C: ArchConfig>(
    keys: &Table,
    vocab: VocabSizes,
    b: usize,
    s: usize,
    t: usize,
) -> Option<StepCost> {
    typed::<C>(keys).ok()?.step_cost(vocab, b, s, t)
}

impl Architecture {
    pub const fn of<C: ArchConfig>() -> Self {
        Self {
            name: C::NAME,
            about: C::ABOUT,
            defaults: defaults_of::<C>,
            resolve: resolve_of::<C>,
            validate: validate_of::<C>,
            build: build_of::<C>,
            step_cost: step_cost_of::<C>,
        }
    }

    /// The architecture's keys with their defaults.
    pub fn defaults(&self) -> Table {
        (self.defaults)().unwrap_or_default()
    }

    /// The architecture's key names.
    pub fn keys(&self) -> Vec<String> {
        self.defaults().keys().cloned().collect()
    }
}

/// Adds an architecture to this process's registry; its name must be new.
pub fn register(arch: Architecture) -> Result<(), String> {
    if find(arch.name).is_some() {
        return Err(format!(
            "an architecture named \"{}\" exists already",
            arch.name
        ));
    }
    REGISTERED
        .write()
        .map_err(|_| "the architecture registry is poisoned".to_string())?
        .push(arch);
    Ok(())
}

/// Every architecture known to this process: the built-in ones, then the registered ones.
pub fn architectures() -> Vec<Architecture> {
    let mut all = BUILTIN.to_vec();
    if let Ok(extra) = REGISTERED.read() {
        all.extend(extra.iter().copied());
    }
    all
}

/// The architecture named `name`.
pub fn find(name: &str) -> Option<Architecture> {
    architectures().into_iter().find(|a| a.name == name)
}

fn names() -> String {
    architectures()
        .iter()
        .map(|a| format!("\"{}\"", a.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `[model]`: an architecture and its keys, every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    arch: String,
    keys: Table,
}

impl Default for ModelConfig {
    /// The default architecture with every key at its default.
    fn default() -> Self {
        Self {
            arch: DEFAULT_ARCH.to_string(),
            keys: to_table(&TransformerConfig::default()).unwrap_or_default(),
        }
    }
}

impl ModelConfig {
    /// Types a `[model]` table: `arch` (default `"transformer"`) picks the architecture,
    /// which must know every other key; missing keys take their defaults.
    pub fn from_table(mut table: Table) -> Result<Self, KeyError> {
        let name = match table.remove("arch") {
            None => DEFAULT_ARCH.to_string(),
            Some(toml::Value::String(s)) => s,
            Some(other) => {
                return Err(KeyError::new(
                    "arch",
                    format!("expected a name such as \"transformer\", got {other}"),
                ));
            }
        };
        let Some(arch) = find(&name) else {
            return Err(KeyError::new(
                "arch",
                format!("unknown architecture \"{name}\" (known: {})", names()),
            ));
        };
        let own: HashSet<String> = arch.keys().into_iter().collect();
        for key in table.keys() {
            if own.contains(key) {
                continue;
            }
            let message = match architectures()
                .iter()
                .find(|a| a.keys().iter().any(|k| k == key))
            {
                Some(other) => format!(
                    "is a key of arch = \"{}\", not of arch = \"{name}\"",
                    other.name
                ),
                None => {
                    let mut keys: Vec<&String> = own.iter().collect();
                    keys.sort();
                    let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
                    format!(
                        "unknown key for arch = \"{name}\" (its keys: {})",
                        keys.join(", ")
                    )
                }
            };
            return Err(KeyError::new(key, message));
        }
        let keys = (arch.resolve)(&table)
            .map_err(|m| KeyError::new("", format!("arch = \"{name}\": {m}")))?;
        Ok(Self { arch: name, keys })
    }

    /// Types the text of a `[model]` table (without its header), as [`Self::from_table`].
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let table: Table = toml::from_str(text).map_err(|e| KeyError::new("", e.to_string()))?;
        Self::from_table(table)
    }

    /// The architecture's name, `model.arch`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The architecture's keys, resolved.
    pub fn keys(&self) -> &Table {
        &self.keys
    }

    /// One key's value.
    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        self.keys.get(key)
    }

    fn architecture(&self) -> Result<Architecture, KeyError> {
        find(&self.arch).ok_or_else(|| {
            KeyError::new(
                "arch",
                format!(
                    "unknown architecture \"{}\" (known: {})",
                    self.arch,
                    names()
                ),
            )
        })
    }

    /// Every constraint of the architecture on its keys, given what the data fixes.
    pub fn validate(&self, data: &DataShape) -> Result<(), KeyError> {
        (self.architecture()?.validate)(&self.keys, data)
    }

    /// Builds the model: parameters named by `vb`'s paths, dropout drawn from `dropout`.
    pub fn build(
        &self,
        vocab: VocabSizes,
        dropout: DropoutRng,
        vb: VarBuilder,
    ) -> candle_core::Result<Model> {
        let arch = self
            .architecture()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        (arch.build)(&self.keys, vocab, dropout, vb)
    }
}

impl ModelConfig {
    /// What a training step on `b` sentences of `s` source and `t` target tokens costs in
    /// products (`wick bench`); `None` where the architecture does not say.
    pub fn step_cost(&self, vocab: VocabSizes, b: usize, s: usize, t: usize) -> Option<StepCost> {
        (self.architecture().ok()?.step_cost)(&self.keys, vocab, b, s, t)
    }
}

impl Serialize for ModelConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.keys.len() + 1))?;
        map.serialize_entry("arch", &self.arch)?;
        for (k, v) in &self.keys {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let table = Table::deserialize(deserializer)?;
        Self::from_table(table).map_err(serde::de::Error::custom)
    }
}
