//! The linearised (GLM) predictive of `eval.predictive = "linearised"`: the head's analytic
//! input gradient against candle's backward and finite differences; the posterior factor
//! against the sampler and the posterior's entropy (Laplace full and diagonal, VRNN); the
//! predictive against its closed form and, for a head linear in z, against the sampled
//! mixture; the narrow-posterior limit where the sampled predictive of the real head becomes
//! the linearised one; the prior tuning under the chosen predictive; and the key, the flag, the
//! sweep stage and the report labels.

mod common;

use common::{lvrnn, lvrnn_ok, text};
use lvrnn::agent::Model;
use lvrnn::agent::ModelConfig;
use lvrnn::agent::acting::Acting;
use lvrnn::agent::regression::RegressionModel;
use lvrnn::config::ExperimentConfig;
use lvrnn::eval::request::EvalRequest;
use lvrnn::eval::{
    evaluate_regression, linearised_stats, mixture_stats, posterior_factor, tune_regression_prior,
    tuning_config,
};
use lvrnn::nn::Params;
use lvrnn::nn::head::Head;
use lvrnn::posterior::PosteriorConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Agreement of two computations of the same f32 quantity (analytic against candle's backward,
/// the sampler's offsets against the factor).
const REL: f64 = 1e-5;
/// Central finite differences in f32 with step [`STEP`]: rounding ~6e-8·|y|/STEP.
const FD_TOL: f64 = 1e-3;
const STEP: f32 = 1e-3;
/// Monte-Carlo tolerance of a CE over [`MC_SAMPLES`] samples (a few standard errors).
const MC_TOL: f64 = 0.01;
const MC_SAMPLES: usize = 20_000;

fn normals(rng: &mut ChaCha8Rng, count: usize) -> Vec<f32> {
    (0..count).map(|_| rng.sample(StandardNormal)).collect()
}

fn small_model(posterior: &str, seed: u64) -> RegressionModel {
    let cfg = ModelConfig {
        embed_width: 8,
        hidden: 8,
        features: 4,
        head_hidden: vec![16, 16],
        posterior: posterior.parse().unwrap(),
        ..ModelConfig::default()
    };
    RegressionModel::new(&cfg, seed).unwrap()
}

fn eval_config(extra: &str) -> ExperimentConfig {
    let text = format!(
        "name = \"glm\"\ntask = \"regression\"\n[eval]\ntasks = 16\npoints = [0, 1, 5]\ngrid = 16\nsamples = 8\nexample_points = 1\n{extra}"
    );
    ExperimentConfig::from_toml_str(&text, "test").unwrap()
}

fn ce(rows: &[lvrnn::eval::EvalRow]) -> Vec<f64> {
    rows.iter().map(|r| r.ce_mean).collect()
}

// ---------------------------------------------------------------------------------------------
// The head's input gradient
// ---------------------------------------------------------------------------------------------

#[test]
fn head_input_gradient_matches_backward_and_finite_differences() {
    lvrnn::init_threads(1);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (d, rows) = (6, 7);
    let head = Head::new(&mut Params::new(), "h", d, &[16, 8], 1, &mut rng).unwrap();
    let x = normals(&mut rng, rows * d);
    let packed = head.packed_values().unwrap();
    let (y, grad) = head.input_gradient(&packed, &x, rows).unwrap();

    // The forward it returns is the head's, and the gradient is the fused op's backward.
    let dev = candle_core::Device::Cpu;
    let xv = candle_core::Var::from_vec(x.clone(), (rows, d), &dev).unwrap();
    let out = head.forward(xv.as_tensor()).unwrap();
    let want_y: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    let grads = out.sum_all().unwrap().backward().unwrap();
    let want_g: Vec<f32> = grads
        .get(xv.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (a, b) in y.iter().zip(&want_y).chain(grad.iter().zip(&want_g)) {
        assert!(
            ((a - b).abs() as f64) <= REL * (1.0 + b.abs() as f64),
            "{a} vs {b}"
        );
    }

    // Central differences of the head's forward, skipping a coordinate whose ±STEP crosses a
    // leaky-ReLU kink (a hidden unit changes sign).
    let (mut checked, mut skipped) = (0, 0);
    for r in 0..rows {
        for i in 0..d {
            let shifted = |h: f32| {
                let mut row = x[r * d..(r + 1) * d].to_vec();
                row[i] += h;
                head.trace(&packed, &row, 1).unwrap()
            };
            let (up, down) = (shifted(STEP), shifted(-STEP));
            let kink = up.layer_inputs[1..]
                .iter()
                .zip(&down.layer_inputs[1..])
                .any(|(a, b)| a.iter().zip(b).any(|(a, b)| (*a > 0.0) != (*b > 0.0)));
            if kink {
                skipped += 1;
                continue;
            }
            let fd = (up.output[0] as f64 - down.output[0] as f64) / (2.0 * STEP as f64);
            let g = grad[r * d + i] as f64;
            assert!(
                (fd - g).abs() <= FD_TOL * (1.0 + g.abs()),
                "row {r}, input {i}: analytic {g}, finite difference {fd}"
            );
            checked += 1;
        }
    }
    assert!(
        skipped * 10 <= checked,
        "{skipped} kinks in {checked} checks"
    );

    // It refuses a head with more than one output.
    let two = Head::new(&mut Params::new(), "h2", d, &[4], 2, &mut rng).unwrap();
    let err = two
        .input_gradient(&two.packed_values().unwrap(), &x, rows)
        .unwrap_err();
    assert!(format!("{err:#}").contains("one output"), "{err:#}");
}

#[test]
fn linearised_mean_is_the_predictive_mean_and_its_gradient_in_z() {
    lvrnn::init_threads(1);
    let model = small_model("laplace:window=1,accumulate=sigma", 5);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (e, n, g, b) = (8, 4, 5, 3);
    let grid: Vec<f32> = (0..g).map(|i| -0.9 + 0.4 * i as f32).collect();
    let emb = model.embed_scalar(0, &grid).unwrap().detach(); // (G, E)
    let emb_values: Vec<f32> = emb.flatten_all().unwrap().to_vec1().unwrap();
    let mu = normals(&mut rng, b * n);
    let (means, jac) = model.linearised_mean(&emb_values, &mu).unwrap();
    assert_eq!(
        (means.len(), jac.len(), emb_values.len()),
        (b * g, b * g * n, g * e)
    );
    // The same means through the sampled path's predict_mean, and ∂/∂z by its backward.
    let dev = candle_core::Device::Cpu;
    let z = candle_core::Var::from_vec(mu.clone(), (b, 1, n), &dev).unwrap();
    let want = model
        .predict_mean(&emb.unsqueeze(0).unwrap(), z.as_tensor())
        .unwrap(); // (B, G)
    let want_means: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    let dz: Vec<f32> = want
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
        .get(z.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap(); // Σ_g ∂mean(x_g, z_b)/∂z_b, (B, n)
    for (a, w) in means.iter().zip(&want_means) {
        assert!(
            ((a - w).abs() as f64) <= REL * (1.0 + w.abs() as f64),
            "{a} vs {w}"
        );
    }
    for j in 0..b {
        for k in 0..n {
            let summed: f32 = (0..g).map(|q| jac[(j * g + q) * n + k]).sum();
            let w = dz[j * n + k];
            assert!(
                ((summed - w).abs() as f64) <= REL * (1.0 + w.abs() as f64),
                "task {j}, z_{k}: {summed} vs {w}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Σ: the covariance the sampler draws from
// ---------------------------------------------------------------------------------------------

/// For each posterior: after a few observations, the factor A of [`posterior_factor`] gives
/// every sample as μ + Aᵀε (the sampler is linear in ε), and ½ ln det AᵀA is the posterior's
/// entropy minus ½ n ln 2πe (Laplace: Σ = (Λ_t + jitter·I)⁻¹). Before any observation a post-hoc
/// Laplace posterior with Λ_0 = p·I has AᵀA = I / (p + jitter).
#[test]
fn posterior_factor_is_the_samplers_covariance() {
    lvrnn::init_threads(1);
    let (b, n) = (3, 4);
    let dev = candle_core::Device::Cpu;
    let half_ln_2pi_e = 0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E).ln();
    for spec in [
        "laplace:window=1,accumulate=sigma",
        "laplace:window=2,accumulate=none,diagonal=true",
        "vrnn",
        "vrnn:diagonal=true",
    ] {
        let model = small_model(spec, 3);
        let mut acting = Acting::new(&model.core, b).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let none = candle_core::Tensor::zeros((0, b, n), candle_core::DType::F32, &dev).unwrap();
        for _ in 0..3 {
            let x = normals(&mut rng, b);
            let y = normals(&mut rng, b);
            acting.observe(&[x, y], &none).unwrap();
        }
        let (mu, factor) = posterior_factor(&acting, b, n, &dev).unwrap();
        let eps = normals(&mut rng, 2 * b * n);
        let z: Vec<f32> = acting
            .sample(&candle_core::Tensor::from_vec(eps.clone(), (2, b, n), &dev).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let entropy = acting.entropy().unwrap().unwrap();
        for j in 0..b {
            let a = &factor[j * n * n..(j + 1) * n * n];
            for s in 0..2 {
                for k in 0..n {
                    let e = &eps[(s * b + j) * n..(s * b + j + 1) * n];
                    let want = mu[j * n + k] as f64
                        + (0..n)
                            .map(|i| a[i * n + k] as f64 * e[i] as f64)
                            .sum::<f64>();
                    let got = z[(s * b + j) * n + k] as f64;
                    assert!(
                        (got - want).abs() <= REL * (1.0 + want.abs()),
                        "{spec}: {got} vs {want}"
                    );
                }
            }
            let sigma = gram(a, n);
            let half_logdet = 0.5 * logdet(&sigma, n);
            assert!(
                (half_logdet - (entropy[j] - n as f64 * half_ln_2pi_e)).abs() < 1e-3,
                "{spec}: ½ ln det AᵀA = {half_logdet}, entropy {}",
                entropy[j]
            );
        }
    }
    // A post-hoc Laplace posterior before any observation: Σ = (p + jitter)⁻¹ I.
    let rnn = small_model("rnn", 3);
    let p = 1e3;
    let post = rnn
        .with_posterior(
            &format!("laplace:window=1,accumulate=sigma,prior_precision={p}")
                .parse()
                .unwrap(),
        )
        .unwrap();
    let acting = Acting::new(&post.core, b).unwrap();
    let (_, factor) = posterior_factor(&acting, b, n, &dev).unwrap();
    let sigma = gram(&factor[..n * n], n);
    for r in 0..n {
        for c in 0..n {
            let want = if r == c { 1.0 / (p + 1e-6) } else { 0.0 };
            assert!(
                (sigma[r * n + c] - want).abs() < 1e-6 * want.max(1e-3),
                "{sigma:?}"
            );
        }
    }
}

/// AᵀA for A (n × n, row-major), in f64.
fn gram(a: &[f32], n: usize) -> Vec<f64> {
    let mut s = vec![0.0; n * n];
    for r in 0..n {
        for c in 0..n {
            s[r * n + c] = (0..n)
                .map(|i| a[i * n + r] as f64 * a[i * n + c] as f64)
                .sum();
        }
    }
    s
}

/// ln det of a symmetric positive definite matrix by Cholesky, in f64.
fn logdet(m: &[f64], n: usize) -> f64 {
    let mut l = vec![0.0; n * n];
    let mut out = 0.0;
    for i in 0..n {
        for j in 0..=i {
            let s = m[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            if i == j {
                l[i * n + i] = s.sqrt();
                out += 2.0 * s.sqrt().ln();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The predictive: closed form, linear head, narrow posterior
// ---------------------------------------------------------------------------------------------

/// A hand-made Gaussian posterior and a head linear in z: means m_g, Jacobians J_g, a factor A.
struct LinearCase {
    means: Vec<f32>,
    jac: Vec<f32>,
    factor: Vec<f32>,
    truth: Vec<f32>,
    sigma: f64,
    g: usize,
    n: usize,
}

fn linear_case() -> LinearCase {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (g, n) = (12, 3);
    let means = normals(&mut rng, g);
    let jac = normals(&mut rng, g * n);
    let factor: Vec<f32> = normals(&mut rng, n * n).iter().map(|v| 0.4 * v).collect();
    let truth: Vec<f32> = means
        .iter()
        .zip(normals(&mut rng, g))
        .map(|(m, u)| m + 0.8 * u)
        .collect();
    LinearCase {
        means,
        jac,
        factor,
        truth,
        sigma: 0.3,
        g,
        n,
    }
}

#[test]
fn linearised_stats_is_the_closed_form_gaussian() {
    let c = linear_case();
    let mut pits = vec![];
    let (ce, mu, sd) = linearised_stats(&c.means, &c.jac, &c.factor, &c.truth, c.sigma, &mut pits);
    // Independently: v_g = σ² + J_g Σ J_gᵀ with Σ = AᵀA as a matrix.
    let sigma = gram(&c.factor, c.n);
    let mut want = 0.0;
    for k in 0..c.g {
        let j = &c.jac[k * c.n..(k + 1) * c.n];
        let quad: f64 = (0..c.n)
            .flat_map(|r| (0..c.n).map(move |s| (r, s)))
            .map(|(r, s)| j[r] as f64 * sigma[r * c.n + s] * j[s] as f64)
            .sum();
        let var = c.sigma * c.sigma + quad;
        let (y, m) = (c.truth[k] as f64, c.means[k] as f64);
        want += 0.5 * (2.0 * std::f64::consts::PI * var).ln() + (y - m).powi(2) / (2.0 * var);
        assert!((mu[k] - m).abs() < 1e-12 && (sd[k] - var.sqrt()).abs() < 1e-9);
        let z = (y - m) / var.sqrt();
        assert!((pits[k] - lvrnn::eval::calibration::normal_cdf(z)).abs() < 1e-12);
    }
    want /= c.g as f64;
    assert!((ce - want).abs() < 1e-9, "{ce} vs {want}");
}

/// For a head linear in z, mean(x, μ + a) = m + J a, the sampled mixture over z ~ N(μ, AᵀA) is
/// N(m, σ² + J Σ Jᵀ) exactly: its Monte-Carlo CE, mean and spread approach the linearised ones.
#[test]
fn for_a_linear_head_the_sampled_mixture_is_the_linearised_predictive() {
    let c = linear_case();
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let means = linear_head_samples(&c, &mut rng, MC_SAMPLES);
    let (mut p1, mut p2) = (vec![], vec![]);
    let (ce_s, mu_s, sd_s) = mixture_stats(&means, 0, &c.truth, c.sigma, &mut p1);
    let (ce_l, mu_l, sd_l) =
        linearised_stats(&c.means, &c.jac, &c.factor, &c.truth, c.sigma, &mut p2);
    eprintln!("CE sampled {ce_s:.5}, linearised {ce_l:.5}");
    assert!((ce_s - ce_l).abs() < MC_TOL, "{ce_s} vs {ce_l}");
    let se = 4.0 / (MC_SAMPLES as f64).sqrt();
    for k in 0..c.g {
        assert!((mu_s[k] - mu_l[k]).abs() < se * sd_l[k], "mean {k}");
        assert!((sd_s[k] / sd_l[k] - 1.0).abs() < se, "sd {k}");
        assert!(
            (p1[k] - p2[k]).abs() < 0.02,
            "PIT {k}: {} vs {}",
            p1[k],
            p2[k]
        );
    }
}

/// Samples m + J (Aᵀε) of a linear head, shaped as [`mixture_stats`] reads them: [s][0][g].
fn linear_head_samples(c: &LinearCase, rng: &mut ChaCha8Rng, m: usize) -> Vec<Vec<Vec<f32>>> {
    (0..m)
        .map(|_| {
            let e = normals(rng, c.n);
            let offset: Vec<f64> = (0..c.n)
                .map(|k| {
                    (0..c.n)
                        .map(|i| c.factor[i * c.n + k] as f64 * e[i] as f64)
                        .sum()
                })
                .collect();
            vec![
                (0..c.g)
                    .map(|q| {
                        c.means[q]
                            + (0..c.n)
                                .map(|k| c.jac[q * c.n + k] as f64 * offset[k])
                                .sum::<f64>() as f32
                    })
                    .collect(),
            ]
        })
        .collect()
}

/// The real (nonlinear) head under a narrow posterior N(μ, s²·RᵀR), with σ of the order of
/// the posterior's spread s·|J| (so the spread is not negligible) and the truth drawn near
/// the mean: the sampled predictive of the head becomes that of its linearisation, with the
/// same draws (so no Monte-Carlo noise enters the difference), and the difference shrinks
/// with s (first-order: the linearisation error of each draw is O(s²) against a spread O(s)).
#[test]
fn in_a_narrow_posterior_the_sampled_predictive_becomes_the_linearised_one() {
    lvrnn::init_threads(1);
    let model = small_model("laplace:window=1,accumulate=sigma", 8);
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (n, g, m) = (4, 16, 4000);
    let grid: Vec<f32> = (0..g)
        .map(|i| -1.0 + 2.0 * i as f32 / (g - 1) as f32)
        .collect();
    let emb = model.embed_scalar(0, &grid).unwrap().detach();
    let emb_values: Vec<f32> = emb.flatten_all().unwrap().to_vec1().unwrap();
    let mu = normals(&mut rng, n);
    let r: Vec<f32> = normals(&mut rng, n * n).iter().map(|v| v * 0.5).collect();
    let u = normals(&mut rng, g);
    let eps = normals(&mut rng, m * n);
    let (means, jac) = model.linearised_mean(&emb_values, &mu).unwrap();
    let dev = candle_core::Device::Cpu;
    let mut diffs = vec![];
    for s in [1e-1f32, 1e-2, 1e-3] {
        let factor: Vec<f32> = r.iter().map(|v| v * s).collect();
        // σ² = the mean spread J Σ Jᵀ over the grid; the truth one predictive sd from the mean.
        let spread: Vec<f64> = (0..g)
            .map(|q| {
                let j = &jac[q * n..(q + 1) * n];
                factor
                    .chunks(n)
                    .map(|a| {
                        a.iter()
                            .zip(j)
                            .map(|(a, j)| (a * j) as f64)
                            .sum::<f64>()
                            .powi(2)
                    })
                    .sum()
            })
            .collect();
        let sigma = (spread.iter().sum::<f64>() / g as f64).sqrt();
        let truth: Vec<f32> = (0..g)
            .map(|q| means[q] + (u[q] as f64 * (sigma * sigma + spread[q]).sqrt()) as f32)
            .collect();
        // The same draws z = μ + Aᵀε through the head and through its linearisation.
        let offsets: Vec<f32> = (0..m)
            .flat_map(|t| {
                let e = &eps[t * n..(t + 1) * n];
                let factor = &factor;
                (0..n).map(move |k| (0..n).map(|i| factor[i * n + k] * e[i]).sum::<f32>())
            })
            .collect();
        let z: Vec<f32> = offsets
            .chunks(n)
            .flat_map(|o| o.iter().zip(&mu).map(|(o, m)| o + m).collect::<Vec<_>>())
            .collect();
        let z = candle_core::Tensor::from_vec(z, (m, 1, 1, n), &dev).unwrap();
        let head: Vec<Vec<Vec<f32>>> = model
            .predict_mean(&emb.unsqueeze(0).unwrap().unsqueeze(0).unwrap(), &z)
            .unwrap()
            .to_vec3()
            .unwrap(); // (m, 1, G)
        let linear: Vec<Vec<Vec<f32>>> = offsets
            .chunks(n)
            .map(|o| {
                vec![
                    (0..g)
                        .map(|q| {
                            means[q]
                                + o.iter()
                                    .zip(&jac[q * n..(q + 1) * n])
                                    .map(|(o, j)| o * j)
                                    .sum::<f32>()
                        })
                        .collect(),
                ]
            })
            .collect();
        let (ce_head, _, _) = mixture_stats(&head, 0, &truth, sigma, &mut vec![]);
        let (ce_lin_draws, _, _) = mixture_stats(&linear, 0, &truth, sigma, &mut vec![]);
        let (ce_glm, _, _) = linearised_stats(&means, &jac, &factor, &truth, sigma, &mut vec![]);
        eprintln!(
            "s = {s}: σ = {sigma:.3e}, CE head draws {ce_head:.5}, linearised draws {ce_lin_draws:.5}, closed form {ce_glm:.5}"
        );
        assert!(
            (ce_lin_draws - ce_glm).abs() < 3.0 * MC_TOL,
            "{ce_lin_draws} vs {ce_glm}"
        );
        diffs.push((ce_head - ce_lin_draws).abs());
    }
    eprintln!("|CE head − CE linearised| by s: {diffs:?}");
    // Measured: 4.8e-3, 1.4e-4, 1.4e-5 (the last near f32's resolution of the draws).
    assert!(diffs[2] < 1e-4, "{diffs:?}");
    assert!(
        diffs[1] < diffs[0] / 10.0 && diffs[2] < diffs[1],
        "{diffs:?}"
    );
}

/// End to end (`evaluate_regression`): a post-hoc Laplace posterior with Λ_0 = 10⁶·I is so
/// narrow that the sampled and linearised predictives and the network's own point predictive
/// give the same numbers; at the default Λ_0 = I the linearised predictive is wider than σ.
#[test]
fn evaluate_regression_agrees_across_predictives_when_the_posterior_is_narrow() {
    lvrnn::init_threads(1);
    let rnn = small_model("rnn", 6);
    let sampled = eval_config("");
    let linearised = eval_config("predictive = \"linearised\"\n");
    let narrow = rnn
        .with_posterior(
            &"laplace:window=1,accumulate=sigma,prior_precision=1e6"
                .parse()
                .unwrap(),
        )
        .unwrap();
    let point = ce(&evaluate_regression(&rnn, "rnn", &sampled.eval)
        .unwrap()
        .rows);
    let point_lin = ce(&evaluate_regression(&rnn, "rnn", &linearised.eval)
        .unwrap()
        .rows);
    let s = evaluate_regression(&narrow, "s", &sampled.eval).unwrap();
    let l = evaluate_regression(&narrow, "l", &linearised.eval).unwrap();
    eprintln!(
        "point {point:?}, sampled {:?}, linearised {:?}",
        ce(&s.rows),
        ce(&l.rows)
    );
    assert_eq!(point, point_lin, "a point estimate has one predictive");
    for ((p, s), l) in point.iter().zip(ce(&s.rows)).zip(ce(&l.rows)) {
        assert!((s - l).abs() < 1e-4 && (p - l).abs() < 1e-4, "{p} {s} {l}");
    }
    for (a, b) in s.rows.iter().zip(&l.rows) {
        assert!((a.cover90 - b.cover90).abs() < 0.02, "{a:?} {b:?}");
        assert_eq!(a.entropy_mean, b.entropy_mean);
    }
    // The default prior: J Σ Jᵀ > 0 widens the linearised predictive beyond σ.
    let wide = rnn
        .with_posterior(&"laplace:window=1,accumulate=sigma".parse().unwrap())
        .unwrap();
    let l = evaluate_regression(&wide, "l", &linearised.eval).unwrap();
    let sigma = rnn.log_sigma.to_vec1::<f32>().unwrap()[0].exp() as f64;
    let ex = &l.examples[0];
    assert!(
        ex.std.iter().all(|sd| *sd > sigma * (1.0 + 1e-6)),
        "{:?}",
        ex.std
    );
}

// ---------------------------------------------------------------------------------------------
// The prior tuned under the chosen predictive
// ---------------------------------------------------------------------------------------------

#[test]
fn the_prior_is_tuned_under_the_selected_predictive() {
    lvrnn::init_threads(1);
    let rnn = small_model("rnn", 6);
    let spec: PosteriorConfig = "laplace:window=1,accumulate=sigma".parse().unwrap();
    let PosteriorConfig::Laplace(lc) = &spec else {
        unreachable!()
    };
    let tasks = 8;
    let score = |cfg: &lvrnn::config::EvalConfig, c: &lvrnn::posterior::LaplaceConfig| {
        let m = rnn
            .with_posterior(&PosteriorConfig::Laplace(c.clone()))
            .unwrap();
        let rows = evaluate_regression(&m, "x", &tuning_config(cfg, tasks))
            .unwrap()
            .rows;
        rows.iter().map(|r| r.ce_mean).sum::<f64>() / rows.len() as f64
    };
    let mut by = vec![];
    for extra in ["", "predictive = \"linearised\"\n"] {
        let cfg = eval_config(extra).eval;
        let tuned = tune_regression_prior(&rnn, lc, &cfg, tasks).unwrap();
        // The score it minimised is the mean CE under this predictive, for every trial.
        for t in &tuned.trials {
            let mut c = lc.clone();
            c.prior_precision = t.prior_precision;
            assert_eq!(t.score, score(&cfg, &c), "{extra}: {t:?}");
        }
        by.push(tuned);
    }
    // The two predictives score the same candidates differently.
    assert!(
        by[0]
            .trials
            .iter()
            .zip(&by[1].trials)
            .any(|(a, b)| a.score != b.score),
        "the linearised tuning scored the sampled predictive"
    );
}

// ---------------------------------------------------------------------------------------------
// The key, the flag, the CLI and the report labels
// ---------------------------------------------------------------------------------------------

#[test]
fn a_bad_predictive_names_the_key_and_the_allowed_values_and_rl_refuses_linearised() {
    let err = |text: &str| {
        format!(
            "{:#}",
            ExperimentConfig::from_toml_str(text, "t.toml").unwrap_err()
        )
    };
    let e = err("name = \"x\"\ntask = \"regression\"\n[eval]\npredictive = \"glm\"\n");
    assert!(
        e.contains("eval.predictive") && e.contains("glm") && e.contains("sampled, linearised"),
        "{e}"
    );
    for task in ["bandit", "gridworld"] {
        let e = err(&format!(
            "name = \"x\"\ntask = \"{task}\"\n[eval]\npredictive = \"linearised\"\n"
        ));
        assert!(
            e.contains("eval.predictive") && e.contains("regression only"),
            "{e}"
        );
    }
    // The key round-trips, and the default is not written.
    let cfg = eval_config("predictive = \"linearised\"\n");
    assert!(cfg.eval.linearised());
    assert!(
        cfg.to_toml()
            .unwrap()
            .contains("predictive = \"linearised\"")
    );
    assert!(!eval_config("").to_toml().unwrap().contains("predictive"));
    // The `eval` flag: the same check, and regression checkpoints only.
    let request = |p: &str| EvalRequest {
        predictive: Some(p.into()),
        ..Default::default()
    };
    let e = format!(
        "{:#}",
        request("glm").apply(&mut eval_config("")).unwrap_err()
    );
    assert!(
        e.contains("--predictive") && e.contains("sampled, linearised"),
        "{e}"
    );
    let mut bandit =
        ExperimentConfig::from_toml_str("name = \"x\"\ntask = \"bandit\"\n", "t.toml").unwrap();
    let e = format!(
        "{:#}",
        request("linearised").apply(&mut bandit).unwrap_err()
    );
    assert!(e.contains("regression checkpoints only"), "{e}");
    let mut cfg = eval_config("");
    request("linearised").apply(&mut cfg).unwrap();
    assert!(cfg.eval.linearised());
}

const TINY: &str = r#"
name = "tiny"
task = "regression"
seed = 3
[model]
embed_width = 16
hidden = 16
features = 4
head_hidden = [16]
[train]
updates = 4
batch = 8
seq_len = 10
checkpoint_every = 4
[eval]
tasks = 8
points = [0, 1, 5]
grid = 8
samples = 4
example_points = 1
"#;

/// `lvrnn eval --predictive`: refused with the allowed values before any work, and otherwise
/// labels its rows (`, linearised`, also the tuned prior's), records the key in the folder's
/// config, and `lvrnn report` keeps the two predictives apart.
#[test]
fn eval_predictive_flag_labels_its_rows_and_the_report_keeps_them_apart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("tiny.toml"), TINY).unwrap();
    lvrnn_ok(
        &[
            "train",
            "--config",
            "tiny.toml",
            "--runs",
            "runs",
            "--no-eval",
        ],
        d,
    );
    let ck = "runs/tiny/checkpoints/model-final.safetensors";
    let eval = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--checkpoint",
            ck,
            "--out",
            out,
            "--posterior",
            "laplace:window=1,accumulate=sigma",
            "--tune-prior",
            "--tune-tasks",
            "4",
        ];
        args.extend_from_slice(extra);
        lvrnn(&args, d)
    };
    let o = eval("results/bad", &["--predictive", "glm"]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("--predictive") && t.contains("sampled, linearised"),
        "{t}"
    );
    assert!(
        !t.contains("evaluating") && !d.join("results/bad").exists(),
        "{t}"
    );

    let o = eval("results/glm", &["--predictive", "linearised"]);
    assert!(o.status.success(), "{}", text(&o));
    let csv = std::fs::read_to_string(d.join("results/glm/eval.csv")).unwrap();
    for label in [
        "\nrnn,",
        "laplace-sigma-k1-full (post-hoc on rnn), linearised,",
        "laplace-sigma-k1-full (post-hoc on rnn), linearised, tuned prior prior_precision=",
    ] {
        assert!(csv.contains(label), "missing {label:?}: {csv}");
    }
    let cfg = std::fs::read_to_string(d.join("results/glm/config.toml")).unwrap();
    assert!(cfg.contains("predictive = \"linearised\""), "{cfg}");
    let tuning = std::fs::read_to_string(d.join("results/glm/prior_tuning.csv")).unwrap();
    assert!(tuning.contains(", linearised"), "{tuning}");

    let o = eval("results/sampled", &[]);
    assert!(o.status.success(), "{}", text(&o));
    let csv = std::fs::read_to_string(d.join("results/sampled/eval.csv")).unwrap();
    assert!(
        csv.contains("laplace-sigma-k1-full (post-hoc on rnn),") && !csv.contains("linearised"),
        "{csv}"
    );

    lvrnn_ok(&["report", "results", "--out", "report"], d);
    let summary = std::fs::read_to_string(d.join("report/summary.md")).unwrap()
        + &std::fs::read_to_string(d.join("report/summary.csv")).unwrap();
    for label in [
        "laplace-sigma-k1-full (post-hoc on rnn), linearised, tuned prior",
        "laplace-sigma-k1-full (post-hoc on rnn), linearised",
        "laplace-sigma-k1-full (post-hoc on rnn), tuned prior",
    ] {
        assert!(summary.contains(label), "missing {label:?}: {summary}");
    }
}
