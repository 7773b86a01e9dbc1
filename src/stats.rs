//! Summary statistics over tasks and seeds: mean and two-sided 99% confidence intervals.

/// Two-sided quantile t_{0.995, dof} of Student's t distribution (normal limit 2.5758 for large dof).
pub fn t_quantile_995(dof: usize) -> f64 {
    // Exact table for small dof, then the Cornish–Fisher expansion around the normal quantile.
    const TABLE: [f64; 30] = [
        63.657, 9.925, 5.841, 4.604, 4.032, 3.707, 3.499, 3.355, 3.250, 3.169, 3.106, 3.055, 3.012,
        2.977, 2.947, 2.921, 2.898, 2.878, 2.861, 2.845, 2.831, 2.819, 2.807, 2.797, 2.787, 2.779,
        2.771, 2.763, 2.756, 2.750,
    ];
    match dof {
        0 => f64::INFINITY,
        d if d <= 30 => TABLE[d - 1],
        d => {
            let z = 2.575_829_303_549;
            let v = d as f64;
            let z3 = z * z * z;
            let z5 = z3 * z * z;
            z + (z3 + z) / (4.0 * v) + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * v * v)
        }
    }
}

/// Mean and half-width of the two-sided 99% confidence interval of the mean
/// (Student t with n−1 degrees of freedom; the half-width is 0 for n ≤ 1).
pub fn mean_ci99(xs: &[f64]) -> (f64, f64) {
    let n = xs.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
    (mean, t_quantile_995(n - 1) * (var / n as f64).sqrt())
}

/// Two-sided quantile t_{(1+level)/2, dof} of Student's t distribution, from `statrs` (e.g.
/// `level = 0.99`, `dof = 4` gives 4.604). Infinite for `dof = 0`.
pub fn t_quantile(level: f64, dof: usize) -> f64 {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    if dof == 0 {
        return f64::INFINITY;
    }
    match StudentsT::new(0.0, 1.0, dof as f64) {
        Ok(t) => t.inverse_cdf(0.5 + level / 2.0),
        Err(_) => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_matches_hand_computation() {
        // xs = 1..=5: mean 3, sample sd sqrt(2.5), t_{.995,4} = 4.604.
        let (m, h) = mean_ci99(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!((m - 3.0).abs() < 1e-12);
        assert!((h - 4.604 * (2.5f64 / 5.0).sqrt()).abs() < 1e-9);
        // Large dof approaches the normal quantile, continuous at the table's end.
        assert!((t_quantile_995(1_000_000) - 2.5758).abs() < 1e-3);
        assert!((t_quantile_995(31) - 2.744).abs() < 2e-3);
        assert!((t_quantile_995(60) - 2.660).abs() < 2e-3);
    }

    #[test]
    fn statrs_quantile_agrees_with_the_printed_table() {
        // Printed tables give three decimals: t_{.995,1} = 63.657, t_{.995,4} = 4.604,
        // t_{.995,30} = 2.750; t_{.975,10} = 2.228.
        for (level, dof, table) in [
            (0.99, 1, 63.657),
            (0.99, 4, 4.604),
            (0.99, 30, 2.750),
            (0.95, 10, 2.228),
        ] {
            assert!(
                (t_quantile(level, dof) - table).abs() < 1e-3,
                "{level} {dof}"
            );
        }
        assert!(t_quantile(0.99, 0).is_infinite());
    }
}
