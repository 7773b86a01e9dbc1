//! Batched dense linear algebra that candle lacks: Cholesky factorisation, triangular solves,
//! inverses and SPD log-determinants of `(B, n, n)` tensors.
//!
//! Two layers:
//! * **Slice kernels** ([`cholesky_in_place`], [`solve_lower`], [`solve_upper_t`],
//!   [`inverse_in_place`]) on row-major `f64` data. Other modules use them outside the autograd
//!   graph. The Laplace precision, which carries no gradient, keeps its factor in upper form
//!   (U = Lᵀ) and uses the blocked kernels of [`upper`], checked against these simple ones.
//! * **Tensor ops** ([`cholesky`], [`solve_triangular`], [`inverse`], [`logdet_spd`], and the
//!   VRNN's Cayley map [`cayley_lower`]) as candle
//!   custom ops. They accept `f32` (and `f64`) CPU tensors of shape `(B, n, n)` or `(n, n)`, compute
//!   internally in `f64` (the Cayley map of f32 input in f32) and return the input dtype.
//!   Non-contiguous inputs are accepted. Batches of at least [`PAR_MIN_BATCH`] items are processed
//!   in parallel with rayon; every batch item is computed independently by the same sequential
//!   kernel, so results do not depend on the number of threads. Backward passes are written with
//!   ordinary tensor ops (the Cayley map's: per item, into one buffer) and are checked against
//!   finite differences in `tests/linalg.rs`.

pub mod upper;

use std::borrow::Cow;
use std::fmt;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Error, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Batches with at least this many items are processed in parallel (rayon) by the tensor ops.
pub const PAR_MIN_BATCH: usize = 64;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// The matrix given to [`cholesky_in_place`] is not (numerically) positive definite: the
/// Schur-complement pivot at index `pivot` was `<= 0` or not finite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotPositiveDefinite {
    /// Zero-based row/column at which the factorisation broke down.
    pub pivot: usize,
}

impl fmt::Display for NotPositiveDefinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "matrix is not positive definite (Cholesky pivot {} is <= 0 or not finite)",
            self.pivot
        )
    }
}

impl std::error::Error for NotPositiveDefinite {}

/// The matrix given to [`inverse_in_place`] is singular: after partial pivoting, every candidate
/// pivot in column `pivot` was exactly zero (or the column held a non-finite value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Singular {
    /// Zero-based column at which elimination found no usable pivot.
    pub pivot: usize,
}

impl fmt::Display for Singular {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "matrix is singular (no non-zero finite pivot in column {})",
            self.pivot
        )
    }
}

impl std::error::Error for Singular {}

// ---------------------------------------------------------------------------------------------
// Slice kernels (row-major, f64)
// ---------------------------------------------------------------------------------------------

/// Cholesky factorisation in place: on success `a` (row-major `n × n`) holds the lower-triangular
/// `L` with `A = L Lᵀ` and positive diagonal; the strict upper triangle is set to zero.
///
/// Only the lower triangle (diagonal included) of `A` is read, so `A` is implicitly the symmetric
/// matrix defined by it. Fails with the index of the first pivot
/// `A_ii − Σ_{k<i} L_ik² ≤ 0` (or non-finite); `a` is then partially overwritten.
///
/// # Panics
/// If `a.len() != n * n`.
pub fn cholesky_in_place(a: &mut [f64], n: usize) -> Result<(), NotPositiveDefinite> {
    assert_eq!(a.len(), n * n, "cholesky_in_place: a.len() must be n * n");
    // Right-looking elimination on U = Lᵀ (row-major upper triangle), so that every update is a
    // contiguous row operation: pivot j scales row j of U, then each later row i loses
    // U_ji · U[j, i..]. U starts as the transpose of A's lower triangle.
    let mut u = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            u[j * n + i] = a[i * n + j];
        }
    }
    for j in 0..n {
        let pivot = u[j * n + j];
        if !(pivot > 0.0 && pivot.is_finite()) {
            return Err(NotPositiveDefinite { pivot: j });
        }
        let d = pivot.sqrt();
        let (done, rest) = u.split_at_mut((j + 1) * n);
        let row_j = &mut done[j * n + j..];
        row_j[0] = d;
        row_j[1..].iter_mut().for_each(|v| *v /= d);
        for i in j + 1..n {
            let f = row_j[i - j];
            if f != 0.0 {
                let row_i = &mut rest[(i - j - 1) * n + i..(i - j) * n];
                row_i
                    .iter_mut()
                    .zip(&row_j[i - j..])
                    .for_each(|(x, y)| *x -= f * y);
            }
        }
    }
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = if j <= i { u[j * n + i] } else { 0.0 };
        }
    }
    Ok(())
}

/// Number of right-hand-side columns of `b` for an `n × n` system (`b` is row-major `n × k`).
fn rhs_cols(n: usize, b: &[f64], name: &str) -> usize {
    if n == 0 {
        assert!(b.is_empty(), "{name}: b must be empty when n = 0");
        return 0;
    }
    assert!(
        b.len().is_multiple_of(n) && !b.is_empty(),
        "{name}: b.len() must be a positive multiple of n"
    );
    b.len() / n
}

/// Forward substitution in place: solves `L X = B` where `L` is the lower triangle (diagonal
/// included) of the row-major `n × n` matrix `l` (its strict upper triangle is ignored).
///
/// `b` is a vector of length `n`, or more generally a row-major `n × k` matrix of `k`
/// right-hand sides (`b.len() = n k`); it is overwritten with `X = L⁻¹ B`. A zero diagonal
/// entry yields non-finite values (no check is made).
///
/// # Panics
/// If `l.len() != n * n` or `b.len()` is not a positive multiple of `n`.
pub fn solve_lower(l: &[f64], n: usize, b: &mut [f64]) {
    assert_eq!(l.len(), n * n, "solve_lower: l.len() must be n * n");
    let k = rhs_cols(n, b, "solve_lower");
    tri_solve(l, n, k, b, false, false);
}

/// Backward substitution in place with the transpose of a lower-triangular factor: solves
/// `Lᵀ X = B` where `L` is the lower triangle of the row-major `n × n` matrix `l` (e.g. the
/// output of [`cholesky_in_place`]); `Lᵀ` is never formed.
///
/// `b` is a vector of length `n` or a row-major `n × k` matrix; it is overwritten with
/// `X = L⁻ᵀ B`. Together with [`solve_lower`] this solves `A X = B` for `A = L Lᵀ`.
///
/// # Panics
/// If `l.len() != n * n` or `b.len()` is not a positive multiple of `n`.
pub fn solve_upper_t(l: &[f64], n: usize, b: &mut [f64]) {
    assert_eq!(l.len(), n * n, "solve_upper_t: l.len() must be n * n");
    let k = rhs_cols(n, b, "solve_upper_t");
    if k == 1 {
        // One right-hand side: eliminate column by column, x_i = b_i / L_ii, then
        // b_j −= L_ij x_i for j < i — row i of L, contiguous (L's columns are strided).
        for i in (0..n).rev() {
            let x = b[i] / l[i * n + i];
            b[i] = x;
            b[..i]
                .iter_mut()
                .zip(&l[i * n..i * n + i])
                .for_each(|(v, c)| *v -= c * x);
        }
        return;
    }
    tri_solve(l, n, k, b, true, true);
}

/// Solves `M X = B` in place for `B` row-major `n × k`, where `M = t` (`transpose = false`) or
/// `M = tᵀ` (`transpose = true`) is taken to be triangular: upper when `backward` is set (rows
/// are then solved from the last one), else lower. Only the entries of `t` that map to that
/// triangle of `M` are read.
fn tri_solve(t: &[f64], n: usize, k: usize, b: &mut [f64], backward: bool, transpose: bool) {
    let m = |i: usize, j: usize| {
        if transpose {
            t[j * n + i]
        } else {
            t[i * n + j]
        }
    };
    if !backward {
        // M lower triangular: x_i = (b_i − Σ_{j<i} M_ij x_j) / M_ii.
        for i in 0..n {
            let (done, rest) = b.split_at_mut(i * k);
            let row_i = &mut rest[..k];
            for j in 0..i {
                let f = m(i, j);
                if f != 0.0 {
                    for (x, &y) in row_i.iter_mut().zip(&done[j * k..(j + 1) * k]) {
                        *x -= f * y;
                    }
                }
            }
            let inv = 1.0 / m(i, i);
            for x in row_i.iter_mut() {
                *x *= inv;
            }
        }
    } else {
        // M upper triangular: x_i = (b_i − Σ_{j>i} M_ij x_j) / M_ii.
        for i in (0..n).rev() {
            let (head, done) = b.split_at_mut((i + 1) * k);
            let row_i = &mut head[i * k..];
            for j in i + 1..n {
                let f = m(i, j);
                if f != 0.0 {
                    let off = (j - i - 1) * k;
                    for (x, &y) in row_i.iter_mut().zip(&done[off..off + k]) {
                        *x -= f * y;
                    }
                }
            }
            let inv = 1.0 / m(i, i);
            for x in row_i.iter_mut() {
                *x *= inv;
            }
        }
    }
}

/// ‖L⁻¹ M‖²_F for lower-triangular L and M (n×n, row-major). X = L⁻¹M is lower triangular and
/// is found row by row, X[i, :] = (M[i, :] − Σ_{m<i} L[i, m] X[m, :]) / L[i, i], touching only
/// the columns ≤ i (n³/6 multiply-adds, contiguous rows).
pub fn frobenius_sq_lower_solve(l: &[f64], m: &[f64], n: usize) -> f64 {
    let mut x = vec![0.0; n * n];
    let mut total = 0.0;
    for i in 0..n {
        let (done, rest) = x.split_at_mut(i * n);
        let row = &mut rest[..=i];
        row.copy_from_slice(&m[i * n..i * n + i + 1]);
        for mm in 0..i {
            let c = l[i * n + mm];
            if c != 0.0 {
                let xm = &done[mm * n..mm * n + mm + 1];
                row[..=mm].iter_mut().zip(xm).for_each(|(r, v)| *r -= c * v);
            }
        }
        let d = l[i * n + i];
        row.iter_mut().for_each(|r| *r /= d);
        total += row.iter().map(|v| v * v).sum::<f64>();
    }
    total
}

/// Inverse in place by Gauss–Jordan elimination with partial (row) pivoting: on success the
/// row-major `n × n` matrix `a` is replaced by `A⁻¹`.
///
/// Fails when a column has no non-zero finite pivot (exactly singular); `a` is then left
/// partially overwritten. Nearly singular matrices are not detected: check the conditioning
/// yourself if it matters.
///
/// # Panics
/// If `a.len() != n * n`.
pub fn inverse_in_place(a: &mut [f64], n: usize) -> Result<(), Singular> {
    assert_eq!(a.len(), n * n, "inverse_in_place: a.len() must be n * n");
    let mut piv = vec![0usize; n];
    let mut prow = vec![0.0f64; n];
    gauss_jordan(a, n, &mut piv, &mut prow)
}

/// In-place Gauss–Jordan with scratch space `piv` (n) and `prow` (n).
///
/// On x86-64 CPUs with AVX2 the same code is compiled a second time with 256-bit vectors and
/// chosen at run time. Both versions perform the same IEEE operations in the same order (no
/// fused multiply-add), so results are bitwise identical.
fn gauss_jordan(
    a: &mut [f64],
    n: usize,
    piv: &mut [usize],
    prow: &mut [f64],
) -> Result<(), Singular> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { gauss_jordan_avx2(a, n, piv, prow) };
        }
    }
    gauss_jordan_generic(a, n, piv, prow)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gauss_jordan_avx2(
    a: &mut [f64],
    n: usize,
    piv: &mut [usize],
    prow: &mut [f64],
) -> Result<(), Singular> {
    gauss_jordan_generic(a, n, piv, prow)
}

#[inline(always)]
fn gauss_jordan_generic(
    a: &mut [f64],
    n: usize,
    piv: &mut [usize],
    prow: &mut [f64],
) -> Result<(), Singular> {
    for k in 0..n {
        // Partial pivoting: largest |a_ik| for i >= k.
        let mut p = k;
        let mut best = a[k * n + k].abs();
        for i in k + 1..n {
            let v = a[i * n + k].abs();
            if v > best {
                best = v;
                p = i;
            }
        }
        if !(best > 0.0 && best.is_finite()) {
            return Err(Singular { pivot: k });
        }
        if p != k {
            let (top, bottom) = a.split_at_mut(p * n);
            top[k * n..(k + 1) * n].swap_with_slice(&mut bottom[..n]);
        }
        piv[k] = p;
        jordan_step(a, n, k, 1.0 / a[k * n + k], 1.0, 0.0, prow);
    }
    // Row swaps of A are column swaps of A⁻¹, undone in reverse order.
    for k in (0..n).rev() {
        let p = piv[k];
        if p != k {
            for row in a.chunks_exact_mut(n) {
                row.swap(k, p);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Batched CPU drivers
// ---------------------------------------------------------------------------------------------

/// The logical (row-major) elements of a CPU storage slice described by `layout`.
pub(crate) fn logical<'a, T: Copy>(data: &'a [T], layout: &Layout) -> Cow<'a, [T]> {
    if let Some((start, end)) = layout.contiguous_offsets() {
        return Cow::Borrowed(&data[start..end]);
    }
    let dims = layout.dims();
    let stride = layout.stride();
    let count = layout.shape().elem_count();
    let mut out = Vec::with_capacity(count);
    if count == 0 {
        return Cow::Owned(out);
    }
    let mut idx = vec![0usize; dims.len()];
    let mut off = layout.start_offset();
    for _ in 0..count {
        out.push(data[off]);
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            off += stride[d];
            if idx[d] < dims[d] {
                break;
            }
            off -= stride[d] * dims[d];
            idx[d] = 0;
        }
    }
    Cow::Owned(out)
}

/// Runs `f(item, out_chunk)` for every batch item, in parallel when `batch >= PAR_MIN_BATCH`.
/// Returns the error of the lowest failing item (deterministic).
pub(crate) fn map_items<T, F>(batch: usize, out_size: usize, f: F) -> candle_core::Result<Vec<T>>
where
    T: WithDType,
    F: Fn(usize, &mut [T]) -> Result<(), String> + Sync,
{
    let mut out = vec![T::from_f64(0.0); batch * out_size];
    if out.is_empty() {
        return Ok(out);
    }
    let err = if batch >= PAR_MIN_BATCH {
        out.par_chunks_mut(out_size)
            .enumerate()
            .find_map_first(|(i, c)| f(i, c).err())
    } else {
        out.chunks_mut(out_size)
            .enumerate()
            .find_map(|(i, c)| f(i, c).err())
    };
    match err {
        Some(msg) => Err(Error::Msg(msg)),
        None => Ok(out),
    }
}

/// `(B, n)` of a `(B, n, n)` layout.
fn batch_square(layout: &Layout, op: &str) -> candle_core::Result<(usize, usize)> {
    match layout.dims() {
        &[b, n, m] if n == m => Ok((b, n)),
        d => Err(Error::Msg(format!(
            "{op}: expected a (B, n, n) tensor, got shape {d:?}"
        ))),
    }
}

fn to_f64_into<T: WithDType>(src: &[T], dst: &mut [f64]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s.to_f64();
    }
}

fn from_f64_into<T: WithDType>(src: &[f64], dst: &mut [T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = T::from_f64(s);
    }
}

fn cholesky_batched<T: WithDType>(
    data: &[T],
    layout: &Layout,
    b: usize,
    n: usize,
) -> candle_core::Result<Vec<T>> {
    let x = logical(data, layout);
    let nn = n * n;
    map_items(b, nn, |i, out| {
        let mut work = vec![0.0; nn];
        to_f64_into(&x[i * nn..(i + 1) * nn], &mut work);
        cholesky_in_place(&mut work, n).map_err(|e| {
            format!(
                "cholesky: batch element {i} (of {b}) is not positive definite \
                 (pivot {} is <= 0 or not finite)",
                e.pivot
            )
        })?;
        from_f64_into(&work, out);
        Ok(())
    })
}

fn logdet_batched<T: WithDType>(
    data: &[T],
    layout: &Layout,
    b: usize,
    n: usize,
) -> candle_core::Result<Vec<T>> {
    let x = logical(data, layout);
    let nn = n * n;
    map_items(b, 1, |i, out| {
        let mut work = vec![0.0; nn];
        to_f64_into(&x[i * nn..(i + 1) * nn], &mut work);
        cholesky_in_place(&mut work, n).map_err(|e| {
            format!(
                "logdet_spd: batch element {i} (of {b}) is not positive definite \
                 (pivot {} is <= 0 or not finite)",
                e.pivot
            )
        })?;
        let s: f64 = (0..n).map(|j| work[j * n + j].ln()).sum();
        out[0] = T::from_f64(2.0 * s);
        Ok(())
    })
}

fn inverse_batched<T: WithDType>(
    data: &[T],
    layout: &Layout,
    b: usize,
    n: usize,
) -> candle_core::Result<Vec<T>> {
    let x = logical(data, layout);
    let nn = n * n;
    map_items(b, nn, |i, out| {
        let mut work = vec![0.0; nn];
        let mut piv = vec![0usize; n];
        let mut prow = vec![0.0; n];
        to_f64_into(&x[i * nn..(i + 1) * nn], &mut work);
        gauss_jordan(&mut work, n, &mut piv, &mut prow).map_err(|e| {
            format!(
                "inverse: batch element {i} (of {b}) is singular (no pivot in column {})",
                e.pivot
            )
        })?;
        from_f64_into(&work, out);
        Ok(())
    })
}

/// U = 2(I + A)⁻¹ − I for A = L − Lᵀ, L the strictly lower part of each item (in f64).
fn cayley_batched<T: WithDType>(
    data: &[T],
    layout: &Layout,
    b: usize,
    n: usize,
) -> candle_core::Result<Vec<T>> {
    let x = logical(data, layout);
    let nn = n * n;
    map_items(b, nn, |i, out| {
        let mut work = vec![0.0; nn];
        identity_plus_skew(&x[i * nn..(i + 1) * nn], n, &mut work, |v| v.to_f64(), 1.0);
        let mut piv = vec![0usize; n];
        let mut prow = vec![0.0; n];
        // I + A is invertible for every finite skew-symmetric A (its eigenvalues are 1 + iλ).
        gauss_jordan(&mut work, n, &mut piv, &mut prow)
            .map_err(|_| format!("cayley: batch element {i} (of {b}) has non-finite entries"))?;
        for (k, o) in out.iter_mut().enumerate() {
            let diag = if k / n == k % n { 1.0 } else { 0.0 };
            *o = T::from_f64(2.0 * work[k] - diag);
        }
        Ok(())
    })
}

/// I + A with A = L − Lᵀ, L the strictly lower part of the n×n `raw`, into `out` (converted by
/// `to`).
fn identity_plus_skew<T: Copy, F: Copy + std::ops::Neg<Output = F>>(
    raw: &[T],
    n: usize,
    out: &mut [F],
    to: impl Fn(T) -> F,
    one: F,
) {
    identity_plus_skew_from(|r| &raw[r * n..r * n + r], n, out, to, one)
}

/// [`identity_plus_skew`] given row r's strictly lower entries by `lower(r)` (r values).
fn identity_plus_skew_from<'a, T: Copy + 'a, F: Copy + std::ops::Neg<Output = F>>(
    lower: impl Fn(usize) -> &'a [T],
    n: usize,
    out: &mut [F],
    to: impl Fn(T) -> F,
    one: F,
) {
    // Row by row: the lower part (contiguous), the one, then the upper part as the negated
    // transpose of the rows already written (no branch per entry).
    for r in 0..n {
        let row = &mut out[r * n..(r + 1) * n];
        (row[..r].iter_mut().zip(lower(r))).for_each(|(o, v)| *o = to(*v));
        row[r] = one;
    }
    for r in 0..n {
        for c in r + 1..n {
            out[r * n + c] = -out[c * n + r];
        }
    }
}

/// As [`cayley_batched`] for f32, inverting I + A in f32 by Gauss–Jordan without pivoting.
///
/// No pivoting is needed: the symmetric part of I + A is I, so every pivot of the elimination
/// is at least 1 (each Schur complement again has a symmetric part ⪰ I) and the elimination is
/// stable without row exchanges. Agrees with the f64 kernel to f32 rounding
/// (`tests/linalg.rs`).
fn cayley_batched_f32(
    data: &[f32],
    layout: &Layout,
    b: usize,
    n: usize,
) -> candle_core::Result<Vec<f32>> {
    let x = logical(data, layout);
    let nn = n * n;
    map_items(b, nn, |i, out| {
        cayley_item_f32(&x[i * nn..(i + 1) * nn], n, out, i, b)
    })
}

/// One item of [`cayley_batched_f32`]: U = 2(I + A)⁻¹ − I into `out` from the strictly lower
/// part of `raw` (item `i` of `b`, for the error message).
pub(crate) fn cayley_item_f32(
    raw: &[f32],
    n: usize,
    out: &mut [f32],
    i: usize,
    b: usize,
) -> Result<(), String> {
    identity_plus_skew(raw, n, out, |v| v, 1.0);
    cayley_of_identity_plus_skew_f32(n, out, i, b)
}

/// [`cayley_item_f32`] given only the strictly lower entries of L, row by row (row r's r
/// entries start at r(r − 1)/2: n(n − 1)/2 numbers in all).
pub(crate) fn cayley_packed_lower_f32(
    lower: &[f32],
    n: usize,
    out: &mut [f32],
    i: usize,
    b: usize,
) -> Result<(), String> {
    let row = |r: usize| &lower[strict_lower_len(r)..strict_lower_len(r) + r];
    identity_plus_skew_from(row, n, out, |v| v, 1.0);
    cayley_of_identity_plus_skew_f32(n, out, i, b)
}

/// `out` = I + A ↦ U = (I − A)(I + A)⁻¹ = 2(I + A)⁻¹ − I, in place (f32 Gauss–Jordan).
fn cayley_of_identity_plus_skew_f32(
    n: usize,
    out: &mut [f32],
    i: usize,
    b: usize,
) -> Result<(), String> {
    let mut snapshots = vec![0.0f32; JORDAN_BLOCK * n];
    if !gauss_jordan_unpivoted_f32(out, n, &mut snapshots) {
        return Err(format!(
            "cayley: batch element {i} (of {b}) has non-finite entries"
        ));
    }
    out.iter_mut().for_each(|o| *o *= 2.0);
    (0..n).for_each(|d| out[d * n + d] -= 1.0);
    Ok(())
}

/// Pivots eliminated together by [`gauss_jordan_unpivoted_f32`].
const JORDAN_BLOCK: usize = 4;

/// In-place f32 Gauss–Jordan inverse without pivoting; false when a pivot is zero or not
/// finite. `snapshots` holds [`JORDAN_BLOCK`]·n numbers.
///
/// The steps run [`JORDAN_BLOCK`] pivots at a time: first on the block's own rows (keeping a
/// copy of each pivot row as its step uses it), then on every other row, whose multipliers
/// come from a short recurrence on the block's columns, and whose other columns then receive
/// the block's updates in one pass, in the same order as one step at a time. Each row is thus
/// read and written once per block instead of once per pivot, with the same IEEE operations
/// on every entry (up to the sign of an exact zero) as [`gauss_jordan_unpivoted_f32_simple`]
/// (checked in the tests). Compiled a second time with AVX2 and chosen at run time (no FMA, so
/// both give the same bits).
fn gauss_jordan_unpivoted_f32(a: &mut [f32], n: usize, snapshots: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { gauss_jordan_unpivoted_f32_avx2(a, n, snapshots) };
        }
    }
    gauss_jordan_unpivoted_f32_blocked(a, n, snapshots)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gauss_jordan_unpivoted_f32_avx2(a: &mut [f32], n: usize, snapshots: &mut [f32]) -> bool {
    gauss_jordan_unpivoted_f32_blocked(a, n, snapshots)
}

#[inline(always)]
fn gauss_jordan_unpivoted_f32_blocked(a: &mut [f32], n: usize, snapshots: &mut [f32]) -> bool {
    for k0 in (0..n).step_by(JORDAN_BLOCK) {
        let size = JORDAN_BLOCK.min(n - k0);
        // The block's own rows, one step at a time.
        for q in 0..size {
            let k = k0 + q;
            let pivot = a[k * n + k];
            if !(pivot != 0.0 && pivot.is_finite()) {
                return false;
            }
            a[k * n + k] = 1.0;
            let inv = 1.0 / pivot;
            a[k * n..(k + 1) * n].iter_mut().for_each(|x| *x *= inv);
            let snap = &mut snapshots[q * n..(q + 1) * n];
            snap.copy_from_slice(&a[k * n..(k + 1) * n]);
            for i in (k0..k0 + size).filter(|&i| i != k) {
                let row = &mut a[i * n..(i + 1) * n];
                let f = row[k];
                if f != 0.0 {
                    row[k] = 0.0;
                    row.iter_mut().zip(&*snap).for_each(|(x, y)| *x -= f * y);
                }
            }
        }
        // Every other row: the multipliers, step by step on a copy of the block's columns …
        let snaps = &snapshots[..size * n];
        // The pivot rows' entries in the block's columns, s[q][c].
        let mut s = [[0.0f32; JORDAN_BLOCK]; JORDAN_BLOCK];
        for (q, sq) in s.iter_mut().enumerate().take(size) {
            sq[..size].copy_from_slice(&snaps[q * n + k0..q * n + k0 + size]);
        }
        for (i, row) in a.chunks_exact_mut(n).enumerate() {
            if (k0..k0 + size).contains(&i) {
                continue;
            }
            let mut block = [0.0f32; JORDAN_BLOCK];
            block[..size].copy_from_slice(&row[k0..k0 + size]);
            // A full block passes the constant JORDAN_BLOCK, so that after inlining the loops
            // unroll and the recurrence stays in registers.
            let f = if size == JORDAN_BLOCK {
                block_multipliers(&mut block, &s, JORDAN_BLOCK)
            } else {
                block_multipliers(&mut block, &s, size)
            };
            // … then every column in one pass, subtracting in step order (the block's columns
            // receive a throw-away update and are then overwritten with the copy: a whole row
            // of full vectors, with no remainder loops around the block).
            if size == JORDAN_BLOCK {
                let (s0, rest) = snaps.split_at(n);
                let (s1, rest) = rest.split_at(n);
                let (s2, s3) = rest.split_at(n);
                let rows = s0.iter().zip(s1).zip(s2).zip(s3);
                for (x, (((a, b), c), d)) in row.iter_mut().zip(rows) {
                    let mut v = *x;
                    v -= f[0] * a;
                    v -= f[1] * b;
                    v -= f[2] * c;
                    v -= f[3] * d;
                    *x = v;
                }
            } else {
                for (q, f) in f[..size].iter().enumerate() {
                    let s = &snaps[q * n..(q + 1) * n];
                    row.iter_mut().zip(s).for_each(|(x, y)| *x -= f * y);
                }
            }
            row[k0..k0 + size].copy_from_slice(&block[..size]);
        }
    }
    all_finite(a)
}

/// The multipliers of one row for a block of `size` ≤ [`JORDAN_BLOCK`] pivots, from the row's
/// entries in the block's columns (`b`, replaced by their final values) and the pivot rows'
/// entries there (`s`), one step at a time.
#[inline(always)]
fn block_multipliers(
    b: &mut [f32; JORDAN_BLOCK],
    s: &[[f32; JORDAN_BLOCK]; JORDAN_BLOCK],
    size: usize,
) -> [f32; JORDAN_BLOCK] {
    let mut f = [0.0f32; JORDAN_BLOCK];
    for q in 0..size {
        f[q] = b[q];
        b[q] = 0.0;
        for c in 0..size {
            b[c] -= f[q] * s[q][c];
        }
    }
    f
}

/// Whether every value is finite, as one integer reduction (which vectorises, unlike a
/// short-circuiting `all`).
#[inline(always)]
fn all_finite(a: &[f32]) -> bool {
    const EXPONENT: u32 = 0x7f80_0000;
    a.iter().fold(0u32, |bad, v| {
        bad | u32::from(v.to_bits() & EXPONENT == EXPONENT)
    }) == 0
}

/// The plain f32 Gauss–Jordan without pivoting, one step at a time: the reference the blocked
/// kernel is tested against.
#[cfg(test)]
fn gauss_jordan_unpivoted_f32_simple(a: &mut [f32], n: usize, prow: &mut [f32]) -> bool {
    for k in 0..n {
        let pivot = a[k * n + k];
        if !(pivot != 0.0 && pivot.is_finite()) {
            return false;
        }
        jordan_step(a, n, k, 1.0 / pivot, 1.0, 0.0, prow);
    }
    a.iter().all(|v| v.is_finite())
}

/// One Gauss–Jordan step at pivot (k, k), row exchanges done: row k is scaled by `inv` = 1/pivot
/// (its column k becomes the corresponding column of the inverse), then column k is removed from
/// every other row (rows whose entry is already zero are skipped).
#[inline(always)]
fn jordan_step<F>(a: &mut [F], n: usize, k: usize, inv: F, one: F, zero: F, prow: &mut [F])
where
    F: Copy + PartialEq + std::ops::MulAssign + std::ops::SubAssign + std::ops::Mul<Output = F>,
{
    a[k * n + k] = one;
    for x in &mut a[k * n..(k + 1) * n] {
        *x *= inv;
    }
    prow.copy_from_slice(&a[k * n..(k + 1) * n]);
    for (i, row) in a.chunks_exact_mut(n).enumerate() {
        let f = row[k];
        if i == k || f == zero {
            continue;
        }
        row[k] = zero;
        for (x, &y) in row.iter_mut().zip(prow.iter()) {
            *x -= f * y;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn tri_solve_batched<T: WithDType>(
    t: &[T],
    t_layout: &Layout,
    rhs: &[T],
    rhs_layout: &Layout,
    b: usize,
    n: usize,
    k: usize,
    lower: bool,
    transpose: bool,
) -> candle_core::Result<Vec<T>> {
    let t = logical(t, t_layout);
    let rhs = logical(rhs, rhs_layout);
    let nn = n * n;
    let nk = n * k;
    // op(T) is upper triangular iff exactly one of (T upper, transposed) holds.
    let backward = lower == transpose;
    map_items(b, nk, |i, out| {
        let mut tw = vec![0.0; nn];
        let mut xw = vec![0.0; nk];
        to_f64_into(&t[i * nn..(i + 1) * nn], &mut tw);
        to_f64_into(&rhs[i * nk..(i + 1) * nk], &mut xw);
        tri_solve(&tw, n, k, &mut xw, backward, transpose);
        from_f64_into(&xw, out);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Custom ops
// ---------------------------------------------------------------------------------------------

macro_rules! dispatch_float {
    ($storage:expr, $op:expr, |$v:ident| $body:expr) => {
        match $storage {
            CpuStorage::F32($v) => CpuStorage::F32($body),
            CpuStorage::F64($v) => CpuStorage::F64($body),
            s => {
                return Err(Error::Msg(format!(
                    "{}: unsupported dtype {:?} (f32 or f64 expected)",
                    $op,
                    s.dtype()
                )));
            }
        }
    };
}

struct CholeskyOp;

impl CustomOp1 for CholeskyOp {
    fn name(&self) -> &'static str {
        "lvrnn-cholesky"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, n) = batch_square(l, "cholesky")?;
        let out = dispatch_float!(s, "cholesky", |v| cholesky_batched(v, l, b, n)?);
        Ok((out, Shape::from((b, n, n))))
    }

    fn bwd(&self, _a: &Tensor, l: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        cholesky_backward(l, g).map(Some)
    }
}

struct LogdetOp;

impl CustomOp1 for LogdetOp {
    fn name(&self) -> &'static str {
        "lvrnn-logdet-spd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, n) = batch_square(l, "logdet_spd")?;
        let out = dispatch_float!(s, "logdet_spd", |v| logdet_batched(v, l, b, n)?);
        Ok((out, Shape::from(b)))
    }
}

struct InverseOp;

impl CustomOp1 for InverseOp {
    fn name(&self) -> &'static str {
        "lvrnn-inverse"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, n) = batch_square(l, "inverse")?;
        let out = dispatch_float!(s, "inverse", |v| inverse_batched(v, l, b, n)?);
        Ok((out, Shape::from((b, n, n))))
    }

    /// `dA = −A⁻ᵀ G A⁻ᵀ`, with ordinary tensor ops.
    fn bwd(&self, _a: &Tensor, inv: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // candle's matmul reads the transposed strides directly (no copy).
        let inv_t = inv.t()?;
        let ga = inv_t.matmul(&g.contiguous()?)?.matmul(&inv_t)?.neg()?;
        Ok(Some(ga))
    }
}

struct CayleyOp;

impl CustomOp1 for CayleyOp {
    fn name(&self) -> &'static str {
        "lvrnn-cayley"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, n) = batch_square(l, "cayley")?;
        let out = match s {
            // f32 (training) inverts in f32 without pivoting; f64 keeps the pivoted f64 kernel.
            CpuStorage::F32(v) => CpuStorage::F32(cayley_batched_f32(v, l, b, n)?),
            s => dispatch_float!(s, "cayley", |v| cayley_batched(v, l, b, n)?),
        };
        Ok((out, Shape::from((b, n, n))))
    }

    /// With M = (I + A)⁻¹ = (I + U)/2: dU = 2 dM = −2 M dA M, so Ā = −½ (I + U)ᵀ G (I + U)ᵀ;
    /// the raw input's gradient is the strictly lower part of Ā − Āᵀ (A = L − Lᵀ).
    ///
    /// Computed per batch item into one output (a composition of tensor ops holds about six
    /// (B, n, n) temporaries at once, the largest allocation of a full-covariance VRNN update).
    fn bwd(&self, _raw: &Tensor, u: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (b, n, _) = u.dims3()?;
        let ((us, ul), (gs, gl)) = (u.storage_and_layout(), g.storage_and_layout());
        let grad = match (&*us, &*gs) {
            (
                candle_core::Storage::Cpu(CpuStorage::F32(uv)),
                candle_core::Storage::Cpu(CpuStorage::F32(gv)),
            ) => per_item_grad((uv, ul), (gv, gl), b, n, cayley_backward_f32, u.device())?,
            (
                candle_core::Storage::Cpu(CpuStorage::F64(uv)),
                candle_core::Storage::Cpu(CpuStorage::F64(gv)),
            ) => per_item_grad((uv, ul), (gv, gl), b, n, cayley_backward_f64, u.device())?,
            _ => candle_core::bail!("cayley backward: f32 or f64 CPU tensors of one dtype"),
        };
        Ok(Some(grad))
    }
}

/// `kernel(u_i, g_i, n, out_i)` for every item i of a batch of n×n matrices u and g (given as
/// storage and layout), as one (b, n, n) tensor on `device`.
fn per_item_grad<T: WithDType>(
    (u, ul): (&[T], &Layout),
    (g, gl): (&[T], &Layout),
    b: usize,
    n: usize,
    kernel: fn(&[T], &[T], usize, &mut [T]),
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let (u, g) = (logical(u, ul), logical(g, gl));
    let nn = n * n;
    let out = map_items(b, nn, |i, out| {
        kernel(&u[i * nn..(i + 1) * nn], &g[i * nn..(i + 1) * nn], n, out);
        Ok(())
    })?;
    Tensor::from_vec(out, (b, n, n), device)
}

/// One item of the Cayley backward: `out` = strictly lower part of Ā − Āᵀ with
/// Ā = −½ Pᵀ G Pᵀ, P = I + U (n×n row-major each).
pub(crate) fn cayley_backward_f32(u: &[f32], g: &[f32], n: usize, out: &mut [f32]) {
    use crate::nn::kernels::{Mat, sgemm};
    let mut p = u.to_vec();
    (0..n).for_each(|d| p[d * n + d] += 1.0);
    let (mut pg, mut a) = (vec![0f32; n * n], vec![0f32; n * n]);
    sgemm(
        n,
        n,
        n,
        Mat::rows_t(&p, n),
        Mat::rows(g, n),
        &mut pg,
        false,
        false,
    );
    sgemm(
        n,
        n,
        n,
        Mat::rows(&pg, n),
        Mat::rows_t(&p, n),
        &mut a,
        false,
        false,
    );
    strict_lower_skew(&a, n, -0.5, out);
}

/// [`cayley_backward_f32`] giving only the strictly lower entries, packed row by row as
/// [`cayley_packed_lower_f32`] takes them (the others are zero).
pub(crate) fn cayley_backward_packed_lower_f32(u: &[f32], g: &[f32], n: usize, out: &mut [f32]) {
    let mut full = vec![0f32; n * n];
    cayley_backward_f32(u, g, n, &mut full);
    pack_strict_lower(&full, n, out);
}

/// n(n − 1)/2: the entries below the diagonal of an n×n matrix.
pub(crate) fn strict_lower_len(n: usize) -> usize {
    n * n.saturating_sub(1) / 2
}

/// The strictly lower entries of one n×n row-major matrix, packed row by row into `out`
/// ([`strict_lower_len`] numbers): row r's first r entries, a contiguous run each.
pub(crate) fn pack_strict_lower(full: &[f32], n: usize, out: &mut [f32]) {
    for r in 1..n {
        let at = strict_lower_len(r);
        out[at..at + r].copy_from_slice(&full[r * n..r * n + r]);
    }
}

/// The inverse of [`pack_strict_lower`]: writes the packed entries below the diagonal of
/// `full` and leaves its other entries as they are.
pub(crate) fn unpack_strict_lower(packed: &[f32], n: usize, full: &mut [f32]) {
    for r in 1..n {
        let at = strict_lower_len(r);
        full[r * n..r * n + r].copy_from_slice(&packed[at..at + r]);
    }
}

/// [`cayley_backward_f32`] in f64 with plain loops.
fn cayley_backward_f64(u: &[f64], g: &[f64], n: usize, out: &mut [f64]) {
    let p = |i: usize, j: usize| u[i * n + j] + if i == j { 1.0 } else { 0.0 };
    // Pᵀ G, then (Pᵀ G) Pᵀ.
    let mut pg = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let pki = p(k, i);
            (0..n).for_each(|j| pg[i * n + j] += pki * g[k * n + j]);
        }
    }
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = (0..n).map(|k| pg[i * n + k] * p(j, k)).sum();
        }
    }
    strict_lower_skew(&a, n, -0.5, out);
}

/// out[i][j] = scale·(a[i][j] − a[j][i]) below the diagonal, 0 on and above it.
fn strict_lower_skew<F>(a: &[F], n: usize, scale: F, out: &mut [F])
where
    F: WithDType,
{
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = if j < i {
                scale * (a[i * n + j] - a[j * n + i])
            } else {
                F::from_f64(0.0)
            };
        }
    }
}

struct TriSolveOp {
    lower: bool,
    transpose: bool,
}

impl CustomOp2 for TriSolveOp {
    fn name(&self) -> &'static str {
        "lvrnn-solve-triangular"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, n) = batch_square(l1, "solve_triangular")?;
        let k = match l2.dims() {
            &[b2, n2, k] if b2 == b && n2 == n => k,
            d => {
                return Err(Error::Msg(format!(
                    "solve_triangular: right-hand side of shape {d:?} does not match \
                     the triangular matrix of shape {:?} (expected ({b}, {n}, k))",
                    l1.dims()
                )));
            }
        };
        let (lower, transpose) = (self.lower, self.transpose);
        let out = match (s1, s2) {
            (CpuStorage::F32(t), CpuStorage::F32(r)) => {
                CpuStorage::F32(tri_solve_batched(t, l1, r, l2, b, n, k, lower, transpose)?)
            }
            (CpuStorage::F64(t), CpuStorage::F64(r)) => {
                CpuStorage::F64(tri_solve_batched(t, l1, r, l2, b, n, k, lower, transpose)?)
            }
            (a, c) => {
                return Err(Error::Msg(format!(
                    "solve_triangular: unsupported dtypes {:?} and {:?} (both f32 or both f64)",
                    a.dtype(),
                    c.dtype()
                )));
            }
        };
        Ok((out, Shape::from((b, n, k))))
    }

    /// With `M = op(T)` and `X = M⁻¹ B`: `B̄ = M⁻ᵀ X̄`, `M̄ = −B̄ Xᵀ`, and `T̄` is `M̄` (or `M̄ᵀ`
    /// when transposed) restricted to the triangle of `T` that the forward pass reads.
    fn bwd(
        &self,
        t: &Tensor,
        _rhs: &Tensor,
        x: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g_rhs = solve_triangular(t, g, self.lower, !self.transpose)?;
        let m_bar = if self.transpose {
            x.matmul(&g_rhs.t()?)?
        } else {
            g_rhs.matmul(&x.t()?)?
        };
        let n = t.dim(1)?;
        let mask = if self.lower {
            Tensor::tril2(n, t.dtype(), t.device())?
        } else {
            Tensor::triu2(n, t.dtype(), t.device())?
        };
        let g_t = m_bar.broadcast_mul(&mask)?.neg()?;
        Ok((Some(g_t), Some(g_rhs)))
    }
}

/// Cholesky backward (Murray 2016, symmetrised as in PyTorch): with `P = Φ(Lᵀ L̄)`, where `Φ`
/// keeps the lower triangle and halves the diagonal, `S = L⁻ᵀ P L⁻¹` and `Ā = ½ (S + Sᵀ)`.
fn cholesky_backward(l: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
    let n = l.dim(1)?;
    let (dt, dev) = (l.dtype(), l.device());
    let phi = (Tensor::tril2(n, dt, dev)? - (Tensor::eye(n, dt, dev)? * 0.5)?)?;
    let p = l.t()?.matmul(&g.contiguous()?)?.broadcast_mul(&phi)?;
    // Y = L⁻ᵀ P, then S = Y L⁻¹ = (L⁻ᵀ Yᵀ)ᵀ.
    let y = solve_triangular(l, &p, true, true)?;
    let s = solve_triangular(l, &y.t()?, true, true)?.t()?;
    (&s + &s.t()?)? * 0.5
}

// ---------------------------------------------------------------------------------------------
// Public tensor ops
// ---------------------------------------------------------------------------------------------

/// Applies `f` to a `(B, n, n)` tensor, also accepting `(n, n)` (treated as `B = 1`).
fn with_batch(
    a: &Tensor,
    op: &str,
    f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    match a.rank() {
        3 => f(&a.contiguous()?),
        2 => f(&a.unsqueeze(0)?.contiguous()?)?.squeeze(0),
        _ => Err(Error::Msg(format!(
            "{op}: expected a (B, n, n) or (n, n) tensor, got shape {:?}",
            a.dims()
        ))),
    }
}

/// Batched Cholesky factor: for symmetric positive definite `A` of shape `(B, n, n)` (or
/// `(n, n)`) returns the lower-triangular `L` with `A = L Lᵀ` and positive diagonal.
///
/// Only the lower triangle of `A` is read. Fails with a message naming the first batch element
/// that is not positive definite. Backward (Murray 2016): with `P = Φ(Lᵀ L̄)` (`Φ` = lower
/// triangle with halved diagonal), `Ā = ½ (S + Sᵀ)` for `S = L⁻ᵀ P L⁻¹` — the symmetric
/// gradient, valid for symmetric perturbations of `A` (as with any parametrisation that produces
/// a symmetric `A`, e.g. `M Mᵀ + c I`).
pub fn cholesky(a: &Tensor) -> candle_core::Result<Tensor> {
    with_batch(a, "cholesky", |a| a.apply_op1(CholeskyOp))
}

/// Batched triangular solve: returns `X` with `op(T) X = B`, where `T` is the lower
/// (`lower = true`) or upper (`lower = false`) triangle of `t` (the other triangle is ignored)
/// and `op(T) = Tᵀ` when `transpose` is set, else `T`.
///
/// Shapes: `t` is `(B, n, n)` and `b` is `(B, n, k)` → `X` is `(B, n, k)`; a `(B, n)` `b` is a
/// batch of vectors and gives `(B, n)`. Without the batch dimension, `t` is `(n, n)` and `b` is
/// `(n, k)` or `(n,)`. A zero on the diagonal gives non-finite values (not checked).
///
/// Backward w.r.t. both arguments, with `M = op(T)`: `B̄ = M⁻ᵀ X̄`, `M̄ = −B̄ Xᵀ`; `T̄` is `M̄` (or
/// `M̄ᵀ` when transposed) restricted to the triangle of `T` that is read.
pub fn solve_triangular(
    t: &Tensor,
    b: &Tensor,
    lower: bool,
    transpose: bool,
) -> candle_core::Result<Tensor> {
    let op = TriSolveOp { lower, transpose };
    match (t.rank(), b.rank()) {
        (3, 3) => t.contiguous()?.apply_op2(&b.contiguous()?, op),
        (3, 2) => t
            .contiguous()?
            .apply_op2(&b.unsqueeze(2)?.contiguous()?, op)?
            .squeeze(2),
        (2, 2) => t
            .unsqueeze(0)?
            .contiguous()?
            .apply_op2(&b.unsqueeze(0)?.contiguous()?, op)?
            .squeeze(0),
        (2, 1) => t
            .unsqueeze(0)?
            .contiguous()?
            .apply_op2(&b.reshape((1, b.dim(0)?, 1))?, op)?
            .reshape(b.dim(0)?),
        _ => Err(Error::Msg(format!(
            "solve_triangular: unsupported shapes {:?} and {:?} (expected (B, n, n) with \
             (B, n, k) or (B, n), or (n, n) with (n, k) or (n,))",
            t.dims(),
            b.dims()
        ))),
    }
}

/// Batched inverse `A⁻¹` of `(B, n, n)` (or `(n, n)`) matrices by Gauss–Jordan elimination with
/// partial pivoting in `f64`. Fails with a message naming the first exactly singular batch
/// element.
///
/// Backward: `Ā = −A⁻ᵀ G A⁻ᵀ` for the incoming gradient `G`, written with candle tensor ops so
/// the gradient flows on to whatever produced `A`.
pub fn inverse(a: &Tensor) -> candle_core::Result<Tensor> {
    with_batch(a, "inverse", |a| a.apply_op1(InverseOp))
}

/// The VRNN's Cayley map (paper App. B.2) of a batch `(B, n, n)`: with L the strictly lower
/// part of `raw` (the rest is ignored) and A = L − Lᵀ skew-symmetric,
/// `U = (I − A)(I + A)⁻¹ = 2(I + A)⁻¹ − I`, an orthogonal matrix. One fused op whose backward
/// needs only U (I + U = 2(I + A)⁻¹). The inverse runs in `f64` for f64 input and in f32
/// without pivoting for f32 input.
pub fn cayley_lower(raw: &Tensor) -> candle_core::Result<Tensor> {
    with_batch(raw, "cayley", |a| a.apply_op1(CayleyOp))
}

/// Batched log-determinant of symmetric positive definite matrices via Cholesky:
/// `log det A = 2 Σ_i log L_ii`. `(B, n, n)` gives `(B,)`; `(n, n)` gives a scalar (rank 0).
///
/// Only the lower triangle of `A` is read. **No backward**: the result is detached from the
/// graph (use `2 · sum(log(diag(cholesky(A))))` if a gradient is needed). Fails with a message
/// naming the first batch element that is not positive definite.
pub fn logdet_spd(a: &Tensor) -> candle_core::Result<Tensor> {
    with_batch(a, "logdet_spd", |a| a.apply_op1_no_bwd(&LogdetOp))
}

// ---------------------------------------------------------------------------------------------
// Unit tests of the slice kernels
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn matmul(a: &[f64], b: &[f64], n: usize, m: usize, k: usize) -> Vec<f64> {
        // (n × m) · (m × k)
        let mut c = vec![0.0; n * k];
        for i in 0..n {
            for p in 0..m {
                for j in 0..k {
                    c[i * k + j] += a[i * m + p] * b[p * k + j];
                }
            }
        }
        c
    }

    fn transpose(a: &[f64], n: usize) -> Vec<f64> {
        let mut t = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                t[j * n + i] = a[i * n + j];
            }
        }
        t
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    fn eye(n: usize) -> Vec<f64> {
        let mut e = vec![0.0; n * n];
        for i in 0..n {
            e[i * n + i] = 1.0;
        }
        e
    }

    fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f64> {
        (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    /// A = M Mᵀ + n I.
    fn random_spd(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
        let m = random(rng, n * n);
        let mut a = matmul(&m, &transpose(&m, n), n, n, n);
        for i in 0..n {
            a[i * n + i] += n as f64;
        }
        a
    }

    #[test]
    fn cholesky_2x2_closed_form() {
        // [[4, 2], [2, 3]] = L Lᵀ with L = [[2, 0], [1, √2]].
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        cholesky_in_place(&mut a, 2).unwrap();
        let want = [2.0, 0.0, 1.0, 2f64.sqrt()];
        assert!(max_abs_diff(&a, &want) < 1e-15, "{a:?}");
    }

    #[test]
    fn cholesky_3x3_closed_form_reads_lower_only() {
        // Classic example: L = [[2,0,0],[6,1,0],[-8,5,3]]. Upper triangle set to garbage.
        let mut a = vec![4.0, 99.0, 99.0, 12.0, 37.0, -99.0, -16.0, -43.0, 98.0];
        cholesky_in_place(&mut a, 3).unwrap();
        let want = [2.0, 0.0, 0.0, 6.0, 1.0, 0.0, -8.0, 5.0, 3.0];
        assert!(max_abs_diff(&a, &want) < 1e-13, "{a:?}");
    }

    #[test]
    fn cholesky_diagonal() {
        let mut a = vec![0.0; 16];
        for (i, d) in [1.0, 4.0, 9.0, 0.25].iter().enumerate() {
            a[i * 4 + i] = *d;
        }
        cholesky_in_place(&mut a, 4).unwrap();
        for (i, d) in [1.0, 2.0, 3.0, 0.5].iter().enumerate() {
            assert_eq!(a[i * 4 + i], *d);
        }
    }

    #[test]
    fn cholesky_random_spd_reconstructs() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for n in [1, 2, 5, 17, 40] {
            let a = random_spd(&mut rng, n);
            let mut l = a.clone();
            cholesky_in_place(&mut l, n).unwrap();
            for i in 0..n {
                assert!(l[i * n + i] > 0.0);
                for j in i + 1..n {
                    assert_eq!(l[i * n + j], 0.0);
                }
            }
            let llt = matmul(&l, &transpose(&l, n), n, n, n);
            // Tolerance: 1e-12 relative to the entries' scale (~n).
            assert!(max_abs_diff(&llt, &a) < 1e-12 * n as f64, "n = {n}");
        }
    }

    #[test]
    fn cholesky_failure_reports_pivot() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0]; // eigenvalues 3, −1
        assert_eq!(
            cholesky_in_place(&mut a, 2),
            Err(NotPositiveDefinite { pivot: 1 })
        );
        let mut z = vec![0.0; 9];
        assert_eq!(
            cholesky_in_place(&mut z, 3),
            Err(NotPositiveDefinite { pivot: 0 })
        );
        let mut nan = vec![1.0, 0.0, 0.0, f64::NAN];
        assert_eq!(
            cholesky_in_place(&mut nan, 2),
            Err(NotPositiveDefinite { pivot: 1 })
        );
        let e: Box<dyn std::error::Error> = Box::new(NotPositiveDefinite { pivot: 1 });
        assert!(e.to_string().contains("pivot 1"));
    }

    #[test]
    fn triangular_solves_by_hand() {
        // L = [[2,0,0],[1,3,0],[4,-1,5]], with garbage above the diagonal (ignored).
        let l = [2.0, 7.0, 7.0, 1.0, 3.0, 7.0, 4.0, -1.0, 5.0];
        // L x = b with x = (1, 2, -1): b = (2, 7, -3).
        let mut b = vec![2.0, 7.0, -3.0];
        solve_lower(&l, 3, &mut b);
        assert!(max_abs_diff(&b, &[1.0, 2.0, -1.0]) < 1e-15, "{b:?}");
        // Lᵀ x = b with Lᵀ = [[2,1,4],[0,3,-1],[0,0,5]], x = (1, 2, -1): b = (0, 7, -5).
        let mut b = vec![0.0, 7.0, -5.0];
        solve_upper_t(&l, 3, &mut b);
        assert!(max_abs_diff(&b, &[1.0, 2.0, -1.0]) < 1e-15, "{b:?}");
    }

    #[test]
    fn triangular_solves_random_multi_rhs() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let n = 7;
        let k = 3;
        let mut l = random_spd(&mut rng, n);
        cholesky_in_place(&mut l, n).unwrap();
        let x = random(&mut rng, n * k);
        let mut b = matmul(&l, &x, n, n, k);
        solve_lower(&l, n, &mut b);
        assert!(max_abs_diff(&b, &x) < 1e-12);
        let mut b = matmul(&transpose(&l, n), &x, n, n, k);
        solve_upper_t(&l, n, &mut b);
        assert!(max_abs_diff(&b, &x) < 1e-12);
        // Upper-triangle cases of the internal kernel: U = Lᵀ stored densely.
        let u = transpose(&l, n);
        let mut b = matmul(&u, &x, n, n, k);
        tri_solve(&u, n, k, &mut b, true, false);
        assert!(max_abs_diff(&b, &x) < 1e-12);
        let mut b = matmul(&l, &x, n, n, k);
        tri_solve(&u, n, k, &mut b, false, true);
        assert!(max_abs_diff(&b, &x) < 1e-12);
    }

    #[test]
    fn inverse_closed_forms() {
        // 2×2: [[a, b], [c, d]]⁻¹ = [[d, −b], [−c, a]] / (ad − bc).
        let mut a = vec![3.0, 1.0, 4.0, 2.0];
        inverse_in_place(&mut a, 2).unwrap();
        assert!(max_abs_diff(&a, &[1.0, -0.5, -2.0, 1.5]) < 1e-15, "{a:?}");
        // Needs pivoting: the permutation [[0, 1], [1, 0]] is its own inverse.
        let mut p = vec![0.0, 1.0, 1.0, 0.0];
        inverse_in_place(&mut p, 2).unwrap();
        assert_eq!(p, vec![0.0, 1.0, 1.0, 0.0]);
        // 3×3 with det 1: [[1,2,3],[0,1,4],[5,6,0]]⁻¹ = [[-24,18,5],[20,-15,-4],[-5,4,1]].
        let mut a = vec![1.0, 2.0, 3.0, 0.0, 1.0, 4.0, 5.0, 6.0, 0.0];
        inverse_in_place(&mut a, 3).unwrap();
        let want = [-24.0, 18.0, 5.0, 20.0, -15.0, -4.0, -5.0, 4.0, 1.0];
        assert!(max_abs_diff(&a, &want) < 1e-12, "{a:?}");
        // Diagonal.
        let mut d = vec![2.0, 0.0, 0.0, 0.0, -4.0, 0.0, 0.0, 0.0, 0.5];
        inverse_in_place(&mut d, 3).unwrap();
        assert_eq!(d, vec![0.5, 0.0, 0.0, 0.0, -0.25, 0.0, 0.0, 0.0, 2.0]);
    }

    #[test]
    fn inverse_random_times_a_is_identity() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for n in [1, 3, 8, 33, 64] {
            let mut a = random(&mut rng, n * n);
            for i in 0..n {
                a[i * n + i] += 2.0 * (n as f64).sqrt();
            }
            let mut inv = a.clone();
            inverse_in_place(&mut inv, n).unwrap();
            assert!(
                max_abs_diff(&matmul(&a, &inv, n, n, n), &eye(n)) < 1e-12,
                "n = {n}"
            );
            assert!(
                max_abs_diff(&matmul(&inv, &a, n, n, n), &eye(n)) < 1e-12,
                "n = {n}"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn inverse_avx2_and_generic_paths_agree_bitwise() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let n = 64;
        let a = random(&mut rng, n * n);
        let (mut x, mut y) = (a.clone(), a);
        let (mut piv, mut prow) = (vec![0; n], vec![0.0; n]);
        gauss_jordan_generic(&mut x, n, &mut piv, &mut prow).unwrap();
        // SAFETY: AVX2 support checked above.
        unsafe { gauss_jordan_avx2(&mut y, n, &mut piv, &mut prow) }.unwrap();
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()));
    }

    #[test]
    fn blocked_unpivoted_f32_inverse_equals_the_one_step_at_a_time_kernel() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        for n in [1, 2, 3, 4, 5, 7, 8, 9, 17, 64] {
            // I + A with A skew-symmetric (the Cayley map's matrix), plus a general matrix with
            // a dominant diagonal.
            let raw: Vec<f32> = random(&mut rng, n * n).iter().map(|v| *v as f32).collect();
            let mut skew = vec![0f32; n * n];
            identity_plus_skew(&raw, n, &mut skew, |v| v, 1.0);
            let mut general = raw.clone();
            (0..n).for_each(|d| general[d * n + d] += n as f32);
            for a in [skew, general] {
                let (mut simple, mut blocked) = (a.clone(), a);
                assert!(gauss_jordan_unpivoted_f32_simple(
                    &mut simple,
                    n,
                    &mut vec![0.0; n]
                ));
                let mut snapshots = vec![0.0; JORDAN_BLOCK * n];
                assert!(gauss_jordan_unpivoted_f32(&mut blocked, n, &mut snapshots));
                // The same operations on every entry: equal values (an exact zero may differ
                // in sign).
                assert!(simple.iter().zip(&blocked).all(|(p, q)| p == q), "n = {n}");
            }
        }
        let mut zero_pivot = vec![0f32, 1.0, 1.0, 0.0];
        assert!(!gauss_jordan_unpivoted_f32(
            &mut zero_pivot,
            2,
            &mut [0.0; 8]
        ));
    }

    #[test]
    fn inverse_singular_is_reported() {
        let mut a = vec![1.0, 2.0, 2.0, 4.0];
        assert_eq!(inverse_in_place(&mut a, 2), Err(Singular { pivot: 1 }));
        let mut z = vec![0.0; 4];
        assert_eq!(inverse_in_place(&mut z, 2), Err(Singular { pivot: 0 }));
        assert!(Singular { pivot: 1 }.to_string().contains("column 1"));
    }
}
