//! The full VRNN's sample offsets and KL terms over a chunk of posteriors as one op (the
//! replay's path; `Gaussian::sample` and `Gaussian::kl_to` compose the same from tensor ops and
//! are what the tests compare against).
//!
//! A chunk holds the posteriors N(μ_r, U_r diag(e^{s_r}) U_rᵀ) of consecutive steps, step-major
//! with `lag` rows (tasks) per step, so that row r's previous posterior is row r − lag, held
//! fixed by the stop-gradient. Per row the op gives
//! - the sample offsets U (e^{s/2} ∘ ε_k) for the n_Z noise vectors ε_k of the rows that are
//!   sampled (paper Sec. 4, reparameterised samples), and
//! - for rows r ≥ lag, the KL's non-constant terms (paper Eqs. 2–3)
//!   tr(Σ_p⁻¹ Σ) = Σ_ij e^{−s_p,i} R_ij² e^{s_j} with R = U_pᵀ U, and
//!   dᵀ Σ_p⁻¹ d = Σ_i e^{−s_p,i} y_i² with y = U_pᵀ d, d = μ − μ_p.
//!
//! Composed of tensor ops, U would be used by the samples and by the KL through two narrowed
//! views, and R, R∘R and their gradients would be (rows, n, n) tensors in the graph: several
//! such tensors per posterior row at the paper's n = 64, more than the rest of the model. Here
//! U has one consumer, and R is formed per row inside the op, recomputed in the backward and
//! never stored. With g_k the offsets' gradient, x_k = e^{s/2} ∘ ε_k and g the KL terms'
//! gradient, the backward is
//! - Ū = Σ_k g_k x_kᵀ + 2g U_p (diag(e^{−s_p}) R diag(e^s)),
//! - s̄_j = ½ Σ_k (Uᵀ g_k)_j x_k,j + g e^{s_j} Σ_i e^{−s_p,i} R_ij²,
//! - d̄ = 2g U_p (e^{−s_p} ∘ y),
//!
//! and nothing flows to the previous rows' U_p and s_p.

use crate::nn::cpu_op::{CpuOp, Fused, Gradients, Input, Output, with_values};
use crate::nn::kernels::{Mat, sgemm};
use anyhow::{Result, bail};
use candle_core::{CpuStorage::F32, DType, Shape, Tensor};
use rayon::prelude::*;
use std::ops::Range;

/// The noise of the sampled rows of a chunk.
pub struct ChunkNoise {
    /// The sampled rows (a range of the chunk's rows).
    pub rows: Range<usize>,
    /// n_Z, the noise vectors per row.
    pub samples: usize,
    /// ε per sampled row, sample and coordinate, row-major ((rows.len(), n_Z, n)).
    pub eps: Vec<f32>,
}

impl ChunkNoise {
    /// No sampled rows: the op gives the KL terms only.
    pub fn none() -> Self {
        Self {
            rows: 0..0,
            samples: 0,
            eps: vec![],
        }
    }
}

/// For u (R, n, n), log_s (R, n) and d (R, n) with gradient (d = μ_r − μ_{r−lag}, its first
/// `lag` rows unused): a (R, n_Z·n + 1) tensor whose row r holds the sample offsets
/// U_r (e^{s_r/2} ∘ ε_k) for k = 1..n_Z (zero for rows that `noise` does not sample) and then
/// tr(Σ_p⁻¹ Σ_r) + dᵀ Σ_p⁻¹ d against row r − lag (zero for r < lag). f32 only.
pub fn spectral_chunk(
    u: &Tensor,
    log_s: &Tensor,
    d: &Tensor,
    noise: ChunkNoise,
    lag: usize,
) -> Result<Tensor> {
    let (rows, n, n2) = u.dims3()?;
    let fits = |t: &Tensor, dims: &[usize]| t.dims() == dims && t.dtype() == DType::F32;
    if n != n2 || !fits(u, &[rows, n, n]) || !fits(log_s, &[rows, n]) || !fits(d, &[rows, n]) {
        bail!(
            "spectral chunk: f32 u {:?}, log_s {:?}, d {:?} do not fit (R, n, n) / (R, n)",
            u.dims(),
            log_s.dims(),
            d.dims(),
        );
    }
    let ChunkNoise {
        rows: ref sampled,
        samples,
        ref eps,
    } = noise;
    if sampled.end > rows || eps.len() != sampled.len() * samples * n || lag == 0 {
        bail!(
            "spectral chunk: noise for rows {sampled:?} ({} values for {samples} samples) or lag {lag} does not fit {rows} rows of n = {n}",
            eps.len()
        );
    }
    Ok(u.apply_op3(log_s, d, Fused(SpectralChunk { noise, lag }))?)
}

struct SpectralChunk {
    noise: ChunkNoise,
    lag: usize,
}

/// One row's numbers, contiguous.
struct Row<'a> {
    /// U (n×n).
    u: &'a [f32],
    /// s, the log-variances (n).
    s: &'a [f32],
    /// d = μ − μ_p (n).
    d: &'a [f32],
    /// ε_1 … ε_{n_Z} (n_Z·n) when the row is sampled.
    eps: Option<&'a [f32]>,
    /// The previous posterior, held fixed: U_p (n×n) and w = e^{−s_p} (n); None for the first
    /// step of the chunk.
    prev: Option<(&'a [f32], Vec<f32>)>,
}

impl Row<'_> {
    /// R = U_pᵀ U into `r` (n×n).
    fn product(&self, u_prev: &[f32], n: usize, r: &mut [f32]) {
        sgemm(
            n,
            n,
            n,
            Mat::rows_t(u_prev, n),
            Mat::rows(self.u, n),
            r,
            false,
            false,
        );
    }

    /// y = U_pᵀ d.
    fn projected(&self, u_prev: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0f32; n];
        for (i, di) in self.d.iter().enumerate() {
            let row = &u_prev[i * n..(i + 1) * n];
            y.iter_mut().zip(row).for_each(|(y, u)| *y += u * di);
        }
        y
    }

    /// The scaled noise x_k = e^{s/2} ∘ ε_k of every sample, (n_Z·n).
    fn scaled_noise(&self) -> Vec<f32> {
        let half: Vec<f32> = self.s.iter().map(|s| (0.5 * s).exp()).collect();
        let eps = self.eps.unwrap_or(&[]);
        eps.chunks(half.len().max(1))
            .flat_map(|e| e.iter().zip(&half).map(|(e, h)| e * h))
            .collect()
    }
}

/// The backward's outputs: Ū (R·n·n), s̄ (R·n), d̄ (R·n).
struct Grads<'a> {
    u: &'a mut [f32],
    s: &'a mut [f32],
    d: &'a mut [f32],
}

impl SpectralChunk {
    /// Row k of the chunk given the values of u, s and d.
    fn row<'a>(
        &'a self,
        (u, s, d): (&'a [f32], &'a [f32], &'a [f32]),
        n: usize,
        k: usize,
    ) -> Row<'a> {
        let (nn, nz, lag) = (n * n, self.noise.samples, self.lag);
        let sampled = &self.noise.rows;
        Row {
            u: &u[k * nn..(k + 1) * nn],
            s: &s[k * n..(k + 1) * n],
            d: &d[k * n..(k + 1) * n],
            eps: sampled.contains(&k).then(|| {
                let at = (k - sampled.start) * nz * n;
                &self.noise.eps[at..at + nz * n]
            }),
            prev: (k >= lag).then(|| {
                let p = k - lag;
                let inv = s[p * n..(p + 1) * n].iter().map(|v| (-v).exp()).collect();
                (&u[p * nn..(p + 1) * nn], inv)
            }),
        }
    }

    /// Runs `f(row index, row, out chunk)` for every row, in parallel when threads allow.
    fn for_rows(
        &self,
        values: (&[f32], &[f32], &[f32]),
        n: usize,
        out: &mut [f32],
        width: usize,
        f: impl Fn(usize, &Row, &mut [f32]) + Sync,
    ) {
        let work = |(k, o): (usize, &mut [f32])| f(k, &self.row(values, n, k), o);
        if candle_core::utils::get_num_threads() > 1 {
            out.par_chunks_mut(width).enumerate().for_each(work);
        } else {
            out.chunks_mut(width).enumerate().for_each(work);
        }
    }

    /// As [`SpectralChunk::for_rows`], writing row k's Ū, s̄ and d̄.
    #[allow(clippy::type_complexity)]
    fn for_rows_grad(
        &self,
        values: (&[f32], &[f32], &[f32]),
        n: usize,
        out: Grads,
        f: impl Fn(usize, &Row, (&mut [f32], &mut [f32], &mut [f32])) + Sync,
    ) {
        let work = |(k, ((gu, gs), gd)): (usize, ((&mut [f32], &mut [f32]), &mut [f32]))| {
            f(k, &self.row(values, n, k), (gu, gs, gd))
        };
        if candle_core::utils::get_num_threads() > 1 {
            let u = out.u.par_chunks_mut(n * n);
            u.zip(out.s.par_chunks_mut(n))
                .zip(out.d.par_chunks_mut(n))
                .enumerate()
                .for_each(work);
        } else {
            let u = out.u.chunks_mut(n * n);
            u.zip(out.s.chunks_mut(n))
                .zip(out.d.chunks_mut(n))
                .enumerate()
                .for_each(work);
        }
    }
}

impl CpuOp<3> for SpectralChunk {
    fn name(&self) -> &'static str {
        "spectral-chunk"
    }

    fn forward(&self, [u, s, d]: [Input; 3]) -> Output {
        let (rows, n, _) = u.shape().dims3()?;
        let (u, s, d) = (u.values()?, s.values()?, d.values()?);
        let width = self.noise.samples * n + 1;
        let mut out = vec![0f32; rows * width];
        self.for_rows((&u, &s, &d), n, &mut out, width, |_, row, o| {
            let (offsets, terms) = o.split_at_mut(width - 1);
            // U x_k for every sample: x_k is a row of X (n_Z × n), so the offsets are X Uᵀ.
            let x = row.scaled_noise();
            for (ok, xk) in offsets.chunks_mut(n).zip(x.chunks(n)) {
                for (oi, ui) in ok.iter_mut().zip(row.u.chunks(n)) {
                    *oi = ui.iter().zip(xk).map(|(u, x)| u * x).sum();
                }
            }
            let Some((u_prev, inv_prev)) = &row.prev else {
                return;
            };
            let mut r = vec![0f32; n * n];
            row.product(u_prev, n, &mut r);
            let v: Vec<f32> = row.s.iter().map(|s| s.exp()).collect();
            let mut trace = 0f32;
            for (i, w) in inv_prev.iter().enumerate() {
                let ri = &r[i * n..(i + 1) * n];
                trace += w * ri.iter().zip(&v).map(|(r, v)| r * r * v).sum::<f32>();
            }
            let y = row.projected(u_prev, n);
            let quad: f32 = y.iter().zip(inv_prev).map(|(y, w)| w * y * y).sum();
            terms[0] = trace + quad;
        });
        Ok((F32(out), Shape::from((rows, width))))
    }

    fn backward(&self, [u, log_s, d]: [&Tensor; 3], _y: &Tensor, grad: &Tensor) -> Gradients<3> {
        let (rows, n, _) = u.dims3()?;
        with_values([u, log_s, d, grad], |[uv, sv, dv, gv]| {
            self.gradients(rows, n, (uv, sv, dv), gv, u.device())
        })
    }
}

impl SpectralChunk {
    /// [`CpuOp::backward`] on the inputs' values (U, s, d) and the output gradient `gv`.
    fn gradients(
        &self,
        rows: usize,
        n: usize,
        (uv, sv, dv): (&[f32], &[f32], &[f32]),
        gv: &[f32],
        dev: &candle_core::Device,
    ) -> Gradients<3> {
        let out_width = self.noise.samples * n + 1;
        let nn = n * n;
        let (mut gu, mut gsv, mut gdv) = (
            vec![0f32; rows * nn],
            vec![0f32; rows * n],
            vec![0f32; rows * n],
        );
        let out = Grads {
            u: &mut gu,
            s: &mut gsv,
            d: &mut gdv,
        };
        self.for_rows_grad((uv, sv, dv), n, out, |k, row, (gu, gs, gd)| {
            let (g_offsets, g) = gv[k * out_width..(k + 1) * out_width].split_at(out_width - 1);
            // The offsets U x_k: Ū += g_k x_kᵀ, s̄_j += ½ (Uᵀ g_k)_j x_k,j.
            let x = row.scaled_noise();
            for (gk, xk) in g_offsets.chunks(n).zip(x.chunks(n)) {
                let mut t = vec![0f32; n];
                for ((gui, ui), gki) in gu.chunks_mut(n).zip(row.u.chunks(n)).zip(gk) {
                    gui.iter_mut().zip(xk).for_each(|(g, x)| *g += gki * x);
                    t.iter_mut().zip(ui).for_each(|(t, u)| *t += u * gki);
                }
                gs.iter_mut()
                    .zip(t.iter().zip(xk))
                    .for_each(|(g, (t, x))| *g += 0.5 * t * x);
            }
            let Some((u_prev, inv_prev)) = &row.prev else {
                return;
            };
            let g = g[0];
            let mut r = vec![0f32; nn];
            row.product(u_prev, n, &mut r);
            let v: Vec<f32> = row.s.iter().map(|s| s.exp()).collect();
            // s̄_j += g e^{s_j} Σ_i w_i R_ij², then R ← 2g diag(w) R diag(e^s).
            let mut sums = vec![0f32; n];
            for (i, w) in inv_prev.iter().enumerate() {
                let ri = &mut r[i * n..(i + 1) * n];
                for ((x, sj), vj) in ri.iter_mut().zip(sums.iter_mut()).zip(&v) {
                    *sj += w * *x * *x;
                    *x *= 2.0 * g * w * vj;
                }
            }
            gs.iter_mut()
                .zip(sums.iter().zip(&v))
                .for_each(|(x, (sj, vj))| *x += g * vj * sj);
            // Ū += U_p · (2g diag(w) R diag(e^s)).
            sgemm(
                n,
                n,
                n,
                Mat::rows(u_prev, n),
                Mat::rows(&r, n),
                gu,
                true,
                false,
            );
            // d̄ = 2g U_p (w ∘ y).
            let y = row.projected(u_prev, n);
            for (i, gdi) in gd.iter_mut().enumerate() {
                let ui = &u_prev[i * n..(i + 1) * n];
                *gdi = 2.0
                    * g
                    * ui.iter()
                        .zip(&y)
                        .zip(inv_prev)
                        .map(|((u, y), w)| u * w * y)
                        .sum::<f32>();
            }
        });
        Ok([
            Some(Tensor::from_vec(gu, (rows, n, n), dev)?),
            Some(Tensor::from_vec(gsv, (rows, n), dev)?),
            Some(Tensor::from_vec(gdv, (rows, n), dev)?),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::cayley_lower;
    use crate::posterior::{Covariance, Gaussian};
    use candle_core::{D, Device, Var};

    /// The fused chunk against `Gaussian::sample` and `Gaussian::kl_to` on the same rows (the
    /// KL minus its log-determinant and constant parts), value and every gradient; the
    /// previous rows are held fixed in both.
    #[test]
    fn fused_chunk_matches_the_composed_samples_and_kl_with_gradients() -> Result<()> {
        let (steps, lag, n, nz) = (3, 2, 5, 2);
        let rows = steps * lag;
        let sampled = 1..5;
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
        let eps = raw(0.4, &[nz, sampled.len(), n])?; // as `Gaussian::sample` takes it
        let weights = raw(0.7, &[rows, nz * n + 1])?;

        let u = cayley_lower(tri.as_tensor())?;
        let mu = mean.as_tensor();
        let prev_mean = mu.narrow(0, 0, rows - lag)?.detach();
        let d = Tensor::cat(
            &[
                Tensor::zeros((lag, n), DType::F32, &dev)?,
                mu.narrow(0, lag, rows - lag)?.sub(&prev_mean)?,
            ],
            0,
        )?;
        let noise = ChunkNoise {
            rows: sampled.clone(),
            samples: nz,
            eps: eps.permute((1, 0, 2))?.flatten_all()?.to_vec1()?,
        };
        let fused = spectral_chunk(&u, log_s.as_tensor(), &d, noise, lag)?;

        let gaussian = |mean: Tensor, u: Tensor, log_s: Tensor| Gaussian {
            mean,
            cov: Covariance::Spectral { u: Some(u), log_s },
        };
        let part = |t: &Tensor, from: usize, len: usize| t.narrow(0, from, len);
        let (s, m) = (sampled.start, sampled.len());
        let zero_mean = Tensor::zeros((m, n), DType::F32, &dev)?;
        let sampling = gaussian(zero_mean, part(&u, s, m)?, part(log_s.as_tensor(), s, m)?);
        let offsets = sampling
            .sample(&eps)?
            .permute((1, 0, 2))?
            .reshape((m, nz * n))?;
        let offsets = Tensor::cat(
            &[
                Tensor::zeros((s, nz * n), DType::F32, &dev)?,
                offsets,
                Tensor::zeros((rows - sampled.end, nz * n), DType::F32, &dev)?,
            ],
            0,
        )?;
        let k = rows - lag;
        let (s_cur, s_prev) = (
            part(log_s.as_tensor(), lag, k)?,
            part(log_s.as_tensor(), 0, k)?.detach(),
        );
        let cur = gaussian(part(mu, lag, k)?, part(&u, lag, k)?, s_cur.clone());
        let prev = gaussian(prev_mean, part(&u, 0, k)?.detach(), s_prev.clone());
        let kl = cur.kl_to(&prev)?.expect("a VRNN KL");
        // 2 KL + n − (Σ s_p − Σ s) = trace + quadratic form.
        let logdet = s_prev.sum(D::Minus1)?.sub(&s_cur.sum(D::Minus1)?)?;
        let terms = ((kl * 2.0)? - logdet)?.affine(1.0, n as f64)?;
        let terms = Tensor::cat(&[Tensor::zeros(lag, DType::F32, &dev)?, terms], 0)?;
        let composed = Tensor::cat(&[offsets, terms.unsqueeze(1)?], 1)?;

        let close = |a: &[f32], b: &[f32], what: &str| {
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                    "{what}: {a:?} vs {b:?}"
                );
            }
        };
        close(
            &fused.flatten_all()?.to_vec1()?,
            &composed.flatten_all()?.to_vec1()?,
            "value",
        );
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
        let err = spectral_chunk(
            &z(&[2, 3, 3]),
            &z(&[2, 3]),
            &z(&[2, 4]),
            ChunkNoise::none(),
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("d [2, 4]"), "{err}");
        let noise = ChunkNoise {
            rows: 1..3,
            samples: 1,
            eps: vec![0.0; 6],
        };
        let err = spectral_chunk(&z(&[2, 3, 3]), &z(&[2, 3]), &z(&[2, 3]), noise, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rows 1..3"), "{err}");
    }
}
