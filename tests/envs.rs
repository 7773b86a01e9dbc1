//! Environment tests: hand-computed episodes, sampling, determinism.

use lvrnn::envs::bandit::{self, Bandit, NUM_ARMS};
use lvrnn::envs::gridworld::{self, EPISODE_LEN, Gridworld, oracle_reward};
use lvrnn::envs::regression::{self, FourierTask};
use lvrnn::envs::{EnvKind, MetaEnv, make_env};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::f32::consts::PI;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

// ----------------------------------------------------------------------------- regression

#[test]
fn fourier_eval_matches_hand_computation() {
    // a = (0.2, −0.4, 0.6, 1.0), c = 0.25, φ = (π/3, 0, π/2); at x = 0.75, x − c = 0.5:
    // i=1: (π − π/3)/2 = π/3   → −0.4·cos(π/3) = −0.2
    // i=2: (2π − 0)/2  = π     →  0.6·cos(π)   = −0.6
    // i=3: (3π − π/2)/2 = 5π/4 →  1.0·cos(5π/4) = −√2/2
    // f = 0.1 − 0.2 − 0.6 − 0.70711 = −1.40711
    let t = FourierTask {
        a: [0.2, -0.4, 0.6, 1.0],
        shift: 0.25,
        phases: [PI / 3.0, 0.0, PI / 2.0],
    };
    let want = 0.1 - 0.2 - 0.6 - std::f32::consts::FRAC_1_SQRT_2;
    assert!(
        (t.eval(0.75) - want).abs() < 1e-5,
        "{} vs {want}",
        t.eval(0.75)
    );
    // Constant term alone.
    let c = FourierTask {
        a: [0.5, 0.0, 0.0, 0.0],
        shift: 1.0,
        phases: [0.0; 3],
    };
    assert_eq!(c.eval(-0.3), 0.25);
}

#[test]
fn fourier_sampling_ranges_and_determinism() {
    let (mut r1, mut r2) = (rng(7), rng(7));
    let mut max_abs = [0.0f32; 4];
    for _ in 0..2000 {
        let t = FourierTask::sample(&mut r1);
        assert_eq!(t, FourierTask::sample(&mut r2));
        for (k, (ak, m)) in t.a.iter().zip(max_abs.iter_mut()).enumerate() {
            assert!(ak.abs() <= (k as f32 + 1.0) / 3.0 + 1e-6);
            *m = m.max(ak.abs());
        }
        assert!((0.0..PI).contains(&t.shift));
        assert!(t.phases.iter().all(|p| (0.0..PI).contains(p)));
        let x = regression::sample_x(&mut r1);
        assert_eq!(x, regression::sample_x(&mut r2));
        assert!((-1.0..1.0).contains(&x));
    }
    // The scaling (k+1)/3 is visible: amplitude k reaches close to its bound.
    for (k, m) in max_abs.iter().enumerate() {
        assert!(*m > 0.95 * (k as f32 + 1.0) / 3.0, "a_{k} max {m}");
    }
}

// ----------------------------------------------------------------------------- kinds

#[test]
fn env_kind_parse_display_and_make_env() {
    for k in EnvKind::ALL {
        assert_eq!(k.to_string().parse::<EnvKind>().unwrap(), k);
    }
    assert_eq!("Bandit".parse::<EnvKind>().unwrap(), EnvKind::Bandit);
    let err = "maze".parse::<EnvKind>().unwrap_err().to_string();
    assert!(
        err.contains("maze") && err.contains("bandit") && err.contains("gridworld"),
        "{err}"
    );

    let b = make_env(EnvKind::Bandit, 3, 0.3);
    assert_eq!(
        (
            b.name(),
            b.batch(),
            b.obs_dim(),
            b.num_actions(),
            b.horizon()
        ),
        ("bandit", 3, 1, 5, 50)
    );
    let g = make_env(EnvKind::Gridworld, 4, 0.3);
    assert_eq!(
        (
            g.name(),
            g.batch(),
            g.obs_dim(),
            g.num_actions(),
            g.horizon()
        ),
        ("gridworld", 4, 10, 4, 100)
    );
}

// ----------------------------------------------------------------------------- bandit

#[test]
fn dirichlet_samples_sum_to_one_even_for_tiny_alpha() {
    let mut r = rng(1);
    for &alpha in &[1e-4, 0.01, 0.2, 0.3, 1.0, 5.0] {
        let mut one_hot = 0;
        for _ in 0..2000 {
            let p = bandit::sample_dirichlet(alpha, NUM_ARMS, &mut r);
            assert_eq!(p.len(), NUM_ARMS);
            assert!(
                p.iter().all(|x| x.is_finite() && (0.0..=1.0).contains(x)),
                "{p:?}"
            );
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{p:?}");
            if p.contains(&1.0) {
                one_hot += 1;
            }
        }
        // With α = 1e-4 the Gamma draws underflow in f64: the one-hot fallback is exercised.
        if alpha < 1e-3 {
            assert!(one_hot > 1000, "α={alpha}: {one_hot} one-hot samples");
        }
    }
}

#[test]
fn dirichlet_mean_is_uniform() {
    // E[p_i] = 1/K; Var[p_i] = (1/K)(1 − 1/K)/(Kα + 1) = 0.16/2.5 = 0.064 for α = 0.3.
    let mut r = rng(2);
    let n = 20_000;
    let mut m = [0.0f64; NUM_ARMS];
    let mut m2 = 0.0;
    for _ in 0..n {
        let p = bandit::sample_dirichlet(0.3, NUM_ARMS, &mut r);
        for k in 0..NUM_ARMS {
            m[k] += p[k] / n as f64;
        }
        m2 += p[0] * p[0] / n as f64;
    }
    for mk in m {
        assert!((mk - 0.2).abs() < 0.01, "{m:?}");
    }
    assert!((m2 - 0.04 - 0.064).abs() < 0.005, "E[p0²] = {m2}");
}

#[test]
fn bandit_step_hand_computed() {
    let mut env = Bandit::new(1, 0.3);
    let obs = env.set_probs(&[[1.0, 0.0, 0.25, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]]);
    assert_eq!(obs, vec![1.0, 1.0]);
    assert_eq!(env.batch(), 2);
    let mut r = rng(3);
    let s = env.step(&[0, 0], &mut r);
    assert_eq!(s.obs, vec![1.0, 1.0]);
    assert_eq!(s.reward, vec![1.0, 0.0]);
    assert_eq!(s.discount, vec![0.0, 0.0]);
    assert_eq!(s.regret, vec![0.0, 1.0]);
    let s = env.step(&[1, 4], &mut r);
    assert_eq!(s.reward, vec![0.0, 1.0]);
    assert_eq!(s.regret, vec![1.0, 0.0]);
    let s = env.step(&[3, 2], &mut r);
    assert_eq!(s.regret, vec![0.5, 1.0]);
    assert_eq!(
        env.task_params(),
        vec![
            vec![1.0, 0.0, 0.25, 0.5, 0.0],
            vec![0.0, 0.0, 0.0, 0.0, 1.0]
        ]
    );
}

#[test]
fn bandit_rewards_are_bernoulli() {
    let mut env = Bandit::new(1, 0.3);
    env.set_probs(&[[0.3, 0.7, 0.0, 0.0, 0.0]]);
    let mut r = rng(4);
    let n = 20_000;
    let hits: f32 = (0..n).map(|_| env.step(&[0], &mut r).reward[0]).sum();
    // sd of the frequency: sqrt(0.21/20000) ≈ 0.0032.
    assert!((hits / n as f32 - 0.3).abs() < 0.015, "{}", hits / n as f32);
}

#[test]
fn bandit_is_deterministic_for_a_seed() {
    let run = |seed| {
        let mut env = Bandit::new(8, 0.2);
        let mut r = rng(seed);
        env.reset(&mut r);
        let mut out = env.task_params().concat();
        for t in 0..20 {
            let a: Vec<usize> = (0..8).map(|b| (b + t) % NUM_ARMS).collect();
            let s = env.step(&a, &mut r);
            out.extend(s.reward);
            out.extend(s.regret);
        }
        out
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}

// ----------------------------------------------------------------------------- gridworld

fn one_hot_pos(r: usize, c: usize) -> Vec<f32> {
    let mut o = vec![0.0; 10];
    o[r] = 1.0;
    o[5 + c] = 1.0;
    o
}

const UP: usize = 0;
const DOWN: usize = 1;
const LEFT: usize = 2;
const RIGHT: usize = 3;

#[test]
fn grid_walls_keep_agent_in_place() {
    let mut env = Gridworld::new(1);
    let obs = env.set_tasks(&[((0, 0), (4, 4))]);
    assert_eq!(obs, one_hot_pos(0, 0));
    let mut r = rng(0);
    for (a, want) in [
        (UP, (0, 0)),
        (LEFT, (0, 0)),
        (DOWN, (1, 0)),
        (RIGHT, (1, 1)),
    ] {
        let s = env.step(&[a], &mut r);
        assert_eq!(s.obs, one_hot_pos(want.0, want.1));
        assert_eq!((s.reward[0], s.discount[0]), (0.0, 1.0));
        assert_eq!(env.position(0), want);
    }
    assert_eq!(env.timer(0), 4);
    // The opposite walls.
    env.set_tasks(&[((4, 4), (0, 0))]);
    let s = env.step(&[DOWN], &mut r);
    assert_eq!(s.obs, one_hot_pos(4, 4));
    let s = env.step(&[RIGHT], &mut r);
    assert_eq!(s.obs, one_hot_pos(4, 4));
    assert_eq!(env.task_params(), vec![vec![4.0, 4.0, 0.0, 0.0]]);
}

#[test]
fn grid_goal_hit_returns_to_start() {
    // Start (2,2), goal (2,4), d = 2: oracle rewards at t = 2, 4, 6, ...
    let mut env = Gridworld::new(1);
    env.set_tasks(&[((2, 2), (2, 4))]);
    let mut r = rng(0);
    let s = env.step(&[RIGHT], &mut r); // t=1 → (2,3)
    assert_eq!((s.reward[0], s.discount[0], s.regret[0]), (0.0, 1.0, 0.0));
    assert_eq!(s.obs, one_hot_pos(2, 3));
    let s = env.step(&[RIGHT], &mut r); // t=2 → goal: +1, back to (2,2)
    assert_eq!((s.reward[0], s.discount[0], s.regret[0]), (1.0, 0.0, 0.0));
    assert_eq!(s.obs, one_hot_pos(2, 2));
    assert_eq!(env.timer(0), 0);
    let s = env.step(&[UP], &mut r); // t=3 → (1,2)
    assert_eq!((s.reward[0], s.discount[0], s.regret[0]), (0.0, 1.0, 0.0));
    let s = env.step(&[DOWN], &mut r); // t=4 → (2,2); the oracle scores here
    assert_eq!((s.reward[0], s.discount[0], s.regret[0]), (0.0, 1.0, 1.0));
    assert_eq!(env.timer(0), 2);
}

#[test]
fn grid_timeout_after_fifteen_steps() {
    // Start (0,0), goal (4,4), d = 8: the oracle scores at t = 8, 16, 24, ...
    // Episode 1 (t = 1..15): 4 × right to (0,4), then left/right bounces; at t = 14 the agent is
    // at (0,4), the 15th step (left, towards (0,3)) ends the episode: back to (0,0), discount 0.
    // Episode 2 (t = 16..30): 4 × down to (4,0), then up/down bounces; t = 30 ends it again.
    let mut env = Gridworld::new(1);
    env.set_tasks(&[((0, 0), (4, 4))]);
    let mut r = rng(0);
    let mut actions = vec![RIGHT; 4];
    actions.extend((0..11).map(|i| if i % 2 == 0 { LEFT } else { RIGHT }));
    actions.extend([DOWN; 4]);
    actions.extend((0..11).map(|i| if i % 2 == 0 { UP } else { DOWN }));
    let want_pos = |t: usize| match t {
        1..=4 => (0, t),
        5..=14 => (0, if t % 2 == 1 { 3 } else { 4 }),
        15 | 30 => (0, 0),
        16..=19 => (t - 15, 0),
        _ => (if t.is_multiple_of(2) { 3 } else { 4 }, 0),
    };
    let mut regret = 0.0;
    for (i, &a) in actions.iter().enumerate() {
        let t = i + 1;
        let s = env.step(&[a], &mut r);
        regret += s.regret[0];
        assert_eq!(s.reward[0], 0.0);
        assert_eq!(s.regret[0], if t % 8 == 0 { 1.0 } else { 0.0 }, "t={t}");
        let (pr, pc) = want_pos(t);
        assert_eq!(s.obs, one_hot_pos(pr, pc), "t={t}");
        let end = t % EPISODE_LEN == 0;
        assert_eq!(s.discount[0], if end { 0.0 } else { 1.0 }, "t={t}");
        assert_eq!(env.timer(0), t % EPISODE_LEN, "t={t}");
    }
    assert_eq!(regret, 3.0);
    assert_eq!(env.time(), 30);
}

#[test]
fn grid_goal_on_fifteenth_step_counts() {
    // Start (0,0), goal (0,1): 14 bumps into the top wall, then the goal on step 15.
    let mut env = Gridworld::new(1);
    env.set_tasks(&[((0, 0), (0, 1))]);
    let mut r = rng(0);
    for _ in 0..14 {
        let s = env.step(&[UP], &mut r);
        assert_eq!((s.reward[0], s.discount[0]), (0.0, 1.0));
    }
    let s = env.step(&[RIGHT], &mut r);
    assert_eq!((s.reward[0], s.discount[0]), (1.0, 0.0));
    assert_eq!(s.obs, one_hot_pos(0, 0));
    // d = 1: the oracle scores every step, so 14 bumps cost regret 1 each, the hit costs 0.
    assert_eq!(s.regret[0], 0.0);
}

#[test]
fn grid_oracle_reward_sequence() {
    let seq: Vec<f32> = (1..=10).map(|t| oracle_reward(3, t)).collect();
    assert_eq!(seq, vec![0., 0., 1., 0., 0., 1., 0., 0., 1., 0.]);
    assert_eq!((1..=100).map(|t| oracle_reward(8, t)).sum::<f32>(), 12.0);
    assert_eq!(oracle_reward(1, 0), 0.0);
    assert_eq!(gridworld::manhattan((0, 0), (4, 4)), 8);
}

#[test]
fn grid_reset_draws_distinct_uniform_start_and_goal() {
    let mut env = Gridworld::new(20_000);
    let mut r = rng(5);
    let obs = env.reset(&mut r);
    assert_eq!(obs.len(), 20_000 * 10);
    let mut pairs = std::collections::HashSet::new();
    let mut start_counts = [0usize; 25];
    for (b, p) in env.task_params().iter().enumerate() {
        assert_ne!((p[0], p[1]), (p[2], p[3]));
        pairs.insert((p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize));
        start_counts[p[0] as usize * 5 + p[1] as usize] += 1;
        assert_eq!(
            &obs[b * 10..(b + 1) * 10],
            &one_hot_pos(p[0] as usize, p[1] as usize)[..]
        );
    }
    assert_eq!(pairs.len(), 25 * 24);
    // 800 expected per start cell, sd ≈ 28.
    assert!(
        start_counts.iter().all(|&c| (650..950).contains(&c)),
        "{start_counts:?}"
    );
}

#[test]
fn grid_is_deterministic_for_a_seed() {
    let run = |seed| {
        let mut env = Gridworld::new(16);
        let mut r = rng(seed);
        let mut out = env.reset(&mut r);
        for t in 0..40 {
            let a: Vec<usize> = (0..16).map(|b| (b * 7 + t * 3) % 4).collect();
            let s = env.step(&a, &mut r);
            out.extend(s.obs);
            out.extend(s.reward);
            out.extend(s.discount);
            out.extend(s.regret);
        }
        out
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9), run(10));
}

#[test]
fn grid_batch_steps_tasks_independently() {
    let mut env = Gridworld::new(2);
    env.set_tasks(&[((0, 0), (0, 1)), ((4, 4), (0, 0))]);
    let s = env.step(&[RIGHT, UP], &mut rng(0));
    assert_eq!(s.reward, vec![1.0, 0.0]);
    assert_eq!(s.discount, vec![0.0, 1.0]);
    assert_eq!(s.obs[..10], one_hot_pos(0, 0)[..]);
    assert_eq!(s.obs[10..], one_hot_pos(3, 4)[..]);
    assert_eq!(Gridworld::decode_obs(&s.obs[10..], 5, 5), (3, 4));
}
