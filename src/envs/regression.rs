//! Supervised 1-D regression tasks (paper Appendix B.4, as the authors' generator does it).
//!
//! A task is a noiseless Fourier sum of 4 components on x ∈ [−1, 1]:
//! f(x) = a₀/2 + Σ_{i=1..3} a_i cos((2π i (x − c) − φ_i) / 2),
//! with a_k ~ U(−1, 1)·(k+1)/3 (k = 0..3), shift c ~ U(0, π) and phases φ_i ~ U(0, π).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::f32::consts::PI;

/// One sampled regression function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FourierTask {
    /// Amplitudes a₀..a₃ (already scaled by (k+1)/3).
    pub a: [f32; 4],
    /// Input shift c.
    pub shift: f32,
    /// Phases φ₁..φ₃.
    pub phases: [f32; 3],
}

impl FourierTask {
    /// Samples a task. Draw order (fixed, for determinism): a₀..a₃ ~ U(−1, 1), each then scaled
    /// by (k+1)/3; the shift c ~ U(0, π); the phases φ₁..φ₃ ~ U(0, π).
    pub fn sample(rng: &mut ChaCha8Rng) -> Self {
        let mut a = [0.0f32; 4];
        for (k, ak) in a.iter_mut().enumerate() {
            *ak = rng.gen_range(-1.0f32..1.0) * (k as f32 + 1.0) / 3.0;
        }
        let shift = rng.gen_range(0.0f32..PI);
        let mut phases = [0.0f32; 3];
        for p in phases.iter_mut() {
            *p = rng.gen_range(0.0f32..PI);
        }
        FourierTask { a, shift, phases }
    }

    /// f(x) = a₀/2 + Σ_{i=1..3} a_i cos((2π i (x − c) − φ_i) / 2).
    pub fn eval(&self, x: f32) -> f32 {
        let mut y = self.a[0] / 2.0;
        for i in 1..=3 {
            let arg = (2.0 * PI * i as f32 * (x - self.shift) - self.phases[i - 1]) / 2.0;
            y += self.a[i] * arg.cos();
        }
        y
    }

    /// Evaluates the function at every input.
    pub fn eval_many(&self, xs: &[f32]) -> Vec<f32> {
        xs.iter().map(|&x| self.eval(x)).collect()
    }
}

/// An input x ~ U(−1, 1).
pub fn sample_x(rng: &mut ChaCha8Rng) -> f32 {
    rng.gen_range(-1.0f32..1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn eval_matches_hand_computation() {
        // a = (1, 0.5, -0.25, 0.1), c = 0.5, φ = (0, π/2, π).
        // At x = 0.5 (so x − c = 0): args are (0 − φ_i)/2 = 0, −π/4, −π/2.
        // f = 0.5 + 0.5·cos 0 − 0.25·cos(−π/4) + 0.1·cos(−π/2) = 1 − 0.25·√2/2.
        let t = FourierTask {
            a: [1.0, 0.5, -0.25, 0.1],
            shift: 0.5,
            phases: [0.0, PI / 2.0, PI],
        };
        let want = 1.0 - 0.25 * std::f32::consts::FRAC_1_SQRT_2;
        assert!((t.eval(0.5) - want).abs() < 1e-6);
    }

    #[test]
    fn sample_ranges() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..1000 {
            let t = FourierTask::sample(&mut rng);
            for k in 0..4 {
                assert!(t.a[k].abs() <= (k as f32 + 1.0) / 3.0);
            }
            assert!((0.0..PI).contains(&t.shift));
            assert!(t.phases.iter().all(|p| (0.0..PI).contains(p)));
            let x = sample_x(&mut rng);
            assert!((-1.0..1.0).contains(&x));
        }
    }
}
