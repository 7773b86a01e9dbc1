//! Affine layers, multi-layer perceptrons with leaky-ReLU, and layer norm composed from basic
//! ops (candle's fused layer-norm has no backward pass).

use super::Params;
use anyhow::Result;
use candle_core::{D, Tensor};
use rand_chacha::ChaCha8Rng;

/// Slope of the leaky-ReLU used throughout (flax's default).
pub const LEAKY_SLOPE: f64 = 0.01;

/// y = x W + b with W stored as (in, out) under `{name}.weight` and b under `{name}.bias`.
#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    /// LeCun-uniform initialisation (bound √(3/in)) for the weight, zero bias.
    pub fn new(
        p: &mut Params,
        name: &str,
        d_in: usize,
        d_out: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        let bound = (3.0 / d_in as f64).sqrt();
        Self::with_bound(p, name, d_in, d_out, bound, rng)
    }

    pub fn with_bound(
        p: &mut Params,
        name: &str,
        d_in: usize,
        d_out: usize,
        bound: f64,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        Self::with_init(p, name, d_in, d_out, bound, 0.0, rng)
    }

    /// Uniform(−bound, bound) weight and a constant bias.
    pub fn with_init(
        p: &mut Params,
        name: &str,
        d_in: usize,
        d_out: usize,
        bound: f64,
        bias: f32,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        let weight = p.uniform(&format!("{name}.weight"), &[d_in, d_out], bound, rng)?;
        let bias = p.constant(&format!("{name}.bias"), &[d_out], bias)?;
        Ok(Self { weight, bias })
    }

    /// Applies the layer to (…, in) inputs.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let d_in = *dims.last().unwrap();
        let lead: usize = dims[..dims.len() - 1].iter().product();
        let y = x
            .reshape((lead, d_in))?
            .matmul(&self.weight)?
            .broadcast_add(&self.bias)?;
        let mut out = dims;
        *out.last_mut().unwrap() = self.weight.dim(1)?;
        Ok(y.reshape(out)?)
    }
}

/// Layer norm over the last axis with learned scale and offset: (x − mean)/√(var + 1e-6)·γ + β.
#[derive(Clone)]
pub struct LayerNorm {
    pub scale: Tensor,
    pub offset: Tensor,
}

impl LayerNorm {
    pub fn new(p: &mut Params, name: &str, dim: usize) -> Result<Self> {
        Ok(Self {
            scale: p.constant(&format!("{name}.scale"), &[dim], 1.0)?,
            offset: p.constant(&format!("{name}.offset"), &[dim], 0.0)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + 1e-6)?.sqrt()?)?;
        Ok(normed
            .broadcast_mul(&self.scale)?
            .broadcast_add(&self.offset)?)
    }
}

/// Hidden layers with leaky-ReLU, then a linear output layer (no activation).
#[derive(Clone)]
pub struct Mlp {
    pub layers: Vec<Linear>,
}

impl Mlp {
    /// `sizes` = [in, hidden…, out].
    pub fn new(p: &mut Params, name: &str, sizes: &[usize], rng: &mut ChaCha8Rng) -> Result<Self> {
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| Linear::new(p, &format!("{name}.{i}"), w[0], w[1], rng))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = candle_nn::ops::leaky_relu(&h, LEAKY_SLOPE)?;
            }
        }
        Ok(h)
    }
}

/// The embedding of one input kind (paper App. B.1): MLP (256, 256) with leaky-ReLU on both
/// layers, then layer norm.
#[derive(Clone)]
pub struct Embedding {
    mlp: Mlp,
    norm: LayerNorm,
}

impl Embedding {
    pub fn new(
        p: &mut Params,
        name: &str,
        d_in: usize,
        width: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        let mlp = Mlp::new(p, &format!("{name}.mlp"), &[d_in, width, width], rng)?;
        let norm = LayerNorm::new(p, &format!("{name}.norm"), width)?;
        Ok(Self { mlp, norm })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = candle_nn::ops::leaky_relu(&self.mlp.forward(x)?, LEAKY_SLOPE)?;
        self.norm.forward(&h)
    }
}

/// A prediction head (paper App. B.1): layer norm of the input, MLP (256, 256, 64) with
/// leaky-ReLU, then a linear output.
#[derive(Clone)]
pub struct Head {
    norm: LayerNorm,
    mlp: Mlp,
}

impl Head {
    pub fn new(
        p: &mut Params,
        name: &str,
        d_in: usize,
        hidden: &[usize],
        d_out: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        let norm = LayerNorm::new(p, &format!("{name}.norm"), d_in)?;
        let mut sizes = vec![d_in];
        sizes.extend_from_slice(hidden);
        sizes.push(d_out);
        Ok(Self {
            norm,
            mlp: Mlp::new(p, &format!("{name}.mlp"), &sizes, rng)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.mlp.forward(&self.norm.forward(x)?)
    }
}
