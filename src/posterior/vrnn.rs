//! The VRNN baseline (paper App. B.2): a linear head maps φ_t to (μ_t, s_t, L_t) with L_t
//! strictly lower triangular; A = L − Lᵀ is skew-symmetric, U = (I − A)(I + A)⁻¹ (Cayley map) is
//! orthogonal, and Σ_t = U diag(exp s_t) Uᵀ. The diagonal variant uses Σ_t = diag(exp s_t).
//! Fully differentiable; means and covariances are not accumulated.
//!
//! Parameters: `vrnn.mean` (n→n), `vrnn.log_s` (n→n) and, for the full variant, `vrnn.tri`
//! (n→n·n, of which only the strictly-lower entries of the reshaped (n, n) output are used).

use super::{Covariance, Gaussian, KnownCayley, PosteriorFamily, StepInput};
use crate::linalg::{self, map_items};
use crate::nn::Params;
use crate::nn::cpu_op::{CpuOp, Fused, Gradients, Input, Output, with_values};
use crate::nn::mlp::{Linear, affine_gradient_values, affine_values};
use anyhow::Result;
use candle_core::{CpuStorage::F32, DType, Shape, Tensor};
use rand_chacha::ChaCha8Rng;

/// Initial log-variance of the VRNN posterior (bias of `vrnn.log_s`).
pub const INIT_LOG_VAR: f64 = -2.0;

/// Floor of the VRNN's log-variances: s_t = max(W φ_t + b, LOG_VAR_MIN), so every eigenvalue
/// of Σ_t is at least e^−6 ≈ 2.5e−3 (the authors' code bounds them to (−10, 2)). Without it an
/// agent acting on samples drives its variance towards 0 — the RL loss prefers no noise — and
/// the KL's mean term ½ Δμᵀ Σ_{t−1}⁻¹ Δμ grows without bound until one update saturates the
/// policy (its entropy exactly 0, the return back to random: results/gridworld-study-v3).
/// μ's scale is free, so the floor bounds the KL's conditioning, not how sharp q_t can be
/// relative to its mean.
pub const LOG_VAR_MIN: f64 = -6.0;

pub struct Vrnn {
    mean: Linear,
    log_s: Linear,
    tri: Option<Linear>,
    pub diagonal: bool,
}

impl Vrnn {
    pub fn new(p: &mut Params, n: usize, diagonal: bool, rng: &mut ChaCha8Rng) -> Result<Self> {
        let mean = Linear::new(p, "vrnn.mean", n, n, rng)?;
        // Small initial weights (U ≈ I) and an initial variance of e^{INIT_LOG_VAR}: the model
        // starts close to its point estimate rather than drowning φ in unit noise.
        let log_s = Linear::with_init(
            p,
            "vrnn.log_s",
            n,
            n,
            0.1 / (n as f64).sqrt(),
            INIT_LOG_VAR as f32,
            rng,
        )?;
        let tri = if diagonal {
            None
        } else {
            Some(Linear::with_bound(
                p,
                "vrnn.tri",
                n,
                n * n,
                0.1 / (n as f64).sqrt(),
                rng,
            )?)
        };
        Ok(Self {
            mean,
            log_s,
            tri,
            diagonal,
        })
    }

    /// (μ, s, L) ↦ N(μ, U diag(exp s) Uᵀ), with U taken from `known` where given.
    fn head(&self, phi: &Tensor, known: Option<KnownCayley>) -> Result<Gaussian> {
        let mean = self.mean.forward(phi)?;
        let log_s = self.log_s.forward(phi)?.maximum(LOG_VAR_MIN)?;
        let u = match &self.tri {
            None => None,
            Some(tri) if phi.dtype() == DType::F32 => Some(cayley_head(phi, tri, known)?),
            Some(tri) => {
                let (b, n) = phi.dims2()?;
                // The fused op reads only the strictly lower part of the head's output.
                Some(linalg::cayley_lower(
                    &tri.forward(phi)?.reshape((b, n, n))?,
                )?)
            }
        };
        Ok(Gaussian {
            mean,
            cov: Covariance::Spectral { u, log_s },
        })
    }
}

/// U = cayley_lower(φ W + b) for the `vrnn.tri` layer (W, b) as one op (f32): the same as the
/// layer followed by [`linalg::cayley_lower`], but the graph keeps φ and U only, not the
/// layer's (B, n²) output, which a separate Cayley op would hold as its input (a (B, n, n)
/// tensor per posterior row: the largest at the paper's n = 64). The backward forms the
/// layer's output gradient T̄ from U alone (`linalg::cayley_backward_f32`) and then
/// φ̄ = T̄ Wᵀ, W̄ = φᵀ T̄, b̄ = Σ_rows T̄.
///
/// With `known` U (the rollout's U at the same parameters, `agent::rl::HeadTraces`), the
/// forward only copies it: the loss pass then runs neither the layer nor the map forward.
pub fn cayley_head(phi: &Tensor, tri: &Linear, known: Option<KnownCayley>) -> Result<Tensor> {
    Ok(phi.apply_op3(&tri.weight, &tri.bias, Fused(CayleyHead { known }))?)
}

struct CayleyHead {
    known: Option<KnownCayley>,
}

impl CpuOp<3> for CayleyHead {
    fn name(&self) -> &'static str {
        "vrnn-cayley-head"
    }

    fn forward(&self, [x, w, b]: [Input; 3]) -> Output {
        let (rows, d) = x.shape().dims2()?;
        let (d2, nn) = w.shape().dims2()?;
        let n = (nn as f64).sqrt().round() as usize;
        if d != d2 || n * n != nn || b.shape().elem_count() != nn {
            candle_core::bail!(
                "vrnn cayley head: φ {:?} · W {:?} + b {:?} is not (B, n²) for a square n",
                x.dims(),
                w.dims(),
                b.dims()
            );
        }
        if let Some(KnownCayley { steps, range }) = &self.known {
            let known = steps.get(range.clone()).unwrap_or_default();
            let count: usize = known.iter().map(|u| u.elem_count()).sum();
            if known.len() != range.len() || count != rows * nn {
                candle_core::bail!(
                    "vrnn cayley head: known U of steps {range:?} of {} ({count} values) for {rows} rows of n = {n}",
                    steps.len()
                );
            }
            let mut u = Vec::with_capacity(count);
            for step in known {
                with_values([step], |[v]| {
                    u.extend_from_slice(v);
                    Ok(())
                })?;
            }
            return Ok((F32(u), Shape::from((rows, n, n))));
        }
        let (x, w, b) = (x.values()?, w.values()?, b.values()?);
        let lower = LowerColumns::new(n);
        let m = lower.len();
        let t = affine_values(
            &x,
            &lower.gather(&w, d),
            &lower.gather(&b, 1),
            (rows, d, m),
            |z| z,
        );
        let u = map_items(rows, nn, |i, out| {
            linalg::cayley_packed_lower_f32(&t[i * m..(i + 1) * m], n, out, i, rows)
        })?;
        Ok((F32(u), Shape::from((rows, n, n))))
    }

    fn backward(&self, [x, w, _b]: [&Tensor; 3], u: &Tensor, grad: &Tensor) -> Gradients<3> {
        let (rows, d) = x.dims2()?;
        let (_, n, _) = u.dims3()?;
        let nn = n * n;
        let lower = LowerColumns::new(n);
        let m = lower.len();
        let gt = with_values([u, grad], |[uv, gv]| {
            map_items(rows, m, |i, out| {
                let item = i * nn..(i + 1) * nn;
                // Rows that only serve as the previous posterior of the next step (the first
                // step of a replay chunk) have no gradient: T̄ = 0, which `out` already holds.
                if gv[item.clone()].iter().any(|g| *g != 0.0) {
                    linalg::cayley_backward_packed_lower_f32(&uv[item.clone()], &gv[item], n, out);
                }
                Ok(())
            })
        })?;
        let (gx, gw, gb) = with_values([x, w], |[xv, wv]| {
            let w = lower.gather(wv, d);
            Ok(affine_gradient_values(xv, &w, &gt, (rows, d, m), true))
        })?;
        let dev = x.device();
        Ok([
            Some(Tensor::from_vec(gx, (rows, d), dev)?),
            Some(Tensor::from_vec(lower.scatter(&gw, d), (d, nn), dev)?),
            Some(Tensor::from_vec(lower.scatter(&gb, 1), nn, dev)?),
        ])
    }
}

/// The columns of the `vrnn.tri` layer's (n·n) outputs that the Cayley map reads: the strictly
/// lower entries (i, j), j < i, row by row, n(n − 1)/2 of them (`linalg::pack_strict_lower`).
/// The head computes only these (half the layer's multiply-adds); the other columns'
/// gradients are zero.
struct LowerColumns {
    n: usize,
}

impl LowerColumns {
    fn new(n: usize) -> Self {
        Self { n }
    }

    fn len(&self) -> usize {
        linalg::strict_lower_len(self.n)
    }

    /// The used columns of `rows` rows of n·n values, (rows, n(n − 1)/2).
    fn gather(&self, full: &[f32], rows: usize) -> Vec<f32> {
        let (nn, m) = (self.n * self.n, self.len());
        let mut packed = vec![0f32; rows * m];
        if m > 0 {
            for (p, block) in packed.chunks_mut(m).zip(full.chunks(nn)) {
                linalg::pack_strict_lower(block, self.n, p);
            }
        }
        packed
    }

    /// The inverse of [`LowerColumns::gather`]: (rows, n·n) with zeros in the unused columns.
    fn scatter(&self, packed: &[f32], rows: usize) -> Vec<f32> {
        let (nn, m) = (self.n * self.n, self.len());
        let mut full = vec![0f32; rows * nn];
        if m > 0 {
            for (block, p) in full.chunks_mut(nn).zip(packed.chunks(m)) {
                linalg::unpack_strict_lower(p, self.n, block);
            }
        }
        full
    }
}

/// The Cayley map U = (I − A)(I + A)⁻¹ of a batch of skew-symmetric A (B, n, n): orthogonal.
/// Composed of plain tensor ops: the reference the fused [`linalg::cayley_lower`] (which the
/// head uses) is tested against.
pub fn cayley(a: &Tensor, eye: &Tensor) -> Result<Tensor> {
    let inv = linalg::inverse(&a.broadcast_add(eye)?)?;
    Ok(a.neg()?.broadcast_add(eye)?.matmul(&inv)?)
}

impl PosteriorFamily for Vrnn {
    fn name(&self) -> String {
        if self.diagonal {
            "vrnn-diag".into()
        } else {
            "vrnn-full".into()
        }
    }

    fn init(&self, phi0: &Tensor) -> Result<Gaussian> {
        self.head(phi0, None)
    }

    fn init_known(&self, phi0: &Tensor, known: KnownCayley) -> Result<Gaussian> {
        self.head(phi0, Some(known))
    }

    fn step(&self, input: &StepInput, _prev: &Gaussian) -> Result<Gaussian> {
        self.head(input.phi, None)
    }

    fn full_spectral(&self) -> bool {
        !self.diagonal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::SeedableRng;

    /// The fused head against the layer followed by the Cayley op: values and the gradients of
    /// φ, W and b.
    #[test]
    fn fused_cayley_head_matches_the_layer_then_the_map() -> Result<()> {
        let (rows, n) = (6, 5);
        let mut p = Params::new();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let tri = Linear::with_bound(&mut p, "tri", n, n * n, 0.8, &mut rng)?;
        let bias = Var::from_tensor(&Tensor::randn(0f32, 0.3, n * n, &Device::Cpu)?)?;
        let tri = Linear {
            weight: tri.weight.clone(),
            bias: bias.as_tensor().clone(),
        };
        let phi = Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, n), &Device::Cpu)?)?;
        let weights = Tensor::randn(0f32, 1.0, (rows, n, n), &Device::Cpu)?;
        let fused = cayley_head(phi.as_tensor(), &tri, None)?;
        let composed = linalg::cayley_lower(&tri.forward(phi.as_tensor())?.reshape((rows, n, n))?)?;
        let values = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1()?) };
        let close = |a: Vec<f32>, b: Vec<f32>, what: &str| {
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= 2e-5 * y.abs().max(1.0),
                    "{what}: {x} vs {y}"
                );
            }
        };
        close(values(&fused)?, values(&composed)?, "U");
        let gf = fused.mul(&weights)?.sum_all()?.backward()?;
        let gc = composed.mul(&weights)?.sum_all()?.backward()?;
        let w = p.get("tri.weight").expect("the layer weight");
        for (t, what) in [
            (phi.as_tensor(), "φ"),
            (w.as_tensor(), "W"),
            (bias.as_tensor(), "b"),
        ] {
            close(
                values(gf.get(t).expect(what))?,
                values(gc.get(t).expect(what))?,
                what,
            );
        }
        Ok(())
    }
}
