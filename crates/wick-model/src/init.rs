//! Seeded parameter creation.
//!
//! Candle's CPU random generator cannot be seeded, so initial weights are drawn here on the
//! host from a ChaCha stream keyed by `(seed, parameter name)`: the same seed gives the same
//! weights whatever order the layers are built in. Written by hand because no crate plugs a
//! seeded initialiser into a `VarBuilder`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The trainable parameters of a model, by checkpoint name (sorted).
#[derive(Clone, Default)]
pub struct ParamStore {
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
    seed: u64,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParamStore({} tensors)", self.len())
    }
}

fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("parameter store lock poisoned".into())
}

impl ParamStore {
    pub fn new(seed: u64) -> Self {
        Self {
            vars: Arc::default(),
            seed,
        }
    }

    /// A `VarBuilder` that creates (or returns already created) parameters in this store.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// All parameters, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        match self.vars.lock() {
            Ok(v) => v.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.vars.lock().map(|v| v.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of scalar parameters.
    pub fn n_params(&self) -> usize {
        self.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Overwrites every parameter with the tensor of the same name. Every parameter must be
    /// present with its shape; extra tensors are an error too, so a checkpoint of another
    /// model is never half-loaded.
    pub fn load(&self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let vars = self.vars.lock().map_err(poisoned)?;
        for name in tensors.keys() {
            if !vars.contains_key(name) {
                candle_core::bail!("unexpected tensor `{name}` (not a parameter of this model)")
            }
        }
        for (name, var) in vars.iter() {
            let Some(t) = tensors.get(name) else {
                candle_core::bail!("missing tensor `{name}`")
            };
            if t.shape() != var.shape() {
                candle_core::bail!(
                    "tensor `{name}` has shape {:?}, the model expects {:?}",
                    t.dims(),
                    var.dims()
                )
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }

    /// The parameters as plain tensors, by name (for saving).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect()
    }
}

/// A 64-bit FNV-1a hash, used to key each parameter's random stream by its name.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn sample(init: Init, n: usize, rng: &mut ChaCha8Rng) -> Result<Vec<f32>> {
    Ok(match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
        Init::Randn { mean, stdev } => (0..n)
            .map(|_| {
                // Box–Muller; u1 in (0, 1] so the log is finite.
                let u1: f64 = 1.0 - rng.random::<f64>();
                let u2: f64 = rng.random::<f64>();
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                (mean + stdev * z) as f32
            })
            .collect(),
        Init::Kaiming { .. } => {
            candle_core::bail!("Kaiming init is not used by wick; give explicit bounds")
        }
    })
}

impl SimpleBackend for ParamStore {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut vars = self.vars.lock().map_err(poisoned)?;
        if let Some(v) = vars.get(name) {
            if v.shape() != &s {
                candle_core::bail!(
                    "parameter `{name}` requested with shape {s:?}, exists with {:?}",
                    v.dims()
                )
            }
            return Ok(v.as_tensor().clone());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ name_hash(name));
        let data = sample(h, s.elem_count(), &mut rng)?;
        let t = Tensor::from_vec(data, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let t = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let vars = self.vars.lock().map_err(poisoned)?;
        match vars.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("no parameter `{name}`"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars
            .lock()
            .map(|v| v.contains_key(name))
            .unwrap_or(false)
    }
}

/// Glorot/Xavier uniform bounds for a `(fan_out, fan_in)` weight.
pub fn xavier_uniform(fan_in: usize, fan_out: usize) -> Init {
    let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
    Init::Uniform { lo: -a, up: a }
}

/// Replaces each `(block, n)` row block of a freshly drawn `(k·block, n)` Gaussian weight by
/// an orthogonal matrix (Saxe et al., 2014; for recurrent weights, one per gate): the rows of
/// each block are orthonormalised in order (modified Gram–Schmidt in f64), which is the
/// Q of its QR factorisation with a positive diagonal, so the result is uniformly (Haar)
/// distributed and follows from the seed. Writes in place, so call it only on a parameter
/// that was just created.
pub fn orthogonal_blocks(weight: &Tensor, block: usize) -> Result<()> {
    let (rows, n) = weight.dims2()?;
    if block == 0 || !rows.is_multiple_of(block) || block > n {
        candle_core::bail!(
            "orthogonal init: {rows} rows do not split into blocks of {block} orthonormal rows of width {n}"
        )
    }
    let values: Vec<f64> = weight.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let mut out = Vec::with_capacity(values.len());
    for chunk in values.chunks(block * n) {
        let mut q: Vec<Vec<f64>> = Vec::with_capacity(block);
        for row in chunk.chunks(n) {
            let mut v = row.to_vec();
            for u in &q {
                let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            if norm < 1e-12 {
                candle_core::bail!("orthogonal init: a degenerate draw (rows not independent)")
            }
            v.iter_mut().for_each(|a| *a /= norm);
            q.push(v);
        }
        out.extend(q.into_iter().flatten().map(|a| a as f32));
    }
    let ortho = Tensor::from_vec(out, (rows, n), weight.device())?.to_dtype(weight.dtype())?;
    weight.slice_set(&ortho, 0, 0)
}
