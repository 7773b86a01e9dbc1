//! Neural-network building blocks: a deterministic parameter store, affine layers, MLPs,
//! layer norm, and the LSTM core with its analytic Jacobian.

pub(crate) mod cpu_op;
mod first_layer;
pub mod head;
pub mod kernels;
pub mod lstm;
pub mod lstm_seq;
pub mod mlp;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;

/// Named trainable parameters, kept in name order so that saving, loading and iteration are
/// deterministic. Initialisation draws from a caller-seeded ChaCha stream (candle's own random
/// initialisers use a thread-local generator, which would break reproducibility).
pub struct Params {
    vars: BTreeMap<String, Var>,
    /// Where the parameters live; every model tensor is created on it.
    device: Device,
}

impl Default for Params {
    fn default() -> Self {
        Self::on(&Device::Cpu)
    }
}

impl Params {
    /// An empty store on the CPU.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store whose parameters live on `device`.
    pub fn on(device: &Device) -> Self {
        Self {
            vars: BTreeMap::new(),
            device: device.clone(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Creates (or returns the existing) parameter `name` with uniform(−bound, bound) entries.
    pub fn uniform(
        &mut self,
        name: &str,
        shape: &[usize],
        bound: f64,
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor> {
        if let Some(v) = self.vars.get(name) {
            return Ok(v.as_tensor().clone());
        }
        let count: usize = shape.iter().product();
        let data: Vec<f32> = (0..count)
            .map(|_| rng.gen_range(-bound..=bound) as f32)
            .collect();
        self.insert(name, Tensor::from_vec(data, shape, &self.device)?)
    }

    /// Creates (or returns the existing) parameter `name` filled with `value`.
    pub fn constant(&mut self, name: &str, shape: &[usize], value: f32) -> Result<Tensor> {
        if let Some(v) = self.vars.get(name) {
            return Ok(v.as_tensor().clone());
        }
        self.insert(
            name,
            (Tensor::ones(shape, DType::F32, &self.device)? * value as f64)?,
        )
    }

    fn insert(&mut self, name: &str, t: Tensor) -> Result<Tensor> {
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        self.vars.insert(name.to_string(), var);
        Ok(out)
    }

    pub fn vars(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars.get(name)
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    pub fn num_scalars(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// A hash of every parameter's name and value bits: equal fingerprints mean equal
    /// parameters (up to a 2^−64 chance), so a result computed at some parameters can be
    /// recognised as still valid (`train::ppo` reuses the rollout's head activations).
    pub fn fingerprint(&self) -> Result<u64> {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        let mut mix = |word: u64| {
            hash = (hash ^ word)
                .wrapping_mul(0x0000_0100_0000_01b3)
                .rotate_left(5)
        };
        for (name, var) in &self.vars {
            name.bytes().for_each(|c| mix(c as u64));
            let values = var
                .as_tensor()
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            values.iter().for_each(|v| mix(v.to_bits() as u64));
        }
        Ok(hash)
    }

    /// A copy of every parameter's current values in storage of its own (a `Var` is updated in
    /// place, so [`Params::tensors`] would follow later updates).
    pub fn deep_copy(&self) -> Result<BTreeMap<String, Tensor>> {
        self.vars
            .iter()
            .map(|(name, var)| Ok((name.clone(), var.as_tensor().copy()?)))
            .collect()
    }

    /// All tensors by name (for checkpoints).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Overwrites parameters with the tensors stored under the same names. With `strict`, every
    /// parameter must be present; otherwise missing ones keep their initial values and are
    /// returned (used when finetuning a checkpoint under another posterior family).
    pub fn load_from(
        &self,
        tensors: &BTreeMap<String, Tensor>,
        strict: bool,
    ) -> Result<Vec<String>> {
        let mut missing = vec![];
        for (name, var) in &self.vars {
            match tensors.get(name) {
                Some(t) => {
                    if t.dims() != var.dims() {
                        bail!(
                            "checkpoint tensor `{name}` has shape {:?}, the model expects {:?}",
                            t.dims(),
                            var.dims()
                        );
                    }
                    var.set(&t.to_dtype(DType::F32)?.to_device(var.device())?)?;
                }
                None if strict => bail!("checkpoint lacks tensor `{name}`"),
                None => missing.push(name.clone()),
            }
        }
        Ok(missing)
    }
}

/// Reads every tensor of a safetensors file into host memory ([`Params::load_from`] moves them
/// to the parameters' device).
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let map = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading checkpoint {}", path.display()))?;
    Ok(map.into_iter().collect())
}

/// Serialises tensors to safetensors bytes (names sorted, so the bytes are deterministic).
pub fn safetensors_bytes(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    safetensors_bytes_with_metadata(tensors, None)
}

/// As [`safetensors_bytes`], with string metadata in the header.
pub fn safetensors_bytes_with_metadata(
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut data = vec![];
    for (k, t) in tensors {
        let t = t.to_dtype(DType::F32)?.contiguous()?;
        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        data.push((k.clone(), t.dims().to_vec(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(k, shape, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .expect("consistent tensor view");
            (k.clone(), view)
        })
        .collect();
    Ok(safetensors::serialize(views, &metadata)?)
}
