//! The Laplace posterior as a filter over plain numbers: every statistic of q_t that carries no
//! gradient (paper Sec. 4, App. A.3, Table 2), computed once per update and outside the graph.
//!
//! Per task b and step t, from the LSTM's carry (c_t, h_t), the input projections
//! xw_i = x_i W_x + b of the window and the projected output φ_t (all plain values):
//! - J_i = Pᵀ ∂h'(x_i, (c_t, h))/∂h at h_t, formed as D = ∂h'/∂h = Σ_gate diag(a_gate) W_gateᵀ
//!   (4H² multiply-adds) and then one (n×H)(H×H) product, a quarter of the work of pushing
//!   Pᵀ·diag(a) through all four gate blocks (DESIGN "The model" gives a_gate);
//! - Λ_t = prior_t + Σ_i J_i J_iᵀ (diagonal variant: row sums of J_i∘J_i), prior_t = Λ_{t−1}
//!   (accumulated) or damping·I; the Cholesky factor L_t of Λ_t + jitter·I and ln det;
//! - μ_t = φ_t (+ μ_{t−1} when the mean is accumulated);
//! - KL(q_t ‖ q_{t−1}) = ½ dᵀ Λ̃_{t−1} d + ½[tr(Λ̃_{t−1} Λ̃_t⁻¹) − n + ln det Λ̃_t
//!   − ln det Λ̃_{t−1}], d = μ_t − μ_{t−1}, Λ̃ = Λ + jitter·I, and the vector v = Λ̃_{t−1} d,
//!   its gradient with respect to μ_t at the current parameters (Λ̃_{t−1} and μ_{t−1} are held
//!   fixed by the stop-gradient);
//! - sample offsets L_t^{−T} ε for given noise ε (so that z = μ_t + L_t^{−T} ε).
//!
//! The graph then needs only μ_t with gradient (see `agent::replay`). The per-step reference
//! (`posterior::laplace`, tensors and `Precision`) is what `tests/fast_path.rs` checks this
//! against, step by step and for every Table-2 variant.

use super::HALF_LN_2PI_E;
use super::config::{Accumulate, LaplaceConfig};
use super::shape::{self, PrecisionShape};
use crate::nn::kernels::{Mat, activate_gates, sgemm, tanh};
use anyhow::{Result, anyhow};
use rayon::prelude::*;
use std::collections::VecDeque;

/// The network weights the Jacobian needs, as plain row-major values.
pub struct JacobianWeights {
    pub hidden: usize,
    pub features: usize,
    /// W_h (H, 4H).
    pub wh: Vec<f32>,
    /// W_hᵀ per gate block: row gH + j holds column gH + j of W_h (4H, H).
    wh_t: Vec<f32>,
    /// P (H, n), stored (in, out).
    pub proj: Vec<f32>,
    /// K = W_hᵀ W_h (4H, 4H), whose (g, g') block of H×H is W_gᵀ W_g', formed on first use
    /// (only windows of [`WINDOW_GRAM_FROM`] inputs or more need it, see [`window_gram`]).
    k_gates: std::sync::OnceLock<Vec<f32>>,
}

impl JacobianWeights {
    pub fn new(wh: Vec<f32>, proj: Vec<f32>, hidden: usize, features: usize) -> Self {
        let g4 = 4 * hidden;
        let mut wh_t = vec![0f32; g4 * hidden];
        for m in 0..hidden {
            for col in 0..g4 {
                wh_t[col * hidden + m] = wh[m * g4 + col];
            }
        }
        Self {
            hidden,
            features,
            wh,
            wh_t,
            proj,
            k_gates: Default::default(),
        }
    }

    /// K = W_hᵀ W_h: K[gH + j, g'H + j'] = Σ_m W_h[m, gH + j] W_h[m, g'H + j'].
    fn k_gates(&self) -> &[f32] {
        self.k_gates.get_or_init(|| {
            let g4 = 4 * self.hidden;
            let mut k = vec![0f32; g4 * g4];
            let (wt, w) = (Mat::rows(&self.wh_t, self.hidden), Mat::rows(&self.wh, g4));
            sgemm(g4, g4, self.hidden, wt, w, &mut k, false, false);
            k
        })
    }
}

/// One task's filter state.
struct TaskState {
    /// Λ without jitter: `shape.size(n)` numbers (n·n full, n diagonal).
    lambda: Vec<f64>,
    /// The factor of Λ + jitter·I (`posterior::shape`).
    chol: Vec<f64>,
    /// The previous step's factor (kept for the KL; its buffer is reused).
    prev_chol: Vec<f64>,
    logdet: f64,
    mean: Vec<f32>,
    /// The window's input projections xw_i (4H each), oldest first.
    window: VecDeque<Vec<f32>>,
}

/// What one filter step gives per task (row-major over the batch).
#[derive(Default, Clone)]
pub struct StepStats {
    /// v = (Λ_{t−1} + jitter·I)(μ_t − μ_{t−1}), (B·n).
    pub kl_grad: Vec<f32>,
    /// KL(q_t ‖ q_{t−1}) per task.
    pub kl: Vec<f64>,
    /// Differential entropy of q_t per task.
    pub entropy: Vec<f64>,
}

/// A batch of Laplace posteriors stepped in time (see the module documentation).
pub struct LaplaceFilter {
    cfg: LaplaceConfig,
    n: usize,
    tasks: Vec<TaskState>,
}

impl LaplaceFilter {
    /// q_0 = N(φ_0, prior_precision·I) for each task; `phi0` is (B·n).
    pub fn new(
        cfg: &LaplaceConfig,
        phi0: &[f32],
        batch: usize,
        w: &JacobianWeights,
    ) -> Result<Self> {
        let n = w.features;
        let shape = shape::of(cfg.diagonal);
        let size = shape.size(n);
        let tasks = (0..batch)
            .map(|b| {
                let lambda = shape.scaled_identity(n, cfg.prior_precision);
                let mut t = TaskState {
                    chol: vec![0.0; size],
                    prev_chol: vec![0.0; size],
                    lambda,
                    logdet: 0.0,
                    mean: phi0[b * n..(b + 1) * n].to_vec(),
                    window: VecDeque::new(),
                };
                factorise(&mut t, n, shape, cfg.jitter).map(|_| t)
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| anyhow!("Laplace prior: {e}"))?;
        Ok(Self {
            cfg: cfg.clone(),
            n,
            tasks,
        })
    }

    pub fn batch(&self) -> usize {
        self.tasks.len()
    }

    /// The current means μ_t, (B·n).
    pub fn means(&self) -> Vec<f32> {
        self.tasks
            .iter()
            .flat_map(|t| t.mean.iter().copied())
            .collect()
    }

    /// The current precisions Λ_t without jitter as f32, (B·n·n), or (B·n) for the diagonal
    /// variant (`posterior::standalone` returns them).
    pub fn precisions_f32(&self) -> Vec<f32> {
        self.tasks
            .iter()
            .flat_map(|t| t.lambda.iter().map(|v| *v as f32))
            .collect()
    }

    /// Differential entropy ½ n ln(2πe) − ½ ln det Λ̃_t per task.
    pub fn entropy(&self) -> Vec<f64> {
        let n = self.n as f64;
        self.tasks
            .iter()
            .map(|t| n * HALF_LN_2PI_E - 0.5 * t.logdet)
            .collect()
    }

    /// The noise part of reparameterised samples of the current posteriors, L_t^{−T} ε, for
    /// ε of shape (n_Z, B, n) given row-major; returns the same shape.
    pub fn sample_offsets(&self, eps: &[f32]) -> Vec<f32> {
        let (n, b) = (self.n, self.tasks.len());
        let mut out = vec![0f32; eps.len()];
        let shape = shape::of(self.cfg.diagonal);
        out.par_chunks_mut(n)
            .with_min_len(64)
            .zip(eps.par_chunks(n))
            .enumerate()
            .for_each(|(row, (o, e))| {
                let task = &self.tasks[row % b];
                let mut x: Vec<f64> = e.iter().map(|v| *v as f64).collect();
                shape.solve_factor_t(&task.chol, n, &mut x);
                o.iter_mut().zip(x).for_each(|(o, v)| *o = v as f32);
            });
        out
    }

    /// Steps every task: `c`, `h` (B·H) are the carry (c_t, h_t) after the LSTM step,
    /// `xw` (B·4H) the input projection x_t W_x + b of this step, `phi` (B·n) the output φ_t.
    pub fn step(
        &mut self,
        w: &JacobianWeights,
        c: &[f32],
        h: &[f32],
        xw: &[f32],
        phi: &[f32],
    ) -> Result<StepStats> {
        let (hd, n, g4) = (w.hidden, self.n, 4 * w.hidden);
        let batch = self.tasks.len();
        // h_t W_h for every task at once.
        let mut hw = vec![0f32; batch * g4];
        sgemm(
            batch,
            g4,
            hd,
            Mat::rows(h, hd),
            Mat::rows(&w.wh, g4),
            &mut hw,
            false,
            true,
        );
        let keep = if self.cfg.window == 0 {
            usize::MAX
        } else {
            self.cfg.window
        };
        for (b, task) in self.tasks.iter_mut().enumerate() {
            let row = &xw[b * g4..(b + 1) * g4];
            let mut slot = if task.window.len() == keep {
                task.window.pop_front().unwrap_or_default()
            } else {
                Vec::with_capacity(g4)
            };
            slot.clear();
            slot.extend_from_slice(row);
            task.window.push_back(slot);
        }
        let cfg = &self.cfg;
        let parallel = candle_core::utils::get_num_threads() > 1;
        // Σ_i J_i J_iᵀ per task, for chunks of tasks whose J = Pᵀ D run as one matrix product.
        let k = self.tasks[0].window.len();
        let chunk = (JACOBIAN_COLUMNS / (k * hd)).max(1);
        let jacobians = |(ci, tasks): (usize, &[TaskState])| {
            let (c, hw) = (&c[ci * chunk * hd..], &hw[ci * chunk * g4..]);
            jacobian_terms(tasks, w, c, hw, shape::of(cfg.diagonal))
        };
        let terms: Vec<Vec<f32>> = if parallel {
            let chunks: Vec<_> = self
                .tasks
                .par_chunks(chunk)
                .enumerate()
                .map(jacobians)
                .collect();
            chunks.into_iter().flatten().collect()
        } else {
            self.tasks
                .chunks(chunk)
                .enumerate()
                .flat_map(jacobians)
                .collect()
        };
        let work = |((b, task), term): ((usize, &mut TaskState), Vec<f32>)| {
            update_task(cfg, task, &term, &phi[b * n..(b + 1) * n])
                .map_err(|e| anyhow!("Laplace precision of task {b} is not positive definite ({e}); a larger `jitter` or `prior_precision` may help"))
        };
        let results: Vec<Result<_>> = if parallel {
            self.tasks
                .par_iter_mut()
                .enumerate()
                .zip(terms)
                .map(work)
                .collect()
        } else {
            self.tasks
                .iter_mut()
                .enumerate()
                .zip(terms)
                .map(work)
                .collect()
        };
        let mut stats = StepStats::default();
        let nf = n as f64;
        for r in results {
            let (v, kl, logdet) = r?;
            stats.kl_grad.extend(v);
            stats.kl.push(kl);
            stats.entropy.push(nf * HALF_LN_2PI_E - 0.5 * logdet);
        }
        Ok(stats)
    }
}

/// One task's step given its Jacobian term Σ_i J_i J_iᵀ and its output φ_t: the new precision,
/// its factor and mean, and KL(q_t ‖ q_{t−1}). Returns (Λ̃_{t−1}(μ_t − μ_{t−1}), the KL, ln det Λ̃_t).
fn update_task(
    cfg: &LaplaceConfig,
    task: &mut TaskState,
    term: &[f32],
    phi: &[f32],
) -> Result<(Vec<f32>, f64, f64), String> {
    let n = phi.len();
    let shape = shape::of(cfg.diagonal);
    // The new mean, and the KL's quadratic part against the previous posterior (Λ_{t−1}, μ_{t−1}).
    let mean: Vec<f32> = match cfg.accumulates_mean() {
        true => phi.iter().zip(&task.mean).map(|(p, m)| p + m).collect(),
        false => phi.to_vec(),
    };
    let d: Vec<f32> = mean.iter().zip(&task.mean).map(|(a, b)| a - b).collect();
    task.mean = mean;
    let v = shape.jittered_times(&task.lambda, &d, n, cfg.jitter);
    let quad: f64 = v.iter().zip(&d).map(|(v, d)| *v as f64 * *d as f64).sum();
    // The new precision Λ_t = prior_t + Σ J Jᵀ and its factor; the previous factor is kept.
    if cfg.accumulate == Accumulate::None {
        task.lambda = shape.scaled_identity(n, cfg.damping);
    }
    task.lambda
        .iter_mut()
        .zip(term)
        .for_each(|(l, t)| *l += *t as f64);
    std::mem::swap(&mut task.chol, &mut task.prev_chol);
    let prev_logdet = task.logdet;
    factorise(task, n, shape, cfg.jitter)?;
    // KL(q_t ‖ q_{t−1}) = ½ dᵀΛ̃_{t−1}d + ½[tr(Λ̃_{t−1}Λ̃_t⁻¹) − n + ln det Λ̃_t − ln det Λ̃_{t−1}].
    let trace = shape.trace_ratio(&task.chol, &task.prev_chol, n);
    let constant = 0.5 * (trace - n as f64 + task.logdet - prev_logdet);
    Ok((v, 0.5 * quad + constant, task.logdet))
}

/// Columns of the matrix [D…] that one Jacobian product J = Pᵀ[D…] takes at once (tasks ×
/// window inputs × H): large enough for an efficient matrix product, small enough for the cache.
const JACOBIAN_COLUMNS: usize = 4096;

/// Σ_{i ∈ window} J_i J_iᵀ (n·n) or its diagonal (n) for each task of a chunk; `c` (H) and
/// `hw` (4H) rows start at the chunk's first task. Short windows form the Jacobians: D_i =
/// ∂h'/∂h of every (task, window input) is laid side by side, M[j, (task·k + i)·H + m] =
/// D_i[j, m], so that all J_i = Pᵀ D_i come from one product Pᵀ M; then per task JJᵀ =
/// [J_1 … J_k][J_1 … J_k]ᵀ. From [`WINDOW_GRAM_FROM`] inputs on, [`window_gram`] sums the
/// window before projecting and never forms a J_i.
fn jacobian_terms(
    tasks: &[TaskState],
    w: &JacobianWeights,
    c: &[f32],
    hw: &[f32],
    shape: &dyn PrecisionShape,
) -> Vec<Vec<f32>> {
    let hd = w.hidden;
    let k = tasks[0].window.len();
    if k >= WINDOW_GRAM_FROM {
        return tasks
            .iter()
            .enumerate()
            .map(|(ti, task)| {
                let (c, hw) = (
                    &c[ti * hd..(ti + 1) * hd],
                    &hw[ti * 4 * hd..(ti + 1) * 4 * hd],
                );
                window_gram(task, w, c, hw, shape)
            })
            .collect();
    }
    explicit_terms(tasks, w, c, hw, shape)
}

/// [`jacobian_terms`] through the explicit Jacobians (short windows).
fn explicit_terms(
    tasks: &[TaskState],
    w: &JacobianWeights,
    c: &[f32],
    hw: &[f32],
    shape: &dyn PrecisionShape,
) -> Vec<Vec<f32>> {
    let (hd, n) = (w.hidden, w.features);
    let k = tasks[0].window.len();
    let cols = tasks.len() * k * hd;
    SCRATCH.with_borrow_mut(|(m, j)| {
        m.resize(hd * cols, 0.0);
        j.resize(n * cols, 0.0);
        fill_derivatives(tasks, w, c, hw, m, cols);
        // Jᵀ = Mᵀ P, (cols, n): each task's k·H rows are contiguous.
        let mt = Mat::rows_t(m, cols);
        sgemm(cols, n, hd, mt, Mat::rows(&w.proj, n), j, false, false);
        (0..tasks.len())
            .map(|ti| shape.gram_transposed(&j[ti * k * hd * n..], n, k * hd))
            .collect()
    })
}

thread_local! {
    /// The matrices M and Jᵀ of [`jacobian_terms`], kept between calls (one pair per thread).
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = Default::default();
}

/// M[j, (task·k + i)·H + m] = D_i[j, m] = Σ_gate a_gate[j] W_gateᵀ[j, m] for every task of the
/// chunk and input i of its window (every entry of M is written). On x86-64 CPUs with AVX2 the
/// same code runs compiled with 256-bit vectors (no fused multiply-adds: the same results).
fn fill_derivatives(
    tasks: &[TaskState],
    w: &JacobianWeights,
    c: &[f32],
    hw: &[f32],
    m: &mut [f32],
    cols: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { fill_derivatives_avx2(tasks, w, c, hw, m, cols) };
        }
    }
    fill_derivatives_generic(tasks, w, c, hw, m, cols)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn fill_derivatives_avx2(
    tasks: &[TaskState],
    w: &JacobianWeights,
    c: &[f32],
    hw: &[f32],
    m: &mut [f32],
    cols: usize,
) {
    fill_derivatives_generic(tasks, w, c, hw, m, cols)
}

#[inline(always)]
fn fill_derivatives_generic(
    tasks: &[TaskState],
    w: &JacobianWeights,
    c: &[f32],
    hw: &[f32],
    m: &mut [f32],
    cols: usize,
) {
    let (hd, g4) = (w.hidden, 4 * w.hidden);
    let k = tasks[0].window.len();
    let (mut z, mut a) = (vec![0f32; g4], vec![0f32; g4]);
    for (ti, task) in tasks.iter().enumerate() {
        let (c, hw) = (&c[ti * hd..(ti + 1) * hd], &hw[ti * g4..(ti + 1) * g4]);
        for (i, x) in task.window.iter().enumerate() {
            gate_derivatives(x, hw, c, &mut z, &mut a);
            let col = (ti * k + i) * hd;
            for j in 0..hd {
                // D[j, :] = Σ_gate a_gate[j] · W_gateᵀ[j, :], the gates summed in order in one
                // pass over the row.
                let row = &mut m[j * cols + col..j * cols + col + hd];
                let src = |gate: usize| &w.wh_t[(gate * hd + j) * hd..(gate * hd + j + 1) * hd];
                let sources = src(0).iter().zip(src(1)).zip(src(2)).zip(src(3));
                let (a0, a1, a2, a3) = (a[j], a[hd + j], a[2 * hd + j], a[3 * hd + j]);
                for (r, (((s0, s1), s2), s3)) in row.iter_mut().zip(sources) {
                    *r = a0 * s0 + a1 * s1 + a2 * s2 + a3 * s3;
                }
            }
        }
    }
}

/// The diagonal factors of ∂h'/∂h = Σ_gate diag(a_gate) W_gateᵀ for one LSTM step applied to
/// the input projection `x` (4H) from the carry (c, h), given `hw` = h W_h (4H): writes
/// a = [a_i, a_f, a_g, a_o] (4H, gate-major), with the gates' values in `z` (DESIGN "The
/// model": a_o = tanh(c')∘o∘(1−o), and o∘(1−tanh²c') times c∘f∘(1−f), g∘i∘(1−i), i∘(1−g²)).
#[inline(always)]
fn gate_derivatives(x: &[f32], hw: &[f32], c: &[f32], z: &mut [f32], a: &mut [f32]) {
    let hd = c.len();
    z.iter_mut()
        .zip(x.iter().zip(hw))
        .for_each(|(z, (x, h))| *z = x + h);
    activate_gates(z, hd);
    for j in 0..hd {
        let (ig, fg, gg, og) = (z[j], z[hd + j], z[2 * hd + j], z[3 * hd + j]);
        let c_new = fg * c[j] + ig * gg;
        let tc = tanh(c_new);
        let kk = og * (1.0 - tc * tc);
        a[j] = kk * gg * ig * (1.0 - ig);
        a[hd + j] = kk * c[j] * fg * (1.0 - fg);
        a[2 * hd + j] = kk * ig * (1.0 - gg * gg);
        a[3 * hd + j] = tc * og * (1.0 - og);
    }
}

/// Window length from which `window_gram` replaces the explicit Jacobians: k products
/// J_i = Pᵀ D_i and their Gram cost k·(nH² + n²H) multiply-adds per task and step, the window
/// Gram 10kH² + 11H² + nH² + n²H, fewer from k = 3 on at the paper's sizes.
pub const WINDOW_GRAM_FROM: usize = 3;

/// Σ_{i ∈ window} J_i J_iᵀ = Pᵀ S P (or its diagonal) for one task without forming any J_i:
/// with D_i = A_i W_hᵀ, A_i = [diag(a_i,g)]_g (H × 4H), S = Σ_i D_i D_iᵀ = Σ_i A_i K A_iᵀ,
/// K = W_hᵀ W_h (fixed for the update, `JacobianWeights`). Entry by entry, S[j, j'] is the sum
/// over the 4×4 gate blocks of K ∘ B with B = Ā Āᵀ, Ā = [a_i,g[j]] (4H × k). Only the upper
/// gate blocks are formed (see below): 10kH² + 11H² + nH² + n²H multiply-adds against the
/// explicit k(nH² + n²H), for the same value (tested).
fn window_gram(
    task: &TaskState,
    w: &JacobianWeights,
    c: &[f32],
    hw: &[f32],
    shape: &dyn PrecisionShape,
) -> Vec<f32> {
    let (hd, k) = (w.hidden, task.window.len());
    let g4 = 4 * hd;
    // Ā[gH + j, i]: gate g's factor at j for input i of the window.
    let mut stacked = vec![0f32; g4 * k];
    let (mut z, mut a) = (vec![0f32; g4], vec![0f32; g4]);
    for (i, x) in task.window.iter().enumerate() {
        gate_derivatives(x, hw, c, &mut z, &mut a);
        for (gj, v) in a.iter().enumerate() {
            stacked[gj * k + i] = *v;
        }
    }
    // K and B are symmetric, so the (g', g) block of K ∘ B is the transpose of the (g, g')
    // one: S = Σ_g (K ∘ B)_gg + U + Uᵀ with U = Σ_{g<g'} (K ∘ B)_gg', from the upper blocks only.
    let k_gates = w.k_gates();
    GRAM_SCRATCH.with_borrow_mut(|b| {
        b.resize(g4 * g4, 0.0);
        let (mut diag, mut upper) = (vec![0f32; hd * hd], vec![0f32; hd * hd]);
        for g in 0..4 {
            // Rows gH..(g+1)H of B, columns gH..4H: (H × (4 − g)H).
            let width = g4 - g * hd;
            let rows = Mat::rows(&stacked[g * hd * k..(g + 1) * hd * k], k);
            let cols = Mat::rows_t(&stacked[g * hd * k..], k);
            let band = &mut b[..hd * width];
            sgemm(hd, width, k, rows, cols, band, false, false);
            for j in 0..hd {
                let (krow, brow) = (&k_gates[(g * hd + j) * g4 + g * hd..], &band[j * width..]);
                for (q, (kb, bb)) in krow[..width]
                    .chunks_exact(hd)
                    .zip(brow[..width].chunks_exact(hd))
                    .enumerate()
                {
                    let target = if q == 0 { &mut diag } else { &mut upper };
                    target[j * hd..(j + 1) * hd]
                        .iter_mut()
                        .zip(kb.iter().zip(bb))
                        .for_each(|(s, (kv, bv))| *s += kv * bv);
                }
            }
        }
        for j in 0..hd {
            for j2 in 0..hd {
                diag[j * hd + j2] += upper[j * hd + j2] + upper[j2 * hd + j];
            }
        }
        shape.sandwich(&diag, &w.proj, hd, w.features)
    })
}

thread_local! {
    /// B = Ā Āᵀ (4H × 4H) of [`window_gram`], kept between calls.
    static GRAM_SCRATCH: std::cell::RefCell<Vec<f32>> = Default::default();
}

/// The factor and ln det of Λ + jitter·I into the task state.
fn factorise(
    t: &mut TaskState,
    n: usize,
    shape: &dyn PrecisionShape,
    jitter: f64,
) -> Result<(), String> {
    t.logdet = shape.factorise(&t.lambda, n, jitter, &mut t.chol)?;
    Ok(())
}

/// The filter run over a whole replayed sequence (the supervised loss): per step t = 1..T its
/// statistics, and the sample offsets of q_{t−1} (`before` = true: the regression predicts y_t
/// from q_{t−1}) or of q_t (`before` = false).
pub struct SequenceStats {
    /// (T, n_Z, B, n) row-major.
    pub offsets: Vec<f32>,
    /// (T, B, n) row-major.
    pub kl_grad: Vec<f32>,
    /// (T, B).
    pub kl: Vec<f64>,
    /// (T, B).
    pub entropy: Vec<f64>,
}

/// Runs the filter over a sequence given as plain values: `states` [h_t, c_t] (T, B, 2H),
/// `xw` (T, B, 4H), `phi` φ_0..φ_T (T+1, B, n), and the noise of each step (n_Z, B, n).
#[allow(clippy::too_many_arguments)]
pub fn filter_sequence(
    cfg: &LaplaceConfig,
    w: &JacobianWeights,
    states: &[f32],
    xw: &[f32],
    phi: &[f32],
    noise: &[Vec<f32>],
    batch: usize,
    before: bool,
) -> Result<SequenceStats> {
    let (hd, n) = (w.hidden, w.features);
    let steps = noise.len();
    let mut filter = LaplaceFilter::new(cfg, &phi[..batch * n], batch, w)?;
    let mut out = SequenceStats {
        offsets: Vec::with_capacity(noise.iter().map(|e| e.len()).sum()),
        kl_grad: Vec::with_capacity(steps * batch * n),
        kl: Vec::with_capacity(steps * batch),
        entropy: Vec::with_capacity(steps * batch),
    };
    let (mut c, mut h) = (vec![0f32; batch * hd], vec![0f32; batch * hd]);
    for (t, eps) in noise.iter().enumerate() {
        if before {
            out.offsets.extend(filter.sample_offsets(eps));
        }
        for b in 0..batch {
            let row = &states[(t * batch + b) * 2 * hd..(t * batch + b + 1) * 2 * hd];
            h[b * hd..(b + 1) * hd].copy_from_slice(&row[..hd]);
            c[b * hd..(b + 1) * hd].copy_from_slice(&row[hd..]);
        }
        let g4 = 4 * hd;
        let stats = filter.step(
            w,
            &c,
            &h,
            &xw[t * batch * g4..(t + 1) * batch * g4],
            &phi[(t + 1) * batch * n..(t + 2) * batch * n],
        )?;
        if !before {
            out.offsets.extend(filter.sample_offsets(eps));
        }
        out.kl_grad.extend(stats.kl_grad);
        out.kl.extend(stats.kl);
        out.entropy.extend(stats.entropy);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window Gram S = Σ_gg' K_gg' ∘ B_gg' projected as Pᵀ S P equals the explicit
    /// Σ_i J_i J_iᵀ, full and diagonal, for windows below and above the switch.
    #[test]
    fn window_gram_equals_the_explicit_jacobians() {
        let (hd, n) = (16, 5);
        let val = |i: usize, s: f32| (i as f32 * 0.7123 + s).sin() * 0.5;
        let rows = |len: usize, s: f32| -> Vec<f32> { (0..len).map(|i| val(i, s)).collect() };
        let w = JacobianWeights::new(rows(hd * 4 * hd, 0.1), rows(hd * n, 0.2), hd, n);
        for k in [1, 3, 7] {
            let task = TaskState {
                lambda: vec![],
                chol: vec![],
                prev_chol: vec![],
                logdet: 0.0,
                mean: vec![],
                window: (0..k).map(|i| rows(4 * hd, 3.0 + i as f32)).collect(),
            };
            let (c, hw) = (rows(hd, 1.0), rows(4 * hd, 2.0));
            for shape in [shape::of(false), shape::of(true)] {
                let explicit =
                    explicit_terms(std::slice::from_ref(&task), &w, &c, &hw, shape).remove(0);
                let summed = window_gram(&task, &w, &c, &hw, shape);
                let scale = explicit.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                for (a, b) in summed.iter().zip(&explicit) {
                    assert!((a - b).abs() <= 1e-5 * scale, "k = {k}: {a} vs {b}");
                }
            }
        }
    }

    /// The Jacobian products run in chunks of tasks: a batch spanning several chunks gives the
    /// same statistics as each task filtered on its own.
    #[test]
    fn chunked_batch_equals_tasks_filtered_one_by_one() {
        let (hd, n, batch) = (64, 4, 70); // window 2: 4096 / (2·64) = 32 tasks per chunk
        let val = |i: usize, s: f32| (i as f32 * 0.7123 + s).sin() * 0.5;
        let w = JacobianWeights::new(
            (0..hd * 4 * hd).map(|i| val(i, 0.1) * 0.3).collect(),
            (0..hd * n).map(|i| val(i, 0.2)).collect(),
            hd,
            n,
        );
        let cfg: LaplaceConfig = match "laplace:window=2,accumulate=sigma".parse().unwrap() {
            crate::posterior::PosteriorConfig::Laplace(c) => c,
            _ => unreachable!(),
        };
        let rows = |len: usize, s: f32| -> Vec<f32> { (0..len).map(|i| val(i, s)).collect() };
        let phi0 = rows(batch * n, 0.3);
        let mut all = LaplaceFilter::new(&cfg, &phi0, batch, &w).unwrap();
        let mut single: Vec<LaplaceFilter> = (0..batch)
            .map(|b| LaplaceFilter::new(&cfg, &phi0[b * n..(b + 1) * n], 1, &w).unwrap())
            .collect();
        for t in 0..3 {
            let s = t as f32;
            let (c, h) = (rows(batch * hd, 1.0 + s), rows(batch * hd, 2.0 + s));
            let (xw, phi) = (rows(batch * 4 * hd, 3.0 + s), rows(batch * n, 4.0 + s));
            let got = all.step(&w, &c, &h, &xw, &phi).unwrap();
            for (b, f) in single.iter_mut().enumerate() {
                let one = f
                    .step(
                        &w,
                        &c[b * hd..(b + 1) * hd],
                        &h[b * hd..(b + 1) * hd],
                        &xw[b * 4 * hd..(b + 1) * 4 * hd],
                        &phi[b * n..(b + 1) * n],
                    )
                    .unwrap();
                let close = |a: f64, e: f64| (a - e).abs() <= 1e-5 * e.abs().max(1.0);
                assert!(close(got.kl[b], one.kl[0]), "step {t} task {b}: KL");
                assert!(
                    close(got.entropy[b], one.entropy[0]),
                    "step {t} task {b}: entropy"
                );
                for k in 0..n {
                    let (a, e) = (got.kl_grad[b * n + k] as f64, one.kl_grad[k] as f64);
                    assert!(close(a, e), "step {t} task {b}: KL gradient");
                }
            }
        }
    }
}
