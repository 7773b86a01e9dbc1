//! The VRNN's Cayley map (paper App. B.2) on one n×n item, outside the autograd graph: with L
//! the strictly lower part of the raw matrix and A = L − Lᵀ skew-symmetric,
//! `U = (I − A)(I + A)⁻¹ = 2(I + A)⁻¹ − I`, orthogonal.
//!
//! * Forward: I + A from L ([`identity_plus_skew`]; from packed entries,
//!   [`cayley_packed_lower_f32`]), inverted in f32 by a blocked Gauss–Jordan without pivoting
//!   ([`gauss_jordan_unpivoted_f32`]; every pivot is at least 1), then `2(I + A)⁻¹ − I`. The f64
//!   forward (`super::batched::cayley_batched`) inverts with the pivoted `super::factor` kernel.
//! * Backward, from U alone: with P = I + U = 2(I + A)⁻¹, `Ā = −½ Pᵀ G Pᵀ` and the raw input's
//!   gradient is the strictly lower part of `Ā − Āᵀ` ([`cayley_backward_f32`],
//!   [`cayley_backward_f64`]).
//! * The strictly lower entries packed row by row, n(n − 1)/2 numbers ([`pack_strict_lower`]).

use candle_core::WithDType;

#[cfg(test)]
use super::factor::jordan_step;

/// I + A with A = L − Lᵀ, L the strictly lower part of the n×n `raw`, into `out` (converted by
/// `to`).
pub(super) fn identity_plus_skew<T: Copy, F: Copy + std::ops::Neg<Output = F>>(
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

/// One item of [`super::batched::cayley_batched_f32`]: U = 2(I + A)⁻¹ − I into `out` from the
/// strictly lower part of `raw` (item `i` of `b`, for the error message).
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
pub(super) fn cayley_backward_f64(u: &[f64], g: &[f64], n: usize, out: &mut [f64]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::test_util::random;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

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
}
