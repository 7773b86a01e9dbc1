//! A head's layer norm and first layer on gathered rows, forward and backward, factored through
//! the table of distinct rows (`Head::forward_shared`, `Head::trace_all_gathered`).
//!
//! The heads' input rows are x_r = [t_u, z_r] (D = E + n wide), t_u = row u = g(r) of a table
//! of U distinct state embeddings shared by many rows. The first layer's pre-activation is
//! y_0 W + b with y_0 = x̂∘γ + β and x̂_r = (x_r − m_r)·s_r (m_r, s_r the row's mean and
//! 1/√(var + ε)). The generic backward forms ∂L/∂y_0 = δ Wᵀ and δW = y_0ᵀ δ on all D columns of
//! every row (δ = ∂L/∂(y_0 W + b)), 2·D·H_1 multiply-adds per row. Only the z columns need
//! per-row products: with t̃_u = t_u − t̄_u (t̄_u the table row's mean) and d_r = t̄_u − m_r, the
//! embedding part of x̂_r is s_r(t̃_u + d_r𝟙), so every sum over rows of the embedding columns
//! is a sum over the table rows of per-row accumulators,
//!
//!   S_u = Σ_{r∈u} s_r δ_r,  Q = Σ_r s_r d_r δ_r,  N = Σ_r δ_r  (H_1 each),
//!
//! and, with c = Wᵀγ, c_e = W_eᵀγ_e, ã_u = W_eᵀ(γ_e∘t̃_u), the layer norm's two row means are
//!
//!   p_r = mean(ĝ) = δ_r·c / D,
//!   q_r = mean(ĝ∘x̂) = (Σ_{j∈z} γ_j g_j x̂_j + s_r(δ_r·ã_u + d_r δ_r·c_e)) / D,
//!
//! (ĝ = γ∘∂L/∂y_0, g_z = δ_r W_zᵀ the z columns of ∂L/∂y_0). Then
//!
//!   ∂L/∂z_r = (γ_z∘g_z − p_r − x̂_z q_r) s_r,
//!   δW_z = y_{0,z}ᵀ δ,  δW_e = Σ_u (γ_e∘t̃_u)ᵀ S_u + γ_e ⊗ Q + β_e ⊗ N,  δb = N,
//!   δβ_e = W_e N,  δγ_e = Σ_u t̃_u∘(W_e S_u) + W_e Q,  δβ_z = Σ_r g_z,  δγ_z = Σ_r g_z∘x̂_z,
//!   ∂L/∂t_u = γ_e∘(W_e S_u) − (P_u + R_u)𝟙 − Q2_u t̃_u,
//!
//! with P_u = Σ_{r∈u} s_r p_r, Q2_u = Σ_{r∈u} s_r² q_r, R_u = Σ_{r∈u} s_r² q_r d_r: 2·n·H_1
//! multiply-adds per row (g_z and δW_z; the accumulators are O(H_1)) plus U·E·H_1 per table
//! product, instead of 2·D·H_1 per row (the gridworld's heads: D = 320, n = 64, U a few
//! hundred against 25,600 rows). The forward is factored the same way
//! ([`forward`]): y_0 W + b = s_r ã_u + s_r d_r c_e + W_eᵀβ_e + b + y_{0,z} W_z. The same values
//! as the generic passes up to rounding; `tests/fast_path_speed.rs` holds both to the unfused
//! graph.

use super::kernels::{Mat, lane_dot, sgemm};
use super::mlp::{leaky, leaky_derivative, normalise_row};

/// Whether the factored backward pays for a table of `table_rows` distinct rows gathered into
/// `rows` rows: its table products cost about 3·U·E·H_1 against the 2·rows·E·H_1 it saves.
pub(super) fn pays(table_rows: usize, rows: usize) -> bool {
    4 * table_rows <= rows
}

/// The table's part of the factors, the same for every head: t̄_u and t̃_u = t_u − t̄_u.
pub(super) struct CentredTable {
    /// E.
    width: usize,
    mean: Vec<f32>,
    /// (U × E).
    centred: Vec<f32>,
}

impl CentredTable {
    pub(super) fn new(table: &[f32], width: usize) -> Self {
        let mut centred = Self {
            width,
            mean: vec![],
            centred: vec![],
        };
        centred.extend(table);
        centred
    }

    /// Takes in the rows of `table` beyond those already in (a table that only grows, such as
    /// the rollout's input cache).
    pub(super) fn extend(&mut self, table: &[f32]) {
        let e = self.width.max(1);
        for row in table[self.centred.len()..].chunks(e) {
            let m = super::kernels::lane_sum(row) / e as f32;
            self.centred.extend(row.iter().map(|v| v - m));
            self.mean.push(m);
        }
    }

    fn rows(&self) -> usize {
        self.mean.len()
    }
}

/// One head's factors: γ_e∘t̃_u (U × E), ã_u (U × H_1), c, c_e and k = W_eᵀβ_e + b (H_1).
pub(super) struct HeadFactors {
    scaled: Vec<f32>,
    a: Vec<f32>,
    c: Vec<f32>,
    c_e: Vec<f32>,
    k: Vec<f32>,
}

/// Where the first layer's W (D × H_1, row-major) and b start in a head's packed parameters
/// [γ, β, W_1, b_1, …], and H_1.
fn first_layer(sizes: &[usize]) -> (usize, usize, usize) {
    let (d, h1) = (sizes[0], sizes[1]);
    (2 * d, 2 * d + d * h1, h1)
}

impl HeadFactors {
    /// The factors of the head with layer sizes `sizes` and packed parameters `p` for the
    /// rows of `table`.
    pub(super) fn new(sizes: &[usize], p: &[f32], table: &CentredTable) -> Self {
        let (d, e) = (sizes[0], table.width);
        let (w_at, b_at, h1) = first_layer(sizes);
        let (gamma, beta, w) = (&p[..d], &p[d..2 * d], &p[w_at..w_at + d * h1]);
        // c = Wᵀγ, accumulated over the input rows j of W in order (c_e: the first E), and
        // k = W_eᵀβ_e + b.
        let (mut c, mut c_e) = (vec![0f32; h1], vec![0f32; h1]);
        let mut k = vec![0f32; h1];
        for (j, row) in w.chunks(h1).enumerate() {
            c.iter_mut().zip(row).for_each(|(c, w)| *c += gamma[j] * w);
            if j < e {
                k.iter_mut().zip(row).for_each(|(k, w)| *k += beta[j] * w);
            }
            if j + 1 == e {
                c_e.copy_from_slice(&c);
            }
        }
        k.iter_mut()
            .zip(&p[b_at..b_at + h1])
            .for_each(|(k, b)| *k += b);
        let mut factors = Self {
            scaled: vec![],
            a: vec![],
            c,
            c_e,
            k,
        };
        factors.extend(sizes, p, table);
        factors
    }

    /// Adds the factors of the table rows beyond those already in (see
    /// [`CentredTable::extend`]).
    pub(super) fn extend(&mut self, sizes: &[usize], p: &[f32], table: &CentredTable) {
        let (d, e) = (sizes[0], table.width);
        let (w_at, _, h1) = first_layer(sizes);
        let (gamma, w_e) = (&p[..d], &p[w_at..w_at + e * h1]);
        let done = self.scaled.len() / e.max(1);
        let new = table.rows() - done;
        if new == 0 {
            return;
        }
        let scaled: Vec<f32> = table.centred[done * e..]
            .chunks(e.max(1))
            .flat_map(|row| row.iter().zip(&gamma[..e]).map(|(t, g)| t * g))
            .collect();
        let mut a = vec![0f32; new * h1];
        sgemm(
            new,
            h1,
            e,
            Mat::rows(&scaled, e),
            Mat::rows(w_e, h1),
            &mut a,
            false,
            false,
        );
        self.scaled.extend(scaled);
        self.a.extend(a);
    }
}

/// Per row of a part: its table row u, s_r, d_r = t̄_u − m_r, and x̂ of its z columns.
pub(super) struct RowNorms {
    u: Vec<usize>,
    s: Vec<f32>,
    d: Vec<f32>,
    /// (rows × n).
    xhat_z: Vec<f32>,
}

impl RowNorms {
    /// The layer norm statistics of the rows x_r = [t_{u_r}, z_r] (z: the part's rows × n),
    /// computed as the forward's layer norm computes them (`normalise_row`).
    pub(super) fn new(table: &[f32], centred: &CentredTable, u: Vec<usize>, z: &[f32]) -> Self {
        let e = centred.width;
        let n = z.len() / u.len().max(1);
        let mut row = vec![0f32; e + n];
        let mut xhat = vec![0f32; e + n];
        let (mut s, mut d) = (Vec::with_capacity(u.len()), Vec::with_capacity(u.len()));
        let mut xhat_z = Vec::with_capacity(z.len());
        for (&ur, zr) in u.iter().zip(z.chunks(n.max(1))) {
            row[..e].copy_from_slice(&table[ur * e..(ur + 1) * e]);
            row[e..].copy_from_slice(zr);
            let (mean, inv) = normalise_row(&row, &mut xhat);
            s.push(inv);
            d.push(centred.mean[ur] - mean);
            xhat_z.extend_from_slice(&xhat[e..]);
        }
        Self { u, s, d, xhat_z }
    }
}

/// The factored forward of one head's layer norm and first layer for a part's rows (their
/// statistics `norms`): writes y_0 = x̂∘γ + β (rows × D) into `y0`, from x̂_e = s_r(t̃_u + d_r𝟙),
/// and the first layer's output into `y1`, leaky-ReLU (a hidden layer) or linear (a one-layer
/// head) of its pre-activation
///
///   y_0 W + b = s_r ã_u + s_r d_r c_e + k + y_{0,z} W_z,
///
/// n·H_1 multiply-adds per row instead of D·H_1. `parallel` as in `nn::head::forward_rows`.
pub(super) fn forward(
    sizes: &[usize],
    p: &[f32],
    (table, f): (&CentredTable, &HeadFactors),
    norms: &RowNorms,
    y0: &mut [f32],
    y1: &mut [f32],
    parallel: bool,
) {
    let (d, e) = (sizes[0], table.width);
    let n = d - e;
    let (w_at, _, h1) = first_layer(sizes);
    let (gamma, beta) = (&p[..d], &p[d..2 * d]);
    let w_z = &p[w_at + e * h1..w_at + d * h1];
    let rows = norms.s.len();
    for (r, row) in y0.chunks_mut(d).take(rows).enumerate() {
        let (u, s, dr) = (norms.u[r], norms.s[r], norms.d[r]);
        let t = &table.centred[u * e..(u + 1) * e];
        for j in 0..e {
            row[j] = gamma[j] * (s * (t[j] + dr)) + beta[j];
        }
        let xh = &norms.xhat_z[r * n..(r + 1) * n];
        for k in 0..n {
            row[e + k] = gamma[e + k] * xh[k] + beta[e + k];
        }
    }
    let y0z = Mat {
        data: &y0[e..rows * d],
        rs: d as isize,
        cs: 1,
    };
    sgemm(rows, h1, n, y0z, Mat::rows(w_z, h1), y1, false, parallel);
    let hidden = sizes.len() > 2;
    for (r, out) in y1.chunks_mut(h1).take(rows).enumerate() {
        let (u, s, dr) = (norms.u[r], norms.s[r], norms.d[r]);
        let a = &f.a[u * h1..(u + 1) * h1];
        for k in 0..h1 {
            let v = out[k] + s * a[k] + s * dr * f.c_e[k] + f.k[k];
            out[k] = if hidden { leaky(v) } else { v };
        }
    }
}

/// The factored backward (module docs) of one head's layer norm and first layer for a part's
/// rows, given g = ∂L/∂y_1 (rows × H_1; the first layer's output, or the head's output for a
/// one-layer head) and y_1 (that layer's saved output, None for a one-layer head): writes
/// ∂L/∂z_r into `dz` (added to it with `accumulate`), the layer norm's and first layer's
/// gradients into the head's packed gradient `dp`, and adds ∂L/∂t_u into `dtable` (U × E).
/// `parallel` as in `nn::head::forward_rows`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    sizes: &[usize],
    p: &[f32],
    (table, f): (&CentredTable, &HeadFactors),
    norms: &RowNorms,
    mut g: Vec<f32>,
    y1: Option<&[f32]>,
    (dz, accumulate): (&mut [f32], bool),
    dp: &mut [f32],
    dtable: &mut [f32],
    parallel: bool,
) {
    let (d, e) = (sizes[0], table.width);
    let n = d - e;
    let (w_at, b_at, h1) = first_layer(sizes);
    let (gamma, beta) = (&p[..d], &p[d..2 * d]);
    let w = &p[w_at..w_at + d * h1];
    let (w_e, w_z) = w.split_at(e * h1);
    let rows = norms.s.len();
    if let Some(y1) = y1 {
        g.iter_mut()
            .zip(y1)
            .for_each(|(g, y)| *g *= leaky_derivative(*y));
    }
    let delta = g;
    // The z columns, per row: g_z = δ W_zᵀ and δW_z = y_{0,z}ᵀ δ.
    let mut gz = vec![0f32; rows * n];
    sgemm(
        rows,
        n,
        h1,
        Mat::rows(&delta, h1),
        Mat::rows_t(w_z, h1),
        &mut gz,
        false,
        parallel,
    );
    let y0z: Vec<f32> = norms
        .xhat_z
        .chunks(n.max(1))
        .flat_map(|x| {
            x.iter()
                .zip(&gamma[e..])
                .zip(&beta[e..])
                .map(|((x, g), b)| x * g + b)
        })
        .collect();
    sgemm(
        n,
        h1,
        rows,
        Mat::rows_t(&y0z, n),
        Mat::rows(&delta, h1),
        &mut dp[w_at + e * h1..w_at + d * h1],
        false,
        parallel,
    );
    // Per row: the layer norm's means, ∂L/∂z_r and the accumulators.
    let u_rows = table.rows();
    let mut s_acc = vec![0f32; u_rows * h1];
    let (mut q_acc, mut n_acc) = (vec![0f32; h1], vec![0f32; h1]);
    let (mut p_u, mut q2_u, mut r_u) = (vec![0f32; u_rows], vec![0f32; u_rows], vec![0f32; u_rows]);
    let (mut dgamma_z, mut dbeta_z) = (vec![0f32; n], vec![0f32; n]);
    let inv_d = 1.0 / d as f32;
    for r in 0..rows {
        let (u, s, dr) = (norms.u[r], norms.s[r], norms.d[r]);
        let dl = &delta[r * h1..(r + 1) * h1];
        let (g0, xh) = (&gz[r * n..(r + 1) * n], &norms.xhat_z[r * n..(r + 1) * n]);
        let p_r = lane_dot(dl, &f.c) * inv_d;
        let qz: f32 = g0
            .iter()
            .zip(&gamma[e..])
            .zip(xh)
            .map(|((g, m), x)| g * m * x)
            .sum();
        let qe = s * (lane_dot(dl, &f.a[u * h1..(u + 1) * h1]) + dr * lane_dot(dl, &f.c_e));
        let q_r = (qz + qe) * inv_d;
        let out = &mut dz[r * n..(r + 1) * n];
        for k in 0..n {
            let v = (gamma[e + k] * g0[k] - p_r - xh[k] * q_r) * s;
            out[k] = if accumulate { out[k] + v } else { v };
            dgamma_z[k] += g0[k] * xh[k];
            dbeta_z[k] += g0[k];
        }
        let (sd, su) = (s * dr, &mut s_acc[u * h1..(u + 1) * h1]);
        for k in 0..h1 {
            su[k] += s * dl[k];
            q_acc[k] += sd * dl[k];
            n_acc[k] += dl[k];
        }
        p_u[u] += s * p_r;
        q2_u[u] += s * s * q_r;
        r_u[u] += s * s * q_r * dr;
    }
    // The embedding columns, per table row: W_e S_u (U × E) and δW_e.
    let mut ws = vec![0f32; u_rows * e];
    sgemm(
        u_rows,
        e,
        h1,
        Mat::rows(&s_acc, h1),
        Mat::rows_t(w_e, h1),
        &mut ws,
        false,
        parallel,
    );
    let dw_e = &mut dp[w_at..w_at + e * h1];
    sgemm(
        e,
        h1,
        u_rows,
        Mat::rows_t(&f.scaled, e),
        Mat::rows(&s_acc, h1),
        dw_e,
        false,
        parallel,
    );
    for (j, row) in dw_e.chunks_mut(h1).enumerate() {
        let (gj, bj) = (gamma[j], beta[j]);
        row.iter_mut()
            .zip(q_acc.iter().zip(&n_acc))
            .for_each(|(v, (q, nk))| *v += gj * q + bj * nk);
    }
    dp[b_at..b_at + h1].copy_from_slice(&n_acc);
    for (j, w_row) in w_e.chunks(h1).enumerate() {
        dp[d + j] = lane_dot(&n_acc, w_row);
        let spread: f32 = (0..u_rows)
            .map(|u| table.centred[u * e + j] * ws[u * e + j])
            .sum();
        dp[j] = spread + lane_dot(&q_acc, w_row);
    }
    dp[e..d].copy_from_slice(&dgamma_z);
    dp[d + e..2 * d].copy_from_slice(&dbeta_z);
    for u in 0..u_rows {
        let shift = p_u[u] + r_u[u];
        let (wsu, tu) = (&ws[u * e..(u + 1) * e], &table.centred[u * e..(u + 1) * e]);
        dtable[u * e..(u + 1) * e]
            .iter_mut()
            .zip(wsu.iter().zip(&gamma[..e]).zip(tu))
            .for_each(|(dt, ((ws, g), t))| *dt += g * ws - shift - q2_u[u] * t);
    }
}
