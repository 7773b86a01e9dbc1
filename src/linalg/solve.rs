//! Triangular solves on plain row-major `f64` slices, outside the autograd graph: forward
//! substitution `L X = B` ([`solve_lower`]), back substitution `Lᵀ X = B` ([`solve_upper_t`]),
//! the kernel behind both and behind the batched tensor op ([`tri_solve`], `op(T) X = B` for
//! triangular `op(T)`), and `‖L⁻¹ M‖²_F` ([`frobenius_sq_lower_solve`]).

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
/// output of [`cholesky_in_place`](super::cholesky_in_place)); `Lᵀ` is never formed.
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
pub(super) fn tri_solve(
    t: &[f64],
    n: usize,
    k: usize,
    b: &mut [f64],
    backward: bool,
    transpose: bool,
) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::cholesky_in_place;
    use crate::linalg::test_util::{matmul, max_abs_diff, random, random_spd, transpose};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

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
}
