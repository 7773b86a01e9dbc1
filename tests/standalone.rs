//! `posterior::standalone`: the Laplace posterior of a foreign LSTM from its weights.
//! - the f64 path against an independent computation in this file (a plain f64 LSTM, the
//!   Jacobian by central finite differences, Λ, entropy and KL in closed form) to 1e-6;
//! - the f32 fast filter against the f64 reference to 1e-3 relative, every Table-2 variant;
//! - a PyTorch-layout state dict and the equivalent Flax tree give identical posteriors;
//! - bad weights and inputs are refused with a message naming the problem.

use lvrnn::posterior::PosteriorConfig;
use lvrnn::posterior::config::LaplaceConfig;
use lvrnn::posterior::standalone::{LaplaceLstm, LstmWeights, Named, Projection, Sequences};

const VARIANTS: &[&str] = &[
    "laplace:window=1,accumulate=sigma",
    "laplace:window=1,accumulate=mu_sigma",
    "laplace:window=1,accumulate=none",
    "laplace:window=3,accumulate=none,damping=2.0",
    "laplace:window=0,accumulate=none",
    "laplace:window=1,accumulate=sigma,diagonal=true",
    "laplace:window=3,accumulate=sigma,diagonal=true,prior_precision=4.0",
];

fn laplace(spec: &str) -> LaplaceConfig {
    match spec.parse().expect("a spec") {
        PosteriorConfig::Laplace(c) => c,
        _ => unreachable!(),
    }
}

/// Deterministic values in about [−scale, scale].
fn values(len: usize, seed: f64, scale: f64) -> Vec<f64> {
    (0..len)
        .map(|i| (i as f64 * 0.7123 + seed).sin() * scale)
        .collect()
}

/// A torch-layout state dict for (d_in, H).
fn torch_dict(d_in: usize, hd: usize) -> Named {
    let mut m = Named::new();
    let s = 1.0 / (hd as f64).sqrt();
    m.insert(
        "weight_ih_l0".into(),
        (values(4 * hd * d_in, 0.1, s), vec![4 * hd, d_in]),
    );
    m.insert(
        "weight_hh_l0".into(),
        (values(4 * hd * hd, 0.2, s), vec![4 * hd, hd]),
    );
    m.insert("bias_ih_l0".into(), (values(4 * hd, 0.3, s), vec![4 * hd]));
    m.insert("bias_hh_l0".into(), (values(4 * hd, 0.4, s), vec![4 * hd]));
    m
}

/// One step of the LSTM in torch's own terms (weight_ih (4H, d), rows i, f, g, o).
fn torch_step(m: &Named, x: &[f64], c: &[f64], h: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (wih, wihs) = &m["weight_ih_l0"];
    let (whh, _) = &m["weight_hh_l0"];
    let (bih, bhh) = (&m["bias_ih_l0"].0, &m["bias_hh_l0"].0);
    let (g4, d) = (wihs[0], wihs[1]);
    let hd = g4 / 4;
    let z: Vec<f64> = (0..g4)
        .map(|r| {
            let a: f64 = (0..d).map(|k| wih[r * d + k] * x[k]).sum();
            let b: f64 = (0..hd).map(|k| whh[r * hd + k] * h[k]).sum();
            a + b + bih[r] + bhh[r]
        })
        .collect();
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let mut c2 = vec![0.0; hd];
    let mut h2 = vec![0.0; hd];
    for j in 0..hd {
        let (i, f, g, o) = (
            sig(z[j]),
            sig(z[hd + j]),
            z[2 * hd + j].tanh(),
            sig(z[3 * hd + j]),
        );
        c2[j] = f * c[j] + i * g;
        h2[j] = o * c2[j].tanh();
    }
    (c2, h2)
}

fn cholesky_logdet(a: &[f64], n: usize) -> (Vec<f64>, f64) {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            l[i * n + j] = if i == j { s.sqrt() } else { s / l[j * n + j] };
        }
    }
    let ld = 2.0 * (0..n).map(|i| l[i * n + i].ln()).sum::<f64>();
    (l, ld)
}

fn inverse(a: &[f64], n: usize) -> Vec<f64> {
    let (l, _) = cholesky_logdet(a, n);
    let mut inv = vec![0.0; n * n];
    for col in 0..n {
        let mut y = vec![0.0; n];
        for i in 0..n {
            let e = if i == col { 1.0 } else { 0.0 };
            y[i] = (e - (0..i).map(|k| l[i * n + k] * y[k]).sum::<f64>()) / l[i * n + i];
        }
        let mut x = vec![0.0; n];
        for i in (0..n).rev() {
            x[i] = (y[i] - (i + 1..n).map(|k| l[k * n + i] * x[k]).sum::<f64>()) / l[i * n + i];
        }
        (0..n).for_each(|i| inv[i * n + col] = x[i]);
    }
    inv
}

/// The independent computation for one task: per step (μ, dense Λ, entropy, KL).
#[allow(clippy::type_complexity)]
fn independent(
    m: &Named,
    p: &[f64],
    n: usize,
    xs: &[Vec<f64>],
    cfg: &LaplaceConfig,
) -> Vec<(Vec<f64>, Vec<f64>, f64, f64)> {
    let hd = m["weight_hh_l0"].1[1];
    let phi = |h: &[f64]| -> Vec<f64> {
        (0..n)
            .map(|k| (0..hd).map(|j| h[j] * p[j * n + k]).sum())
            .collect()
    };
    let eye = |s: f64| -> Vec<f64> {
        (0..n * n)
            .map(|k| if k / n == k % n { s } else { 0.0 })
            .collect()
    };
    let jit = |a: &[f64]| -> Vec<f64> {
        let mut a = a.to_vec();
        (0..n).for_each(|i| a[i * n + i] += cfg.jitter);
        a
    };
    let (mut c, mut h) = (vec![0.0; hd], vec![0.0; hd]);
    let mut lam = eye(cfg.prior_precision);
    let mut mu = phi(&h);
    let half = 0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E).ln();
    let entropy = |lam: &[f64]| n as f64 * half - 0.5 * cholesky_logdet(&jit(lam), n).1;
    let mut out = vec![(mu.clone(), lam.clone(), entropy(&lam), f64::NAN)];
    for t in 0..xs.len() {
        (c, h) = torch_step(m, &xs[t], &c, &h);
        let window = if cfg.window == 0 {
            t + 1
        } else {
            cfg.window.min(t + 1)
        };
        let mut new = match cfg.accumulate {
            lvrnn::posterior::Accumulate::None => eye(cfg.damping),
            _ => lam.clone(),
        };
        for x in &xs[t + 1 - window..=t] {
            // J[k, m] = ∂ φ_k(h'(x, (c_t, h))) / ∂h_m at h_t, central differences.
            let eps = 1e-6;
            let mut jac = vec![0.0; n * hd];
            for mm in 0..hd {
                let (mut hp, mut hm) = (h.clone(), h.clone());
                hp[mm] += eps;
                hm[mm] -= eps;
                let (fp, fm) = (
                    phi(&torch_step(m, x, &c, &hp).1),
                    phi(&torch_step(m, x, &c, &hm).1),
                );
                (0..n).for_each(|k| jac[k * hd + mm] = (fp[k] - fm[k]) / (2.0 * eps));
            }
            for a in 0..n {
                for b in 0..n {
                    let v: f64 = (0..hd).map(|q| jac[a * hd + q] * jac[b * hd + q]).sum();
                    if !cfg.diagonal || a == b {
                        new[a * n + b] += v;
                    }
                }
            }
        }
        let phi_t = phi(&h);
        let mu_new: Vec<f64> = match cfg.accumulate {
            lvrnn::posterior::Accumulate::MuSigma => {
                phi_t.iter().zip(&mu).map(|(a, b)| a + b).collect()
            }
            _ => phi_t,
        };
        // KL(N(μ, Λ̃⁻¹) ‖ N(μp, Λ̃p⁻¹)) = ½[tr(Λ̃p Λ̃⁻¹) + dᵀΛ̃p d − n + ln det Λ̃ − ln det Λ̃p].
        let (lp, ln) = (jit(&lam), jit(&new));
        let inv = inverse(&ln, n);
        let tr: f64 = (0..n)
            .map(|i| (0..n).map(|k| lp[i * n + k] * inv[k * n + i]).sum::<f64>())
            .sum();
        let d: Vec<f64> = mu_new.iter().zip(&mu).map(|(a, b)| a - b).collect();
        let quad: f64 = (0..n)
            .map(|i| (0..n).map(|k| d[i] * lp[i * n + k] * d[k]).sum::<f64>())
            .sum();
        let kl =
            0.5 * (tr + quad - n as f64 + cholesky_logdet(&ln, n).1 - cholesky_logdet(&lp, n).1);
        lam = new;
        mu = mu_new;
        out.push((mu.clone(), lam.clone(), entropy(&lam), kl));
    }
    out
}

fn close(a: f64, e: f64, rel: f64) -> bool {
    (a - e).abs() <= rel * e.abs().max(1.0)
}

/// Sizes of the small test LSTM.
const D_IN: usize = 3;
const H: usize = 6;
const N: usize = 4;
const B: usize = 2;
const T: usize = 5;

fn model() -> (Named, Vec<f64>, LaplaceLstm) {
    let dict = torch_dict(D_IN, H);
    let p = values(H * N, 0.5, 0.8);
    let proj = Projection::new(p.clone(), &[H, N], None, H).unwrap();
    let m = LaplaceLstm::new(LstmWeights::from_torch(&dict).unwrap(), Some(proj)).unwrap();
    (dict, p, m)
}

#[test]
fn f64_posterior_equals_finite_differences_and_closed_forms() {
    lvrnn::init_threads(1);
    let (dict, p, model) = model();
    let inputs = values(B * T * D_IN, 0.9, 1.5);
    for spec in VARIANTS {
        let cfg = laplace(spec);
        let seq = Sequences {
            inputs: &inputs,
            batch: B,
            steps: T,
            h0: None,
            c0: None,
        };
        let got = model.filter_f64(&cfg, &seq).unwrap();
        for b in 0..B {
            let xs: Vec<Vec<f64>> = (0..T)
                .map(|t| inputs[(b * T + t) * D_IN..(b * T + t + 1) * D_IN].to_vec())
                .collect();
            for (t, (mu, lam, ent, kl)) in independent(&dict, &p, N, &xs, &cfg).iter().enumerate() {
                let r = b * (T + 1) + t;
                for (k, m) in mu.iter().enumerate() {
                    assert!(
                        close(got.mean[r * N + k], *m, 1e-9),
                        "{spec} b{b} t{t}: mean"
                    );
                }
                for a in 0..N {
                    for c in 0..N {
                        let g = if cfg.diagonal {
                            if a == c {
                                got.precision[r * N + a]
                            } else {
                                0.0
                            }
                        } else {
                            got.precision[(r * N + a) * N + c]
                        };
                        assert!(
                            close(g, lam[a * N + c], 1e-6),
                            "{spec} b{b} t{t}: Λ[{a},{c}] {g} vs {}",
                            lam[a * N + c]
                        );
                    }
                }
                assert!(
                    close(got.entropy[r], *ent, 1e-6),
                    "{spec} b{b} t{t}: entropy"
                );
                if t == 0 {
                    assert!(got.kl[r].is_nan(), "KL at t = 0 is undefined (NaN)");
                } else {
                    assert!(
                        close(got.kl[r], *kl, 1e-6),
                        "{spec} b{b} t{t}: KL {} vs {kl}",
                        got.kl[r]
                    );
                }
            }
        }
    }
}

#[test]
fn f32_fast_filter_equals_the_f64_reference_for_every_variant() {
    lvrnn::init_threads(1);
    let (_, _, model) = model();
    let inputs = values(B * T * D_IN, 0.9, 1.5);
    let inputs32: Vec<f32> = inputs.iter().map(|v| *v as f32).collect();
    let (h0, c0) = (values(B * H, 2.0, 0.5), values(B * H, 3.0, 0.5));
    let (h032, c032): (Vec<f32>, Vec<f32>) = (
        h0.iter().map(|v| *v as f32).collect(),
        c0.iter().map(|v| *v as f32).collect(),
    );
    for spec in VARIANTS {
        let cfg = laplace(spec);
        let reference = model
            .filter_f64(
                &cfg,
                &Sequences {
                    inputs: &inputs,
                    batch: B,
                    steps: T,
                    h0: Some(&h0),
                    c0: Some(&c0),
                },
            )
            .unwrap();
        let fast = model
            .filter_f32(
                &cfg,
                &Sequences {
                    inputs: &inputs32,
                    batch: B,
                    steps: T,
                    h0: Some(&h032),
                    c0: Some(&c032),
                },
            )
            .unwrap();
        let rel = 1e-3;
        for (name, a, e) in [
            ("mean", &fast.mean, &reference.mean),
            ("precision", &fast.precision, &reference.precision),
            ("h", &fast.h, &reference.h),
            ("c", &fast.c, &reference.c),
        ] {
            assert_eq!(a.len(), e.len(), "{spec}: {name} length");
            for (i, (a, e)) in a.iter().zip(e.iter()).enumerate() {
                assert!(close(*a as f64, *e, rel), "{spec}: {name}[{i}] {a} vs {e}");
            }
        }
        for (i, (a, e)) in fast.entropy.iter().zip(&reference.entropy).enumerate() {
            assert!(close(*a, *e, rel), "{spec}: entropy[{i}] {a} vs {e}");
        }
        for (i, (a, e)) in fast.kl.iter().zip(&reference.kl).enumerate() {
            assert!(
                a.is_nan() == e.is_nan()
                    && (a.is_nan() || (a - e).abs() <= 1e-3 * e.abs().max(0.05)),
                "{spec}: kl[{i}] {a} vs {e}"
            );
        }
    }
}

#[test]
fn flax_tree_and_torch_state_dict_give_identical_posteriors() {
    lvrnn::init_threads(1);
    let dict = torch_dict(D_IN, H);
    // The same LSTM as Flax parameters: kernels (in, H) per gate, the two biases summed in hX.
    let mut flax = Named::new();
    let (wih, whh) = (&dict["weight_ih_l0"].0, &dict["weight_hh_l0"].0);
    let (bih, bhh) = (&dict["bias_ih_l0"].0, &dict["bias_hh_l0"].0);
    for (g, gate) in ["i", "f", "g", "o"].iter().enumerate() {
        let kx: Vec<f64> = (0..D_IN)
            .flat_map(|k| (0..H).map(move |j| (g, k, j)))
            .map(|(g, k, j)| wih[(g * H + j) * D_IN + k])
            .collect();
        let kh: Vec<f64> = (0..H)
            .flat_map(|k| (0..H).map(move |j| (g, k, j)))
            .map(|(g, k, j)| whh[(g * H + j) * H + k])
            .collect();
        let bias: Vec<f64> = (0..H).map(|j| bih[g * H + j] + bhh[g * H + j]).collect();
        flax.insert(format!("i{gate}/kernel"), (kx, vec![D_IN, H]));
        flax.insert(format!("h{gate}/kernel"), (kh, vec![H, H]));
        flax.insert(format!("h{gate}/bias"), (bias, vec![H]));
    }
    let a = LaplaceLstm::new(LstmWeights::from_named(&dict).unwrap(), None).unwrap();
    let b = LaplaceLstm::new(LstmWeights::from_named(&flax).unwrap(), None).unwrap();
    let inputs = values(B * T * D_IN, 0.9, 1.5);
    let cfg = laplace("laplace:window=3,accumulate=sigma");
    let seq = Sequences {
        inputs: &inputs,
        batch: B,
        steps: T,
        h0: None,
        c0: None,
    };
    let (ta, tb) = (
        a.filter_f64(&cfg, &seq).unwrap(),
        b.filter_f64(&cfg, &seq).unwrap(),
    );
    assert_eq!(ta.features, H, "no projection: z = h");
    for (x, y) in ta
        .precision
        .iter()
        .zip(&tb.precision)
        .chain(ta.h.iter().zip(&tb.h))
    {
        assert!((x - y).abs() <= 1e-12 * x.abs().max(1.0), "{x} vs {y}");
    }
}

#[test]
fn bad_weights_and_inputs_are_refused_with_the_reason() {
    let err = |r: anyhow::Result<LstmWeights>| format!("{:#}", r.unwrap_err());
    let mut d = torch_dict(D_IN, H);
    d.remove("weight_ih_l0");
    assert!(err(LstmWeights::from_torch(&d)).contains("missing weight `weight_ih_l0`"));
    let mut d = torch_dict(D_IN, H);
    d.get_mut("bias_hh_l0").unwrap().1 = vec![4 * H - 1];
    assert!(err(LstmWeights::from_torch(&d)).contains("`bias_hh_l0` has shape"));
    let mut d = torch_dict(D_IN, H);
    d.get_mut("weight_hh_l0").unwrap().0[3] = f64::NAN;
    assert!(err(LstmWeights::from_torch(&d)).contains("non-finite"));
    let mut d = torch_dict(D_IN, H);
    d.insert("weight_ih_l1".into(), (vec![0.0; 4], vec![2, 2]));
    assert!(err(LstmWeights::from_torch(&d)).contains("single-layer"));
    let mut d = Named::new();
    d.insert("kernel".into(), (vec![0.0], vec![1]));
    assert!(err(LstmWeights::from_named(&d)).contains("unrecognised LSTM weights"));
    assert!(Projection::new(vec![0.0; N * H], &[N, H], None, H).is_err());

    let (_, _, model) = model();
    let cfg = laplace("laplace:window=1,accumulate=sigma");
    let mut inputs = values(B * T * D_IN, 0.9, 1.5);
    let short = Sequences {
        inputs: &inputs[1..],
        batch: B,
        steps: T,
        h0: None,
        c0: None,
    };
    let e = format!("{:#}", model.filter_f64(&cfg, &short).unwrap_err());
    assert!(e.contains("expected (B, T, d_in)"), "{e}");
    inputs[D_IN * T + 2] = f64::INFINITY;
    let bad = Sequences {
        inputs: &inputs,
        batch: B,
        steps: T,
        h0: None,
        c0: None,
    };
    let e = format!("{:#}", model.filter_f64(&cfg, &bad).unwrap_err());
    assert!(e.contains("inputs[1, 0, 2] is not finite"), "{e}");
}
