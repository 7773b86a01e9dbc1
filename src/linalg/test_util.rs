//! Dense helpers for the unit tests of the slice kernels (row-major `f64`).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

pub(super) fn matmul(a: &[f64], b: &[f64], n: usize, m: usize, k: usize) -> Vec<f64> {
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

pub(super) fn transpose(a: &[f64], n: usize) -> Vec<f64> {
    let mut t = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            t[j * n + i] = a[i * n + j];
        }
    }
    t
}

pub(super) fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

pub(super) fn eye(n: usize) -> Vec<f64> {
    let mut e = vec![0.0; n * n];
    for i in 0..n {
        e[i * n + i] = 1.0;
    }
    e
}

pub(super) fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

/// A = M Mᵀ + n I.
pub(super) fn random_spd(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    let m = random(rng, n * n);
    let mut a = matmul(&m, &transpose(&m, n), n, n, n);
    for i in 0..n {
        a[i * n + i] += n as f64;
    }
    a
}
