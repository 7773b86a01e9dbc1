//! Affine layers, multi-layer perceptrons with leaky-ReLU, and layer norm composed from basic
//! ops (candle's fused layer-norm has no backward pass).

use super::Params;
use super::cpu_op::{CpuOp, Fused, Gradients, Input, Output, with_values};
use super::kernels::{Mat, lane_dot, lane_sum, sgemm};
use anyhow::Result;
use candle_core::{CpuStorage::F32, D, Shape, Tensor};
use rand_chacha::ChaCha8Rng;

/// Slope of the leaky-ReLU used throughout (flax's default).
pub const LEAKY_SLOPE: f64 = 0.01;

/// Leaky ReLU with slope [`LEAKY_SLOPE`], y = max(x, 0) + slope·min(x, 0), as one fused op
/// (candle's composition of `maximum` and `minimum` costs ~18 elementwise passes with its
/// backward). Its derivative is 1 for x > 0, slope for x < 0 and (1 + slope)/2 at x = 0 — the
/// subgradient candle's `maximum`/`minimum` composition gives, so results do not change.
pub fn leaky_relu(x: &Tensor) -> Result<Tensor> {
    Ok(x.apply_op1(Fused(LeakyRelu))?)
}

struct LeakyRelu;

/// max(x, 0) + slope·min(x, 0).
#[inline]
pub(crate) fn leaky(x: f32) -> f32 {
    if x > 0.0 { x } else { x * LEAKY_SLOPE as f32 }
}

/// The derivative leaky′ at a point of sign `s` (the input, or the output, which has the same
/// sign): 1 above zero, slope below, (1 + slope)/2 at zero.
#[inline]
pub(crate) fn leaky_derivative(s: f32) -> f32 {
    let slope = LEAKY_SLOPE as f32;
    if s > 0.0 {
        1.0
    } else if s < 0.0 {
        slope
    } else {
        (1.0 + slope) / 2.0
    }
}

impl CpuOp<1> for LeakyRelu {
    fn name(&self) -> &'static str {
        "leaky-relu"
    }

    fn forward(&self, [x]: [Input; 1]) -> Output {
        let y = x.values()?.iter().map(|&v| leaky(v)).collect();
        Ok((F32(y), x.shape().clone()))
    }

    fn backward(&self, [x]: [&Tensor; 1], _y: &Tensor, g: &Tensor) -> Gradients<1> {
        Ok([Some(x.apply_op2(g, Fused(LeakyReluGrad))?)])
    }
}

/// grad · leaky_relu′(x) (no further derivative).
struct LeakyReluGrad;

impl CpuOp<2> for LeakyReluGrad {
    fn name(&self) -> &'static str {
        "leaky-relu-grad"
    }

    fn forward(&self, [x, g]: [Input; 2]) -> Output {
        let out = (x.values()?.iter().zip(g.values()?.iter()))
            .map(|(&x, &g)| g * leaky_derivative(x))
            .collect();
        Ok((F32(out), x.shape().clone()))
    }
}

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

    /// Applies the layer to (…, in) inputs: x W + b.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false)
    }

    /// leaky_relu(x W + b), as one node of the graph.
    pub fn forward_leaky(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, true)
    }

    /// x W + b (then leaky-ReLU when `leaky`) through the fused [`Affine`] op.
    fn apply(&self, x: &Tensor, leaky: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let d_in = *dims.last().unwrap();
        let lead: usize = dims[..dims.len() - 1].iter().product();
        let y = x.reshape((lead, d_in))?.apply_op3(
            &self.weight,
            &self.bias,
            Fused(Affine { leaky }),
        )?;
        let mut out = dims;
        *out.last_mut().unwrap() = self.weight.dim(1)?;
        Ok(y.reshape(out)?)
    }

    /// The same as [`Linear::forward`] / [`Linear::forward_leaky`] composed of candle's ops
    /// (matmul, broadcast add, leaky-ReLU): the reference the fused op is tested against.
    pub fn forward_composed(&self, x: &Tensor, leaky: bool) -> Result<Tensor> {
        let y = x
            .broadcast_matmul(&self.weight)?
            .broadcast_add(&self.bias)?;
        Ok(if leaky { leaky_relu(&y)? } else { y })
    }
}

/// y = x W + b, optionally followed by leaky-ReLU, as one op for f32 (lead, in) inputs.
///
/// candle's backward adds every node's gradient into a fresh zero tensor, and reduces a
/// broadcast bias by a strided sum: the composition matmul → add → leaky-ReLU cost three such
/// nodes on every (rows, width) activation of the heads. Here the forward is the same gemm
/// followed by one pass for the bias and the activation, and the backward, with
/// δz = δy ∘ leaky′(z), is δx = δz Wᵀ, δW = xᵀ δz, δb = Σ_rows δz. leaky′ is read from the
/// output (y has the sign of z), with the same value at the kink as [`leaky_relu`]'s.
struct Affine {
    leaky: bool,
}

impl CpuOp<3> for Affine {
    fn name(&self) -> &'static str {
        "affine"
    }

    fn forward(&self, [x, w, b]: [Input; 3]) -> Output {
        let (m, k) = x.shape().dims2()?;
        let (k2, n) = w.shape().dims2()?;
        if k != k2 || b.shape().elem_count() != n {
            candle_core::bail!(
                "affine: shapes {:?} · {:?} + {:?} do not match",
                x.dims(),
                w.dims(),
                b.dims()
            );
        }
        let (x, w, b) = (x.values()?, w.values()?, b.values()?);
        let y = if self.leaky {
            affine_values(&x, &w, &b, (m, k, n), leaky)
        } else {
            affine_values(&x, &w, &b, (m, k, n), |z| z)
        };
        Ok((F32(y), Shape::from((m, n))))
    }

    fn backward(&self, [x, w, _b]: [&Tensor; 3], y: &Tensor, grad: &Tensor) -> Gradients<3> {
        let mut gz = with_values([grad], |[g]| Ok(g.to_vec()))?;
        if self.leaky {
            with_values([y], |[y]| {
                (gz.iter_mut().zip(y)).for_each(|(g, y)| *g *= leaky_derivative(*y));
                Ok(())
            })?;
        }
        affine_gradients(x, w, &gz)
    }
}

/// act(x W + b) for x (m×k), W (k×n) and b (n), row-major, with the bias and the activation
/// applied in one pass after the gemm: the forward of [`Affine`] and of the VRNN's Cayley head.
pub(crate) fn affine_values(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    act: impl Fn(f32) -> f32,
) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    affine_into(x, w, b, (m, k, n), act, &mut y, true);
    y
}

/// [`affine_values`] into `y` (m×n); `parallel` = false keeps its matrix product on the
/// calling thread (inside an outer parallel loop).
pub(crate) fn affine_into(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    act: impl Fn(f32) -> f32,
    y: &mut [f32],
    parallel: bool,
) {
    sgemm(
        m,
        n,
        k,
        Mat::rows(x, k),
        Mat::rows(w, n),
        y,
        false,
        parallel,
    );
    for row in y[..m * n].chunks_mut(n.max(1)) {
        for (v, bias) in row.iter_mut().zip(b.iter()) {
            *v = act(*v + bias);
        }
    }
}

/// The gradients of z = x W + b given δz (m×n, row-major): δx = δz Wᵀ, δW = xᵀ δz,
/// δb = Σ_rows δz, as tensors on x's device.
pub(crate) fn affine_gradients(x: &Tensor, w: &Tensor, gz: &[f32]) -> Gradients<3> {
    let (m, k) = x.dims2()?;
    let n = w.dim(1)?;
    let (gx, gw, gb) = with_values([x, w], |[x, w]| {
        Ok(affine_gradient_values(x, w, gz, (m, k, n), true))
    })?;
    let dev = x.device();
    Ok([
        Some(Tensor::from_vec(gx, (m, k), dev)?),
        Some(Tensor::from_vec(gw, (k, n), dev)?),
        Some(Tensor::from_vec(gb, n, dev)?),
    ])
}

/// [`affine_gradients`] on plain row-major values: (δx, δW, δb) for x (m×k), W (k×n) and
/// δz (m×n); `parallel` = false keeps the matrix products on the calling thread.
pub(crate) fn affine_gradient_values(
    x: &[f32],
    w: &[f32],
    gz: &[f32],
    (m, k, n): (usize, usize, usize),
    parallel: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut gx = vec![0f32; m * k];
    let mut gw = vec![0f32; k * n];
    let mut gb = vec![0f32; n];
    let gzm = Mat::rows(gz, n);
    sgemm(m, k, n, gzm, Mat::rows_t(w, n), &mut gx, false, parallel);
    sgemm(k, n, m, Mat::rows_t(x, k), gzm, &mut gw, false, parallel);
    for row in gz.chunks(n.max(1)) {
        gb.iter_mut().zip(row).for_each(|(s, g)| *s += g);
    }
    (gx, gw, gb)
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

    /// One fused op with a hand-written backward (candle's composition costs ~9 elementwise
    /// passes forward and ~30 backward); [`LayerNorm::forward_composed`] is the reference.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.apply_op3(&self.scale, &self.offset, Fused(FusedLayerNorm))?)
    }

    /// The same function composed from basic candle ops (the reference for the fused op).
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + LN_EPS)?.sqrt()?)?;
        Ok(normed
            .broadcast_mul(&self.scale)?
            .broadcast_add(&self.offset)?)
    }
}

/// The variance offset of layer norm.
const LN_EPS: f64 = 1e-6;

/// Layer norm of each row: x̂ = (x − mean)/√(var + ε), y = x̂∘γ + β. Backward, with
/// ĝ = ∂L/∂y ∘ γ: ∂L/∂x = (ĝ − mean(ĝ) − x̂·mean(ĝ∘x̂))/√(var + ε), ∂L/∂γ = Σ_rows ∂L/∂y∘x̂,
/// ∂L/∂β = Σ_rows ∂L/∂y.
struct FusedLayerNorm;

/// Per row: x̂ and 1/√(var + ε).
fn normalise_rows(x: &[f32], d: usize) -> (Vec<f32>, Vec<f32>) {
    let mut xhat = vec![0f32; x.len()];
    let inv = normalise_rows_into(x, d, &mut xhat);
    (xhat, inv)
}

/// [`normalise_rows`] with x̂ written into `xhat`; returns 1/√(var + ε) per row.
fn normalise_rows_into(x: &[f32], d: usize, xhat: &mut [f32]) -> Vec<f32> {
    let mut inv = Vec::with_capacity(x.len() / d.max(1));
    for (row, out) in x.chunks(d).zip(xhat.chunks_mut(d)) {
        inv.push(normalise_row(row, out).1);
    }
    inv
}

/// One row of [`normalise_rows`]: x̂ = (x − mean)/√(var + ε) into `out`; returns
/// (mean, 1/√(var + ε)).
pub(crate) fn normalise_row(row: &[f32], out: &mut [f32]) -> (f32, f32) {
    let d = row.len();
    let mean = lane_sum(row) / d as f32;
    out.iter_mut().zip(row).for_each(|(o, v)| *o = v - mean);
    let var = lane_dot(out, out) / d as f32;
    let s = 1.0 / (var + LN_EPS as f32).sqrt();
    out.iter_mut().for_each(|o| *o *= s);
    (mean, s)
}

/// y = x̂∘γ + β for every row of x (rows of d).
pub(crate) fn layer_norm_values(x: &[f32], gamma: &[f32], beta: &[f32], d: usize) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    layer_norm_into(x, gamma, beta, d, &mut y);
    y
}

/// [`layer_norm_values`] into `y` (the size of x).
pub(crate) fn layer_norm_into(x: &[f32], gamma: &[f32], beta: &[f32], d: usize, y: &mut [f32]) {
    normalise_rows_into(x, d, y);
    for row in y.chunks_mut(d) {
        row.iter_mut()
            .zip(gamma.iter().zip(beta.iter()))
            .for_each(|(v, (g, b))| *v = *v * g + b);
    }
}

/// The gradients (∂L/∂x, ∂L/∂γ, ∂L/∂β) of layer norm given ∂L/∂y (see [`FusedLayerNorm`]).
pub(crate) fn layer_norm_gradients(
    x: &[f32],
    gamma: &[f32],
    grad: &[f32],
    d: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; x.len()];
    let (dgamma, dbeta) = layer_norm_gradients_into(x, gamma, grad, d, &mut dx);
    (dx, dgamma, dbeta)
}

/// [`layer_norm_gradients`] with ∂L/∂x written into `dx` (the size of x); returns (∂L/∂γ, ∂L/∂β).
pub(crate) fn layer_norm_gradients_into(
    x: &[f32],
    gamma: &[f32],
    grad: &[f32],
    d: usize,
    dx: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let (xhat, inv) = normalise_rows(x, d);
    let (mut dgamma, mut dbeta) = (vec![0f32; d], vec![0f32; d]);
    for (r, s) in inv.iter().enumerate() {
        let (xh, g) = (&xhat[r * d..(r + 1) * d], &grad[r * d..(r + 1) * d]);
        let out = &mut dx[r * d..(r + 1) * d];
        // ĝ = ∂L/∂y ∘ γ, kept in the output row until it is replaced by ∂L/∂x.
        out.iter_mut()
            .zip(g.iter().zip(gamma.iter()))
            .for_each(|(o, (gk, gm))| *o = gk * gm);
        let mean_g = lane_sum(out) / d as f32;
        let mean_gx = lane_dot(out, xh) / d as f32;
        (out.iter_mut().zip(xh)).for_each(|(o, xk)| *o = (*o - mean_g - xk * mean_gx) * s);
        (dgamma.iter_mut().zip(g.iter().zip(xh))).for_each(|(dg, (gk, xk))| *dg += gk * xk);
        dbeta.iter_mut().zip(g).for_each(|(db, gk)| *db += gk);
    }
    (dgamma, dbeta)
}

impl CpuOp<3> for FusedLayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn forward(&self, [x, gamma, beta]: [Input; 3]) -> Output {
        let d = *x.dims().last().unwrap_or(&1);
        let y = layer_norm_values(&x.values()?, &gamma.values()?, &beta.values()?, d);
        Ok((F32(y), x.shape().clone()))
    }

    fn backward(&self, [x, gamma, _]: [&Tensor; 3], _y: &Tensor, grad: &Tensor) -> Gradients<3> {
        let d = x.dim(D::Minus1)?;
        let (dx, dgamma, dbeta) = with_values([x, gamma, grad], |[x, gamma, g]| {
            Ok(layer_norm_gradients(x, gamma, g, d))
        })?;
        let dev = x.device();
        Ok([
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dgamma, d, dev)?),
            Some(Tensor::from_vec(dbeta, d, dev)?),
        ])
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
        self.forward_with(x, false)
    }

    /// As [`Mlp::forward`], with leaky-ReLU after the output layer too when `leaky_out`.
    pub fn forward_with(&self, x: &Tensor, leaky_out: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            h = if i + 1 < self.layers.len() || leaky_out {
                l.forward_leaky(&h)?
            } else {
                l.forward(&h)?
            };
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
        let h = self.mlp.forward_with(x, true)?;
        self.norm.forward(&h)
    }
}
