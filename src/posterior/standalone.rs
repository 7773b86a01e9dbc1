//! The Laplace posterior of *any* trained single-layer LSTM, from its weights alone (paper
//! Sec. 4, App. A.3, Table 2): no lvrnn model, no checkpoint, no retraining. This is what the
//! Python package (`python/`) exposes as `lvrnn.LaplaceLSTM`.
//!
//! Given the LSTM's weights (PyTorch `nn.LSTM` or Flax `LSTMCell` layout, see [`LstmWeights`]),
//! an optional projection φ = P h + p_b to the posterior space (none: z = h) and the user's own
//! LSTM inputs x_1..x_T (the embedding stays theirs), [`LaplaceLstm::filter_f64`] and [`LaplaceLstm::filter_f32`] runs the LSTM and
//! returns, per task and step t = 0…T, the posterior q_t = N(μ_t, Λ_t⁻¹) of the Table-2 variant
//! a [`LaplaceConfig`] names:
//! - μ_t = φ_t (+ μ_{t−1} when the mean is accumulated),
//! - Λ_t = prior_t + Σ_{i ∈ window} J_i J_iᵀ, J_i = ∂ P h'(x_i, (c_t, h)) / ∂h at h_t,
//!   prior_t = Λ_{t−1} (accumulated) or damping·I, Λ_0 = prior_precision·I,
//! - the differential entropy of q_t and KL(q_t ‖ q_{t−1}) (NaN at t = 0).
//!
//! Two paths compute the same numbers: f64 inputs run the per-step reference
//! ([`super::laplace::Laplace`] on f64 tensors, the code the fast paths are tested against);
//! f32 inputs run the fast filter ([`super::filter::LaplaceFilter`], what training uses). The
//! tests check them against each other and against finite differences.

use super::config::LaplaceConfig;
use super::filter::{JacobianWeights, LaplaceFilter};
use super::laplace::Laplace;
use super::{Covariance, Gaussian, PosteriorFamily, StepInput};
use crate::nn::kernels::{Mat, lstm_cells, sgemm};
use crate::nn::lstm::{Carry, Lstm};
use crate::nn::mlp::Linear;
use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, VecDeque};

/// A named array: row-major values and their shape.
pub type Named = BTreeMap<String, (Vec<f64>, Vec<usize>)>;

/// A single-layer LSTM in lvrnn's layout (`nn::lstm`): z = x W_x + h W_h + b with W_x
/// (d_in, 4H), W_h (H, 4H), b (4H), gate blocks i, f, g, o along the 4H axis;
/// c' = f∘c + i∘g, h' = o∘tanh(c').
#[derive(Clone, Debug)]
pub struct LstmWeights {
    pub d_in: usize,
    pub hidden: usize,
    pub wx: Vec<f64>,
    pub wh: Vec<f64>,
    pub b: Vec<f64>,
}

/// The array `key` of `named` with its shape checked against `want` (None: any size there).
fn take<'a>(
    named: &'a Named,
    key: &str,
    want: &[Option<usize>],
) -> Result<(&'a [f64], Vec<usize>)> {
    let (v, shape) = named
        .get(key)
        .with_context(|| format!("missing weight `{key}`"))?;
    let fits = shape.len() == want.len()
        && shape
            .iter()
            .zip(want)
            .all(|(s, w)| w.is_none_or(|w| *s == w));
    if !fits {
        let want: Vec<String> = want
            .iter()
            .map(|w| w.map_or("*".into(), |w| w.to_string()))
            .collect();
        bail!(
            "weight `{key}` has shape {shape:?}; expected ({})",
            want.join(", ")
        );
    }
    if v.len() != shape.iter().product::<usize>() {
        bail!("weight `{key}`: {} values for shape {shape:?}", v.len());
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        bail!(
            "weight `{key}` holds a non-finite value ({}) at flat index {i}",
            v[i]
        );
    }
    Ok((v, shape.clone()))
}

impl LstmWeights {
    /// From a PyTorch `nn.LSTM` (one layer) state dict: `weight_ih_l0` (4H, d_in),
    /// `weight_hh_l0` (4H, H), `bias_ih_l0` and `bias_hh_l0` (4H, both optional: `bias=False`),
    /// gate blocks i, f, g, o along the 4H rows (PyTorch's documented order). A `_l1` key (a
    /// second layer) or a `_reverse` key (bidirectional) is refused: only one layer has a
    /// carry whose Jacobian this posterior uses.
    pub fn from_torch(named: &Named) -> Result<Self> {
        if let Some(k) = named
            .keys()
            .find(|k| k.contains("_l1") || k.contains("_reverse"))
        {
            bail!(
                "`{k}`: only a single-layer, unidirectional nn.LSTM is supported (num_layers=1, bidirectional=False)"
            );
        }
        if named.contains_key("weight_hr_l0") {
            bail!("`weight_hr_l0`: an nn.LSTM with proj_size > 0 is not supported");
        }
        let (_, hh) = take(named, "weight_hh_l0", &[None, None])?;
        let hidden = hh[1];
        if hh[0] != 4 * hidden {
            bail!(
                "weight `weight_hh_l0` has shape {hh:?}; expected (4H, H) = ({}, {hidden})",
                4 * hidden
            );
        }
        let (wih, ih) = take(named, "weight_ih_l0", &[Some(4 * hidden), None])?;
        let (whh, _) = take(named, "weight_hh_l0", &[Some(4 * hidden), Some(hidden)])?;
        let d_in = ih[1];
        let g4 = 4 * hidden;
        let mut b = vec![0.0; g4];
        for key in ["bias_ih_l0", "bias_hh_l0"] {
            if named.contains_key(key) {
                let (v, _) = take(named, key, &[Some(g4)])?;
                b.iter_mut().zip(v).for_each(|(b, v)| *b += v);
            }
        }
        Ok(Self {
            d_in,
            hidden,
            wx: transpose(wih, g4, d_in),
            wh: transpose(whh, g4, hidden),
            b,
        })
    }

    /// From a Flax `LSTMCell` (or `OptimizedLSTMCell`, the same parameters) tree flattened
    /// with `/`: `ii/kernel`, `if/kernel`, `ig/kernel`, `io/kernel` (d_in, H; no bias),
    /// `hi/kernel` … `ho/kernel` (H, H) and `hi/bias` … `ho/bias` (H). Followed: flax/linen/
    /// recurrent.py of Flax 0.8–0.10 (i = σ(ii(x) + hi(h)), f, g = tanh(…), o likewise;
    /// c' = f∘c + i∘g, h' = o∘tanh(c'); the carry is (c, h)). Input biases `ii/bias` … are
    /// added when present.
    pub fn from_flax(named: &Named) -> Result<Self> {
        let (_, hk) = take(named, "hi/kernel", &[None, None])?;
        let hidden = hk[1];
        let (_, ik) = take(named, "ii/kernel", &[None, Some(hidden)])?;
        let d_in = ik[0];
        let g4 = 4 * hidden;
        let (mut wx, mut wh, mut b) = (vec![0.0; d_in * g4], vec![0.0; hidden * g4], vec![0.0; g4]);
        for (g, gate) in ["i", "f", "g", "o"].iter().enumerate() {
            let (kx, _) = take(
                named,
                &format!("i{gate}/kernel"),
                &[Some(d_in), Some(hidden)],
            )?;
            let (kh, _) = take(
                named,
                &format!("h{gate}/kernel"),
                &[Some(hidden), Some(hidden)],
            )?;
            let (bh, _) = take(named, &format!("h{gate}/bias"), &[Some(hidden)])?;
            for r in 0..d_in {
                wx[r * g4 + g * hidden..r * g4 + (g + 1) * hidden]
                    .copy_from_slice(&kx[r * hidden..(r + 1) * hidden]);
            }
            for r in 0..hidden {
                wh[r * g4 + g * hidden..r * g4 + (g + 1) * hidden]
                    .copy_from_slice(&kh[r * hidden..(r + 1) * hidden]);
            }
            b[g * hidden..(g + 1) * hidden].copy_from_slice(bh);
            let input_bias = format!("i{gate}/bias");
            if named.contains_key(&input_bias) {
                let (bi, _) = take(named, &input_bias, &[Some(hidden)])?;
                b[g * hidden..(g + 1) * hidden]
                    .iter_mut()
                    .zip(bi)
                    .for_each(|(b, v)| *b += v);
            }
        }
        Ok(Self {
            d_in,
            hidden,
            wx,
            wh,
            b,
        })
    }

    /// From the layout a dict's keys name: PyTorch (`weight_ih_l0` …) or Flax (`ii/kernel` …).
    pub fn from_named(named: &Named) -> Result<Self> {
        if named.contains_key("weight_ih_l0") || named.contains_key("weight_hh_l0") {
            Self::from_torch(named)
        } else if named
            .keys()
            .any(|k| k.starts_with("hi/") || k.starts_with("ii/"))
        {
            Self::from_flax(named)
        } else {
            let keys: Vec<&String> = named.keys().take(8).collect();
            bail!(
                "unrecognised LSTM weights (keys {keys:?}): expected a PyTorch nn.LSTM state dict (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0) or a Flax LSTMCell tree (ii/kernel … ho/bias)"
            )
        }
    }
}

/// The (cols × rows) transpose of a row-major (rows × cols) matrix.
fn transpose(m: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// The projection φ = h P + p_b to the posterior space: P (H, n), p_b (n). A PyTorch
/// `nn.Linear(H, n)` has weight (n, H): pass its transpose.
#[derive(Clone, Debug)]
pub struct Projection {
    pub weight: Vec<f64>,
    pub bias: Vec<f64>,
    pub features: usize,
}

impl Projection {
    /// z = h: P = I, no bias.
    pub fn identity(hidden: usize) -> Self {
        let mut weight = vec![0.0; hidden * hidden];
        (0..hidden).for_each(|i| weight[i * hidden + i] = 1.0);
        Self {
            weight,
            bias: vec![0.0; hidden],
            features: hidden,
        }
    }

    /// P given as (H, n) row-major, p_b (n) or zero.
    pub fn new(
        weight: Vec<f64>,
        shape: &[usize],
        bias: Option<Vec<f64>>,
        hidden: usize,
    ) -> Result<Self> {
        if shape.len() != 2 || shape[0] != hidden || weight.len() != shape[0] * shape[1] {
            bail!(
                "projection weight has shape {shape:?}; expected (H, n) with H = {hidden} (a torch nn.Linear's weight is (n, H): pass weight.T)"
            );
        }
        let n = shape[1];
        let bias = bias.unwrap_or_else(|| vec![0.0; n]);
        if bias.len() != n {
            bail!(
                "projection bias has {} values; expected n = {n}",
                bias.len()
            );
        }
        if weight.iter().chain(&bias).any(|v| !v.is_finite()) {
            bail!("the projection holds a non-finite value");
        }
        Ok(Self {
            weight,
            bias,
            features: n,
        })
    }
}

/// The posterior along a batch of input sequences, batch-major: for task b and step t = 0…T,
/// `mean[(b·(T+1) + t)·n ..]` and so on.
#[derive(Clone, Debug)]
pub struct Trajectory<F> {
    pub batch: usize,
    pub steps: usize,
    pub features: usize,
    pub hidden: usize,
    pub diagonal: bool,
    /// μ_t, (B, T+1, n).
    pub mean: Vec<F>,
    /// Λ_t without jitter: (B, T+1, n, n), or its diagonal (B, T+1, n) for a diagonal spec.
    pub precision: Vec<F>,
    /// Differential entropy of q_t, (B, T+1).
    pub entropy: Vec<f64>,
    /// KL(q_t ‖ q_{t−1}), (B, T+1), NaN at t = 0.
    pub kl: Vec<f64>,
    /// The LSTM's carry h_t and c_t, (B, T+1, H) each (t = 0: the initial carry).
    pub h: Vec<F>,
    pub c: Vec<F>,
}

impl<F: Copy + Default> Trajectory<F> {
    fn empty(batch: usize, steps: usize, n: usize, hidden: usize, diagonal: bool) -> Self {
        let rows = batch * (steps + 1);
        let size = if diagonal { n } else { n * n };
        Self {
            batch,
            steps,
            features: n,
            hidden,
            diagonal,
            mean: vec![F::default(); rows * n],
            precision: vec![F::default(); rows * size],
            entropy: vec![0.0; rows],
            kl: vec![f64::NAN; rows],
            h: vec![F::default(); rows * hidden],
            c: vec![F::default(); rows * hidden],
        }
    }

    /// Row index of (task b, step t).
    fn row(&self, b: usize, t: usize) -> usize {
        b * (self.steps + 1) + t
    }

    /// Writes step t of every task from time-major (B, ·) slices.
    fn put(&mut self, t: usize, stat: Stat, values: &[F]) {
        let width = match stat {
            Stat::Mean => self.features,
            Stat::Precision if self.diagonal => self.features,
            Stat::Precision => self.features * self.features,
            Stat::H | Stat::C => self.hidden,
        };
        for b in 0..self.batch {
            let r = self.row(b, t);
            let dst = match stat {
                Stat::Mean => &mut self.mean,
                Stat::Precision => &mut self.precision,
                Stat::H => &mut self.h,
                Stat::C => &mut self.c,
            };
            dst[r * width..(r + 1) * width].copy_from_slice(&values[b * width..(b + 1) * width]);
        }
    }

    fn put_scalars(&mut self, t: usize, entropy: &[f64], kl: Option<&[f64]>) {
        for b in 0..self.batch {
            let r = self.row(b, t);
            self.entropy[r] = entropy[b];
            if let Some(kl) = kl {
                self.kl[r] = kl[b];
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Stat {
    Mean,
    Precision,
    H,
    C,
}

/// A foreign LSTM with its projection: the object whose posterior [`Self::filter_f64`] and [`Self::filter_f32`] computes.
#[derive(Clone, Debug)]
pub struct LaplaceLstm {
    pub lstm: LstmWeights,
    pub proj: Projection,
}

/// Inputs (B, T, d_in) row-major and an optional initial carry (B, H) each.
pub struct Sequences<'a, F> {
    pub inputs: &'a [F],
    pub batch: usize,
    pub steps: usize,
    pub h0: Option<&'a [F]>,
    pub c0: Option<&'a [F]>,
}

impl LaplaceLstm {
    pub fn new(lstm: LstmWeights, proj: Option<Projection>) -> Result<Self> {
        let proj = proj.unwrap_or_else(|| Projection::identity(lstm.hidden));
        if proj.weight.len() != lstm.hidden * proj.features {
            bail!(
                "the projection maps {} inputs; the LSTM's hidden size is {}",
                proj.weight.len() / proj.features.max(1),
                lstm.hidden
            );
        }
        Ok(Self { lstm, proj })
    }

    /// Checks the shapes and values of `seq` (every message names what to change).
    fn check<F: Copy + Into<f64>>(&self, seq: &Sequences<F>) -> Result<()> {
        let d = self.lstm.d_in;
        if seq.batch == 0 {
            bail!("inputs hold no sequence (B = 0)");
        }
        if seq.inputs.len() != seq.batch * seq.steps * d {
            bail!(
                "inputs have {} values; expected (B, T, d_in) = ({}, {}, {d})",
                seq.inputs.len(),
                seq.batch,
                seq.steps
            );
        }
        if let Some(i) = seq.inputs.iter().position(|v| !(*v).into().is_finite()) {
            let (b, t, k) = (i / (seq.steps * d), (i / d) % seq.steps, i % d);
            bail!(
                "inputs[{b}, {t}, {k}] is not finite ({}); every input must be a finite number",
                seq.inputs[i].into()
            );
        }
        for (name, v) in [("h0", seq.h0), ("c0", seq.c0)] {
            if let Some(v) = v {
                if v.len() != seq.batch * self.lstm.hidden {
                    bail!(
                        "{name} has {} values; expected (B, H) = ({}, {})",
                        v.len(),
                        seq.batch,
                        self.lstm.hidden
                    );
                }
                if v.iter().any(|x| !(*x).into().is_finite()) {
                    bail!("{name} holds a non-finite value");
                }
            }
        }
        Ok(())
    }

    /// The posterior along f64 sequences through the per-step reference: the LSTM and P as
    /// f64 tensors, q_t from [`Laplace::step`], KL from [`Gaussian::kl_to`].
    pub fn filter_f64(&self, cfg: &LaplaceConfig, seq: &Sequences<f64>) -> Result<Trajectory<f64>> {
        self.check(seq)?;
        let dev = Device::Cpu;
        let (hd, n, d, b, steps) = (
            self.lstm.hidden,
            self.proj.features,
            self.lstm.d_in,
            seq.batch,
            seq.steps,
        );
        let lstm = Lstm {
            wx: Tensor::from_slice(&self.lstm.wx, (d, 4 * hd), &dev)?,
            wh: Tensor::from_slice(&self.lstm.wh, (hd, 4 * hd), &dev)?,
            b: Tensor::from_slice(&self.lstm.b, 4 * hd, &dev)?,
            hidden: hd,
        };
        let proj = Linear {
            weight: Tensor::from_slice(&self.proj.weight, (hd, n), &dev)?,
            bias: Tensor::from_slice(&self.proj.bias, n, &dev)?,
        };
        let laplace = Laplace::new(cfg.clone());
        let zeros = vec![0.0; b * hd];
        let mut carry = Carry {
            c: Tensor::from_slice(seq.c0.unwrap_or(&zeros), (b, hd), &dev)?,
            h: Tensor::from_slice(seq.h0.unwrap_or(&zeros), (b, hd), &dev)?,
        };
        let mut out = Trajectory::empty(b, steps, n, hd, cfg.diagonal);
        let mut q = laplace.init(&proj.forward_composed(&carry.h, false)?)?;
        record(&mut out, 0, &q, None, &carry)?;
        let inputs = Tensor::from_slice(seq.inputs, (b, steps, d), &dev)?;
        let keep = laplace.history_window();
        let mut window: VecDeque<Tensor> = VecDeque::new();
        for t in 0..steps {
            let x = inputs.narrow(1, t, 1)?.squeeze(1)?;
            carry = lstm.step(&x, &carry)?;
            let phi = proj.forward_composed(&carry.h, false)?;
            let slice = super::slide_window(&mut window, x, keep);
            let input = StepInput {
                phi: &phi,
                carry: &carry,
                lstm: &lstm,
                proj: &proj,
                window: &slice,
            };
            let next = laplace.step(&input, &q)?;
            let kl = next.kl_to(&q)?.context("a Laplace posterior has a KL")?;
            record(&mut out, t + 1, &next, Some(&kl), &carry)?;
            q = next;
        }
        Ok(out)
    }

    /// The posterior along f32 sequences through the fast filter ([`LaplaceFilter`], what
    /// training and evaluation use): the LSTM on plain f32 kernels, Λ_t in f64.
    pub fn filter_f32(&self, cfg: &LaplaceConfig, seq: &Sequences<f32>) -> Result<Trajectory<f32>> {
        self.check(seq)?;
        let (hd, n, d, b, steps) = (
            self.lstm.hidden,
            self.proj.features,
            self.lstm.d_in,
            seq.batch,
            seq.steps,
        );
        let g4 = 4 * hd;
        let f32s = |v: &[f64]| -> Vec<f32> { v.iter().map(|x| *x as f32).collect() };
        let (wx, wh, bias, p, pb) = (
            f32s(&self.lstm.wx),
            f32s(&self.lstm.wh),
            f32s(&self.lstm.b),
            f32s(&self.proj.weight),
            f32s(&self.proj.bias),
        );
        let weights = JacobianWeights::new(wh.clone(), p.clone(), hd, n);
        let project = |h: &[f32]| -> Vec<f32> {
            let mut phi = pb.repeat(b);
            sgemm(
                b,
                n,
                hd,
                Mat::rows(h, hd),
                Mat::rows(&p, n),
                &mut phi,
                true,
                true,
            );
            phi
        };
        let mut h = seq.h0.map_or(vec![0f32; b * hd], <[f32]>::to_vec);
        let mut c = seq.c0.map_or(vec![0f32; b * hd], <[f32]>::to_vec);
        let mut out = Trajectory::empty(b, steps, n, hd, cfg.diagonal);
        let mut filter = LaplaceFilter::new(cfg, &project(&h), b, &weights)?;
        out.put(0, Stat::Mean, &filter.means());
        out.put(0, Stat::Precision, &filter.precisions_f32());
        out.put(0, Stat::H, &h);
        out.put(0, Stat::C, &c);
        out.put_scalars(0, &filter.entropy(), None);
        // x W_x + b for every (task, step) at once, (B·T, 4H) in the inputs' order.
        let mut xw_all = bias.repeat(b * steps);
        sgemm(
            b * steps,
            g4,
            d,
            Mat::rows(seq.inputs, d),
            Mat::rows(&wx, g4),
            &mut xw_all,
            true,
            true,
        );
        let (mut xw, mut z) = (vec![0f32; b * g4], vec![0f32; b * g4]);
        for t in 0..steps {
            for k in 0..b {
                let src = &xw_all[(k * steps + t) * g4..(k * steps + t + 1) * g4];
                xw[k * g4..(k + 1) * g4].copy_from_slice(src);
            }
            z.copy_from_slice(&xw);
            sgemm(
                b,
                g4,
                hd,
                Mat::rows(&h, hd),
                Mat::rows(&wh, g4),
                &mut z,
                true,
                true,
            );
            lstm_cells(&mut z, &mut c, &mut h, hd);
            let phi = project(&h);
            let stats = filter.step(&weights, &c, &h, &xw, &phi)?;
            out.put(t + 1, Stat::Mean, &filter.means());
            out.put(t + 1, Stat::Precision, &filter.precisions_f32());
            out.put(t + 1, Stat::H, &h);
            out.put(t + 1, Stat::C, &c);
            out.put_scalars(t + 1, &stats.entropy, Some(&stats.kl));
        }
        Ok(out)
    }
}

/// Step t of the reference path into `out`.
fn record(
    out: &mut Trajectory<f64>,
    t: usize,
    q: &Gaussian,
    kl: Option<&Tensor>,
    carry: &Carry,
) -> Result<()> {
    let Covariance::Precision(p) = &q.cov else {
        bail!("the Laplace family gave a non-Laplace posterior");
    };
    out.put(t, Stat::Mean, &q.mean.flatten_all()?.to_vec1::<f64>()?);
    out.put(t, Stat::Precision, &p.values);
    out.put(t, Stat::H, &carry.h.flatten_all()?.to_vec1::<f64>()?);
    out.put(t, Stat::C, &carry.c.flatten_all()?.to_vec1::<f64>()?);
    let entropy = q.entropy()?.context("a Laplace posterior has an entropy")?;
    let kl = kl.map(|k| k.to_vec1::<f64>()).transpose()?;
    out.put_scalars(t, &entropy, kl.as_deref());
    Ok(())
}
