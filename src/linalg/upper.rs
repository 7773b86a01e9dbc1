//! Kernels for a Cholesky factor kept in upper form, U = Lᵀ (row-major n×n, A = Uᵀ U), for the
//! Laplace precisions that carry no gradient (`posterior::shape::Full`, the filter).
//!
//! Row-major U makes every step of the right-looking factorisation and of the KL's trace a
//! contiguous row operation, and the trailing updates are applied four pivot rows at a time, so
//! each later row is loaded and stored once per four pivots. Every entry still receives the same
//! floating-point operations in the same order as in the simple kernels of [`super`]
//! ([`super::cholesky_in_place`], [`super::frobenius_sq_lower_solve`]), which the tests compare
//! against. On x86-64 CPUs with AVX2 the same code is compiled a second time with 256-bit vectors
//! and chosen at run time; without fused multiply-adds both versions round identically.

use super::NotPositiveDefinite;

/// Pivot rows applied together in a trailing update.
const BLOCK: usize = 4;

/// Cholesky factorisation A + shift·I = Uᵀ U into `u` (row-major n×n, upper triangular with
/// positive diagonal, strict lower triangle zero). Reads only the lower triangle (diagonal
/// included) of the row-major `a`; fails with the first pivot that is ≤ 0 or not finite.
///
/// # Panics
/// If `a` or `u` does not hold n·n numbers.
pub fn cholesky_upper(
    a: &[f64],
    shift: f64,
    n: usize,
    u: &mut [f64],
) -> Result<(), NotPositiveDefinite> {
    assert!(
        a.len() == n * n && u.len() == n * n,
        "cholesky_upper: n·n numbers"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { cholesky_upper_avx2(a, shift, n, u) };
        }
    }
    cholesky_upper_generic(a, shift, n, u)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn cholesky_upper_avx2(
    a: &[f64],
    shift: f64,
    n: usize,
    u: &mut [f64],
) -> Result<(), NotPositiveDefinite> {
    cholesky_upper_generic(a, shift, n, u)
}

#[inline(always)]
fn cholesky_upper_generic(
    a: &[f64],
    shift: f64,
    n: usize,
    u: &mut [f64],
) -> Result<(), NotPositiveDefinite> {
    u.iter_mut().for_each(|v| *v = 0.0);
    for (i, row) in a.chunks_exact(n).enumerate() {
        for (j, v) in row[..=i].iter().enumerate() {
            u[j * n + i] = *v;
        }
        u[i * n + i] += shift;
    }
    for j0 in (0..n).step_by(BLOCK) {
        let j1 = (j0 + BLOCK).min(n);
        // The block's pivots one by one: scale row j, then update the block's later rows.
        for j in j0..j1 {
            let pivot = u[j * n + j];
            if !(pivot > 0.0 && pivot.is_finite()) {
                return Err(NotPositiveDefinite { pivot: j });
            }
            let d = pivot.sqrt();
            u[j * n + j] = d;
            u[j * n + j + 1..(j + 1) * n]
                .iter_mut()
                .for_each(|v| *v /= d);
            let (done, rest) = u.split_at_mut((j + 1) * n);
            let row_j = &done[j * n..];
            for i in j + 1..j1 {
                let f = row_j[i];
                rest[(i - j - 1) * n + i..(i - j) * n]
                    .iter_mut()
                    .zip(&row_j[i..])
                    .for_each(|(x, y)| *x -= f * y);
            }
        }
        // Every later row i loses U_ji · U[j, i..] for the block's pivots j, in order.
        let (done, rest) = u.split_at_mut(j1 * n);
        let pivots = &done[j0 * n..];
        for (r, row) in rest.chunks_exact_mut(n).enumerate() {
            let i = j1 + r;
            let mut factors = [0.0; BLOCK];
            (0..j1 - j0).for_each(|p| factors[p] = pivots[p * n + i]);
            update_with(&mut row[i..], &factors[..j1 - j0], pivots, n, i);
        }
    }
    Ok(())
}

/// ‖U_prev U⁻¹‖²_F for upper-triangular U and U_prev (row-major n×n): with A = UᵀU and
/// A_prev = U_prevᵀU_prev this is tr(A_prev A⁻¹), the trace term of a Gaussian KL. Row r of
/// Y = U_prev U⁻¹ solves y U = U_prev[r, :] from the left, y_m = (U_prev[r, m] − Σ_{k<m} y_k
/// U_km) / U_mm, as contiguous row updates (n³/6 multiply-adds in all). Rows are solved
/// four at a time, so that each row of U is loaded once for all of them.
pub fn frobenius_sq_upper_solve(u: &[f64], u_prev: &[f64], n: usize) -> f64 {
    assert!(
        u.len() == n * n && u_prev.len() == n * n,
        "frobenius: n·n numbers"
    );
    let mut y = vec![0.0; BLOCK * n];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { frobenius_avx2(u, u_prev, n, &mut y) };
        }
    }
    frobenius_generic(u, u_prev, n, &mut y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn frobenius_avx2(u: &[f64], u_prev: &[f64], n: usize, y: &mut [f64]) -> f64 {
    frobenius_generic(u, u_prev, n, y)
}

/// `y` holds [`BLOCK`] rows of n. Rows r0.. of Y are solved together from column r0 on; a row
/// r > r0 is zero before column r, and subtracting its zero products leaves it unchanged.
#[inline(always)]
fn frobenius_generic(u: &[f64], u_prev: &[f64], n: usize, y: &mut [f64]) -> f64 {
    let inv: Vec<f64> = (0..n).map(|m| 1.0 / u[m * n + m]).collect();
    let mut total = 0.0;
    for r0 in (0..n).step_by(BLOCK) {
        let rows = (n - r0).min(BLOCK);
        y.iter_mut().for_each(|v| *v = 0.0);
        for q in 0..rows {
            let r = r0 + q;
            y[q * n + r..(q + 1) * n].copy_from_slice(&u_prev[r * n + r..(r + 1) * n]);
        }
        let (y0, rest) = y.split_at_mut(n);
        let (y1, rest) = rest.split_at_mut(n);
        let (y2, y3) = rest.split_at_mut(n);
        for m in r0..n {
            let row = &u[m * n + m..(m + 1) * n];
            let d = inv[m];
            let (v0, v1, v2, v3) = (y0[m] * d, y1[m] * d, y2[m] * d, y3[m] * d);
            (y0[m], y1[m], y2[m], y3[m]) = (v0, v1, v2, v3);
            let len = n - m - 1;
            let (c, a0, a1) = (&row[1..], &mut y0[m + 1..], &mut y1[m + 1..]);
            let (a2, a3) = (&mut y2[m + 1..], &mut y3[m + 1..]);
            let (c, a0, a1, a2, a3) = (
                &c[..len],
                &mut a0[..len],
                &mut a1[..len],
                &mut a2[..len],
                &mut a3[..len],
            );
            for k in 0..len {
                a0[k] -= v0 * c[k];
                a1[k] -= v1 * c[k];
                a2[k] -= v2 * c[k];
                a3[k] -= v3 * c[k];
            }
        }
        total += sum_of_squares(&y[..rows * n]);
    }
    total
}

/// Σ x_k², see [`dot`].
#[inline(always)]
fn sum_of_squares(x: &[f64]) -> f64 {
    dot(x, x)
}

/// Σ x_k y_k over equal lengths in four interleaved partial sums: a fixed order, so that
/// the products vectorise instead of each addition waiting on the one before.
#[inline(always)]
pub fn dot(x: &[f64], y: &[f64]) -> f64 {
    let mut lanes = [0.0; BLOCK];
    let (xc, yc) = (x.chunks_exact(BLOCK), y.chunks_exact(BLOCK));
    let tail: f64 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(yc) {
        (0..BLOCK).for_each(|q| lanes[q] += a[q] * b[q]);
    }
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail
}

/// x[k] −= Σ_p factors[p] · rows[p][col + k], subtracting in order p = 0, 1, … (row p of
/// length n at `rows[p·n..]`, x the segment starting at column `col`).
#[inline(always)]
fn update_with(x: &mut [f64], factors: &[f64], rows: &[f64], n: usize, col: usize) {
    let row = |p: usize| &rows[p * n + col..(p + 1) * n];
    if factors.len() == BLOCK {
        let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
        let [f0, f1, f2, f3] = [factors[0], factors[1], factors[2], factors[3]];
        let len = x.len();
        let (r0, r1, r2, r3) = (&r0[..len], &r1[..len], &r2[..len], &r3[..len]);
        for k in 0..len {
            let mut v = x[k];
            v -= f0 * r0[k];
            v -= f1 * r1[k];
            v -= f2 * r2[k];
            v -= f3 * r3[k];
            x[k] = v;
        }
    } else {
        for (p, f) in factors.iter().enumerate() {
            x.iter_mut().zip(row(p)).for_each(|(x, y)| *x -= f * y);
        }
    }
}

/// x ← U⁻¹ x for one right-hand side (back substitution with contiguous rows of U): with
/// U = Lᵀ this is L⁻ᵀ x, which turns standard-normal noise into a sample of N(0, (UᵀU)⁻¹).
pub fn solve_upper(u: &[f64], n: usize, x: &mut [f64]) {
    assert!(
        u.len() == n * n && x.len() == n,
        "solve_upper: n·n and n numbers"
    );
    for i in (0..n).rev() {
        let row = &u[i * n..(i + 1) * n];
        x[i] = (x[i] - dot(&row[i + 1..], &x[i + 1..])) / row[i];
    }
}

/// x ← U⁻ᵀ x for one right-hand side (forward substitution with Uᵀ; not on a hot path).
pub fn solve_upper_transposed(u: &[f64], n: usize, x: &mut [f64]) {
    assert!(
        u.len() == n * n && x.len() == n,
        "solve_upper_transposed: n·n and n numbers"
    );
    super::solve::tri_solve(u, n, 1, x, false, true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A = M Mᵀ + I with M uniform in (−1, 1), and its upper triangle overwritten with garbage
    /// (only the lower triangle may be read).
    fn random_spd(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
        let m: Vec<f64> = (0..n * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let s: f64 = (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum();
                a[i * n + j] = s + if i == j { 1.0 } else { 0.0 };
                if j < i {
                    a[j * n + i] = 1e300;
                }
            }
        }
        a
    }

    fn transpose(a: &[f64], n: usize) -> Vec<f64> {
        (0..n * n).map(|k| a[(k % n) * n + k / n]).collect()
    }

    const SIZES: [usize; 9] = [1, 2, 3, 4, 5, 7, 8, 13, 64];

    #[test]
    fn cholesky_upper_is_the_transpose_of_the_simple_kernel_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for n in SIZES {
            let a = random_spd(&mut rng, n);
            let shift = 0.25;
            let mut l = a.clone();
            (0..n).for_each(|i| l[i * n + i] += shift);
            linalg::cholesky_in_place(&mut l, n).unwrap();
            let mut u = vec![f64::NAN; n * n];
            cholesky_upper(&a, shift, n, &mut u).unwrap();
            let lt = transpose(&l, n);
            assert!(
                u.iter().zip(&lt).all(|(p, q)| p.to_bits() == q.to_bits()),
                "n = {n}"
            );
        }
    }

    #[test]
    fn cholesky_upper_reports_the_same_pivot_as_the_simple_kernel() {
        let n = 6;
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut a = random_spd(&mut rng, n);
        a[4 * n + 4] = -50.0;
        let mut l = a.clone();
        let expected = linalg::cholesky_in_place(&mut l, n).unwrap_err();
        let mut u = vec![0.0; n * n];
        assert_eq!(cholesky_upper(&a, 0.0, n, &mut u), Err(expected));
        a[4 * n + 4] = f64::NAN;
        assert!(cholesky_upper(&a, 0.0, n, &mut u).is_err());
    }

    #[test]
    fn frobenius_trace_matches_the_simple_kernel_and_a_dense_computation() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for n in SIZES {
            let (a, b) = (random_spd(&mut rng, n), random_spd(&mut rng, n));
            let (mut ua, mut ub) = (vec![0.0; n * n], vec![0.0; n * n]);
            cholesky_upper(&a, 0.0, n, &mut ua).unwrap();
            cholesky_upper(&b, 0.0, n, &mut ub).unwrap();
            let got = frobenius_sq_upper_solve(&ua, &ub, n);
            let simple =
                linalg::frobenius_sq_lower_solve(&transpose(&ua, n), &transpose(&ub, n), n);
            assert!((got - simple).abs() <= 1e-12 * simple, "n = {n}");
            // tr(B A⁻¹) with the symmetric A, B filled in from their lower triangles.
            let full = |m: &[f64]| -> Vec<f64> {
                (0..n * n)
                    .map(|k| {
                        let (i, j) = (k / n, k % n);
                        m[i.max(j) * n + i.min(j)]
                    })
                    .collect()
            };
            let mut inv = full(&a);
            linalg::inverse_in_place(&mut inv, n).unwrap();
            let bf = full(&b);
            let trace: f64 = (0..n)
                .map(|i| (0..n).map(|k| bf[i * n + k] * inv[k * n + i]).sum::<f64>())
                .sum();
            assert!(
                (got - trace).abs() <= 1e-9 * trace,
                "n = {n}: {got} vs {trace}"
            );
        }
    }

    #[test]
    fn upper_solves_invert_u_and_its_transpose() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for n in SIZES {
            let a = random_spd(&mut rng, n);
            let mut u = vec![0.0; n * n];
            cholesky_upper(&a, 0.0, n, &mut u).unwrap();
            let b: Vec<f64> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let l = transpose(&u, n);
            let (mut x, mut expected) = (b.clone(), b.clone());
            solve_upper(&u, n, &mut x);
            linalg::solve_upper_t(&l, n, &mut expected);
            let close = |p: &[f64], q: &[f64]| {
                p.iter()
                    .zip(q)
                    .all(|(p, q)| (p - q).abs() <= 1e-12 * q.abs().max(1.0))
            };
            assert!(close(&x, &expected), "U⁻¹ b, n = {n}");
            let (mut x, mut expected) = (b.clone(), b);
            solve_upper_transposed(&u, n, &mut x);
            linalg::solve_lower(&l, n, &mut expected);
            assert!(close(&x, &expected), "U⁻ᵀ b, n = {n}");
        }
    }

    #[test]
    fn dot_in_lanes_matches_a_plain_sum() {
        for len in [0, 1, 3, 4, 5, 17, 64] {
            let x: Vec<f64> = (0..len).map(|i| (i as f64 * 0.37).sin()).collect();
            let y: Vec<f64> = (0..len).map(|i| (i as f64 * 0.91).cos()).collect();
            let plain: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
            assert!(
                (dot(&x, &y) - plain).abs() <= 1e-14 * len as f64,
                "len {len}"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_and_generic_paths_agree_bitwise() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let n = 64;
        let (a, b) = (random_spd(&mut rng, n), random_spd(&mut rng, n));
        let (mut p, mut q, mut ub) = (vec![0.0; n * n], vec![0.0; n * n], vec![0.0; n * n]);
        cholesky_upper_generic(&a, 0.5, n, &mut p).unwrap();
        // SAFETY: AVX2 support checked above.
        unsafe { cholesky_upper_avx2(&a, 0.5, n, &mut q) }.unwrap();
        assert!(p.iter().zip(&q).all(|(p, q)| p.to_bits() == q.to_bits()));
        cholesky_upper_generic(&b, 0.5, n, &mut ub).unwrap();
        let mut y = vec![0.0; BLOCK * n];
        let generic = frobenius_generic(&p, &ub, n, &mut y);
        // SAFETY: as above.
        let avx2 = unsafe { frobenius_avx2(&p, &ub, n, &mut y) };
        assert_eq!(generic.to_bits(), avx2.to_bits());
    }
}
