//! A CTranslate2 model directory written natively: `model.bin` byte for byte as CTranslate2's
//! own Python serialiser (`ctranslate2.specs.TransformerSpec`, binary version 6, spec
//! revision 7) writes it for the same weights, `config.json` and the vocabularies.
//!
//! What the serialiser does, and so what this module does, in order:
//! 1. every variable of the spec gets a value: the weights, the exact position table wick
//!    adds (CTranslate2's own sinusoids are laid out differently), and the spec's scalars
//!    (heads, norm position, activation, …);
//! 2. variables equal to one earlier in name order become aliases of it (tied embeddings,
//!    the two position tables), so they are stored once;
//! 3. quantization: the weights of linear layers and embeddings become int8 rows with one
//!    float32 scale per row (or int16 with one scale, or float16/bfloat16), the other
//!    floating-point variables take the type the quantization names;
//! 4. `model.bin`: the variables sorted by name, then the aliases.
//!
//! `scripts/reference/ct2_export.py` builds the same directory with CTranslate2's Python API;
//! `scripts/check_export.sh` holds the two to the same bytes for every quantization.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Result, bail};

/// Weight types CTranslate2 accepts (`--quantization`); `None` keeps float32 as trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantization {
    Int8,
    Int8Float32,
    Int8Float16,
    Int8Bfloat16,
    Int16,
    Float16,
    Bfloat16,
    Float32,
}

impl Quantization {
    pub const ALL: [Quantization; 8] = [
        Quantization::Int8,
        Quantization::Int8Float32,
        Quantization::Int8Float16,
        Quantization::Int8Bfloat16,
        Quantization::Int16,
        Quantization::Float16,
        Quantization::Bfloat16,
        Quantization::Float32,
    ];

    /// The name CTranslate2 gives it (`int8_float16`, …).
    pub fn name(self) -> &'static str {
        match self {
            Quantization::Int8 => "int8",
            Quantization::Int8Float32 => "int8_float32",
            Quantization::Int8Float16 => "int8_float16",
            Quantization::Int8Bfloat16 => "int8_bfloat16",
            Quantization::Int16 => "int16",
            Quantization::Float16 => "float16",
            Quantization::Bfloat16 => "bfloat16",
            Quantization::Float32 => "float32",
        }
    }

    /// The type the floating-point variables that are not weights take (biases, norms,
    /// positions); `None`: they stay as they are.
    fn other_floats(self) -> Option<DType> {
        match self {
            Quantization::Float16 | Quantization::Int8Float16 => Some(DType::F16),
            Quantization::Bfloat16 | Quantization::Int8Bfloat16 => Some(DType::Bf16),
            Quantization::Float32 | Quantization::Int8Float32 | Quantization::Int16 => {
                Some(DType::F32)
            }
            Quantization::Int8 => None,
        }
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Quantization {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|q| q.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|q| q.name()).collect();
                format!("unknown quantization `{s}` (expected {})", names.join(", "))
            })
    }
}

/// CTranslate2's `DataType` ids (include/ctranslate2/types.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DType {
    F32,
    I8,
    I16,
    F16,
    Bf16,
}

impl DType {
    fn id(self) -> u8 {
        match self {
            DType::F32 => 0,
            DType::I8 => 1,
            DType::I16 => 2,
            DType::F16 => 4,
            DType::Bf16 => 5,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Data {
    F32(Vec<f32>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    /// float16 or bfloat16 bits.
    Half(DType, Vec<u16>),
}

impl Data {
    fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::I8(_) => DType::I8,
            Data::I16(_) => DType::I16,
            Data::Half(t, _) => *t,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I8(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Half(_, v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// numpy's `array_equal` on two arrays of one type: elementwise `==` (so NaN differs
    /// from itself and −0 equals +0).
    fn same_values(&self, other: &Data) -> bool {
        match (self, other) {
            (Data::F32(a), Data::F32(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
            }
            (Data::I8(a), Data::I8(b)) => a == b,
            (Data::I16(a), Data::I16(b)) => a == b,
            (Data::Half(s, a), Data::Half(t, b)) if s == t => {
                // Only reached for float16/bfloat16 after conversion, which aliasing precedes.
                a == b
            }
            _ => false,
        }
    }
}

/// One variable of the spec: a tensor or a scalar (`shape` empty).
#[derive(Clone, Debug, PartialEq)]
struct Variable {
    shape: Vec<usize>,
    data: Data,
    /// A weight that quantization turns into integers (the spec gives it a `*_scale`).
    quantizable: bool,
}

#[derive(Clone, Debug, PartialEq)]
enum Entry {
    Value(Variable),
    /// The name of an equal variable earlier in name order.
    Alias(String),
}

/// The variables of a model spec by name (name order is the file's order).
#[derive(Clone, Debug, Default)]
pub struct Spec {
    entries: BTreeMap<String, Entry>,
}

impl Spec {
    /// A float32 tensor of `shape`; `quantizable` for the weights of linear layers and
    /// embeddings.
    pub fn tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        values: Vec<f32>,
        quantizable: bool,
    ) -> Result<()> {
        let name = name.into();
        let n: usize = shape.iter().product();
        if n != values.len() || shape.is_empty() {
            bail!(
                "CTranslate2 variable {name}: {} values for shape {shape:?}",
                values.len()
            )
        }
        self.insert(
            name,
            Variable {
                shape: shape.to_vec(),
                data: Data::F32(values),
                quantizable,
            },
        )
    }

    /// An int8 scalar (CTranslate2 stores flags and enums this way).
    pub fn int8(&mut self, name: impl Into<String>, value: i8) -> Result<()> {
        self.scalar(name.into(), Data::I8(vec![value]))
    }

    /// An int16 scalar.
    pub fn int16(&mut self, name: impl Into<String>, value: i16) -> Result<()> {
        self.scalar(name.into(), Data::I16(vec![value]))
    }

    fn scalar(&mut self, name: String, data: Data) -> Result<()> {
        self.insert(
            name,
            Variable {
                shape: Vec::new(),
                data,
                quantizable: false,
            },
        )
    }

    fn insert(&mut self, name: String, v: Variable) -> Result<()> {
        if self.entries.insert(name.clone(), Entry::Value(v)).is_some() {
            bail!("CTranslate2 variable {name} set twice")
        }
        Ok(())
    }

    /// Step 2: each non-scalar variable equal (same type, shape and values) to one earlier
    /// in name order becomes an alias of the first such variable.
    fn alias_duplicates(&mut self) {
        let names: Vec<String> = self.entries.keys().cloned().collect();
        for i in (0..names.len()).rev() {
            let Some(Entry::Value(v)) = self.entries.get(&names[i]) else {
                continue;
            };
            if v.shape.is_empty() {
                continue;
            }
            let target = names[..i]
                .iter()
                .find(|other| match self.entries.get(*other) {
                    Some(Entry::Value(o)) => {
                        o.shape == v.shape
                            && o.data.dtype() == v.data.dtype()
                            && o.data.same_values(&v.data)
                    }
                    _ => false,
                });
            if let Some(target) = target.cloned() {
                self.entries.insert(names[i].clone(), Entry::Alias(target));
            }
        }
    }

    /// Step 3.
    fn quantize(&mut self, q: Quantization) -> Result<()> {
        let mut scales = Vec::new();
        for (name, entry) in self.entries.iter_mut() {
            let Entry::Value(v) = entry else { continue };
            if v.shape.is_empty() {
                continue;
            }
            let Data::F32(values) = &v.data else { continue };
            if v.quantizable {
                match q {
                    Quantization::Int8
                    | Quantization::Int8Float32
                    | Quantization::Int8Float16
                    | Quantization::Int8Bfloat16 => {
                        let (ints, scale) = quantize_int8_rows(values, v.shape[0]);
                        scales.push((format!("{name}_scale"), vec![v.shape[0]], scale));
                        v.data = Data::I8(ints);
                        continue;
                    }
                    Quantization::Int16 => {
                        let (ints, scale) = quantize_int16(values).ok_or_else(|| {
                            anyhow::anyhow!("{name}: cannot quantize an all-zero weight to int16")
                        })?;
                        scales.push((format!("{name}_scale"), Vec::new(), vec![scale]));
                        v.data = Data::I16(ints);
                        continue;
                    }
                    Quantization::Float16 | Quantization::Bfloat16 | Quantization::Float32 => {}
                }
            }
            match q.other_floats() {
                Some(DType::F16) => {
                    let bits = values
                        .iter()
                        .map(|&x| half::f16::from_f32(x).to_bits())
                        .collect();
                    v.data = Data::Half(DType::F16, bits);
                }
                Some(DType::Bf16) => {
                    let bits = values
                        .iter()
                        .map(|&x| half::bf16::from_f32(x).to_bits())
                        .collect();
                    v.data = Data::Half(DType::Bf16, bits);
                }
                _ => {}
            }
        }
        for (name, shape, values) in scales {
            let v = Variable {
                shape,
                data: Data::F32(values),
                quantizable: false,
            };
            if self.entries.insert(name.clone(), Entry::Value(v)).is_some() {
                bail!("CTranslate2 variable {name} set twice")
            }
        }
        Ok(())
    }

    /// Steps 2–4: the bytes of `model.bin` for a spec named `spec_name` at `revision`.
    pub fn serialize(
        mut self,
        spec_name: &str,
        revision: u32,
        quantization: Option<Quantization>,
    ) -> Result<Vec<u8>> {
        self.alias_duplicates();
        if let Some(q) = quantization {
            self.quantize(q)?;
        }
        let mut out = Vec::new();
        out.extend(BINARY_VERSION.to_le_bytes());
        write_string(&mut out, spec_name)?;
        out.extend(revision.to_le_bytes());
        let values: Vec<(&String, &Variable)> = self
            .entries
            .iter()
            .filter_map(|(n, e)| match e {
                Entry::Value(v) => Some((n, v)),
                Entry::Alias(_) => None,
            })
            .collect();
        out.extend(u32::try_from(values.len())?.to_le_bytes());
        for (name, v) in values {
            write_string(&mut out, name)?;
            out.push(u8::try_from(v.shape.len())?);
            for &d in &v.shape {
                out.extend(u32::try_from(d)?.to_le_bytes());
            }
            out.push(v.data.dtype().id());
            let bytes = v.data.bytes();
            out.extend(u32::try_from(bytes.len())?.to_le_bytes());
            out.extend(bytes);
        }
        let aliases: Vec<(&String, &String)> = self
            .entries
            .iter()
            .filter_map(|(n, e)| match e {
                Entry::Alias(t) => Some((n, t)),
                Entry::Value(_) => None,
            })
            .collect();
        out.extend(u32::try_from(aliases.len())?.to_le_bytes());
        for (alias, target) in aliases {
            write_string(&mut out, alias)?;
            write_string(&mut out, target)?;
        }
        Ok(out)
    }
}

/// The `model.bin` layout version CTranslate2 4.x writes.
const BINARY_VERSION: u32 = 6;

/// A length-prefixed (u16, counting the terminator), NUL-terminated UTF-8 string.
fn write_string(out: &mut Vec<u8>, s: &str) -> Result<()> {
    out.extend(u16::try_from(s.len() + 1)?.to_le_bytes());
    out.extend(s.as_bytes());
    out.push(0);
    Ok(())
}

/// Each row scaled so that its largest magnitude is 127, rounded half to even: `(ints,
/// scales)` with `x ≈ int / scale`. An all-zero row gets the scale 1.
fn quantize_int8_rows(values: &[f32], rows: usize) -> (Vec<i8>, Vec<f32>) {
    let cols = values.len() / rows.max(1);
    let mut ints = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(rows);
    for row in values.chunks(cols.max(1)) {
        let mut amax = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        if amax == 0.0 {
            amax = 127.0;
        }
        let scale = 127.0f32 / amax;
        ints.extend(row.iter().map(|&x| (x * scale).round_ties_even() as i8));
        scales.push(scale);
    }
    (ints, scales)
}

/// The whole matrix on 10 bits (products of 20 bits leave 12 for sums), one scale; `None`
/// for an all-zero matrix.
fn quantize_int16(values: &[f32]) -> Option<(Vec<i16>, f32)> {
    let amax = values.iter().fold(0f32, |m, x| m.max(x.abs()));
    if amax == 0.0 {
        return None;
    }
    let scale = 1024.0f32 / amax;
    let ints = values
        .iter()
        .map(|&x| {
            (x * scale)
                .round_ties_even()
                .clamp(i16::MIN as f32, i16::MAX as f32) as i16
        })
        .collect();
    Some((ints, scale))
}

/// A JSON string as Python's `json.dump` writes it (`ensure_ascii`: everything outside
/// printable ASCII as `\uXXXX`, astral characters as surrogate pairs).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// A list of strings as `json.dump(tokens, f, indent=2)` writes it (no final newline).
pub fn json_string_list(items: &[String]) -> String {
    if items.is_empty() {
        return "[]".into();
    }
    let body: Vec<String> = items
        .iter()
        .map(|s| format!("  {}", json_string(s)))
        .collect();
    format!("[\n{}\n]", body.join(",\n"))
}

/// A float as Python's `repr` (and so `json.dump`) writes it: the shortest digits that read
/// back to the same value, in positional form for exponents −4 … 15, else `1e-05`.
pub fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{x:e}"); // shortest round-trip digits, e.g. "1.5e-5"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let fixed = format!("{x}");
        if fixed.contains('.') {
            fixed
        } else {
            format!("{fixed}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// The `config.json` of a sequence-to-sequence spec, keys sorted, as `json.dump(…,
/// indent=2, sort_keys=True)` plus a newline. `fields` are `(key, JSON value)`.
pub fn config_json(fields: &[(&str, String)]) -> String {
    let mut fields = fields.to_vec();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("  {}: {v}", json_string(k)))
        .collect();
    format!("{{\n{}\n}}\n", body.join(",\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_matches_repr() {
        for (x, s) in [
            (1e-5, "1e-05"),
            (1e-6, "1e-06"),
            (0.0001, "0.0001"),
            (1.5e-7, "1.5e-07"),
            (1.0, "1.0"),
            (0.25, "0.25"),
            (1e16, "1e+16"),
            (123456789.0, "123456789.0"),
        ] {
            assert_eq!(python_float(x), s, "{x}");
        }
    }

    #[test]
    fn json_strings_escape_like_python() {
        assert_eq!(json_string("▁the"), "\"\\u2581the\"");
        assert_eq!(json_string("<0x0A>"), "\"<0x0A>\"");
        assert_eq!(json_string("a\"b\\"), "\"a\\\"b\\\\\"");
        assert_eq!(json_string("\u{7f}"), "\"\\u007f\"");
        assert_eq!(json_string("😀"), "\"\\ud83d\\ude00\"");
        assert_eq!(
            json_string_list(&["<s>".into(), "é".into()]),
            "[\n  \"<s>\",\n  \"\\u00e9\"\n]"
        );
    }

    #[test]
    fn int8_rows_round_half_to_even_with_per_row_scales() {
        let (ints, scales) = quantize_int8_rows(&[0.5, -1.0, 0.0, 0.0, 2.0, 1.0], 3);
        // An all-zero row keeps the scale 1, as CTranslate2's own quantizer gives it.
        assert_eq!(scales, vec![127.0, 1.0, 63.5]);
        // 0.5·127 = 63.5 → 64 (even); 1.0·63.5 = 63.5 → 64.
        assert_eq!(ints, vec![64, -127, 0, 0, 127, 64]);
    }

    #[test]
    fn equal_tensors_become_aliases_of_the_first_name() -> Result<()> {
        let mut spec = Spec::default();
        spec.tensor("b/weight", &[2], vec![1.0, 2.0], true)?;
        spec.tensor("a/weight", &[2], vec![1.0, 2.0], true)?;
        spec.tensor("c/weight", &[2], vec![1.0, 2.0], true)?;
        spec.tensor("d/other", &[2], vec![1.0, 3.0], false)?;
        spec.int8("a/flag", 1)?;
        spec.int8("b/flag", 1)?;
        spec.alias_duplicates();
        assert_eq!(spec.entries["b/weight"], Entry::Alias("a/weight".into()));
        assert_eq!(spec.entries["c/weight"], Entry::Alias("a/weight".into()));
        assert!(matches!(spec.entries["d/other"], Entry::Value(_)));
        // Scalars are never aliased.
        assert!(matches!(spec.entries["b/flag"], Entry::Value(_)));
        Ok(())
    }

    #[test]
    fn serialized_layout() -> Result<()> {
        let mut spec = Spec::default();
        spec.tensor("x", &[1, 2], vec![1.0, -2.0], true)?;
        spec.tensor("y", &[1, 2], vec![1.0, -2.0], true)?;
        spec.int16("n", 4)?;
        let bytes = spec.serialize("S", 7, Some(Quantization::Int8))?;
        let mut want = Vec::new();
        want.extend(6u32.to_le_bytes());
        want.extend([2, 0, b'S', 0]);
        want.extend(7u32.to_le_bytes());
        want.extend(3u32.to_le_bytes()); // n, x, x_scale
        want.extend([2, 0, b'n', 0, 0, 2]);
        want.extend(2u32.to_le_bytes());
        want.extend(4i16.to_le_bytes());
        want.extend([2, 0, b'x', 0, 2]);
        want.extend(1u32.to_le_bytes());
        want.extend(2u32.to_le_bytes());
        want.push(1);
        want.extend(2u32.to_le_bytes());
        want.extend([64u8, 0x81]); // 1·63.5 → 64 (half to even), −2·63.5 = −127
        want.extend([8, 0]);
        want.extend(b"x_scale\0");
        want.push(1);
        want.extend(1u32.to_le_bytes());
        want.push(0);
        want.extend(4u32.to_le_bytes());
        want.extend(63.5f32.to_le_bytes());
        want.extend(1u32.to_le_bytes()); // one alias: y → x
        want.extend([2, 0, b'y', 0, 2, 0, b'x', 0]);
        assert_eq!(bytes, want);
        Ok(())
    }
}
