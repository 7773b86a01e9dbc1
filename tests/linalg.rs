//! Tests of the batched tensor ops in `lvrnn::linalg`: closed forms, reconstruction identities,
//! error messages, and every backward against central finite differences.
//!
//! Finite differences are evaluated in f64 (the ops accept f64 tensors and compute in f64
//! internally), step h = 1e-5, so their own error is ~1e-9. Each backward is compared twice:
//! the f64 analytic gradient (tolerance 1e-7 max abs, which checks the formula) and the f32
//! analytic gradient as used in training (tolerance 1e-4 max abs; gradients here are O(1)).

mod common;

use candle_core::{DType, Device, IndexOp, Result, Tensor, Var};
use common::tensors::{max_abs_diff, values};
use lvrnn::linalg::{cayley_lower, cholesky, inverse, logdet_spd, solve_triangular};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const FD_STEP: f64 = 1e-5;
const TOL_GRAD_F64: f64 = 1e-7;
const TOL_GRAD_F32: f64 = 1e-4;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn uniform(rng: &mut ChaCha8Rng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

fn tensor(data: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_slice(data, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Batched identity of shape (b, n, n).
fn eye(b: usize, n: usize, dtype: DType) -> Tensor {
    Tensor::eye(n, dtype, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .repeat((b, 1, 1))
        .unwrap()
}

/// Batch of SPD matrices A = M Mᵀ + n I from M of shape (b, n, n).
fn spd_from(m: &Tensor) -> Result<Tensor> {
    let (b, n, _) = m.dims3()?;
    m.matmul(&m.t()?)? + (eye(b, n, m.dtype()) * n as f64)?
}

/// Scalar test loss Σ out ∘ W with a fixed, deterministic W (w_i = sin(0.7 i + 0.3)).
fn wsum(out: &Tensor) -> Result<Tensor> {
    let w: Vec<f64> = (0..out.elem_count())
        .map(|i| (0.7 * i as f64 + 0.3).sin())
        .collect();
    let w = Tensor::from_vec(w, out.dims(), out.device())?.to_dtype(out.dtype())?;
    (out * w)?.sum_all()
}

/// Compares the analytic gradients of the scalar `f(inputs)` (in f64 and in f32) with central
/// finite differences evaluated in f64. Returns the two max abs errors.
fn check_grad(
    name: &str,
    inputs: &[(Vec<f64>, Vec<usize>)],
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) -> (f64, f64) {
    // Finite differences in f64.
    let eval = |data: &[Vec<f64>]| -> f64 {
        let ts: Vec<Tensor> = data
            .iter()
            .zip(inputs)
            .map(|(d, (_, s))| tensor(d, s, DType::F64))
            .collect();
        f(&ts).unwrap().to_scalar::<f64>().unwrap()
    };
    let mut data: Vec<Vec<f64>> = inputs.iter().map(|(d, _)| d.clone()).collect();
    let mut fd: Vec<Vec<f64>> = Vec::new();
    for k in 0..inputs.len() {
        let mut g = vec![0.0; data[k].len()];
        for (e, ge) in g.iter_mut().enumerate() {
            let x0 = data[k][e];
            data[k][e] = x0 + FD_STEP;
            let up = eval(&data);
            data[k][e] = x0 - FD_STEP;
            let down = eval(&data);
            data[k][e] = x0;
            *ge = (up - down) / (2.0 * FD_STEP);
        }
        fd.push(g);
    }
    let mut errs = [0.0f64; 2];
    for (slot, dtype) in [DType::F64, DType::F32].into_iter().enumerate() {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|(d, s)| Var::from_tensor(&tensor(d, s, dtype)).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let loss = f(&ts).unwrap();
        assert_eq!(loss.dtype(), dtype);
        let grads = loss.backward().unwrap();
        for (k, v) in vars.iter().enumerate() {
            let g = match grads.get(v.as_tensor()) {
                Some(g) => values(g),
                None => vec![0.0; fd[k].len()],
            };
            errs[slot] = errs[slot].max(max_abs_diff(&g, &fd[k]));
        }
    }
    let scale = fd.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs()));
    println!(
        "{name}: max |fd| = {scale:.3e}, max err f64 = {:.3e}, f32 = {:.3e}",
        errs[0], errs[1]
    );
    assert!(
        errs[0] < TOL_GRAD_F64,
        "{name}: f64 gradient error {:.3e} >= {TOL_GRAD_F64:e}",
        errs[0]
    );
    assert!(
        errs[1] < TOL_GRAD_F32,
        "{name}: f32 gradient error {:.3e} >= {TOL_GRAD_F32:e}",
        errs[1]
    );
    (errs[0], errs[1])
}

/// Random triangular matrices with a dominant diagonal (|t_ii| in [1.5, 2.5], random sign) and
/// garbage in the other triangle, which the solve must ignore.
fn random_triangular(r: &mut ChaCha8Rng, b: usize, n: usize, lower: bool) -> (Vec<f64>, Vec<f64>) {
    let raw = uniform(r, b * n * n);
    let mut full = raw.clone();
    let mut tri = vec![0.0; b * n * n];
    for bi in 0..b {
        for i in 0..n {
            for j in 0..n {
                let idx = bi * n * n + i * n + j;
                if i == j {
                    let d = 2.0 + 0.5 * raw[idx];
                    let d = if (i + bi) % 2 == 0 { d } else { -d };
                    full[idx] = d;
                    tri[idx] = d;
                } else if (j < i) == lower {
                    tri[idx] = raw[idx];
                } else {
                    full[idx] = 5.0 * raw[idx]; // ignored by the op
                }
            }
        }
    }
    (full, tri)
}

// -------------------------------------------------------------------------------------------
// Cholesky
// -------------------------------------------------------------------------------------------

#[test]
fn cholesky_closed_forms() {
    lvrnn::init_threads(1);
    // Batch of the classic 3×3 example (L = [[2,0,0],[6,1,0],[-8,5,3]]) and diag(1, 4, 9).
    let a = [
        4.0, 12.0, -16.0, 12.0, 37.0, -43.0, -16.0, -43.0, 98.0, //
        1.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 9.0,
    ];
    let l = cholesky(&tensor(&a, &[2, 3, 3], DType::F32)).unwrap();
    assert_eq!(l.dims(), &[2, 3, 3]);
    assert_eq!(l.dtype(), DType::F32);
    let want = [
        2.0, 0.0, 0.0, 6.0, 1.0, 0.0, -8.0, 5.0, 3.0, //
        1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0,
    ];
    assert!(max_abs_diff(&values(&l), &want) < 1e-5);
    // (n, n) input: [[4, 2], [2, 3]] → [[2, 0], [1, √2]].
    let l2 = cholesky(&tensor(&[4.0, 2.0, 2.0, 3.0], &[2, 2], DType::F32)).unwrap();
    assert_eq!(l2.dims(), &[2, 2]);
    assert!(max_abs_diff(&values(&l2), &[2.0, 0.0, 1.0, 2f64.sqrt()]) < 1e-6);
}

#[test]
fn cholesky_random_spd_reconstructs() {
    lvrnn::init_threads(1);
    let (b, n) = (3, 6);
    let m = tensor(&uniform(&mut rng(10), b * n * n), &[b, n, n], DType::F32);
    let a = spd_from(&m).unwrap();
    let l = cholesky(&a).unwrap();
    let llt = l.matmul(&l.t().unwrap()).unwrap();
    // Tolerance 1e-5 relative to max |A| (f32 storage of the factor).
    let scale = values(&a).iter().fold(0.0f64, |s, x| s.max(x.abs()));
    assert!(max_abs_diff(&values(&llt), &values(&a)) < 1e-5 * scale);
    let lv = values(&l);
    for bi in 0..b {
        for i in 0..n {
            assert!(lv[bi * n * n + i * n + i] > 0.0);
            for j in i + 1..n {
                assert_eq!(lv[bi * n * n + i * n + j], 0.0);
            }
        }
    }
}

#[test]
fn cholesky_not_positive_definite_names_batch_element() {
    lvrnn::init_threads(1);
    // Element 0 is the identity; element 1 = [[1, 2], [2, 1]] has eigenvalues 3 and −1.
    let a = tensor(
        &[1.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 1.0],
        &[2, 2, 2],
        DType::F32,
    );
    let err = cholesky(&a).unwrap_err().to_string();
    assert!(err.contains("batch element 1"), "{err}");
    assert!(err.contains("not positive definite"), "{err}");
    assert!(err.contains("pivot 1"), "{err}");
    let err = logdet_spd(&a).unwrap_err().to_string();
    assert!(err.contains("batch element 1"), "{err}");
}

#[test]
fn ops_accept_non_contiguous_inputs() {
    lvrnn::init_threads(1);
    let (b, n) = (3, 4);
    let m = tensor(&uniform(&mut rng(11), b * n * n), &[b, n, n], DType::F32);
    let a = spd_from(&m).unwrap();
    // Same matrices stored as (n, n, b), viewed back as (b, n, n) without copying.
    let a_nc = a.permute((1, 2, 0)).unwrap().contiguous().unwrap();
    let a_nc = a_nc.permute((2, 0, 1)).unwrap();
    assert!(!a_nc.is_contiguous());
    assert_eq!(
        values(&cholesky(&a_nc).unwrap()),
        values(&cholesky(&a).unwrap())
    );
    assert_eq!(
        values(&inverse(&a_nc).unwrap()),
        values(&inverse(&a).unwrap())
    );
    // Non-symmetric: inverse(Mᵀ) = inverse(M)ᵀ.
    let shifted = (&m + eye(b, n, DType::F32) * 3.0).unwrap();
    let inv_t = inverse(&shifted.t().unwrap()).unwrap();
    let t_inv = inverse(&shifted).unwrap().t().unwrap();
    assert!(max_abs_diff(&values(&inv_t), &values(&t_inv)) < 1e-6);
    let x = solve_triangular(&a_nc, &m.t().unwrap(), true, false).unwrap();
    let x2 = solve_triangular(&a, &m.t().unwrap().contiguous().unwrap(), true, false).unwrap();
    assert_eq!(values(&x), values(&x2));
}

#[test]
fn cholesky_backward_through_spd_parametrisation() {
    lvrnn::init_threads(1);
    for (seed, n) in [(20, 3), (21, 4), (22, 5)] {
        let b = 2;
        let m = uniform(&mut rng(seed), b * n * n);
        check_grad(
            &format!("cholesky(M Mᵀ + nI), n = {n}"),
            &[(m, vec![b, n, n])],
            &|x| wsum(&cholesky(&spd_from(&x[0])?)?),
        );
    }
}

#[test]
fn cholesky_backward_symmetric_directions() {
    lvrnn::init_threads(1);
    // Directional derivatives of loss(A) along random symmetric E vs ⟨Ā, E⟩.
    let (b, n) = (2, 4);
    let mut r = rng(23);
    let m = tensor(&uniform(&mut r, b * n * n), &[b, n, n], DType::F64);
    let a0 = values(&spd_from(&m).unwrap());
    let a = Var::from_tensor(&tensor(&a0, &[b, n, n], DType::F64)).unwrap();
    let loss = wsum(&cholesky(a.as_tensor()).unwrap()).unwrap();
    let ga = values(loss.backward().unwrap().get(a.as_tensor()).unwrap());
    // The gradient is symmetric.
    for bi in 0..b {
        for i in 0..n {
            for j in 0..n {
                let (x, y) = (ga[bi * n * n + i * n + j], ga[bi * n * n + j * n + i]);
                assert!((x - y).abs() < 1e-12);
            }
        }
    }
    let mut worst = 0.0f64;
    for _ in 0..5 {
        let e0 = tensor(&uniform(&mut r, b * n * n), &[b, n, n], DType::F64);
        let e = values(&(&e0 + e0.t().unwrap()).unwrap());
        let eval = |sign: f64| {
            let ap: Vec<f64> = a0
                .iter()
                .zip(&e)
                .map(|(x, d)| x + sign * FD_STEP * d)
                .collect();
            let l = cholesky(&tensor(&ap, &[b, n, n], DType::F64)).unwrap();
            wsum(&l).unwrap().to_scalar::<f64>().unwrap()
        };
        let fd = (eval(1.0) - eval(-1.0)) / (2.0 * FD_STEP);
        let an: f64 = ga.iter().zip(&e).map(|(g, d)| g * d).sum();
        worst = worst.max((fd - an).abs());
    }
    assert!(worst < TOL_GRAD_F64, "directional error {worst:e}");
}

// -------------------------------------------------------------------------------------------
// Triangular solve
// -------------------------------------------------------------------------------------------

#[test]
fn solve_triangular_by_hand() {
    lvrnn::init_threads(1);
    // L = [[2,0,0],[1,3,0],[4,-1,5]]; the entries above the diagonal are garbage.
    let l = tensor(
        &[2.0, 7.0, 7.0, 1.0, 3.0, 7.0, 4.0, -1.0, 5.0],
        &[3, 3],
        DType::F32,
    );
    // L x = (2, 7, -3) → x = (1, 2, -1) by forward substitution.
    let x = solve_triangular(
        &l,
        &tensor(&[2.0, 7.0, -3.0], &[3], DType::F32),
        true,
        false,
    );
    assert!(max_abs_diff(&values(&x.unwrap()), &[1.0, 2.0, -1.0]) < 1e-6);
    // Lᵀ x = (0, 7, -5) → x = (1, 2, -1) by back-substitution.
    let x = solve_triangular(&l, &tensor(&[0.0, 7.0, -5.0], &[3], DType::F32), true, true);
    assert!(max_abs_diff(&values(&x.unwrap()), &[1.0, 2.0, -1.0]) < 1e-6);
    // U = Lᵀ stored as an upper triangle (garbage below): U x = (0, 7, -5) → (1, 2, -1).
    let u = tensor(
        &[2.0, 1.0, 4.0, 9.0, 3.0, -1.0, 9.0, 9.0, 5.0],
        &[3, 3],
        DType::F32,
    );
    let x = solve_triangular(
        &u,
        &tensor(&[0.0, 7.0, -5.0], &[3], DType::F32),
        false,
        false,
    );
    assert!(max_abs_diff(&values(&x.unwrap()), &[1.0, 2.0, -1.0]) < 1e-6);
    // Uᵀ x = L x = (2, 7, -3) → (1, 2, -1).
    let x = solve_triangular(
        &u,
        &tensor(&[2.0, 7.0, -3.0], &[3], DType::F32),
        false,
        true,
    );
    assert!(max_abs_diff(&values(&x.unwrap()), &[1.0, 2.0, -1.0]) < 1e-6);
}

#[test]
fn solve_triangular_random_all_variants() {
    lvrnn::init_threads(1);
    let (b, n, k) = (2, 5, 3);
    let mut r = rng(30);
    for lower in [true, false] {
        for transpose in [false, true] {
            let (full, tri) = random_triangular(&mut r, b, n, lower);
            let t = tensor(&full, &[b, n, n], DType::F32);
            let tri = tensor(&tri, &[b, n, n], DType::F32);
            let rhs = tensor(&uniform(&mut r, b * n * k), &[b, n, k], DType::F32);
            let x = solve_triangular(&t, &rhs, lower, transpose).unwrap();
            assert_eq!(x.dims(), &[b, n, k]);
            let op_t = if transpose { tri.t().unwrap() } else { tri };
            let back = op_t.matmul(&x).unwrap();
            let err = max_abs_diff(&values(&back), &values(&rhs));
            assert!(err < 1e-5, "lower={lower} transpose={transpose}: {err:e}");
            // Vector right-hand sides (B, n) give (B, n), equal to the k = 1 matrix case.
            let v = rhs.i((.., .., 0)).unwrap();
            let xv = solve_triangular(&t, &v, lower, transpose).unwrap();
            assert_eq!(xv.dims(), &[b, n]);
            assert_eq!(values(&xv), values(&x.i((.., .., 0)).unwrap()));
        }
    }
}

#[test]
fn solve_triangular_shape_errors() {
    lvrnn::init_threads(1);
    let t = Tensor::eye(3, DType::F32, &Device::Cpu).unwrap();
    let bad = Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(solve_triangular(&t, &bad, true, false).is_err());
    let t3 = eye(2, 3, DType::F32);
    let bad3 = Tensor::zeros((3, 3, 1), DType::F32, &Device::Cpu).unwrap();
    assert!(solve_triangular(&t3, &bad3, true, false).is_err());
}

#[test]
fn solve_triangular_backward_all_variants() {
    lvrnn::init_threads(1);
    let mut r = rng(31);
    for (n, k) in [(3, 2), (4, 1), (5, 3)] {
        let b = 2;
        for lower in [true, false] {
            for transpose in [false, true] {
                let (full, _) = random_triangular(&mut r, b, n, lower);
                let rhs = uniform(&mut r, b * n * k);
                let name = format!("solve_triangular n={n} k={k} lower={lower} T={transpose}");
                check_grad(
                    &name,
                    &[(full, vec![b, n, n]), (rhs, vec![b, n, k])],
                    &|x| wsum(&solve_triangular(&x[0], &x[1], lower, transpose)?),
                );
            }
        }
    }
    // Vector right-hand side.
    let (full, _) = random_triangular(&mut r, 2, 4, true);
    let rhs = uniform(&mut r, 8);
    check_grad(
        "solve_triangular vector rhs",
        &[(full, vec![2, 4, 4]), (rhs, vec![2, 4])],
        &|x| wsum(&solve_triangular(&x[0], &x[1], true, true)?),
    );
}

// -------------------------------------------------------------------------------------------
// Inverse
// -------------------------------------------------------------------------------------------

#[test]
fn inverse_closed_forms() {
    lvrnn::init_threads(1);
    // [[3, 1], [4, 2]]⁻¹ = [[1, −0.5], [−2, 1.5]]; [[0, 1], [1, 0]] is its own inverse.
    let a = tensor(
        &[3.0, 1.0, 4.0, 2.0, 0.0, 1.0, 1.0, 0.0],
        &[2, 2, 2],
        DType::F32,
    );
    let inv = inverse(&a).unwrap();
    let want = [1.0, -0.5, -2.0, 1.5, 0.0, 1.0, 1.0, 0.0];
    assert!(max_abs_diff(&values(&inv), &want) < 1e-6);
    // (n, n) input, 3×3 with det 1, and a diagonal matrix.
    let a = tensor(
        &[1.0, 2.0, 3.0, 0.0, 1.0, 4.0, 5.0, 6.0, 0.0],
        &[3, 3],
        DType::F32,
    );
    let want = [-24.0, 18.0, 5.0, 20.0, -15.0, -4.0, -5.0, 4.0, 1.0];
    let inv = inverse(&a).unwrap();
    assert_eq!(inv.dims(), &[3, 3]);
    assert!(max_abs_diff(&values(&inv), &want) < 1e-5);
    let d = tensor(&[2.0, 0.0, 0.0, -4.0], &[2, 2], DType::F32);
    assert_eq!(values(&inverse(&d).unwrap()), vec![0.5, 0.0, 0.0, -0.25]);
}

#[test]
fn inverse_random_times_a_is_identity() {
    lvrnn::init_threads(1);
    let (b, n) = (4, 8);
    let m = tensor(&uniform(&mut rng(40), b * n * n), &[b, n, n], DType::F32);
    let a = (m + eye(b, n, DType::F32) * 4.0).unwrap();
    let inv = inverse(&a).unwrap();
    let i = values(&eye(b, n, DType::F32));
    assert!(max_abs_diff(&values(&a.matmul(&inv).unwrap()), &i) < 1e-5);
    assert!(max_abs_diff(&values(&inv.matmul(&a).unwrap()), &i) < 1e-5);
}

#[test]
fn inverse_singular_names_batch_element() {
    lvrnn::init_threads(1);
    let a = tensor(
        &[1.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0],
        &[2, 2, 2],
        DType::F32,
    );
    let err = inverse(&a).unwrap_err().to_string();
    assert!(
        err.contains("batch element 1") && err.contains("singular"),
        "{err}"
    );
}

#[test]
fn batched_results_do_not_depend_on_batching() {
    lvrnn::init_threads(1);
    // B = 70 takes the parallel path; each item must equal the B = 1 result bit for bit.
    let (b, n) = (70, 6);
    let m = tensor(&uniform(&mut rng(41), b * n * n), &[b, n, n], DType::F32);
    let a = spd_from(&m).unwrap();
    let inv = inverse(&a).unwrap();
    let chol = cholesky(&a).unwrap();
    let ld = logdet_spd(&a).unwrap();
    for i in [0, 33, 69] {
        let ai = a.i(i).unwrap();
        assert_eq!(values(&inverse(&ai).unwrap()), values(&inv.i(i).unwrap()));
        assert_eq!(values(&cholesky(&ai).unwrap()), values(&chol.i(i).unwrap()));
        assert_eq!(values(&logdet_spd(&ai).unwrap()), values(&ld.i(i).unwrap()));
    }
}

#[test]
fn inverse_backward() {
    lvrnn::init_threads(1);
    let mut r = rng(42);
    for n in [3, 4, 5] {
        let b = 2;
        let mut a = uniform(&mut r, b * n * n);
        for bi in 0..b {
            for i in 0..n {
                a[bi * n * n + i * n + i] += 2.0;
            }
        }
        check_grad(&format!("inverse n = {n}"), &[(a, vec![b, n, n])], &|x| {
            wsum(&inverse(&x[0])?)
        });
    }
}

/// Cayley map U = (I − A)(I + A)⁻¹ with A = L̃ − L̃ᵀ, L̃ the strictly lower part of `l`.
fn cayley(l: &Tensor) -> Result<Tensor> {
    let (b, n, _) = l.dims3()?;
    let strict =
        (Tensor::tril2(n, l.dtype(), l.device())? - Tensor::eye(n, l.dtype(), l.device())?)?;
    let lt = l.broadcast_mul(&strict)?;
    let a = (&lt - lt.t()?)?;
    let i = eye(b, n, l.dtype());
    (&i - &a)?.matmul(&inverse(&(&i + &a)?)?)
}

#[test]
fn cayley_map_is_orthogonal() {
    lvrnn::init_threads(1);
    for (b, n, scale) in [(2, 5, 1.0), (4, 64, 0.1)] {
        let l =
            (tensor(&uniform(&mut rng(50), b * n * n), &[b, n, n], DType::F32) * scale).unwrap();
        let u = cayley(&l).unwrap();
        let utu = u.t().unwrap().matmul(&u).unwrap();
        let err = max_abs_diff(&values(&utu), &values(&eye(b, n, DType::F32)));
        assert!(err < 1e-5, "n = {n}: |UᵀU − I| = {err:e}");
    }
}

#[test]
fn cayley_map_backward() {
    lvrnn::init_threads(1);
    let mut r = rng(51);
    for n in [3, 4, 5] {
        let b = 2;
        let l = uniform(&mut r, b * n * n);
        check_grad(&format!("cayley n = {n}"), &[(l, vec![b, n, n])], &|x| {
            wsum(&cayley(&x[0])?)
        });
    }
}

#[test]
fn fused_cayley_matches_the_composed_map() {
    lvrnn::init_threads(1);
    for (b, n, scale) in [(3, 1, 1.0), (2, 5, 1.0), (4, 64, 0.1), (2, 16, 3.0)] {
        let raw =
            (tensor(&uniform(&mut rng(53), b * n * n), &[b, n, n], DType::F64) * scale).unwrap();
        let reference = values(&cayley(&raw).unwrap());
        for dtype in [DType::F64, DType::F32] {
            let fused = values(&cayley_lower(&raw.to_dtype(dtype).unwrap()).unwrap());
            let err = max_abs_diff(&fused, &reference);
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            assert!(
                err < tol,
                "n = {n}, {dtype:?}: |fused − composed| = {err:e}"
            );
        }
    }
    // A non-finite input is an error naming the batch element, not a NaN matrix.
    let mut bad = vec![0.0; 2 * 9];
    bad[9 + 3] = f64::NAN;
    let e = cayley_lower(&tensor(&bad, &[2, 3, 3], DType::F32)).unwrap_err();
    assert!(e.to_string().contains("batch element 1"), "{e}");
}

#[test]
fn fused_cayley_backward() {
    lvrnn::init_threads(1);
    let mut r = rng(54);
    for n in [1, 3, 5] {
        let b = 2;
        let l = uniform(&mut r, b * n * n);
        check_grad(
            &format!("fused cayley n = {n}"),
            &[(l, vec![b, n, n])],
            &|x| {
                let u = cayley_lower(&x[0])?;
                // A second use of U, so the gradients of two paths accumulate.
                wsum(&(&u + u.sqr()?)?)
            },
        );
    }
}

/// The f32 backward (per-item matrix products) against candle's autograd through the composed
/// map, at the VRNN's size.
#[test]
fn fused_cayley_backward_in_f32_matches_the_composed_map() {
    lvrnn::init_threads(1);
    let (b, n) = (3, 64);
    let raw = (tensor(&uniform(&mut rng(55), b * n * n), &[b, n, n], DType::F32) * 0.1).unwrap();
    let weights = tensor(&uniform(&mut rng(56), b * n * n), &[b, n, n], DType::F32);
    let grad = |f: &dyn Fn(&Tensor) -> Result<Tensor>| -> Vec<f64> {
        let x = candle_core::Var::from_tensor(&raw).unwrap();
        let loss = f(x.as_tensor())
            .unwrap()
            .mul(&weights)
            .unwrap()
            .sum_all()
            .unwrap();
        values(loss.backward().unwrap().get(&x).unwrap())
    };
    let (fused, composed) = (grad(&|x| cayley_lower(x)), grad(&|x| cayley(x)));
    let scale = composed.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = max_abs_diff(&fused, &composed);
    assert!(
        err <= 1e-5 * scale,
        "|fused − composed| = {err:e} (max {scale:e})"
    );
}

#[test]
fn cayley_map_backward_through_linear_head() {
    lvrnn::init_threads(1);
    // As in the VRNN: φ (B, d) → linear head W (d, n²) + c → L (B, n, n) → U. Gradient w.r.t.
    // the head's weights and bias, and the features.
    let (b, d, n) = (2, 3, 4);
    let mut r = rng(52);
    let phi = uniform(&mut r, b * d);
    let w = uniform(&mut r, d * n * n);
    let c = uniform(&mut r, n * n);
    check_grad(
        "cayley through linear head",
        &[(phi, vec![b, d]), (w, vec![d, n * n]), (c, vec![n * n])],
        &|x| {
            let l = x[0]
                .matmul(&x[1])?
                .broadcast_add(&x[2])?
                .reshape((b, n, n))?;
            let u = cayley(&l)?;
            // A second use of the same U in the graph, so gradients from two paths accumulate.
            wsum(&(&u + u.sqr()?)?)
        },
    );
}

// -------------------------------------------------------------------------------------------
// Log-determinant
// -------------------------------------------------------------------------------------------

#[test]
fn logdet_spd_closed_forms_and_no_backward() {
    lvrnn::init_threads(1);
    // det of the classic 3×3 example = (2·1·3)² = 36; det diag(1, 4, 9) = 36 as well.
    let a = [
        4.0, 12.0, -16.0, 12.0, 37.0, -43.0, -16.0, -43.0, 98.0, //
        1.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 9.0,
    ];
    let ld = logdet_spd(&tensor(&a, &[2, 3, 3], DType::F32)).unwrap();
    assert_eq!(ld.dims(), &[2]);
    let want = 36f64.ln();
    assert!(max_abs_diff(&values(&ld), &[want, want]) < 1e-6);
    // (n, n) gives a scalar: det [[4, 2], [2, 3]] = 8.
    let ld = logdet_spd(&tensor(&[4.0, 2.0, 2.0, 3.0], &[2, 2], DType::F32)).unwrap();
    assert_eq!(ld.rank(), 0);
    assert!((ld.to_scalar::<f32>().unwrap() as f64 - 8f64.ln()).abs() < 1e-6);
    // Random SPD: equals 2 Σ log diag(cholesky(A)).
    let (b, n) = (3, 7);
    let m = tensor(&uniform(&mut rng(60), b * n * n), &[b, n, n], DType::F64);
    let a = spd_from(&m).unwrap();
    let l = cholesky(&a).unwrap();
    let diag = (l * eye(b, n, DType::F64)).unwrap().sum(2).unwrap();
    let want = (diag.log().unwrap().sum(1).unwrap() * 2.0).unwrap();
    assert!(max_abs_diff(&values(&logdet_spd(&a).unwrap()), &values(&want)) < 1e-10);
    // No backward: the result is detached from the graph.
    let v = Var::from_tensor(&a).unwrap();
    let loss = logdet_spd(v.as_tensor()).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    assert!(grads.get(v.as_tensor()).is_none());
}

// -------------------------------------------------------------------------------------------
// Timing (run with: cargo test --test linalg -- --ignored --nocapture)
// -------------------------------------------------------------------------------------------

#[test]
#[ignore]
fn time_inverse_forward_backward_256x64x64() {
    lvrnn::init_threads(1);
    let (b, n) = (256, 64);
    // A realistic input: I + A with A skew-symmetric (the Cayley map's I + A).
    let l = (tensor(&uniform(&mut rng(70), b * n * n), &[b, n, n], DType::F32) * 0.1).unwrap();
    let strict = (Tensor::tril2(n, DType::F32, &Device::Cpu).unwrap()
        - Tensor::eye(n, DType::F32, &Device::Cpu).unwrap())
    .unwrap();
    let lt = l.broadcast_mul(&strict).unwrap();
    let a = (eye(b, n, DType::F32) + (&lt - lt.t().unwrap()).unwrap()).unwrap();
    let w = tensor(&uniform(&mut rng(71), b * n * n), &[b, n, n], DType::F32);
    let v = Var::from_tensor(&a).unwrap();
    let reps = 11;
    let (mut fwd, mut bwd, mut mm) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let t0 = std::time::Instant::now();
        let inv = inverse(v.as_tensor()).unwrap();
        let t1 = std::time::Instant::now();
        let loss = (inv * &w).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        assert!(grads.get(v.as_tensor()).is_some());
        let t2 = std::time::Instant::now();
        // Reference: one batched f32 matmul of the same size.
        let _ = a.matmul(&w).unwrap();
        let t3 = std::time::Instant::now();
        fwd.push((t1 - t0).as_secs_f64() * 1e3);
        bwd.push((t2 - t1).as_secs_f64() * 1e3);
        mm.push((t3 - t2).as_secs_f64() * 1e3);
    }
    for x in [&mut fwd, &mut bwd, &mut mm] {
        x.sort_by(f64::total_cmp);
    }
    let m = reps / 2;
    println!(
        "inverse (256, 64, 64) f32, 1 thread, {reps} reps [median (min)]: forward {:.1} ms ({:.1}), \
         backward incl. loss {:.1} ms ({:.1}), forward+backward {:.1} ms; \
         reference f32 matmul of the same size {:.1} ms ({:.1})",
        fwd[m],
        fwd[0],
        bwd[m],
        bwd[0],
        fwd[m] + bwd[m],
        mm[m],
        mm[0]
    );
}
