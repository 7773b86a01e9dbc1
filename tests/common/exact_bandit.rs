//! The bandit's exact posterior under a Dirichlet(α·1) prior on K arm probabilities and
//! Bernoulli rewards, by a finite sum (independent of the particles the library uses).
//!
//! With s_k successes and f_k failures on arm k the likelihood is Π_k p_k^{s_k} (1 − p_k)^{f_k}.
//! Expanding each (1 − p_k)^{f_k} binomially,
//!
//!   Π_k p_k^{s_k}(1 − p_k)^{f_k} = Σ_{j ≤ f} Π_k C(f_k, j_k) (−1)^{j_k} p_k^{s_k + j_k},
//!
//! and the Dirichlet moments are E[Π_k p_k^{n_k}] = Π_k (α)_{n_k} / (Kα)_N, N = Σ n_k, with the
//! rising factorial (x)_n = x (x + 1) ⋯ (x + n − 1). So E[g(p) L(p)] is a finite alternating sum
//! for g = 1, p_m, p_m², and the posterior moments are their ratios: exact in closed form (the
//! prior is not conjugate, but the posterior is a finite mixture of Dirichlets with signed
//! weights). The sum has Π_k (f_k + 1) terms and cancels badly for many failures: fine for a
//! short history in f64. For K = 2 the posterior of p_1 is the Beta(α + s_1 + f_2, α + f_1 + s_2)
//! (p_2 = 1 − p_1), the check of the sum itself.

/// (x)_n, the rising factorial.
fn rising(x: f64, n: usize) -> f64 {
    (0..n).map(|i| x + i as f64).product()
}

fn choose(n: usize, k: usize) -> f64 {
    (0..k).map(|i| (n - i) as f64 / (i + 1) as f64).product()
}

/// E[Π_k p_k^{n_k}] under Dirichlet(α·1).
fn moment(alpha: f64, n: &[usize]) -> f64 {
    let k = n.len() as f64;
    let total: usize = n.iter().sum();
    n.iter().map(|&m| rising(alpha, m)).product::<f64>() / rising(k * alpha, total)
}

/// E[p^extra · L(p)] for the history (s, f), `extra` added exponents per arm.
fn weighted(alpha: f64, s: &[usize], f: &[usize], extra: &[usize]) -> f64 {
    let k = s.len();
    let mut j = vec![0usize; k];
    let mut sum = 0.0;
    loop {
        let n: Vec<usize> = (0..k).map(|i| s[i] + j[i] + extra[i]).collect();
        let sign = if j.iter().sum::<usize>() % 2 == 0 {
            1.0
        } else {
            -1.0
        };
        let c: f64 = (0..k).map(|i| choose(f[i], j[i])).product();
        sum += sign * c * moment(alpha, &n);
        // Next j ≤ f in odometer order.
        let mut i = 0;
        loop {
            if i == k {
                return sum;
            }
            if j[i] < f[i] {
                j[i] += 1;
                break;
            }
            j[i] = 0;
            i += 1;
        }
    }
}

/// Posterior mean and variance of every p_k after `s[k]` successes and `f[k]` failures.
pub fn posterior_moments(alpha: f64, s: &[usize], f: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let k = s.len();
    let z = weighted(alpha, s, f, &vec![0; k]);
    let unit = |m: usize, by: usize| {
        let mut e = vec![0; k];
        e[m] = by;
        e
    };
    let mean: Vec<f64> = (0..k)
        .map(|m| weighted(alpha, s, f, &unit(m, 1)) / z)
        .collect();
    let var: Vec<f64> = (0..k)
        .map(|m| weighted(alpha, s, f, &unit(m, 2)) / z - mean[m].powi(2))
        .collect();
    (mean, var)
}
