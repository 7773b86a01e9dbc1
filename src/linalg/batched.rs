//! Batched CPU drivers of the tensor ops (`super::ops`): every item of a `(B, n, n)` storage slice
//! is computed independently by the same sequential slice kernel (in `f64` work buffers, the
//! Cayley map of f32 input in f32), in parallel with rayon from [`PAR_MIN_BATCH`] items, so
//! results do not depend on the number of threads.

use candle_core::{Error, Layout, WithDType};
use rayon::prelude::*;

use super::cayley::{cayley_item_f32, identity_plus_skew};
use super::factor::{NotPositiveDefinite, cholesky_in_place, gauss_jordan};
use super::solve::tri_solve;
use crate::nn::kernels::logical;

/// Batches with at least this many items are processed in parallel (rayon) by the tensor ops.
pub const PAR_MIN_BATCH: usize = 64;

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
pub(super) fn batch_square(layout: &Layout, op: &str) -> candle_core::Result<(usize, usize)> {
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

/// Runs `f(i, work, out)` for every item i of a `(B, n, n)` batch stored in `data` (described by
/// `layout`): `work` holds item i converted to `f64`, `out` its `out_size` outputs. Parallel and
/// deterministic as [`map_items`].
fn map_items_f64<T: WithDType>(
    data: &[T],
    layout: &Layout,
    b: usize,
    n: usize,
    out_size: usize,
    f: impl Fn(usize, &mut [f64], &mut [T]) -> Result<(), String> + Sync,
) -> candle_core::Result<Vec<T>> {
    let x = logical(data, layout);
    let nn = n * n;
    map_items(b, out_size, |i, out| {
        let mut work = vec![0.0; nn];
        to_f64_into(&x[i * nn..(i + 1) * nn], &mut work);
        f(i, &mut work, out)
    })
}

/// The error message of `op` for batch item `i` (of `b`) that is not positive definite.
fn not_positive_definite(op: &str, i: usize, b: usize, e: NotPositiveDefinite) -> String {
    format!(
        "{op}: batch element {i} (of {b}) is not positive definite \
         (pivot {} is <= 0 or not finite)",
        e.pivot
    )
}

/// L with A = L Lᵀ for every item (in f64; only the lower triangle of A is read).
pub(super) fn cholesky_batched<T: WithDType>(
    data: &[T],
    layout: &Layout,
    b: usize,
    n: usize,
) -> candle_core::Result<Vec<T>> {
    map_items_f64(data, layout, b, n, n * n, |i, work, out| {
        cholesky_in_place(work, n).map_err(|e| not_positive_definite("cholesky", i, b, e))?;
        from_f64_into(work, out);
        Ok(())
    })
}

/// log det A = 2 Σ_j log L_jj for every item, L the Cholesky factor of A (in f64).
pub(super) fn logdet_batched<T: WithDType>(
    data: &[T],
    layout: &Layout,
    b: usize,
    n: usize,
) -> candle_core::Result<Vec<T>> {
    map_items_f64(data, layout, b, n, 1, |i, work, out| {
        cholesky_in_place(work, n).map_err(|e| not_positive_definite("logdet_spd", i, b, e))?;
        let s: f64 = (0..n).map(|j| work[j * n + j].ln()).sum();
        out[0] = T::from_f64(2.0 * s);
        Ok(())
    })
}

/// A⁻¹ for every item (in f64, Gauss–Jordan with partial pivoting).
pub(super) fn inverse_batched<T: WithDType>(
    data: &[T],
    layout: &Layout,
    b: usize,
    n: usize,
) -> candle_core::Result<Vec<T>> {
    map_items_f64(data, layout, b, n, n * n, |i, work, out| {
        let mut piv = vec![0usize; n];
        let mut prow = vec![0.0; n];
        gauss_jordan(work, n, &mut piv, &mut prow).map_err(|e| {
            format!(
                "inverse: batch element {i} (of {b}) is singular (no pivot in column {})",
                e.pivot
            )
        })?;
        from_f64_into(work, out);
        Ok(())
    })
}

/// U = 2(I + A)⁻¹ − I for A = L − Lᵀ, L the strictly lower part of each item (in f64).
pub(super) fn cayley_batched<T: WithDType>(
    data: &[T],
    layout: &Layout,
    b: usize,
    n: usize,
) -> candle_core::Result<Vec<T>> {
    map_items_f64(data, layout, b, n, n * n, |i, raw, out| {
        let mut work = vec![0.0; n * n];
        identity_plus_skew(raw, n, &mut work, |v| v, 1.0);
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

/// As [`cayley_batched`] for f32, inverting I + A in f32 by Gauss–Jordan without pivoting.
///
/// No pivoting is needed: the symmetric part of I + A is I, so every pivot of the elimination
/// is at least 1 (each Schur complement again has a symmetric part ⪰ I) and the elimination is
/// stable without row exchanges. Agrees with the f64 kernel to f32 rounding
/// (`tests/linalg.rs`).
pub(super) fn cayley_batched_f32(
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

#[allow(clippy::too_many_arguments)]
pub(super) fn tri_solve_batched<T: WithDType>(
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
