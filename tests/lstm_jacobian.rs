//! Tests of the LSTM core (`lvrnn::nn::lstm`) against an independent plain-f64 re-implementation.
//!
//! - `Lstm::step` vs the f64 step with gate order (i, f, g, o): max abs error < 1e-5; every other
//!   gate order disagrees by > 1e-2 (so the order is actually pinned down).
//! - `Lstm::output_jacobian` vs central finite differences in f64 (δ = 1e-6, their own error
//!   ~1e-9) of the f64 step followed by the f64 projection, perturbing h only: max abs error
//!   < 1e-4 (entries are O(0.1–1)).
//! - `output_jacobian` vs central finite differences of the crate's own f32 forward,
//!   `proj.forward(lstm.step(x, (c, h + δ e_m)).h)`, δ = 1e-2: max abs error < 2e-3.
//! - c is held fixed: the Jacobian is ∂φ/∂h alone; ∂φ/∂c is not small (> 0.05 somewhere), so a
//!   Jacobian that also moved c (h and c perturbed together) would fail the < 1e-4 bound.
//!
//! Sizes: batch 3, hidden H = 16, features n = 5, input d_in = 7. Weights are scaled so that the
//! pre-activations are O(1): gates neither saturated nor trivially linear (checked).

mod common;

use anyhow::Result;
use candle_core::Tensor;
use common::tensors::{max_abs_diff, tensor, values};
use lvrnn::nn::lstm::{Carry, Lstm};
use lvrnn::nn::mlp::Linear;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

const B: usize = 3;
const H: usize = 16;
const N: usize = 5;
const DIN: usize = 7;

/// Gate (i, f, g, o) → block index along the 4H axis.
type GateOrder = [usize; 4];
const IFGO: GateOrder = [0, 1, 2, 3];

/// f32-representable values (so the f32 tensors and the f64 reference see identical numbers).
fn uniform(rng: &mut ChaCha8Rng, len: usize, bound: f64) -> Vec<f64> {
    (0..len)
        .map(|_| rng.gen_range(-bound..bound) as f32 as f64)
        .collect()
}

fn normal(rng: &mut ChaCha8Rng, len: usize, scale: f64) -> Vec<f64> {
    (0..len)
        .map(|_| (scale * rng.sample::<f64, _>(StandardNormal)) as f32 as f64)
        .collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The reference: plain f64, weights (in, out) row-major, like the crate's layout.
struct Reference {
    wx: Vec<f64>, // DIN × 4H
    wh: Vec<f64>, // H × 4H
    b: Vec<f64>,  // 4H
    p: Vec<f64>,  // H × N
    pb: Vec<f64>, // N
}

impl Reference {
    fn preact(&self, x: &[f64], h: &[f64]) -> Vec<f64> {
        let g4 = 4 * H;
        (0..g4)
            .map(|j| {
                self.b[j]
                    + (0..DIN).map(|k| x[k] * self.wx[k * g4 + j]).sum::<f64>()
                    + (0..H).map(|m| h[m] * self.wh[m * g4 + j]).sum::<f64>()
            })
            .collect()
    }

    /// One LSTM step for one task: returns (c', h').
    fn step(&self, x: &[f64], c: &[f64], h: &[f64], order: GateOrder) -> (Vec<f64>, Vec<f64>) {
        let z = self.preact(x, h);
        let blk = |gate: usize, j: usize| z[order[gate] * H + j];
        let mut c2 = vec![0.0; H];
        let mut h2 = vec![0.0; H];
        for j in 0..H {
            let i = sigmoid(blk(0, j));
            let f = sigmoid(blk(1, j));
            let g = blk(2, j).tanh();
            let o = sigmoid(blk(3, j));
            c2[j] = f * c[j] + i * g;
            h2[j] = o * c2[j].tanh();
        }
        (c2, h2)
    }

    fn project(&self, h: &[f64]) -> Vec<f64> {
        (0..N)
            .map(|k| self.pb[k] + (0..H).map(|j| h[j] * self.p[j * N + k]).sum::<f64>())
            .collect()
    }

    fn phi(&self, x: &[f64], c: &[f64], h: &[f64]) -> Vec<f64> {
        self.project(&self.step(x, c, h, IFGO).1)
    }

    /// Central differences of φ w.r.t. h (c fixed) or w.r.t. c (h fixed): N × H row-major.
    fn fd_jacobian(&self, x: &[f64], c: &[f64], h: &[f64], wrt_c: bool, delta: f64) -> Vec<f64> {
        let mut jac = vec![0.0; N * H];
        for m in 0..H {
            let shifted = |s: f64| {
                let (mut c, mut h) = (c.to_vec(), h.to_vec());
                if wrt_c {
                    c[m] += s;
                } else {
                    h[m] += s;
                }
                self.phi(x, &c, &h)
            };
            let (plus, minus) = (shifted(delta), shifted(-delta));
            for k in 0..N {
                jac[k * H + m] = (plus[k] - minus[k]) / (2.0 * delta);
            }
        }
        jac
    }
}

struct Setup {
    lstm: Lstm,
    proj: Linear,
    reference: Reference,
    x: Vec<f64>, // B × DIN
    c: Vec<f64>, // B × H
    h: Vec<f64>, // B × H
}

impl Setup {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Pre-activation std ≈ 0.6 (x part) + 0.6 (h part) + bias: O(1), unsaturated.
        let wx = uniform(&mut rng, DIN * 4 * H, 0.4);
        let wh = uniform(&mut rng, H * 4 * H, 0.5);
        let b = uniform(&mut rng, 4 * H, 0.5);
        let p = uniform(&mut rng, H * N, 0.6);
        let pb = uniform(&mut rng, N, 0.5);
        let x = normal(&mut rng, B * DIN, 1.0);
        let c = normal(&mut rng, B * H, 1.0);
        let h = uniform(&mut rng, B * H, 0.9);
        let lstm = Lstm {
            wx: tensor(&wx, &[DIN, 4 * H]),
            wh: tensor(&wh, &[H, 4 * H]),
            b: tensor(&b, &[4 * H]),
            hidden: H,
        };
        let proj = Linear {
            weight: tensor(&p, &[H, N]),
            bias: tensor(&pb, &[N]),
        };
        Self {
            lstm,
            proj,
            reference: Reference { wx, wh, b, p, pb },
            x,
            c,
            h,
        }
    }

    fn carry(&self) -> Carry {
        Carry {
            c: tensor(&self.c, &[B, H]),
            h: tensor(&self.h, &[B, H]),
        }
    }

    fn xt(&self) -> Tensor {
        tensor(&self.x, &[B, DIN])
    }

    fn task(&self, b: usize) -> (&[f64], &[f64], &[f64]) {
        (
            &self.x[b * DIN..(b + 1) * DIN],
            &self.c[b * H..(b + 1) * H],
            &self.h[b * H..(b + 1) * H],
        )
    }
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

#[test]
fn gates_are_in_the_working_range() {
    lvrnn::init_threads(1);
    let s = Setup::new(1);
    let mut z = vec![];
    for b in 0..B {
        let (x, _, h) = s.task(b);
        z.extend(s.reference.preact(x, h));
    }
    let mean_abs = z.iter().map(|v| v.abs()).sum::<f64>() / z.len() as f64;
    eprintln!(
        "pre-activations: max |z| = {:.3}, mean |z| = {mean_abs:.3}",
        max_abs(&z)
    );
    assert!(
        max_abs(&z) < 5.0,
        "gates saturate (max |z| = {})",
        max_abs(&z)
    );
    assert!(
        mean_abs > 0.4,
        "gates are nearly linear (mean |z| = {mean_abs})"
    );
}

#[test]
fn step_matches_f64_reference_with_gate_order_ifgo() -> Result<()> {
    lvrnn::init_threads(1);
    let s = Setup::new(2);
    let out = s.lstm.step(&s.xt(), &s.carry())?;
    let (c_got, h_got) = (values(&out.c), values(&out.h));
    let run = |order: GateOrder| {
        let (mut c, mut h) = (vec![], vec![]);
        for b in 0..B {
            let (x, c0, h0) = s.task(b);
            let (c2, h2) = s.reference.step(x, c0, h0, order);
            c.extend(c2);
            h.extend(h2);
        }
        (c, h)
    };
    let (c_ref, h_ref) = run(IFGO);
    let (ec, eh) = (max_abs_diff(&c_got, &c_ref), max_abs_diff(&h_got, &h_ref));
    eprintln!("step vs f64 reference: max |Δc| = {ec:.2e}, max |Δh| = {eh:.2e} (tolerance 1e-5)");
    assert!(
        ec < 1e-5 && eh < 1e-5,
        "Lstm::step disagrees with the (i, f, g, o) reference: {ec:e}, {eh:e}"
    );

    // Every other assignment of the four blocks to the gates gives a clearly different step.
    let mut min_other = f64::INFINITY;
    for a in 0..4 {
        for b in 0..4 {
            for c in 0..4 {
                for d in 0..4 {
                    let order = [a, b, c, d];
                    let mut seen = [false; 4];
                    order.iter().for_each(|k| seen[*k] = true);
                    if !seen.iter().all(|x| *x) || order == IFGO {
                        continue;
                    }
                    let (c2, h2) = run(order);
                    let diff = max_abs_diff(&c_got, &c2).max(max_abs_diff(&h_got, &h2));
                    min_other = min_other.min(diff);
                    assert!(
                        diff > 1e-2,
                        "gate order {order:?} is indistinguishable from (i, f, g, o): {diff:e}"
                    );
                }
            }
        }
    }
    eprintln!("smallest disagreement of another gate order: {min_other:.3}");
    Ok(())
}

#[test]
fn output_jacobian_matches_f64_finite_differences() -> Result<()> {
    lvrnn::init_threads(1);
    for seed in [3u64, 4, 5] {
        let s = Setup::new(seed);
        let jac = s.lstm.output_jacobian(&s.xt(), &s.carry(), &s.proj)?;
        assert_eq!(jac.dims(), &[B, N, H]);
        let got = values(&jac);
        let mut want = vec![];
        for b in 0..B {
            let (x, c, h) = s.task(b);
            want.extend(s.reference.fd_jacobian(x, c, h, false, 1e-6));
        }
        let err = max_abs_diff(&got, &want);
        eprintln!(
            "seed {seed}: J vs f64 FD (δ=1e-6): max abs error {err:.2e}, max |J| {:.3} (tolerance 1e-4)",
            max_abs(&want)
        );
        assert!(max_abs(&want) > 0.1, "degenerate Jacobian");
        assert!(
            err < 1e-4,
            "output_jacobian differs from f64 finite differences by {err:e}"
        );
    }
    Ok(())
}

#[test]
fn output_jacobian_matches_f32_finite_differences_of_the_crate_step() -> Result<()> {
    lvrnn::init_threads(1);
    let s = Setup::new(6);
    let x = s.xt();
    let got = values(&s.lstm.output_jacobian(&x, &s.carry(), &s.proj)?);
    let delta = 1e-2;
    let c = tensor(&s.c, &[B, H]);
    let mut want = vec![0.0; B * N * H];
    for m in 0..H {
        let phi = |sign: f64| -> Result<Vec<f64>> {
            let mut h = s.h.clone();
            (0..B).for_each(|b| h[b * H + m] += sign * delta);
            let carry = Carry {
                c: c.clone(),
                h: tensor(&h, &[B, H]),
            };
            Ok(values(&s.proj.forward(&s.lstm.step(&x, &carry)?.h)?))
        };
        let (plus, minus) = (phi(1.0)?, phi(-1.0)?);
        for b in 0..B {
            for k in 0..N {
                want[(b * N + k) * H + m] = (plus[b * N + k] - minus[b * N + k]) / (2.0 * delta);
            }
        }
    }
    let err = max_abs_diff(&got, &want);
    eprintln!(
        "J vs f32 FD of proj.forward(lstm.step(..).h) (δ=1e-2): max abs error {err:.2e} (tolerance 2e-3)"
    );
    assert!(
        err < 2e-3,
        "output_jacobian differs from f32 finite differences by {err:e}"
    );
    Ok(())
}

#[test]
fn output_jacobian_holds_c_fixed() -> Result<()> {
    lvrnn::init_threads(1);
    let s = Setup::new(7);
    let got = values(&s.lstm.output_jacobian(&s.xt(), &s.carry(), &s.proj)?);
    let (mut jh, mut jc) = (vec![], vec![]);
    for b in 0..B {
        let (x, c, h) = s.task(b);
        jh.extend(s.reference.fd_jacobian(x, c, h, false, 1e-6));
        jc.extend(s.reference.fd_jacobian(x, c, h, true, 1e-6));
    }
    // ∂φ/∂c matters (so holding c fixed is a real choice) …
    eprintln!("max |∂φ/∂c| = {:.3}", max_abs(&jc));
    assert!(
        max_abs(&jc) > 0.05,
        "∂φ/∂c is negligible; the test would not discriminate"
    );
    // … and J is ∂φ/∂h alone, not the derivative along (h, c) moved together.
    let joint: Vec<f64> = jh.iter().zip(&jc).map(|(a, b)| a + b).collect();
    let (err_h, err_joint) = (max_abs_diff(&got, &jh), max_abs_diff(&got, &joint));
    eprintln!("J vs ∂φ/∂h: {err_h:.2e} (tolerance 1e-4); J vs ∂φ/∂h + ∂φ/∂c: {err_joint:.3}");
    assert!(err_h < 1e-4);
    assert!(err_joint > 1e-2);

    // The Jacobian still depends on the value of c (through c' = f∘c + i∘g): another c gives
    // another J, again matching ∂φ/∂h at that c.
    let c2: Vec<f64> = s.c.iter().map(|v| (0.5 - v) as f32 as f64).collect();
    let carry2 = Carry {
        c: tensor(&c2, &[B, H]),
        h: tensor(&s.h, &[B, H]),
    };
    let got2 = values(&s.lstm.output_jacobian(&s.xt(), &carry2, &s.proj)?);
    let mut want2 = vec![];
    for b in 0..B {
        let (x, _, h) = s.task(b);
        want2.extend(
            s.reference
                .fd_jacobian(x, &c2[b * H..(b + 1) * H], h, false, 1e-6),
        );
    }
    assert!(max_abs_diff(&got2, &want2) < 1e-4);
    assert!(max_abs_diff(&got2, &got) > 1e-2, "J does not depend on c");
    Ok(())
}

#[test]
fn output_jacobian_carries_no_gradient_and_ignores_bias_of_projection() -> Result<()> {
    lvrnn::init_threads(1);
    let s = Setup::new(8);
    // Shifting the projection bias does not change J (J = ∂(P h' + p_b)/∂h).
    let shifted = Linear {
        weight: s.proj.weight.clone(),
        bias: (s.proj.bias.clone() + 3.0)?,
    };
    let a = values(&s.lstm.output_jacobian(&s.xt(), &s.carry(), &s.proj)?);
    let b = values(&s.lstm.output_jacobian(&s.xt(), &s.carry(), &shifted)?);
    assert_eq!(a, b);
    // Computed outside the autograd graph: with trainable weights, J has no path back to them.
    let wh = candle_core::Var::from_tensor(&s.lstm.wh)?;
    let lstm = Lstm {
        wh: wh.as_tensor().clone(),
        ..s.lstm.clone()
    };
    let j = lstm.output_jacobian(&s.xt(), &s.carry(), &s.proj)?;
    let grads = j.sqr()?.sum_all()?.backward()?;
    assert!(
        grads.get(wh.as_tensor()).is_none(),
        "output_jacobian is part of the autograd graph"
    );
    Ok(())
}
