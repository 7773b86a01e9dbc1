//! Calibration of a posterior predictive: how often the true value falls inside its central
//! credible intervals.
//!
//! The regression predictive after k points is the Monte-Carlo mixture
//! p(y | x) = (1/m) Σ_s N(y; μ_s(x), σ²) over m posterior samples z_s (the same mixture whose
//! cross-entropy `evaluate_regression` reports). Its CDF at the true value f(x) is the
//! probability integral transform u = F(f(x)) = (1/m) Σ_s Φ((f(x) − μ_s(x)) / σ). Because the
//! mixture's CDF is continuous and increasing, f(x) lies inside the central p-interval
//! [F⁻¹((1−p)/2), F⁻¹((1+p)/2)] exactly when |u − ½| ≤ p/2, so coverage needs no quantile
//! search. A calibrated predictive covers a fraction p of the true values; below p it is
//! over-confident, above p under-confident.

/// Nominal levels p of the central credible intervals whose empirical coverage is reported.
pub const COVERAGE_LEVELS: [f64; 3] = [0.5, 0.9, 0.99];

/// Standard normal CDF Φ(x) = ½ erfc(−x/√2).
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// The probability integral transform u = (1/m) Σ_s Φ((y − μ_s)/σ) of y under the mixture
/// (1/m) Σ_s N(μ_s, σ²).
pub fn mixture_pit(means: &[f64], sigma: f64, y: f64) -> f64 {
    means
        .iter()
        .map(|mu| normal_cdf((y - mu) / sigma))
        .sum::<f64>()
        / means.len() as f64
}

/// Whether a value with PIT `u` lies inside the central credible interval of level `p`.
pub fn inside(u: f64, p: f64) -> bool {
    (u - 0.5).abs() <= p / 2.0
}

/// Fraction of PIT values inside the central interval of each level in [`COVERAGE_LEVELS`].
pub fn coverage(pits: &[f64]) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (o, p) in out.iter_mut().zip(COVERAGE_LEVELS) {
        *o = pits.iter().filter(|u| inside(**u, p)).count() as f64 / pits.len().max(1) as f64;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_cdf_matches_known_values() {
        // Φ(0) = ½, Φ(1.959964) = 0.975, Φ(−2.575829) = 0.005 (standard tables).
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-15);
        assert!((normal_cdf(1.959_963_985) - 0.975).abs() < 1e-9);
        assert!((normal_cdf(-2.575_829_304) - 0.005).abs() < 1e-9);
    }

    #[test]
    fn values_drawn_from_the_predictive_are_covered_at_the_nominal_rate() {
        // The predictive is exactly N(μ, σ²) (m identical components); truth drawn from it.
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (mu, sigma, n) = (0.3, 0.7, 20_000);
        let normal = Normal::new(mu, sigma).unwrap();
        let pits: Vec<f64> = (0..n)
            .map(|_| mixture_pit(&[mu; 4], sigma, normal.sample(&mut rng)))
            .collect();
        for (c, p) in coverage(&pits).iter().zip(COVERAGE_LEVELS) {
            // 5 binomial standard deviations.
            let tol = 5.0 * (p * (1.0 - p) / n as f64).sqrt();
            assert!((c - p).abs() < tol, "coverage {c} at level {p}");
        }
        // A predictive twice too narrow is over-confident: it covers less than nominal.
        let narrow: Vec<f64> = (0..n)
            .map(|_| mixture_pit(&[mu], sigma / 2.0, normal.sample(&mut rng)))
            .collect();
        let c = coverage(&narrow);
        // P(|X − μ| ≤ 1.645·σ/2) = 2Φ(0.8224) − 1 ≈ 0.589 for the 90% interval.
        assert!((c[1] - (2.0 * normal_cdf(1.644_853_627 / 2.0) - 1.0)).abs() < 0.02);
    }

    #[test]
    fn a_mixture_of_identical_components_is_that_gaussian() {
        let u = mixture_pit(&[1.0, 1.0, 1.0], 2.0, 1.0 + 2.0 * 1.959_963_985);
        assert!((u - 0.975).abs() < 1e-9);
        // Boundaries of the 95% interval are inside a 0.95 interval, not a 0.9 one.
        assert!(inside(u, 0.95 + 1e-9) && !inside(u, 0.9));
    }
}
