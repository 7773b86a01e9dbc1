//! The two shapes of a Laplace precision (paper Table 2, "full" or "diag" covariance): a dense
//! n×n matrix per task, or only its diagonal. Each shape implements the per-task operations that
//! the per-step posterior (`laplace::Precision`) and the filter (`filter`) need — prior, factor,
//! sample offsets, the KL's trace and quadratic form — so neither of them tests a flag.
//!
//! Per task the precision is stored as plain f64 numbers (n² row-major, or n), and so is the
//! factor of Λ̃ = Λ + jitter·I: the Cholesky factor in upper form U = Lᵀ (Λ̃ = Uᵀ U, row-major,
//! see `linalg::upper`), or √(λ + jitter).

use crate::linalg::upper;
use crate::nn::kernels::{Mat, sgemm};
use anyhow::Result;
use candle_core::{D, Tensor};

/// Per-task operations on one shape of precision (see the module documentation).
pub trait PrecisionShape: Send + Sync {
    /// Numbers stored per task: n² (full) or n (diagonal).
    fn size(&self, n: usize) -> usize;

    /// The dimensions of a batch of `batch` precisions as a tensor: (B, n, n) or (B, n).
    fn dims(&self, batch: usize, n: usize) -> Vec<usize>;

    /// scale·I.
    fn scaled_identity(&self, n: usize, scale: f64) -> Vec<f64>;

    /// The indices, within one task's numbers, of the diagonal of Λ.
    fn diagonal_index(&self, n: usize, i: usize) -> usize;

    /// Writes the factor of Λ + jitter·I into `factor` and returns ln det(Λ + jitter·I).
    /// Fails when Λ + jitter·I is not positive definite (e.g. a non-finite Jacobian).
    fn factorise(
        &self,
        lambda: &[f64],
        n: usize,
        jitter: f64,
        factor: &mut [f64],
    ) -> Result<f64, String>;

    /// x ← U⁻¹ x = L^{−T} x: turns standard-normal noise into a sample offset of N(0, Λ̃⁻¹).
    fn solve_factor_t(&self, factor: &[f64], n: usize, x: &mut [f64]);

    /// tr(Λ̃_prev Λ̃⁻¹) from the factors of Λ̃ and Λ̃_prev (the KL's trace term).
    fn trace_ratio(&self, factor: &[f64], prev_factor: &[f64], n: usize) -> f64;

    /// (Λ + jitter·I) d in f32, as the per-step reference's quadratic form multiplies.
    fn jittered_times(&self, lambda: &[f64], d: &[f32], n: usize, jitter: f64) -> Vec<f32>;

    /// dᵀ Λ̃ d per task for d (B, n) and Λ̃ a tensor of [`PrecisionShape::dims`];
    /// differentiable in d.
    fn quadratic_form(&self, d: &Tensor, jittered: &Tensor) -> Result<Tensor>;

    /// One task's numbers (Λ, or its factor U) as a dense n×n row-major matrix.
    fn dense(&self, values: &[f64], n: usize) -> Vec<f64>;

    /// J Jᵀ (B, n, n) or its diagonal (B, n) for a batch of Jacobians J (B, n, H).
    fn gram(&self, j: &Tensor) -> Result<Tensor>;

    /// The same for one task's J (n × width) given as plain values by its transpose `jt`
    /// (width × n, row-major); returns `size(n)` numbers.
    fn gram_transposed(&self, jt: &[f32], n: usize, width: usize) -> Vec<f32>;

    /// Pᵀ S P (or its diagonal) for S (H×H, row-major) and P (H×n, row-major): the Gram term
    /// Σ_i J_i J_iᵀ when S = Σ_i D_i D_iᵀ and J_i = Pᵀ D_i; returns `size(n)` numbers.
    fn sandwich(&self, s: &[f32], p: &[f32], hidden: usize, n: usize) -> Vec<f32>;
}

/// S P (H×n) for S (H×H) and P (H×n), row-major.
fn times_proj(s: &[f32], p: &[f32], hidden: usize, n: usize) -> Vec<f32> {
    let mut sp = vec![0f32; hidden * n];
    sgemm(
        hidden,
        n,
        hidden,
        Mat::rows(s, hidden),
        Mat::rows(p, n),
        &mut sp,
        false,
        false,
    );
    sp
}

/// A dense n×n precision per task.
pub struct Full;

/// The diagonal of the precision only: diag(Σ_i J_i J_iᵀ) = row sums of J_i∘J_i.
pub struct Diagonal;

/// The shape a configuration's `diagonal` flag names.
pub fn of(diagonal: bool) -> &'static dyn PrecisionShape {
    if diagonal { &Diagonal } else { &Full }
}

impl PrecisionShape for Full {
    fn size(&self, n: usize) -> usize {
        n * n
    }

    fn dims(&self, batch: usize, n: usize) -> Vec<usize> {
        vec![batch, n, n]
    }

    fn scaled_identity(&self, n: usize, scale: f64) -> Vec<f64> {
        let mut v = vec![0.0; n * n];
        (0..n).for_each(|i| v[i * n + i] = scale);
        v
    }

    fn diagonal_index(&self, n: usize, i: usize) -> usize {
        i * n + i
    }

    fn factorise(
        &self,
        lambda: &[f64],
        n: usize,
        jitter: f64,
        factor: &mut [f64],
    ) -> Result<f64, String> {
        upper::cholesky_upper(lambda, jitter, n, factor).map_err(|e| e.to_string())?;
        Ok((0..n).map(|i| 2.0 * factor[i * n + i].ln()).sum())
    }

    fn solve_factor_t(&self, factor: &[f64], n: usize, x: &mut [f64]) {
        upper::solve_upper(factor, n, x);
    }

    /// ‖U_prev U⁻¹‖²_F = ‖L⁻¹ L_prev‖²_F with Λ̃ = UᵀU and Λ̃_prev = U_prevᵀU_prev.
    fn trace_ratio(&self, factor: &[f64], prev_factor: &[f64], n: usize) -> f64 {
        upper::frobenius_sq_upper_solve(factor, prev_factor, n)
    }

    fn jittered_times(&self, lambda: &[f64], d: &[f32], n: usize, jitter: f64) -> Vec<f32> {
        (0..n)
            .map(|i| {
                // Eight interleaved partial sums, so that the products vectorise.
                let row = &lambda[i * n..(i + 1) * n];
                let mut lanes = [0f32; 8];
                row.iter()
                    .zip(d)
                    .enumerate()
                    .for_each(|(k, (l, d))| lanes[k % 8] += *l as f32 * d);
                lanes.iter().sum::<f32>() + jitter as f32 * d[i]
            })
            .collect()
    }

    fn quadratic_form(&self, d: &Tensor, jittered: &Tensor) -> Result<Tensor> {
        let ld = d.unsqueeze(1)?.matmul(jittered)?.squeeze(1)?; // (B, n)
        Ok(ld.mul(d)?.sum(D::Minus1)?)
    }

    fn dense(&self, values: &[f64], _n: usize) -> Vec<f64> {
        values.to_vec()
    }

    fn gram(&self, j: &Tensor) -> Result<Tensor> {
        Ok(j.matmul(&j.t()?)?)
    }

    fn gram_transposed(&self, jt: &[f32], n: usize, width: usize) -> Vec<f32> {
        let mut term = vec![0f32; n * n];
        let jt = &jt[..width * n];
        sgemm(
            n,
            n,
            width,
            Mat::rows_t(jt, n),
            Mat::rows(jt, n),
            &mut term,
            false,
            false,
        );
        term
    }

    fn sandwich(&self, s: &[f32], p: &[f32], hidden: usize, n: usize) -> Vec<f32> {
        let sp = times_proj(s, p, hidden, n);
        let mut term = vec![0f32; n * n];
        let pt = Mat::rows_t(p, n);
        sgemm(n, n, hidden, pt, Mat::rows(&sp, n), &mut term, false, false);
        term
    }
}

impl PrecisionShape for Diagonal {
    fn size(&self, n: usize) -> usize {
        n
    }

    fn dims(&self, batch: usize, n: usize) -> Vec<usize> {
        vec![batch, n]
    }

    fn scaled_identity(&self, n: usize, scale: f64) -> Vec<f64> {
        vec![scale; n]
    }

    fn diagonal_index(&self, _n: usize, i: usize) -> usize {
        i
    }

    fn factorise(
        &self,
        lambda: &[f64],
        _n: usize,
        jitter: f64,
        factor: &mut [f64],
    ) -> Result<f64, String> {
        for (c, l) in factor.iter_mut().zip(lambda) {
            let x = l + jitter;
            if x.is_nan() || x <= 0.0 {
                return Err("a diagonal entry is not positive (non-finite Jacobian?)".into());
            }
            *c = x.sqrt();
        }
        Ok(factor.iter().map(|x| 2.0 * x.ln()).sum())
    }

    fn solve_factor_t(&self, factor: &[f64], _n: usize, x: &mut [f64]) {
        x.iter_mut().zip(factor).for_each(|(v, s)| *v /= s);
    }

    /// Σ_i (s_prev,i / s_i)² with s = √(λ + jitter).
    fn trace_ratio(&self, factor: &[f64], prev_factor: &[f64], _n: usize) -> f64 {
        prev_factor
            .iter()
            .zip(factor)
            .map(|(p, c)| (p / c).powi(2))
            .sum()
    }

    fn jittered_times(&self, lambda: &[f64], d: &[f32], _n: usize, jitter: f64) -> Vec<f32> {
        lambda
            .iter()
            .zip(d)
            .map(|(l, d)| (*l as f32 + jitter as f32) * d)
            .collect()
    }

    fn quadratic_form(&self, d: &Tensor, jittered: &Tensor) -> Result<Tensor> {
        Ok(d.sqr()?.mul(jittered)?.sum(D::Minus1)?)
    }

    fn dense(&self, values: &[f64], n: usize) -> Vec<f64> {
        let mut m = vec![0.0; n * n];
        (0..n).for_each(|i| m[i * n + i] = values[i]);
        m
    }

    fn gram(&self, j: &Tensor) -> Result<Tensor> {
        Ok(j.sqr()?.sum(D::Minus1)?)
    }

    fn gram_transposed(&self, jt: &[f32], n: usize, width: usize) -> Vec<f32> {
        let mut term = vec![0f32; n];
        for row in jt[..width * n].chunks_exact(n) {
            term.iter_mut().zip(row).for_each(|(t, v)| *t += v * v);
        }
        term
    }

    /// diag(Pᵀ S P)_r = Σ_j P[j, r] (S P)[j, r].
    fn sandwich(&self, s: &[f32], p: &[f32], hidden: usize, n: usize) -> Vec<f32> {
        let sp = times_proj(s, p, hidden, n);
        let mut term = vec![0f32; n];
        for (prow, sprow) in p.chunks_exact(n).zip(sp.chunks_exact(n)) {
            for ((t, a), b) in term.iter_mut().zip(prow).zip(sprow) {
                *t += a * b;
            }
        }
        term
    }
}
