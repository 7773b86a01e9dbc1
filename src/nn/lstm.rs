//! The LSTM core (gates i, f, g, o) and the analytic Jacobian of its projected output with
//! respect to the hidden part of the carry, which the Laplace posterior needs (paper Sec. 4,
//! Prop. 2; DESIGN.md "The model").
//!
//! Parameters (checkpoint names, matrices stored (in, out), gate blocks in the order i, f, g, o
//! along the output axis): `core.wx` (d_in, 4H), `core.wh` (H, 4H), `core.b` (4H).
//! z = x·wx + h·wh + b; i, f, o = σ(z_i, z_f, z_o), g = tanh(z_g); c' = f∘c + i∘g; h' = o∘tanh(c').

use super::Params;
use super::mlp::Linear;
use anyhow::Result;
use candle_core::{D, Tensor};
use rand_chacha::ChaCha8Rng;

#[derive(Clone)]
pub struct Lstm {
    pub wx: Tensor,
    pub wh: Tensor,
    pub b: Tensor,
    pub hidden: usize,
}

/// The recurrent carry (c, h), each (B, H).
#[derive(Clone)]
pub struct Carry {
    pub c: Tensor,
    pub h: Tensor,
}

impl Carry {
    pub fn zeros(batch: usize, hidden: usize, device: &candle_core::Device) -> Result<Self> {
        let z = Tensor::zeros((batch, hidden), candle_core::DType::F32, device)?;
        Ok(Self { c: z.clone(), h: z })
    }

    pub fn detach(&self) -> Self {
        Self {
            c: self.c.detach(),
            h: self.h.detach(),
        }
    }
}

/// Gate activations of one step.
struct Gates {
    i: Tensor,
    f: Tensor,
    g: Tensor,
    o: Tensor,
}

impl Lstm {
    pub fn new(p: &mut Params, d_in: usize, hidden: usize, rng: &mut ChaCha8Rng) -> Result<Self> {
        let wx = p.uniform(
            "core.wx",
            &[d_in, 4 * hidden],
            (3.0 / d_in as f64).sqrt(),
            rng,
        )?;
        let wh = p.uniform(
            "core.wh",
            &[hidden, 4 * hidden],
            (3.0 / hidden as f64).sqrt(),
            rng,
        )?;
        let b = p.constant("core.b", &[4 * hidden], 0.0)?;
        Ok(Self { wx, wh, b, hidden })
    }

    fn gates(&self, x: &Tensor, h: &Tensor) -> Result<Gates> {
        let z = x
            .matmul(&self.wx)?
            .add(&h.matmul(&self.wh)?)?
            .broadcast_add(&self.b)?;
        let hd = self.hidden;
        let sig = |k: usize| candle_nn::ops::sigmoid(&z.narrow(D::Minus1, k * hd, hd)?);
        Ok(Gates {
            i: sig(0)?,
            f: sig(1)?,
            g: z.narrow(D::Minus1, 2 * hd, hd)?.tanh()?,
            o: sig(3)?,
        })
    }

    /// One step: (x_t, (c, h)) ↦ (c', h').
    pub fn step(&self, x: &Tensor, carry: &Carry) -> Result<Carry> {
        let Gates { i, f, g, o } = self.gates(x, &carry.h)?;
        let c = f.mul(&carry.c)?.add(&i.mul(&g)?)?;
        let h = o.mul(&c.tanh()?)?;
        Ok(Carry { c, h })
    }

    /// The Jacobian J = ∂ P·h'(x, (c, h)) / ∂h of the projected output of one step applied to
    /// input `x` from carry (c, h), with respect to h only (c held fixed):
    ///
    /// ∂h'/∂h = diag(tanh(c')∘o∘(1−o)) W_ho + diag(o∘(1−tanh²c')) [diag(c∘f∘(1−f)) W_hf +
    ///          diag(g∘i∘(1−i)) W_hi + diag(i∘(1−g²)) W_hg],   J = Pᵀ ∂h'/∂h,
    ///
    /// where W_h· are the recurrent blocks acting as z = h·W (so ∂z_j/∂h_m = W[m, j]).
    /// Computed outside the autograd graph (all inputs are detached): returns (B, n, H).
    /// Implementation: `J[b] = M[b]·whᵀ` with `M[b, k, (gate, j)] = P[j, k]·a_gate[b, j]`, one gemm.
    pub fn output_jacobian(&self, x: &Tensor, carry: &Carry, proj: &Linear) -> Result<Tensor> {
        let (x, c, h) = (x.detach(), carry.c.detach(), carry.h.detach());
        let wh = self.wh.detach();
        let gates = {
            let z = x
                .matmul(&self.wx.detach())?
                .add(&h.matmul(&wh)?)?
                .broadcast_add(&self.b.detach())?;
            let hd = self.hidden;
            let sig = |k: usize| candle_nn::ops::sigmoid(&z.narrow(D::Minus1, k * hd, hd)?);
            Gates {
                i: sig(0)?,
                f: sig(1)?,
                g: z.narrow(D::Minus1, 2 * hd, hd)?.tanh()?,
                o: sig(3)?,
            }
        };
        let Gates { i, f, g, o } = gates;
        let one_minus = |t: &Tensor| -> Result<Tensor> { Ok(t.affine(-1.0, 1.0)?) };
        let c_new = f.mul(&c)?.add(&i.mul(&g)?)?;
        let tc = c_new.tanh()?;
        let a_o = tc.mul(&o)?.mul(&one_minus(&o)?)?;
        let k = o.mul(&one_minus(&tc.sqr()?)?)?;
        let a_f = k.mul(&c)?.mul(&f)?.mul(&one_minus(&f)?)?;
        let a_i = k.mul(&g)?.mul(&i)?.mul(&one_minus(&i)?)?;
        let a_g = k.mul(&i)?.mul(&one_minus(&g.sqr()?)?)?;
        let a = Tensor::cat(&[&a_i, &a_f, &a_g, &a_o], 1)?; // (B, 4H), gate order of wh's columns
        let (batch, hd) = (h.dim(0)?, self.hidden);
        let pt = proj.weight.detach().t()?; // (n, H)
        let n = pt.dim(0)?;
        let pt4 = Tensor::cat(&[&pt, &pt, &pt, &pt], 1)?; // (n, 4H)
        let m = pt4.unsqueeze(0)?.broadcast_mul(&a.unsqueeze(1)?)?; // (B, n, 4H)
        let j = m.reshape((batch * n, 4 * hd))?.matmul(&wh.t()?)?; // (B·n, H)
        Ok(j.reshape((batch, n, hd))?)
    }
}
