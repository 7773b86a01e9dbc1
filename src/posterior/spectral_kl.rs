//! The full VRNN's KL terms as one op (the replay's path; `Gaussian::kl_to` composes the same
//! from tensor ops and is what the tests compare against).
//!
//! For the current posterior N(μ, U diag(e^s) Uᵀ) and the previous one N(μ_p, U_p diag(e^{s_p})
//! U_pᵀ), held fixed by the stop-gradient, the KL of paper Eqs. 2–3 needs per row
//! - the trace tr(Σ_p⁻¹ Σ) = Σ_ij e^{−s_p,i} R_ij² e^{s_j} with R = U_pᵀ U, and
//! - the quadratic form dᵀ Σ_p⁻¹ d = Σ_i e^{−s_p,i} y_i² with y = U_pᵀ d, d = μ − μ_p.
//!
//! Composed of tensor ops, R, R∘R and their gradients are (rows, n, n) tensors in the graph:
//! ~5 of them per posterior row at the paper's n = 64, more than the rest of the model. Here
//! R is formed per row inside the op, recomputed in the backward, and never stored. With
//! g the output's gradient, the backward is
//! - Ū = 2g U_p (diag(e^{−s_p}) R diag(e^s)),
//! - s̄_j = g e^{s_j} Σ_i e^{−s_p,i} R_ij²,
//! - d̄ = 2g U_p (e^{−s_p} ∘ y).

use crate::linalg::logical;
use crate::nn::kernels::{Mat, sgemm};
use crate::nn::mlp::f32_values;
use anyhow::{Result, bail};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// tr(Σ_p⁻¹ Σ) + dᵀ Σ_p⁻¹ d per row for u (R, n, n), log_s (R, n), d (R, n) with gradient, and
/// the previous posterior's u_prev (R, n, n) and log_s_prev (R, n) as constants. f32 only.
pub fn spectral_kl_terms(
    u: &Tensor,
    log_s: &Tensor,
    d: &Tensor,
    u_prev: &Tensor,
    log_s_prev: &Tensor,
) -> Result<Tensor> {
    let (rows, n, n2) = u.dims3()?;
    let fits = |t: &Tensor, dims: &[usize]| t.dims() == dims && t.dtype() == DType::F32;
    if n != n2
        || !fits(u, &[rows, n, n])
        || !fits(log_s, &[rows, n])
        || !fits(d, &[rows, n])
        || !fits(u_prev, &[rows, n, n])
        || !fits(log_s_prev, &[rows, n])
    {
        bail!(
            "spectral KL terms: f32 u {:?}, log_s {:?}, d {:?}, u_prev {:?}, log_s_prev {:?} do not fit (R, n, n) / (R, n)",
            u.dims(),
            log_s.dims(),
            d.dims(),
            u_prev.dims(),
            log_s_prev.dims()
        );
    }
    let op = SpectralKl {
        u_prev: u_prev.detach(),
        log_s_prev: log_s_prev.detach(),
    };
    Ok(u.apply_op3(log_s, d, op)?)
}

struct SpectralKl {
    u_prev: Tensor,
    log_s_prev: Tensor,
}

/// One row's numbers, contiguous.
struct Row<'a> {
    /// U (n×n).
    u: &'a [f32],
    /// s, the log-variances (n).
    s: &'a [f32],
    /// d = μ − μ_p (n).
    d: &'a [f32],
    /// U_p (n×n), held fixed.
    u_prev: &'a [f32],
    /// w = e^{−s_p} (n), held fixed.
    inv_prev: Vec<f32>,
}

impl Row<'_> {
    /// R = U_pᵀ U into `r` (n×n).
    fn product(&self, n: usize, r: &mut [f32]) {
        sgemm(
            n,
            n,
            n,
            Mat::rows_t(self.u_prev, n),
            Mat::rows(self.u, n),
            r,
            false,
            false,
        );
    }

    /// y = U_pᵀ d.
    fn projected(&self, n: usize) -> Vec<f32> {
        let mut y = vec![0f32; n];
        for (i, di) in self.d.iter().enumerate() {
            let row = &self.u_prev[i * n..(i + 1) * n];
            y.iter_mut().zip(row).for_each(|(y, u)| *y += u * di);
        }
        y
    }
}

impl SpectralKl {
    /// Runs `f(row index, row, out chunk)` for every row, in parallel when threads allow.
    fn for_rows(
        &self,
        (u, s, d): (&[f32], &[f32], &[f32]),
        n: usize,
        out: &mut [f32],
        width: usize,
        f: impl Fn(usize, &Row, &mut [f32]) + Sync,
    ) -> candle_core::Result<()> {
        let (ps, pl) = self.u_prev.storage_and_layout();
        let u_prev = f32_values(&ps, pl)?;
        let (ss, sl) = self.log_s_prev.storage_and_layout();
        let s_prev = f32_values(&ss, sl)?;
        let nn = n * n;
        let work = |(k, o): (usize, &mut [f32])| {
            let row = Row {
                u: &u[k * nn..(k + 1) * nn],
                s: &s[k * n..(k + 1) * n],
                d: &d[k * n..(k + 1) * n],
                u_prev: &u_prev[k * nn..(k + 1) * nn],
                inv_prev: s_prev[k * n..(k + 1) * n]
                    .iter()
                    .map(|v| (-v).exp())
                    .collect(),
            };
            f(k, &row, o)
        };
        if candle_core::utils::get_num_threads() > 1 {
            out.par_chunks_mut(width).enumerate().for_each(work);
        } else {
            out.chunks_mut(width).enumerate().for_each(work);
        }
        Ok(())
    }
}

impl CustomOp3 for SpectralKl {
    fn name(&self) -> &'static str {
        "spectral-kl-terms"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, n, _) = l1.shape().dims3()?;
        let u = logical(s1.as_slice::<f32>()?, l1);
        let s = logical(s2.as_slice::<f32>()?, l2);
        let d = logical(s3.as_slice::<f32>()?, l3);
        let mut out = vec![0f32; rows];
        self.for_rows((&u, &s, &d), n, &mut out, 1, |_, row, o| {
            let mut r = vec![0f32; n * n];
            row.product(n, &mut r);
            let v: Vec<f32> = row.s.iter().map(|s| s.exp()).collect();
            let mut trace = 0f32;
            for (i, w) in row.inv_prev.iter().enumerate() {
                let ri = &r[i * n..(i + 1) * n];
                trace += w * ri.iter().zip(&v).map(|(r, v)| r * r * v).sum::<f32>();
            }
            let y = row.projected(n);
            let quad: f32 = y.iter().zip(&row.inv_prev).map(|(y, w)| w * y * y).sum();
            o[0] = trace + quad;
        })?;
        Ok((CpuStorage::F32(out), Shape::from(rows)))
    }

    fn bwd(
        &self,
        u: &Tensor,
        log_s: &Tensor,
        d: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, n, _) = u.dims3()?;
        let ((us, ul), (ss, sl)) = (u.storage_and_layout(), log_s.storage_and_layout());
        let ((ds, dl), (gst, gl)) = (d.storage_and_layout(), grad.storage_and_layout());
        let (uv, sv) = (f32_values(&us, ul)?, f32_values(&ss, sl)?);
        let (dv, gv) = (f32_values(&ds, dl)?, f32_values(&gst, gl)?);
        // Per row, packed: Ū (n²), s̄ (n), d̄ (n).
        let nn = n * n;
        let width = nn + 2 * n;
        let mut packed = vec![0f32; rows * width];
        self.for_rows((&uv, &sv, &dv), n, &mut packed, width, |k, row, o| {
            let g = gv[k];
            let (gu, rest) = o.split_at_mut(nn);
            let (gs, gd) = rest.split_at_mut(n);
            let mut r = vec![0f32; nn];
            row.product(n, &mut r);
            let v: Vec<f32> = row.s.iter().map(|s| s.exp()).collect();
            // s̄_j = g e^{s_j} Σ_i w_i R_ij², then R ← 2g diag(w) R diag(e^s).
            for (i, w) in row.inv_prev.iter().enumerate() {
                let ri = &mut r[i * n..(i + 1) * n];
                for ((x, gsj), vj) in ri.iter_mut().zip(gs.iter_mut()).zip(&v) {
                    *gsj += w * *x * *x;
                    *x *= 2.0 * g * w * vj;
                }
            }
            gs.iter_mut().zip(&v).for_each(|(x, vj)| *x *= g * vj);
            // Ū = U_p · (2g diag(w) R diag(e^s)).
            sgemm(
                n,
                n,
                n,
                Mat::rows(row.u_prev, n),
                Mat::rows(&r, n),
                gu,
                false,
                false,
            );
            // d̄ = 2g U_p (w ∘ y).
            let y = row.projected(n);
            for (i, gdi) in gd.iter_mut().enumerate() {
                let ui = &row.u_prev[i * n..(i + 1) * n];
                *gdi = 2.0
                    * g
                    * ui.iter()
                        .zip(&y)
                        .zip(&row.inv_prev)
                        .map(|((u, y), w)| u * w * y)
                        .sum::<f32>();
            }
        })?;
        let (mut gu, mut gsv, mut gdv) = (
            Vec::with_capacity(rows * nn),
            Vec::with_capacity(rows * n),
            Vec::with_capacity(rows * n),
        );
        for o in packed.chunks_exact(width) {
            gu.extend_from_slice(&o[..nn]);
            gsv.extend_from_slice(&o[nn..nn + n]);
            gdv.extend_from_slice(&o[nn + n..]);
        }
        let dev = u.device();
        Ok((
            Some(Tensor::from_vec(gu, (rows, n, n), dev)?),
            Some(Tensor::from_vec(gsv, (rows, n), dev)?),
            Some(Tensor::from_vec(gdv, (rows, n), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::cayley_lower;
    use crate::posterior::{Covariance, Gaussian};
    use candle_core::{D, Device, Var};

    /// The fused terms against the composition in `Gaussian::kl_to` (its KL minus the
    /// log-determinant and constant parts), value and every gradient.
    #[test]
    fn fused_terms_match_the_composed_kl_with_gradients() -> Result<()> {
        let (rows, n) = (7, 5);
        let dev = Device::Cpu;
        let raw = |seed: f32, dims: &[usize]| -> Result<Tensor> {
            let count: usize = dims.iter().product();
            let v: Vec<f32> = (0..count)
                .map(|i| ((i as f32 + 1.0) * 0.731 + seed).sin() * 0.6)
                .collect();
            Ok(Tensor::from_vec(v, dims, &dev)?)
        };
        let tri = Var::from_tensor(&raw(0.1, &[rows, n, n])?)?;
        let log_s = Var::from_tensor(&raw(0.2, &[rows, n])?)?;
        let mean = Var::from_tensor(&raw(0.3, &[rows, n])?)?;
        let u_prev = cayley_lower(&raw(0.4, &[rows, n, n])?)?;
        let (s_prev, mean_prev) = (raw(0.5, &[rows, n])?, raw(0.6, &[rows, n])?);
        let weights = raw(0.7, &[rows])?;

        let u = cayley_lower(tri.as_tensor())?;
        let d = mean.as_tensor().sub(&mean_prev)?;
        let fused = spectral_kl_terms(&u, log_s.as_tensor(), &d, &u_prev, &s_prev)?;

        let gaussian = |mean: &Tensor, u: &Tensor, log_s: &Tensor| Gaussian {
            mean: mean.clone(),
            cov: Covariance::Spectral {
                u: Some(u.clone()),
                log_s: log_s.clone(),
            },
        };
        let cur = gaussian(mean.as_tensor(), &u, log_s.as_tensor());
        let prev = gaussian(&mean_prev, &u_prev, &s_prev);
        let kl = cur.kl_to(&prev)?.expect("a VRNN KL");
        // 2 KL + n − (Σ s_p − Σ s) = trace + quadratic form.
        let logdet = s_prev
            .sum(D::Minus1)?
            .sub(&log_s.as_tensor().sum(D::Minus1)?)?;
        let composed = ((kl * 2.0)? - logdet)?.affine(1.0, n as f64)?;

        let close = |a: &[f32], b: &[f32], what: &str| {
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                    "{what}: {a:?} vs {b:?}"
                );
            }
        };
        close(&fused.to_vec1()?, &composed.to_vec1()?, "value");
        let (gf, gc) = (
            fused.mul(&weights)?.sum_all()?.backward()?,
            composed.mul(&weights)?.sum_all()?.backward()?,
        );
        for (var, what) in [(&tri, "tri"), (&log_s, "log_s"), (&mean, "mean")] {
            let (a, b) = (gf.get(var).expect(what), gc.get(var).expect(what));
            close(
                &a.flatten_all()?.to_vec1()?,
                &b.flatten_all()?.to_vec1()?,
                what,
            );
        }
        Ok(())
    }

    #[test]
    fn mismatched_shapes_name_every_input() {
        let dev = Device::Cpu;
        let z = |dims: &[usize]| Tensor::zeros(dims, DType::F32, &dev).unwrap();
        let err = spectral_kl_terms(
            &z(&[2, 3, 3]),
            &z(&[2, 3]),
            &z(&[2, 4]),
            &z(&[2, 3, 3]),
            &z(&[2, 3]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("d [2, 4]"), "{err}");
    }
}
