//! Factorisations of dense row-major `f64` matrices on plain slices, outside the autograd graph:
//! the Cholesky factor `A = L Lᵀ` ([`cholesky_in_place`]) and the inverse `A⁻¹` by Gauss–Jordan
//! elimination with partial pivoting ([`inverse_in_place`]), with their error types. The batched
//! tensor ops (`super::batched`) run the same kernels per item.

use std::fmt;

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
pub(super) fn gauss_jordan(
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

/// One Gauss–Jordan step at pivot (k, k), row exchanges done: row k is scaled by `inv` = 1/pivot
/// (its column k becomes the corresponding column of the inverse), then column k is removed from
/// every other row (rows whose entry is already zero are skipped).
#[inline(always)]
pub(super) fn jordan_step<F>(
    a: &mut [F],
    n: usize,
    k: usize,
    inv: F,
    one: F,
    zero: F,
    prow: &mut [F],
) where
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::test_util::{eye, matmul, max_abs_diff, random, random_spd, transpose};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

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
    fn inverse_singular_is_reported() {
        let mut a = vec![1.0, 2.0, 2.0, 4.0];
        assert_eq!(inverse_in_place(&mut a, 2), Err(Singular { pivot: 1 }));
        let mut z = vec![0.0; 4];
        assert_eq!(inverse_in_place(&mut z, 2), Err(Singular { pivot: 0 }));
        assert!(Singular { pivot: 1 }.to_string().contains("column 1"));
    }
}
