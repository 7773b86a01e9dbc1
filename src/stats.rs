//! Summary statistics over tasks and seeds: mean and two-sided 99% confidence intervals, with
//! Student-t quantiles from `statrs`.

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
    (mean, t_quantile(0.99, n - 1) * (var / n as f64).sqrt())
}

/// [`mean_ci99`], or NaN for both where any value is NaN (a statistic that is undefined, such
/// as the entropy of a point estimate or the KL at the first step).
pub fn finite_mean_ci99(xs: &[f64]) -> (f64, f64) {
    if xs.iter().any(|x| x.is_nan()) {
        (f64::NAN, f64::NAN)
    } else {
        mean_ci99(xs)
    }
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

/// argmax with the lowest index winning ties (the reference policies' and the greedy agent's).
pub fn argmax<T: PartialOrd>(xs: &[T]) -> usize {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_matches_hand_computation() {
        // xs = 1..=5: mean 3, sample sd sqrt(2.5), t_{.995,4} = 4.604 (printed to 3 decimals).
        let (m, h) = mean_ci99(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!((m - 3.0).abs() < 1e-12);
        assert!((h - 4.604 * (2.5f64 / 5.0).sqrt()).abs() < 1e-3);
        // Large dof approaches the normal quantile z_{.995} = 2.5758; tables: t_{.995,60} = 2.660.
        assert!((t_quantile(0.99, 1_000_000) - 2.5758).abs() < 1e-3);
        assert!((t_quantile(0.99, 60) - 2.660).abs() < 1e-3);
        // One value: no interval.
        assert_eq!(mean_ci99(&[2.0]), (2.0, 0.0));
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
