//! Tests of the posterior families (`lvrnn::posterior`) against independent plain-f64
//! computations: dense matrices, explicit Gauss–Jordan inverses and LU determinants written
//! here (not `lvrnn::linalg`), and an f64 LSTM with finite-difference Jacobians.
//!
//! Tolerances (each test restates its own):
//! - closed forms (entropy, KL, covariance) vs f64: 1e-5 absolute (KL, entropy O(1); the
//!   quadratic KL term is evaluated in f32 by the crate);
//! - Monte Carlo (n_Z = 20000): |estimate − truth| < 5 standard errors of the estimator;
//! - autograd gradients (f32) vs central differences (δ = 1e-5) of the f64 reference KL:
//!   1e-4·(1 + |g|) (Laplace), 5e-4·(1 + |g|) (VRNN, through the Cayley map's inverse);
//! - Laplace precisions vs J Jᵀ from f64 finite-difference Jacobians: 1e-4·(1 + |Λ|);
//! - Cayley map orthogonality: max |UᵀU − I| < 1e-5.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use common::tensors::{max_abs_diff, tensor, values};
use lvrnn::agent::{Core, ModelConfig, randn};
use lvrnn::nn::Params;
use lvrnn::nn::lstm::{Carry, Lstm};
use lvrnn::nn::mlp::Linear;
use lvrnn::posterior::laplace::{Laplace, Precision};
use lvrnn::posterior::vrnn::cayley;
use lvrnn::posterior::{
    Accumulate, Covariance, Gaussian, LaplaceConfig, PosteriorConfig, PosteriorFamily, StepInput,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

const LN_2PI_E: f64 = 2.837_877_066_409_345_5; // ln(2π) + 1

// ---------------------------------------------------------------------------------------------
// Plain f64 linear algebra (independent of lvrnn::linalg)
// ---------------------------------------------------------------------------------------------

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            for j in 0..n {
                c[i * n + j] += a[i * n + k] * b[k * n + j];
            }
        }
    }
    c
}

fn transpose(a: &[f64], n: usize) -> Vec<f64> {
    (0..n * n).map(|k| a[(k % n) * n + k / n]).collect()
}

fn eye(n: usize) -> Vec<f64> {
    (0..n * n)
        .map(|k| if k / n == k % n { 1.0 } else { 0.0 })
        .collect()
}

fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

fn scale(a: &[f64], s: f64) -> Vec<f64> {
    a.iter().map(|x| x * s).collect()
}

fn diag_matrix(d: &[f64]) -> Vec<f64> {
    let n = d.len();
    (0..n * n)
        .map(|k| if k / n == k % n { d[k / n] } else { 0.0 })
        .collect()
}

/// Gauss–Jordan with partial pivoting on an augmented [A | I].
fn inverse(a: &[f64], n: usize) -> Vec<f64> {
    let w = 2 * n;
    let mut m = vec![0.0; n * w];
    for i in 0..n {
        m[i * w..i * w + n].copy_from_slice(&a[i * n..(i + 1) * n]);
        m[i * w + n + i] = 1.0;
    }
    for col in 0..n {
        let p = (col..n)
            .max_by(|x, y| m[x * w + col].abs().total_cmp(&m[y * w + col].abs()))
            .unwrap();
        for j in 0..w {
            m.swap(col * w + j, p * w + j);
        }
        let piv = m[col * w + col];
        assert!(piv.abs() > 1e-12, "singular matrix in the test reference");
        for j in 0..w {
            m[col * w + j] /= piv;
        }
        for i in 0..n {
            if i != col {
                let f = m[i * w + col];
                for j in 0..w {
                    m[i * w + j] -= f * m[col * w + j];
                }
            }
        }
    }
    (0..n * n).map(|k| m[(k / n) * w + n + k % n]).collect()
}

/// ln det A by LU with partial pivoting (A must have positive determinant).
fn logdet(a: &[f64], n: usize) -> f64 {
    let mut m = a.to_vec();
    let mut sign = 1.0;
    let mut total = 0.0;
    for col in 0..n {
        let p = (col..n)
            .max_by(|x, y| m[x * n + col].abs().total_cmp(&m[y * n + col].abs()))
            .unwrap();
        if p != col {
            sign = -sign;
            for j in 0..n {
                m.swap(col * n + j, p * n + j);
            }
        }
        let piv = m[col * n + col];
        if piv < 0.0 {
            sign = -sign;
        }
        total += piv.abs().ln();
        for i in col + 1..n {
            let f = m[i * n + col] / piv;
            for j in col..n {
                m[i * n + j] -= f * m[col * n + j];
            }
        }
    }
    assert!(sign > 0.0, "determinant is not positive");
    total
}

/// KL(N(μ1, Σ1) ‖ N(μ0, Σ0)) with explicit inverse and determinants.
fn kl_dense(mu1: &[f64], s1: &[f64], mu0: &[f64], s0: &[f64]) -> f64 {
    let n = mu1.len();
    let s0i = inverse(s0, n);
    let trace: f64 = (0..n)
        .map(|i| (0..n).map(|k| s0i[i * n + k] * s1[k * n + i]).sum::<f64>())
        .sum();
    let d: Vec<f64> = mu1.iter().zip(mu0).map(|(a, b)| a - b).collect();
    let quad: f64 = (0..n)
        .map(|i| (0..n).map(|j| d[i] * s0i[i * n + j] * d[j]).sum::<f64>())
        .sum();
    0.5 * (trace + quad - n as f64 + logdet(s0, n) - logdet(s1, n))
}

fn entropy_dense(s: &[f64], n: usize) -> f64 {
    0.5 * n as f64 * LN_2PI_E + 0.5 * logdet(s, n)
}

/// ln N(z; μ, Σ) given Σ⁻¹ and ln det Σ.
fn log_density(z: &[f64], mu: &[f64], s_inv: &[f64], logdet_s: f64) -> f64 {
    let n = z.len();
    let d: Vec<f64> = z.iter().zip(mu).map(|(a, b)| a - b).collect();
    let quad: f64 = (0..n)
        .map(|i| (0..n).map(|j| d[i] * s_inv[i * n + j] * d[j]).sum::<f64>())
        .sum();
    -0.5 * (quad + logdet_s + n as f64 * (2.0 * std::f64::consts::PI).ln())
}

/// Cayley map U = (I − A)(I + A)⁻¹ in f64.
fn cayley_f64(a: &[f64], n: usize) -> Vec<f64> {
    let i = eye(n);
    matmul(&add(&i, &scale(a, -1.0)), &inverse(&add(&i, a), n), n)
}

/// U diag(exp s) Uᵀ.
fn spectral_cov(u: &[f64], log_s: &[f64]) -> Vec<f64> {
    let n = log_s.len();
    let ds = diag_matrix(&log_s.iter().map(|s| s.exp()).collect::<Vec<_>>());
    matmul(&matmul(u, &ds, n), &transpose(u, n), n)
}

/// A 3-D rotation R_z(a)·R_x(b)·R_y(c).
fn rotation3(a: f64, b: f64, c: f64) -> Vec<f64> {
    let rz = vec![a.cos(), -a.sin(), 0.0, a.sin(), a.cos(), 0.0, 0.0, 0.0, 1.0];
    let rx = vec![1.0, 0.0, 0.0, 0.0, b.cos(), -b.sin(), 0.0, b.sin(), b.cos()];
    let ry = vec![c.cos(), 0.0, c.sin(), 0.0, 1.0, 0.0, -c.sin(), 0.0, c.cos()];
    matmul(&matmul(&rz, &rx, 3), &ry, 3)
}

/// A random symmetric positive definite matrix A Aᵀ + 0.5·I.
fn random_spd(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    let a: Vec<f64> = (0..n * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
    add(&matmul(&a, &transpose(&a, n), n), &scale(&eye(n), 0.5))
}

// ---------------------------------------------------------------------------------------------
// Tensor helpers
// ---------------------------------------------------------------------------------------------

/// Rounds to f32 so that the crate and the reference see identical numbers.
fn f32r(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| *x as f32 as f64).collect()
}

/// A Laplace posterior from row-major precisions (B·n·n full, or B·n diagonal).
fn laplace_gaussian(
    mean: &[f64],
    b: usize,
    n: usize,
    lam: Vec<f64>,
    diagonal: bool,
    jitter: f64,
) -> Result<Gaussian> {
    let p = Precision::new(lam, b, n, diagonal, jitter)?;
    Ok(Gaussian {
        mean: tensor(mean, &[b, n]),
        cov: Covariance::Precision(p),
    })
}

/// A VRNN posterior from row-major U (B·n·n) or None, and log_s (B·n).
fn spectral_gaussian(
    mean: &[f64],
    b: usize,
    n: usize,
    u: Option<&[f64]>,
    log_s: &[f64],
) -> Gaussian {
    Gaussian {
        mean: tensor(mean, &[b, n]),
        cov: Covariance::Spectral {
            u: u.map(|u| tensor(u, &[b, n, n])),
            log_s: tensor(log_s, &[b, n]),
        },
    }
}

fn kl_values(q1: &Gaussian, q0: &Gaussian) -> Result<Vec<f64>> {
    Ok(values(
        &q1.kl_to(q0)?.expect("a KL for Gaussian posteriors"),
    ))
}

/// Dense Λ of task k with jitter added (the crate uses Λ + jitter·I everywhere).
fn jittered(lam: &[f64], k: usize, n: usize, diagonal: bool, jitter: f64) -> Vec<f64> {
    let m = if diagonal {
        diag_matrix(&lam[k * n..(k + 1) * n])
    } else {
        lam[k * n * n..(k + 1) * n * n].to_vec()
    };
    add(&m, &scale(&eye(n), jitter))
}

// ---------------------------------------------------------------------------------------------
// Laplace: closed forms
// ---------------------------------------------------------------------------------------------

#[test]
fn laplace_1d_entropy_and_kl_closed_forms() -> Result<()> {
    lvrnn::init_threads(1);
    // Two tasks, n = 1. Tolerance 1e-5 absolute.
    let (l1, l0) = ([2.0, 0.3], [0.5, 4.0]);
    let (m1, m0) = (f32r(&[0.7, -1.2]), f32r(&[-0.1, 0.4]));
    for diagonal in [false, true] {
        for jitter in [0.0, 0.1] {
            let q1 = laplace_gaussian(&m1, 2, 1, l1.to_vec(), diagonal, jitter)?;
            let q0 = laplace_gaussian(&m0, 2, 1, l0.to_vec(), diagonal, jitter)?;
            let ent = q1.entropy()?.unwrap();
            let kl = kl_values(&q1, &q0)?;
            for k in 0..2 {
                let (a, b) = (l1[k] + jitter, l0[k] + jitter);
                let want_ent = 0.5 * LN_2PI_E - 0.5 * a.ln();
                let want_kl = 0.5 * (b / a + b * (m1[k] - m0[k]).powi(2) - 1.0 + (a / b).ln());
                assert!(
                    (ent[k] - want_ent).abs() < 1e-5,
                    "entropy {} vs {want_ent}",
                    ent[k]
                );
                assert!(
                    (kl[k] - want_kl).abs() < 1e-5,
                    "KL {} vs {want_kl} (diagonal {diagonal}, jitter {jitter})",
                    kl[k]
                );
            }
            // KL(q ‖ q) = 0.
            assert!(kl_values(&q1, &q1)?.iter().all(|v| v.abs() < 1e-6));
        }
    }
    Ok(())
}

#[test]
fn laplace_2d_hand_made() -> Result<()> {
    lvrnn::init_threads(1);
    // Λ1 = [[2, .5], [.5, 1]] (det 1.75), Λ0 = [[1, −.3], [−.3, .5]] (det 0.41); jitter 0.
    // Tolerance 1e-5 absolute.
    let l1 = vec![2.0, 0.5, 0.5, 1.0];
    let l0 = vec![1.0, -0.3, -0.3, 0.5];
    let (m1, m0) = (f32r(&[0.3, -0.8]), f32r(&[1.1, 0.2]));
    let q1 = laplace_gaussian(&m1, 1, 2, l1.clone(), false, 0.0)?;
    let q0 = laplace_gaussian(&m0, 1, 2, l0.clone(), false, 0.0)?;
    // Entropy = ½·2·ln(2πe) − ½ ln det Λ1.
    let ent = q1.entropy()?.unwrap()[0];
    assert!((ent - (LN_2PI_E - 0.5 * 1.75f64.ln())).abs() < 1e-5);
    // Σ1 = adj(Λ1)/det = [[1, −.5], [−.5, 2]] / 1.75.
    let sigma1 = [1.0 / 1.75, -0.5 / 1.75, -0.5 / 1.75, 2.0 / 1.75];
    let cov = q1.covariance_matrix()?.unwrap();
    assert!(max_abs_diff(&cov[0], &sigma1) < 1e-12);
    // KL by hand: ½[tr(Λ0 Σ1) + dᵀΛ0 d − 2 + ln det Λ1 − ln det Λ0].
    let tr = l0[0] * sigma1[0] + l0[1] * sigma1[2] + l0[2] * sigma1[1] + l0[3] * sigma1[3];
    let d = [m1[0] - m0[0], m1[1] - m0[1]];
    let quad = l0[0] * d[0] * d[0] + 2.0 * l0[1] * d[0] * d[1] + l0[3] * d[1] * d[1];
    let want = 0.5 * (tr + quad - 2.0 + 1.75f64.ln() - 0.41f64.ln());
    let got = kl_values(&q1, &q0)?[0];
    eprintln!("2-D KL: {got} vs hand {want}");
    assert!((got - want).abs() < 1e-5);
    Ok(())
}

#[test]
fn laplace_3d_full_matches_dense_f64() -> Result<()> {
    lvrnn::init_threads(1);
    // Random SPD precisions, B = 2, n = 3, jitter 1e-3 (included in the reference).
    // Tolerance 1e-5 absolute for entropy and KL, 1e-10 for the covariance (f64 in the crate).
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (b, n, jitter) = (2, 3, 1e-3);
    let l1: Vec<f64> = (0..b).flat_map(|_| random_spd(&mut rng, n)).collect();
    let l0: Vec<f64> = (0..b).flat_map(|_| random_spd(&mut rng, n)).collect();
    let m1 = f32r(
        &(0..b * n)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect::<Vec<_>>(),
    );
    let m0 = f32r(
        &(0..b * n)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect::<Vec<_>>(),
    );
    let q1 = laplace_gaussian(&m1, b, n, l1.clone(), false, jitter)?;
    let q0 = laplace_gaussian(&m0, b, n, l0.clone(), false, jitter)?;
    let (ent, kl, cov) = (
        q1.entropy()?.unwrap(),
        kl_values(&q1, &q0)?,
        q1.covariance_matrix()?.unwrap(),
    );
    let mut worst: f64 = 0.0;
    for k in 0..b {
        let s1 = inverse(&jittered(&l1, k, n, false, jitter), n);
        let s0 = inverse(&jittered(&l0, k, n, false, jitter), n);
        let want_kl = kl_dense(&m1[k * n..(k + 1) * n], &s1, &m0[k * n..(k + 1) * n], &s0);
        worst = worst.max((kl[k] - want_kl).abs());
        assert!(
            (kl[k] - want_kl).abs() < 1e-5,
            "task {k}: KL {} vs {want_kl}",
            kl[k]
        );
        assert!((ent[k] - entropy_dense(&s1, n)).abs() < 1e-5);
        assert!(max_abs_diff(&cov[k], &s1) < 1e-10);
        if let Covariance::Precision(p) = &q1.cov {
            assert_eq!(p.dense(k), l1[k * n * n..(k + 1) * n * n].to_vec());
        }
    }
    eprintln!("3-D full Laplace KL: max abs error {worst:.2e} (tolerance 1e-5)");
    Ok(())
}

#[test]
fn laplace_diagonal_equals_full_with_diagonal_matrices() -> Result<()> {
    lvrnn::init_threads(1);
    // Tolerance 1e-6 (entropy, KL, covariance) and 1e-6 for samples drawn with the same noise.
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (b, n, jitter) = (2, 4, 1e-6);
    let d1: Vec<f64> = (0..b * n).map(|_| rng.gen_range(0.2..3.0)).collect();
    let d0: Vec<f64> = (0..b * n).map(|_| rng.gen_range(0.2..3.0)).collect();
    let full = |d: &[f64]| -> Vec<f64> {
        (0..b)
            .flat_map(|k| diag_matrix(&d[k * n..(k + 1) * n]))
            .collect()
    };
    let m1 = f32r(
        &(0..b * n)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect::<Vec<_>>(),
    );
    let m0 = f32r(
        &(0..b * n)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect::<Vec<_>>(),
    );
    let (q1d, q0d) = (
        laplace_gaussian(&m1, b, n, d1.clone(), true, jitter)?,
        laplace_gaussian(&m0, b, n, d0.clone(), true, jitter)?,
    );
    let (q1f, q0f) = (
        laplace_gaussian(&m1, b, n, full(&d1), false, jitter)?,
        laplace_gaussian(&m0, b, n, full(&d0), false, jitter)?,
    );
    assert!(max_abs_diff(&q1d.entropy()?.unwrap(), &q1f.entropy()?.unwrap()) < 1e-6);
    assert!(max_abs_diff(&kl_values(&q1d, &q0d)?, &kl_values(&q1f, &q0f)?) < 1e-6);
    let (cd, cf) = (
        q1d.covariance_matrix()?.unwrap(),
        q1f.covariance_matrix()?.unwrap(),
    );
    for k in 0..b {
        assert!(max_abs_diff(&cd[k], &cf[k]) < 1e-6);
    }
    let eps = randn(&mut rng, &[5, b, n], &candle_core::Device::Cpu)?;
    assert!(max_abs_diff(&values(&q1d.sample(&eps)?), &values(&q1f.sample(&eps)?)) < 1e-6);
    // Both against the 1-D formula per coordinate.
    let kl = kl_values(&q1d, &q0d)?;
    for k in 0..b {
        let want: f64 = (0..n)
            .map(|i| {
                let (a, c) = (d1[k * n + i] + jitter, d0[k * n + i] + jitter);
                0.5 * (c / a + c * (m1[k * n + i] - m0[k * n + i]).powi(2) - 1.0 + (a / c).ln())
            })
            .sum();
        assert!((kl[k] - want).abs() < 1e-5);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// VRNN: spectral covariance
// ---------------------------------------------------------------------------------------------

#[test]
fn vrnn_spectral_entropy_kl_and_covariance_match_dense() -> Result<()> {
    lvrnn::init_threads(1);
    // U = hand-made rotations; tolerance 1e-5 absolute (KL, entropy), 1e-5 (covariance).
    let (b, n) = (2, 3);
    let u1: Vec<f64> = f32r(&[rotation3(0.4, -0.9, 1.3), rotation3(2.0, 0.3, -0.5)].concat());
    let u0: Vec<f64> = f32r(&[rotation3(-1.1, 0.6, 0.2), rotation3(0.0, 0.0, 0.7)].concat());
    let s1 = f32r(&[0.3, -0.7, 0.1, -0.2, 0.5, 0.9]);
    let s0 = f32r(&[-0.4, 0.2, 0.6, 0.1, -0.3, 0.0]);
    let m1 = f32r(&[0.2, -0.5, 1.0, 0.0, 0.3, -0.6]);
    let m0 = f32r(&[-0.3, 0.1, 0.4, 0.8, -0.2, 0.1]);
    // Full.
    let q1 = spectral_gaussian(&m1, b, n, Some(&u1), &s1);
    let q0 = spectral_gaussian(&m0, b, n, Some(&u0), &s0);
    let (ent, kl, cov) = (
        q1.entropy()?.unwrap(),
        kl_values(&q1, &q0)?,
        q1.covariance_matrix()?.unwrap(),
    );
    for k in 0..b {
        let r = k * n..(k + 1) * n;
        let sig1 = spectral_cov(&u1[k * n * n..(k + 1) * n * n], &s1[r.clone()]);
        let sig0 = spectral_cov(&u0[k * n * n..(k + 1) * n * n], &s0[r.clone()]);
        let want = kl_dense(&m1[r.clone()], &sig1, &m0[r.clone()], &sig0);
        eprintln!("VRNN full task {k}: KL {} vs dense {want}", kl[k]);
        assert!((kl[k] - want).abs() < 1e-5);
        assert!((ent[k] - entropy_dense(&sig1, n)).abs() < 1e-5);
        assert!(max_abs_diff(&cov[k], &sig1) < 1e-5);
    }
    // Diagonal (U = I).
    let q1d = spectral_gaussian(&m1, b, n, None, &s1);
    let q0d = spectral_gaussian(&m0, b, n, None, &s0);
    let (ent, kl) = (q1d.entropy()?.unwrap(), kl_values(&q1d, &q0d)?);
    for k in 0..b {
        let r = k * n..(k + 1) * n;
        let sig1 = spectral_cov(&eye(n), &s1[r.clone()]);
        let sig0 = spectral_cov(&eye(n), &s0[r.clone()]);
        assert!((kl[k] - kl_dense(&m1[r.clone()], &sig1, &m0[r.clone()], &sig0)).abs() < 1e-5);
        assert!((ent[k] - entropy_dense(&sig1, n)).abs() < 1e-5);
    }
    // Mixing a full and a diagonal VRNN posterior, or two families, is an error.
    assert!(q1.kl_to(&q0d).is_err());
    let lap = laplace_gaussian(&m0, b, n, vec![1.0; b * n], true, 0.0)?;
    assert!(q1.kl_to(&lap).is_err());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Sampling and Monte Carlo
// ---------------------------------------------------------------------------------------------

/// Sample mean and covariance of z (n_Z, B, n) vs μ and Σ: every entry within 5 standard errors.
/// Returns the largest |error| / standard error.
fn check_moments(
    z: &[f64],
    nz: usize,
    b: usize,
    n: usize,
    mean: &[f64],
    sigma: &[Vec<f64>],
) -> f64 {
    let mut worst: f64 = 0.0;
    for k in 0..b {
        let at = |s: usize, i: usize| z[(s * b + k) * n + i];
        let mu: Vec<f64> = (0..n)
            .map(|i| (0..nz).map(|s| at(s, i)).sum::<f64>() / nz as f64)
            .collect();
        for i in 0..n {
            let se = (sigma[k][i * n + i] / nz as f64).sqrt();
            let zscore = (mu[i] - mean[k * n + i]).abs() / se;
            worst = worst.max(zscore);
            assert!(
                zscore < 5.0,
                "task {k}: sample mean {i} off by {zscore:.1} standard errors"
            );
        }
        for i in 0..n {
            for j in 0..n {
                let c = (0..nz)
                    .map(|s| (at(s, i) - mu[i]) * (at(s, j) - mu[j]))
                    .sum::<f64>()
                    / (nz - 1) as f64;
                let sij = sigma[k][i * n + j];
                let se =
                    ((sigma[k][i * n + i] * sigma[k][j * n + j] + sij * sij) / nz as f64).sqrt();
                let zscore = (c - sij).abs() / se;
                worst = worst.max(zscore);
                assert!(
                    zscore < 5.0,
                    "task {k}: sample covariance ({i},{j}) = {c} vs {sij}: {zscore:.1} standard errors"
                );
            }
        }
    }
    worst
}

#[test]
fn sample_moments_match_the_posterior() -> Result<()> {
    lvrnn::init_threads(1);
    // n_Z = 20000, B = 2, n = 3. Tolerance: every mean/covariance entry within 5 standard errors.
    let (nz, b, n) = (20000, 2, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let mean = f32r(
        &(0..b * n)
            .map(|_| rng.gen_range(-2.0..2.0))
            .collect::<Vec<_>>(),
    );
    // Laplace, full: Σ = (Λ + jitter)⁻¹ from the explicit inverse.
    let lam: Vec<f64> = (0..b).flat_map(|_| random_spd(&mut rng, n)).collect();
    let q = laplace_gaussian(&mean, b, n, lam.clone(), false, 1e-6)?;
    let eps = randn(&mut rng, &[nz, b, n], &candle_core::Device::Cpu)?;
    let z = q.sample(&eps)?;
    assert_eq!(z.dims(), &[nz, b, n]);
    let sigma: Vec<Vec<f64>> = (0..b)
        .map(|k| inverse(&jittered(&lam, k, n, false, 1e-6), n))
        .collect();
    let w = check_moments(&values(&z), nz, b, n, &mean, &sigma);
    eprintln!("Laplace full: worst |error| = {w:.2} standard errors");
    // Laplace, diagonal.
    let d: Vec<f64> = (0..b * n).map(|_| rng.gen_range(0.3..3.0)).collect();
    let q = laplace_gaussian(&mean, b, n, d.clone(), true, 1e-6)?;
    let sigma: Vec<Vec<f64>> = (0..b)
        .map(|k| inverse(&jittered(&d, k, n, true, 1e-6), n))
        .collect();
    let w = check_moments(
        &values(&q.sample(&randn(&mut rng, &[nz, b, n], &candle_core::Device::Cpu)?)?),
        nz,
        b,
        n,
        &mean,
        &sigma,
    );
    eprintln!("Laplace diagonal: worst |error| = {w:.2} standard errors");
    // VRNN, full: Σ = U diag(e^s) Uᵀ.
    let u = f32r(&[rotation3(0.7, -0.4, 1.9), rotation3(-1.3, 0.8, 0.1)].concat());
    let s = f32r(&[0.5, -0.8, 0.2, 1.0, 0.0, -0.5]);
    let q = spectral_gaussian(&mean, b, n, Some(&u), &s);
    let sigma: Vec<Vec<f64>> = (0..b)
        .map(|k| spectral_cov(&u[k * n * n..(k + 1) * n * n], &s[k * n..(k + 1) * n]))
        .collect();
    let w = check_moments(
        &values(&q.sample(&randn(&mut rng, &[nz, b, n], &candle_core::Device::Cpu)?)?),
        nz,
        b,
        n,
        &mean,
        &sigma,
    );
    eprintln!("VRNN full: worst |error| = {w:.2} standard errors");
    // VRNN, diagonal.
    let q = spectral_gaussian(&mean, b, n, None, &s);
    let sigma: Vec<Vec<f64>> = (0..b)
        .map(|k| spectral_cov(&eye(n), &s[k * n..(k + 1) * n]))
        .collect();
    let w = check_moments(
        &values(&q.sample(&randn(&mut rng, &[nz, b, n], &candle_core::Device::Cpu)?)?),
        nz,
        b,
        n,
        &mean,
        &sigma,
    );
    eprintln!("VRNN diagonal: worst |error| = {w:.2} standard errors");
    // Point estimate: z = μ for every sample.
    let q = Gaussian {
        mean: tensor(&mean, &[b, n]),
        cov: Covariance::Point,
    };
    let z = values(&q.sample(&randn(&mut rng, &[4, b, n], &candle_core::Device::Cpu)?)?);
    assert_eq!(z, [mean.clone(), mean.clone(), mean.clone(), mean].concat());
    assert!(q.entropy()?.is_none() && q.kl_to(&q)?.is_none());
    Ok(())
}

/// E_{z~q1}[ln q1(z) − ln q0(z)] from the crate's sampler, vs kl_to, within 5 standard errors.
fn monte_carlo_kl(
    q1: &Gaussian,
    q0: &Gaussian,
    s1: &[Vec<f64>],
    s0: &[Vec<f64>],
    rng: &mut ChaCha8Rng,
) -> Result<f64> {
    let (b, n) = (q1.batch()?, q1.dim()?);
    let nz = 20000;
    let z = values(&q1.sample(&randn(rng, &[nz, b, n], &candle_core::Device::Cpu)?)?);
    let (mu1, mu0) = (values(&q1.mean), values(&q0.mean));
    let kl = kl_values(q1, q0)?;
    let mut worst: f64 = 0.0;
    for k in 0..b {
        let (i1, i0) = (inverse(&s1[k], n), inverse(&s0[k], n));
        let (ld1, ld0) = (logdet(&s1[k], n), logdet(&s0[k], n));
        let r = k * n..(k + 1) * n;
        let ratios: Vec<f64> = (0..nz)
            .map(|s| {
                let zs = &z[(s * b + k) * n..(s * b + k + 1) * n];
                log_density(zs, &mu1[r.clone()], &i1, ld1)
                    - log_density(zs, &mu0[r.clone()], &i0, ld0)
            })
            .collect();
        let m = ratios.iter().sum::<f64>() / nz as f64;
        let var = ratios.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (nz - 1) as f64;
        let se = (var / nz as f64).sqrt();
        let zscore = (m - kl[k]).abs() / se;
        eprintln!(
            "task {k}: MC KL {m:.4} ± {se:.4}, closed form {:.4} ({zscore:.2} s.e.)",
            kl[k]
        );
        assert!(zscore < 5.0);
        worst = worst.max(zscore);
    }
    Ok(worst)
}

#[test]
fn monte_carlo_kl_matches_closed_form() -> Result<()> {
    lvrnn::init_threads(1);
    // 3-D full posteriors, n_Z = 20000; tolerance 5 standard errors of the MC mean.
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let (b, n, jitter) = (2, 3, 1e-6);
    let m1 = f32r(
        &(0..b * n)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect::<Vec<_>>(),
    );
    let m0 = f32r(
        &(0..b * n)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect::<Vec<_>>(),
    );
    let l1: Vec<f64> = (0..b).flat_map(|_| random_spd(&mut rng, n)).collect();
    let l0: Vec<f64> = (0..b).flat_map(|_| random_spd(&mut rng, n)).collect();
    let q1 = laplace_gaussian(&m1, b, n, l1.clone(), false, jitter)?;
    let q0 = laplace_gaussian(&m0, b, n, l0.clone(), false, jitter)?;
    let s1: Vec<Vec<f64>> = (0..b)
        .map(|k| inverse(&jittered(&l1, k, n, false, jitter), n))
        .collect();
    let s0: Vec<Vec<f64>> = (0..b)
        .map(|k| inverse(&jittered(&l0, k, n, false, jitter), n))
        .collect();
    monte_carlo_kl(&q1, &q0, &s1, &s0, &mut rng)?;
    // VRNN full.
    let u1 = f32r(&[rotation3(0.2, 1.1, -0.6), rotation3(-0.8, 0.5, 2.2)].concat());
    let u0 = f32r(&[rotation3(1.5, -0.3, 0.4), rotation3(0.1, 0.9, -1.7)].concat());
    let ls1 = f32r(&[0.2, -0.4, 0.6, -0.1, 0.3, 0.0]);
    let ls0 = f32r(&[0.0, 0.5, -0.3, 0.4, -0.6, 0.2]);
    let q1 = spectral_gaussian(&m1, b, n, Some(&u1), &ls1);
    let q0 = spectral_gaussian(&m0, b, n, Some(&u0), &ls0);
    let sig = |u: &[f64], s: &[f64]| -> Vec<Vec<f64>> {
        (0..b)
            .map(|k| spectral_cov(&u[k * n * n..(k + 1) * n * n], &s[k * n..(k + 1) * n]))
            .collect()
    };
    monte_carlo_kl(&q1, &q0, &sig(&u1, &ls1), &sig(&u0, &ls0), &mut rng)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Gradients of the KL and the stop-gradient on the previous posterior
// ---------------------------------------------------------------------------------------------

/// Absent or identically zero.
fn no_gradient(grads: &candle_core::backprop::GradStore, v: &Var) -> bool {
    grads
        .get(v.as_tensor())
        .is_none_or(|g| values(g).iter().all(|x| *x == 0.0))
}

#[test]
fn laplace_kl_gradient_and_stop_grad() -> Result<()> {
    lvrnn::init_threads(1);
    // ∂KL/∂μ_t (autograd, f32) vs central differences (δ = 1e-5) of the f64 dense KL;
    // tolerance 1e-4·(1 + |g|). The previous mean gets no gradient.
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let (b, n, jitter) = (2, 3, 1e-6);
    for diagonal in [false, true] {
        let m1 = f32r(
            &(0..b * n)
                .map(|_| rng.gen_range(-1.0..1.0))
                .collect::<Vec<_>>(),
        );
        let m0 = f32r(
            &(0..b * n)
                .map(|_| rng.gen_range(-1.0..1.0))
                .collect::<Vec<_>>(),
        );
        let (l1, l0): (Vec<f64>, Vec<f64>) = if diagonal {
            (
                (0..b * n).map(|_| rng.gen_range(0.3..3.0)).collect(),
                (0..b * n).map(|_| rng.gen_range(0.3..3.0)).collect(),
            )
        } else {
            (
                (0..b).flat_map(|_| random_spd(&mut rng, n)).collect(),
                (0..b).flat_map(|_| random_spd(&mut rng, n)).collect(),
            )
        };
        let cur_mean = Var::from_tensor(&tensor(&m1, &[b, n]))?;
        let prev_mean = Var::from_tensor(&tensor(&m0, &[b, n]))?;
        let q1 = Gaussian {
            mean: cur_mean.as_tensor().clone(),
            cov: Covariance::Precision(Precision::new(l1.clone(), b, n, diagonal, jitter)?),
        };
        let q0 = Gaussian {
            mean: prev_mean.as_tensor().clone(),
            cov: Covariance::Precision(Precision::new(l0.clone(), b, n, diagonal, jitter)?),
        };
        let grads = q1.kl_to(&q0)?.unwrap().sum_all()?.backward()?;
        let g = values(
            grads
                .get(cur_mean.as_tensor())
                .expect("gradient for the current mean"),
        );
        assert!(
            no_gradient(&grads, &prev_mean),
            "gradient leaked into the previous posterior's mean"
        );
        let mut worst: f64 = 0.0;
        for k in 0..b {
            let (s1, s0) = (
                inverse(&jittered(&l1, k, n, diagonal, jitter), n),
                inverse(&jittered(&l0, k, n, diagonal, jitter), n),
            );
            let r = k * n..(k + 1) * n;
            for i in 0..n {
                let delta = 1e-5;
                let kl_at = |s: f64| {
                    let mut m = m1[r.clone()].to_vec();
                    m[i] += s;
                    kl_dense(&m, &s1, &m0[r.clone()], &s0)
                };
                let fd = (kl_at(delta) - kl_at(-delta)) / (2.0 * delta);
                let err = (g[k * n + i] - fd).abs();
                worst = worst.max(err);
                assert!(
                    err < 1e-4 * (1.0 + fd.abs()),
                    "∂KL/∂μ[{k},{i}] = {} vs FD {fd}",
                    g[k * n + i]
                );
            }
        }
        eprintln!("Laplace (diagonal {diagonal}) ∂KL/∂μ: max abs error {worst:.2e}");
        // Samples: z = μ + L⁻ᵀε, so ∂(Σ z)/∂μ = n_Z; the previous posterior is untouched.
        let nz = 7;
        let grads = q1
            .sample(&randn(&mut rng, &[nz, b, n], &candle_core::Device::Cpu)?)?
            .sum_all()?
            .backward()?;
        let g = values(grads.get(cur_mean.as_tensor()).unwrap());
        assert!(g.iter().all(|v| (*v - nz as f64).abs() < 1e-6));
    }
    Ok(())
}

/// Strictly-lower-triangular L (B, n, n) → U = cayley(L − Lᵀ) as a differentiable tensor.
fn cayley_from_lower(l: &Tensor, n: usize) -> Result<Tensor> {
    let mask: Vec<f64> = (0..n * n)
        .map(|k| if k / n > k % n { 1.0 } else { 0.0 })
        .collect();
    let l = l.broadcast_mul(&tensor(&mask, &[n, n]))?;
    let a = l.sub(&l.transpose(1, 2)?)?;
    cayley(&a, &Tensor::eye(n, DType::F32, &Device::Cpu)?)
}

/// The same in f64 for one task: entries of the strict lower triangle of `l` only.
fn cayley_from_lower_f64(l: &[f64], n: usize) -> Vec<f64> {
    let a: Vec<f64> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            if i > j {
                l[k]
            } else if i < j {
                -l[j * n + i]
            } else {
                0.0
            }
        })
        .collect();
    cayley_f64(&a, n)
}

#[test]
fn vrnn_kl_gradient_and_stop_grad() -> Result<()> {
    lvrnn::init_threads(1);
    // ∂KL/∂(μ, s, L) (autograd f32, U = cayley(L − Lᵀ)) vs central differences (δ = 1e-5) of the
    // f64 dense KL with an f64 Cayley map; tolerance 5e-4·(1 + |g|). Upper-triangle entries of
    // L get zero gradient; the previous posterior's (μ, s, L) get none.
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let (b, n) = (2, 3);
    let draw = |rng: &mut ChaCha8Rng, len: usize, r: f64| {
        f32r(&(0..len).map(|_| rng.gen_range(-r..r)).collect::<Vec<_>>())
    };
    let (m1, s1, l1) = (
        draw(&mut rng, b * n, 1.0),
        draw(&mut rng, b * n, 0.8),
        draw(&mut rng, b * n * n, 0.8),
    );
    let (m0, s0, l0) = (
        draw(&mut rng, b * n, 1.0),
        draw(&mut rng, b * n, 0.8),
        draw(&mut rng, b * n * n, 0.8),
    );
    let vars = |m: &[f64], s: &[f64], l: &[f64]| -> Result<(Var, Var, Var)> {
        Ok((
            Var::from_tensor(&tensor(m, &[b, n]))?,
            Var::from_tensor(&tensor(s, &[b, n]))?,
            Var::from_tensor(&tensor(l, &[b, n, n]))?,
        ))
    };
    let (vm1, vs1, vl1) = vars(&m1, &s1, &l1)?;
    let (vm0, vs0, vl0) = vars(&m0, &s0, &l0)?;
    let q1 = Gaussian {
        mean: vm1.as_tensor().clone(),
        cov: Covariance::Spectral {
            u: Some(cayley_from_lower(vl1.as_tensor(), n)?),
            log_s: vs1.as_tensor().clone(),
        },
    };
    let q0 = Gaussian {
        mean: vm0.as_tensor().clone(),
        cov: Covariance::Spectral {
            u: Some(cayley_from_lower(vl0.as_tensor(), n)?),
            log_s: vs0.as_tensor().clone(),
        },
    };
    let kl = q1.kl_to(&q0)?.unwrap();
    let grads = kl.sum_all()?.backward()?;
    for (name, v) in [("mean", &vm0), ("log_s", &vs0), ("L", &vl0)] {
        assert!(
            no_gradient(&grads, v),
            "gradient leaked into the previous posterior's {name}"
        );
    }
    let (gm, gs, gl) = (
        values(grads.get(vm1.as_tensor()).unwrap()),
        values(grads.get(vs1.as_tensor()).unwrap()),
        values(grads.get(vl1.as_tensor()).unwrap()),
    );

    let kl_ref = |k: usize, m: &[f64], s: &[f64], l: &[f64]| {
        let (r, rr) = (k * n..(k + 1) * n, k * n * n..(k + 1) * n * n);
        let sig1 = spectral_cov(&cayley_from_lower_f64(l, n), s);
        let sig0 = spectral_cov(&cayley_from_lower_f64(&l0[rr], n), &s0[r.clone()]);
        kl_dense(m, &sig1, &m0[r], &sig0)
    };
    let kl_vals = values(&kl);
    let delta = 1e-5;
    let mut worst: f64 = 0.0;
    for k in 0..b {
        let (r, rr) = (k * n..(k + 1) * n, k * n * n..(k + 1) * n * n);
        let (m, s, l) = (
            m1[r.clone()].to_vec(),
            s1[r.clone()].to_vec(),
            l1[rr.clone()].to_vec(),
        );
        assert!((kl_vals[k] - kl_ref(k, &m, &s, &l)).abs() < 1e-5);
        let mut check = |got: f64, f: &dyn Fn(f64) -> f64, what: String| {
            let fd = (f(delta) - f(-delta)) / (2.0 * delta);
            worst = worst.max((got - fd).abs());
            assert!(
                (got - fd).abs() < 5e-4 * (1.0 + fd.abs()),
                "{what}: autograd {got} vs FD {fd}"
            );
        };
        for i in 0..n {
            let bump = |v: &[f64], i: usize, d: f64| -> Vec<f64> {
                let mut v = v.to_vec();
                v[i] += d;
                v
            };
            check(
                gm[k * n + i],
                &|d| kl_ref(k, &bump(&m, i, d), &s, &l),
                format!("∂KL/∂μ[{k},{i}]"),
            );
            check(
                gs[k * n + i],
                &|d| kl_ref(k, &m, &bump(&s, i, d), &l),
                format!("∂KL/∂s[{k},{i}]"),
            );
            for j in 0..n {
                let fd_free = if i > j {
                    check(
                        gl[k * n * n + i * n + j],
                        &|d| kl_ref(k, &m, &s, &bump(&l, i * n + j, d)),
                        format!("∂KL/∂L[{k},{i},{j}]"),
                    );
                    false
                } else {
                    true
                };
                if fd_free {
                    assert_eq!(
                        gl[k * n * n + i * n + j],
                        0.0,
                        "masked entry L[{k},{i},{j}] got a gradient"
                    );
                }
            }
        }
    }
    eprintln!("VRNN ∂KL/∂(μ, s, L): max abs error {worst:.2e} (tolerance 5e-4·(1+|g|))");
    Ok(())
}

#[test]
fn cayley_map_is_orthogonal() -> Result<()> {
    lvrnn::init_threads(1);
    // Random skew-symmetric A (B = 3, n = 5): UᵀU = UUᵀ = I (1e-5), det U = +1 (1e-5), and U
    // equals (I − A)(I + A)⁻¹ computed in f64 (1e-5).
    let mut rng = ChaCha8Rng::seed_from_u64(51);
    let (b, n) = (3, 5);
    let mut a = vec![0.0; b * n * n];
    for k in 0..b {
        for i in 0..n {
            for j in 0..i {
                let v = rng.gen_range(-1.5f64..1.5) as f32 as f64;
                a[k * n * n + i * n + j] = v;
                a[k * n * n + j * n + i] = -v;
            }
        }
    }
    let u = values(&cayley(
        &tensor(&a, &[b, n, n]),
        &Tensor::eye(n, DType::F32, &Device::Cpu)?,
    )?);
    let mut worst: f64 = 0.0;
    for k in 0..b {
        let uk = &u[k * n * n..(k + 1) * n * n];
        let ut = transpose(uk, n);
        worst = worst
            .max(max_abs_diff(&matmul(&ut, uk, n), &eye(n)))
            .max(max_abs_diff(&matmul(uk, &ut, n), &eye(n)));
        assert!(max_abs_diff(uk, &cayley_f64(&a[k * n * n..(k + 1) * n * n], n)) < 1e-5);
        // det U = +1 (LU; U is orthogonal, so |det| = 1 and the sign is checked by `logdet`).
        assert!(logdet(uk, n).abs() < 1e-5);
    }
    eprintln!("Cayley: max |UᵀU − I| = {worst:.2e} (tolerance 1e-5)");
    assert!(worst < 1e-5);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The Laplace family's Table-2 variants against J Jᵀ from an f64 LSTM
// ---------------------------------------------------------------------------------------------

const LH: usize = 8; // hidden
const LN: usize = 3; // features
const LD: usize = 4; // input
const LB: usize = 2; // batch
const STEPS: usize = 5;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// A small LSTM + projection in f64 (gate blocks i, f, g, o; weights (in, out) row-major).
struct Net {
    wx: Vec<f64>,
    wh: Vec<f64>,
    b: Vec<f64>,
    p: Vec<f64>,
    pb: Vec<f64>,
}

impl Net {
    fn random(rng: &mut ChaCha8Rng) -> Self {
        let mut u =
            |len: usize, r: f64| f32r(&(0..len).map(|_| rng.gen_range(-r..r)).collect::<Vec<_>>());
        Self {
            wx: u(LD * 4 * LH, 0.6),
            wh: u(LH * 4 * LH, 0.6),
            b: u(4 * LH, 0.4),
            p: u(LH * LN, 0.8),
            pb: u(LN, 0.5),
        }
    }

    fn modules(&self) -> (Lstm, Linear) {
        let lstm = Lstm {
            wx: tensor(&self.wx, &[LD, 4 * LH]),
            wh: tensor(&self.wh, &[LH, 4 * LH]),
            b: tensor(&self.b, &[4 * LH]),
            hidden: LH,
        };
        (
            lstm,
            Linear {
                weight: tensor(&self.p, &[LH, LN]),
                bias: tensor(&self.pb, &[LN]),
            },
        )
    }

    fn step(&self, x: &[f64], c: &[f64], h: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let g4 = 4 * LH;
        let z: Vec<f64> = (0..g4)
            .map(|j| {
                self.b[j]
                    + (0..LD).map(|k| x[k] * self.wx[k * g4 + j]).sum::<f64>()
                    + (0..LH).map(|m| h[m] * self.wh[m * g4 + j]).sum::<f64>()
            })
            .collect();
        let (mut c2, mut h2) = (vec![0.0; LH], vec![0.0; LH]);
        for j in 0..LH {
            let (i, f, g, o) = (
                sigmoid(z[j]),
                sigmoid(z[LH + j]),
                z[2 * LH + j].tanh(),
                sigmoid(z[3 * LH + j]),
            );
            c2[j] = f * c[j] + i * g;
            h2[j] = o * c2[j].tanh();
        }
        (c2, h2)
    }

    fn project(&self, h: &[f64]) -> Vec<f64> {
        (0..LN)
            .map(|k| self.pb[k] + (0..LH).map(|j| h[j] * self.p[j * LN + k]).sum::<f64>())
            .collect()
    }

    /// ∂ P h'(x, (c, h)) / ∂h by central differences (δ = 1e-6), LN × LH.
    fn jacobian(&self, x: &[f64], c: &[f64], h: &[f64]) -> Vec<f64> {
        let delta = 1e-6;
        let mut j = vec![0.0; LN * LH];
        for m in 0..LH {
            let at = |s: f64| {
                let mut h = h.to_vec();
                h[m] += s;
                self.project(&self.step(x, c, &h).1)
            };
            let (p, q) = (at(delta), at(-delta));
            for k in 0..LN {
                j[k * LH + m] = (p[k] - q[k]) / (2.0 * delta);
            }
        }
        j
    }
}

fn jjt(j: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; LN * LN];
    for a in 0..LN {
        for b in 0..LN {
            out[a * LN + b] = (0..LH).map(|m| j[a * LH + m] * j[b * LH + m]).sum();
        }
    }
    out
}

/// Runs `Laplace::new(cfg)` over STEPS random inputs and compares every Λ_t and μ_t with the
/// reference: prior_t = Λ_{t−1} (accumulating) or damping·I; Λ_t = prior_t + Σ over the last
/// `window` inputs (0 = all) of J(x_i; c_t, h_t) J(x_i; c_t, h_t)ᵀ; the diagonal variant keeps
/// diag(Λ_t); μ_t = φ_t (+ μ_{t−1} for mu_sigma); Λ_0 = prior_precision·I, μ_0 = φ_0.
/// Tolerance 1e-4·(1 + |want|) for Λ and μ. Returns the largest error.
fn check_laplace_variant(cfg: LaplaceConfig, seed: u64) -> Result<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let net = Net::random(&mut rng);
    let (lstm, proj) = net.modules();
    let fam = Laplace::new(cfg.clone());
    assert_eq!(
        fam.history_window(),
        if cfg.window == 0 {
            usize::MAX
        } else {
            cfg.window
        }
    );
    let xs: Vec<Vec<f64>> = (0..STEPS)
        .map(|_| {
            f32r(
                &(0..LB * LD)
                    .map(|_| rng.sample::<f64, _>(StandardNormal))
                    .collect::<Vec<_>>(),
            )
        })
        .collect();

    let mut carry = Carry::zeros(LB, LH, &candle_core::Device::Cpu)?;
    let mut q = fam.init(&proj.forward(&carry.h)?)?;
    // Reference state per task.
    let (mut c64, mut h64) = (vec![vec![0.0; LH]; LB], vec![vec![0.0; LH]; LB]);
    let mut lam_ref: Vec<Vec<f64>> = vec![scale(&eye(LN), cfg.prior_precision); LB];
    let mut mu_ref: Vec<Vec<f64>> = (0..LB).map(|_| net.project(&[0.0; LH])).collect();
    let mut worst: f64 = 0.0;
    let mut compare = |q: &Gaussian, lam_ref: &[Vec<f64>], mu_ref: &[Vec<f64>], t: usize| {
        let Covariance::Precision(p) = &q.cov else {
            panic!("a Laplace posterior has a precision")
        };
        let dims = if cfg.diagonal {
            vec![LB, LN]
        } else {
            vec![LB, LN, LN]
        };
        assert_eq!(p.shape.dims(LB, LN), dims);
        assert_eq!(
            p.values.len(),
            if cfg.diagonal { LB * LN } else { LB * LN * LN }
        );
        let mu = values(&q.mean);
        for k in 0..LB {
            let want: Vec<f64> = if cfg.diagonal {
                (0..LN).map(|i| lam_ref[k][i * LN + i]).collect()
            } else {
                lam_ref[k].clone()
            };
            let got: Vec<f64> = if cfg.diagonal {
                p.values[k * LN..(k + 1) * LN].to_vec()
            } else {
                p.values[k * LN * LN..(k + 1) * LN * LN].to_vec()
            };
            for (g, w) in got
                .iter()
                .zip(&want)
                .chain(mu[k * LN..(k + 1) * LN].iter().zip(&mu_ref[k]))
            {
                worst = worst.max((g - w).abs() / (1.0 + w.abs()));
                assert!(
                    (g - w).abs() < 1e-4 * (1.0 + w.abs()),
                    "{}: step {t}, task {k}: {g} vs {w}",
                    cfg.label()
                );
            }
        }
    };
    compare(&q, &lam_ref, &mu_ref, 0);
    let mut history: Vec<Tensor> = vec![];
    for t in 1..=STEPS {
        let x = tensor(&xs[t - 1], &[LB, LD]);
        carry = lstm.step(&x, &carry)?;
        let phi = proj.forward(&carry.h)?;
        history.push(x);
        // The whole history is passed: the family itself must use only the last `window` inputs.
        let input = StepInput {
            phi: &phi,
            carry: &carry,
            lstm: &lstm,
            proj: &proj,
            window: &history,
        };
        q = fam.step(&input, &q)?;

        let take = if cfg.window == 0 {
            t
        } else {
            cfg.window.min(t)
        };
        for k in 0..LB {
            let (c2, h2) = net.step(&xs[t - 1][k * LD..(k + 1) * LD], &c64[k], &h64[k]);
            (c64[k], h64[k]) = (c2, h2);
            let mut lam = if cfg.accumulate == Accumulate::None {
                scale(&eye(LN), cfg.damping)
            } else {
                lam_ref[k].clone()
            };
            for x in &xs[t - take..t] {
                lam = add(
                    &lam,
                    &jjt(&net.jacobian(&x[k * LD..(k + 1) * LD], &c64[k], &h64[k])),
                );
            }
            lam_ref[k] = lam;
            let phi = net.project(&h64[k]);
            mu_ref[k] = if cfg.accumulate == Accumulate::MuSigma {
                add(&phi, &mu_ref[k])
            } else {
                phi
            };
        }
        compare(&q, &lam_ref, &mu_ref, t);
    }
    Ok(worst)
}

#[test]
fn laplace_variants_match_jacobian_reference() -> Result<()> {
    lvrnn::init_threads(1);
    let base = LaplaceConfig {
        window: 1,
        accumulate: Accumulate::Sigma,
        diagonal: false,
        damping: 1.0,
        jitter: 1e-6,
        prior_precision: 1.0,
        auto: Default::default(),
        chosen: Default::default(),
    };
    let cases = [
        // (a) sum Σ, k_H = 1: Λ_t − Λ_{t−1} = J_t J_tᵀ; (f) Λ_0 = prior_precision·I.
        LaplaceConfig {
            prior_precision: 2.5,
            ..base.clone()
        },
        // (b) stationary windowed: Λ_t = damping·I + Σ_{last 3} J_i J_iᵀ at the current carry.
        LaplaceConfig {
            window: 3,
            accumulate: Accumulate::None,
            damping: 0.7,
            ..base.clone()
        },
        // (c) window = 0: the whole history.
        LaplaceConfig {
            window: 0,
            accumulate: Accumulate::None,
            ..base.clone()
        },
        // (d) sum (μ, Σ): μ_t = φ_t + μ_{t−1}.
        LaplaceConfig {
            window: 2,
            accumulate: Accumulate::MuSigma,
            ..base.clone()
        },
        // (e) diagonal variants keep diag(Λ) only.
        LaplaceConfig {
            diagonal: true,
            prior_precision: 0.5,
            ..base.clone()
        },
        LaplaceConfig {
            window: 3,
            accumulate: Accumulate::None,
            diagonal: true,
            damping: 1.5,
            ..base.clone()
        },
        LaplaceConfig {
            window: 0,
            accumulate: Accumulate::MuSigma,
            diagonal: true,
            ..base.clone()
        },
    ];
    for (i, cfg) in cases.into_iter().enumerate() {
        let label = cfg.label();
        let worst = check_laplace_variant(cfg, 60 + i as u64)?;
        eprintln!("{label}: max relative error {worst:.2e} (tolerance 1e-4)");
    }
    Ok(())
}

#[test]
fn laplace_accumulated_increment_is_jjt_of_current_input() -> Result<()> {
    lvrnn::init_threads(1);
    // (a) directly: with accumulate = sigma, k_H = 1, Λ_t − Λ_{t−1} = J_t J_tᵀ where J_t comes
    // from `output_jacobian` at the current carry (tolerance 1e-4·(1 + |Λ|)); the mean is φ_t.
    let mut rng = ChaCha8Rng::seed_from_u64(70);
    let net = Net::random(&mut rng);
    let (lstm, proj) = net.modules();
    let fam = Laplace::new(LaplaceConfig::default());
    let mut carry = Carry::zeros(LB, LH, &candle_core::Device::Cpu)?;
    let mut q = fam.init(&proj.forward(&carry.h)?)?;
    for _ in 0..STEPS {
        let x = randn(&mut rng, &[LB, LD], &candle_core::Device::Cpu)?;
        carry = lstm.step(&x, &carry)?;
        let phi = proj.forward(&carry.h)?;
        let window = [x.clone()];
        let next = fam.step(
            &StepInput {
                phi: &phi,
                carry: &carry,
                lstm: &lstm,
                proj: &proj,
                window: &window,
            },
            &q,
        )?;
        let j = lstm.output_jacobian(&x, &carry, &proj)?;
        let want = values(&j.matmul(&j.t()?)?);
        let (Covariance::Precision(p1), Covariance::Precision(p0)) = (&next.cov, &q.cov) else {
            panic!()
        };
        let diff: Vec<f64> = p1
            .values
            .iter()
            .zip(p0.values.iter())
            .map(|(a, b)| a - b)
            .collect();
        for (d, w) in diff.iter().zip(&want) {
            assert!((d - w).abs() < 1e-4 * (1.0 + w.abs()), "ΔΛ {d} vs JJᵀ {w}");
        }
        assert_eq!(values(&next.mean), values(&phi));
        q = next;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Configuration parsing
// ---------------------------------------------------------------------------------------------

fn parse_err(s: &str) -> String {
    format!("{:#}", s.parse::<PosteriorConfig>().expect_err(s))
}

#[test]
fn posterior_config_parses() -> Result<()> {
    lvrnn::init_threads(1);
    let cfg: PosteriorConfig = "laplace:window=10,accumulate=mu_sigma,diagonal=true".parse()?;
    let want = LaplaceConfig {
        window: 10,
        accumulate: Accumulate::MuSigma,
        diagonal: true,
        ..LaplaceConfig::default()
    };
    assert_eq!(cfg, PosteriorConfig::Laplace(want));
    assert_eq!(
        "laplace".parse::<PosteriorConfig>()?,
        PosteriorConfig::Laplace(LaplaceConfig::default())
    );
    assert_eq!(
        LaplaceConfig::default(),
        LaplaceConfig {
            window: 1,
            accumulate: Accumulate::Sigma,
            diagonal: false,
            damping: 1.0,
            jitter: 1e-6,
            prior_precision: 1.0,
            auto: Default::default(),
            chosen: Default::default(),
        }
    );
    assert_eq!("rnn".parse::<PosteriorConfig>()?, PosteriorConfig::Rnn);
    assert_eq!(
        "vrnn".parse::<PosteriorConfig>()?,
        PosteriorConfig::Vrnn { diagonal: false }
    );
    assert_eq!(
        "vrnn:diagonal=true".parse::<PosteriorConfig>()?,
        PosteriorConfig::Vrnn { diagonal: true }
    );
    let all: PosteriorConfig =
        "laplace:window=0,accumulate=none,damping=0.5,jitter=1e-5,prior_precision=2".parse()?;
    let PosteriorConfig::Laplace(c) = &all else {
        panic!()
    };
    assert_eq!(
        (
            c.window,
            c.accumulate,
            c.damping,
            c.jitter,
            c.prior_precision
        ),
        (0, Accumulate::None, 0.5, 1e-5, 2.0)
    );
    // Display round-trips through FromStr.
    for cfg in [
        all,
        cfg,
        PosteriorConfig::Rnn,
        PosteriorConfig::Vrnn { diagonal: true },
    ] {
        assert_eq!(cfg.to_string().parse::<PosteriorConfig>()?, cfg);
    }
    // TOML form ([model.posterior]).
    let t: PosteriorConfig =
        toml::from_str("family = \"laplace\"\nwindow = 2\naccumulate = \"none\"\ndiagonal = true")?;
    assert_eq!(
        t,
        PosteriorConfig::Laplace(LaplaceConfig {
            window: 2,
            accumulate: Accumulate::None,
            diagonal: true,
            ..LaplaceConfig::default()
        })
    );
    assert_eq!(
        toml::from_str::<PosteriorConfig>("family = \"vrnn\"")?,
        PosteriorConfig::Vrnn { diagonal: false }
    );
    assert_eq!(
        toml::from_str::<PosteriorConfig>("family = \"rnn\"")?,
        PosteriorConfig::Rnn
    );
    assert!(toml::from_str::<PosteriorConfig>("family = \"laplace\"\nwindoww = 2").is_err());
    Ok(())
}

#[test]
fn posterior_config_errors_name_the_key_and_allowed_values() {
    lvrnn::init_threads(1);
    let e = parse_err("laplace:accumulate=foo");
    for part in ["accumulate", "foo", "none", "sigma", "mu_sigma"] {
        assert!(e.contains(part), "`{e}` lacks `{part}`");
    }
    let e = parse_err("bar");
    for part in ["bar", "rnn", "vrnn", "laplace"] {
        assert!(e.contains(part), "`{e}` lacks `{part}`");
    }
    let e = parse_err("laplace:windw=3");
    for part in [
        "windw",
        "window",
        "accumulate",
        "diagonal",
        "damping",
        "jitter",
        "prior_precision",
    ] {
        assert!(e.contains(part), "`{e}` lacks `{part}`");
    }
    let e = parse_err("laplace:diagonal=maybe");
    for part in ["diagonal", "maybe", "true", "false"] {
        assert!(e.contains(part), "`{e}` lacks `{part}`");
    }
    let e = parse_err("laplace:window=-1");
    assert!(e.contains("window") && e.contains("-1"), "`{e}`");
    let e = parse_err("laplace:damping=0");
    assert!(e.contains("damping"), "`{e}`");
    let e = parse_err("laplace:jitter=-1");
    assert!(e.contains("jitter"), "`{e}`");
    let e = parse_err("vrnn:window=3");
    assert!(e.contains("window") && e.contains("diagonal"), "`{e}`");
    let e = parse_err("rnn:diagonal=true");
    assert!(e.contains("rnn") && e.contains("diagonal"), "`{e}`");
    let e = parse_err("laplace:window");
    assert!(e.contains("window") && e.contains("key=value"), "`{e}`");
}

// ---------------------------------------------------------------------------------------------
// Core end to end
// ---------------------------------------------------------------------------------------------

#[test]
fn core_runs_every_family_end_to_end() -> Result<()> {
    lvrnn::init_threads(1);
    // Small sizes; 5 steps with embedded inputs of two kinds (dims 2 and 3), batch 3, n_Z = 2.
    // Checks shapes, KL presence, KL ≥ −1e-5, finite entropies, and finite (non-zero) gradients
    // of Σ KL + Σ mean(samples) for the LSTM weights.
    let (batch, hidden, features, nz) = (3, 12, 4, 2);
    for (i, family) in [
        "rnn",
        "vrnn",
        "vrnn:diagonal=true",
        "laplace",
        "laplace:window=3,accumulate=none",
        "laplace:window=0,accumulate=mu_sigma,diagonal=true",
    ]
    .into_iter()
    .enumerate()
    {
        let posterior: PosteriorConfig = family.parse()?;
        let cfg = ModelConfig {
            embed_width: 8,
            hidden,
            features,
            head_hidden: vec![8],
            n_z: nz,
            posterior: posterior.clone(),
            sample_scale: 1.0,
            sample_warmup: None,
            sample_every: None,
        };
        cfg.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(80 + i as u64);
        let mut params = Params::new();
        let core = Core::new(&mut params, &cfg, &[2, 3], &mut rng)?;
        assert_eq!(core.posterior.is_bayesian(), posterior.is_bayesian());
        let mut state = core.initial(batch)?;
        assert_eq!(state.q.mean.dims(), &[batch, features]);
        let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu)?;
        for t in 0..STEPS {
            let embedded = [
                core.embed(0, &randn(&mut rng, &[batch, 2], &candle_core::Device::Cpu)?)?,
                core.embed(1, &randn(&mut rng, &[batch, 3], &candle_core::Device::Cpu)?)?,
            ];
            let out = core.step(&state, &embedded)?;
            state = out.state;
            assert_eq!(state.carry.c.dims(), &[batch, hidden]);
            assert_eq!(state.carry.h.dims(), &[batch, hidden]);
            assert_eq!(state.q.mean.dims(), &[batch, features]);
            let keep = core.posterior.history_window();
            assert_eq!(state.window.len(), keep.min(t + 1));
            match (&out.kl, posterior.is_bayesian()) {
                (Some(kl), true) => {
                    assert_eq!(kl.dims(), &[batch]);
                    let v = values(kl);
                    assert!(
                        v.iter().all(|x| x.is_finite() && *x >= -1e-5),
                        "{family}: KL {v:?}"
                    );
                    loss = (loss + kl.sum_all()?)?;
                }
                (None, false) => {}
                (kl, _) => panic!(
                    "{family}: KL is {:?}",
                    kl.as_ref().map(|k| k.dims().to_vec())
                ),
            }
            match state.q.entropy()? {
                Some(h) => {
                    assert!(posterior.is_bayesian());
                    assert_eq!(h.len(), batch);
                    assert!(h.iter().all(|x| x.is_finite()), "{family}: entropy {h:?}");
                }
                None => assert!(!posterior.is_bayesian()),
            }
            let z = state.q.sample(&randn(
                &mut rng,
                &[nz, batch, features],
                &candle_core::Device::Cpu,
            )?)?;
            assert_eq!(z.dims(), &[nz, batch, features]);
            assert!(values(&z).iter().all(|x| x.is_finite()));
            loss = (loss + z.mean_all()?)?;
        }
        let grads = loss.backward()?;
        for name in ["core.wx", "core.wh", "core.b"] {
            let var = params
                .get(name)
                .unwrap_or_else(|| panic!("no parameter {name}"));
            let g = values(
                grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{family}: no gradient for {name}")),
            );
            assert!(
                g.iter().all(|x| x.is_finite()),
                "{family}: non-finite gradient for {name}"
            );
            assert!(
                g.iter().any(|x| *x != 0.0),
                "{family}: zero gradient for {name}"
            );
        }
        eprintln!("{family}: loss {:.4}", values(&loss)[0]);
    }
    Ok(())
}

/// The VRNN's log-variance floor: s = max(W φ + b, LOG_VAR_MIN) per coordinate, for the full
/// and the diagonal head; a floored coordinate passes no gradient to its layer, the others do.
#[test]
fn vrnn_log_variance_is_floored_and_the_floor_passes_no_gradient() -> Result<()> {
    use lvrnn::posterior::vrnn::{LOG_VAR_MIN, Vrnn};
    lvrnn::init_threads(1);
    let n = 4;
    for diagonal in [true, false] {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut p = Params::new();
        let vrnn = Vrnn::new(&mut p, n, diagonal, &mut rng)?;
        // Biases far below the floor for coordinates 0 and 2, above it for 1 and 3.
        let bias = p
            .get("vrnn.log_s.bias")
            .expect("the log-variance layer's bias");
        bias.set(&Tensor::new(&[-20f32, -1.0, -30.0, 0.5], &Device::Cpu)?)?;
        let phi = Tensor::new(
            &[[0.1f32, -0.2, 0.3, 0.05], [0.0, 0.1, -0.1, 0.2]],
            &Device::Cpu,
        )?;
        let q = vrnn.init(&phi)?;
        let Covariance::Spectral { log_s, .. } = &q.cov else {
            panic!("a VRNN posterior is spectral")
        };
        let s = log_s.to_vec2::<f32>()?;
        for row in &s {
            assert_eq!(row[0] as f64, LOG_VAR_MIN, "{row:?}");
            assert_eq!(row[2] as f64, LOG_VAR_MIN, "{row:?}");
            assert!(
                row[1] as f64 > LOG_VAR_MIN && row[3] as f64 > LOG_VAR_MIN,
                "{row:?}"
            );
        }
        let grads = log_s.sum_all()?.backward()?;
        let g = grads
            .get(bias.as_tensor())
            .expect("a bias gradient")
            .to_vec1::<f32>()?;
        assert_eq!((g[0], g[2]), (0.0, 0.0), "diagonal={diagonal}: {g:?}");
        assert_eq!((g[1], g[3]), (2.0, 2.0), "diagonal={diagonal}: {g:?}");
    }
    Ok(())
}
