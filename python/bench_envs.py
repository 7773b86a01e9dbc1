"""Times one step of the vector environments (``gymnasium.make_vec("lvrnn/...", num_envs=256)``:
all tasks in one Rust call) against a plain numpy implementation of the same bandit and
gridworld (the same rules: rewards, cumulative regret against the oracle, observations, inner
episodes of 15 steps, truncation at T), each stepped through whole tasks with random actions:

    python python/bench_envs.py               # lvrnn and gymnasium installed

Reported: microseconds per step of all B tasks (median of several rounds), and the ratio.
"""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np

import lvrnn.envs  # noqa: F401

B, ROUNDS = 256, 7


class NumpyBandit:
    """5 arms, p ~ Dirichlet(alpha); reward 1 iff u < p_a; regret max p - p_a; T pulls."""

    def __init__(self, n, alpha=0.2, horizon=50, seed=0):
        self.n, self.alpha, self.horizon = n, alpha, horizon
        self.rng = np.random.default_rng(seed)
        self.rows = np.arange(n)

    def reset(self):
        self.p = self.rng.dirichlet(np.full(5, self.alpha), size=self.n)
        self.best = self.p.max(1)
        self.t, self.regret = 0, np.zeros(self.n)
        return np.ones((self.n, 1), np.float32)

    def step(self, a):
        pa = self.p[self.rows, a]
        reward = (self.rng.random(self.n) < pa).astype(np.float64)
        self.regret += self.best - pa
        self.t += 1
        return np.ones((self.n, 1), np.float32), reward, np.zeros(self.n, bool), np.full(self.n, self.t == self.horizon)


class NumpyGrid:
    """size x size, start and goal distinct; moves 0 up 1 down 2 left 3 right; goal: reward 1 and
    back to the start; 15 steps without it: back to the start; regret against shortest paths."""

    DR, DC = np.array([-1, 1, 0, 0]), np.array([0, 0, -1, 1])

    def __init__(self, n, size=5, horizon=100, seed=0):
        self.n, self.size, self.horizon = n, size, horizon
        self.rng = np.random.default_rng(seed)
        self.rows = np.arange(n)

    def reset(self):
        cells = self.size * self.size
        s = self.rng.integers(0, cells, self.n)
        g = self.rng.integers(0, cells - 1, self.n)
        g += g >= s
        self.start = np.stack([s // self.size, s % self.size], 1)
        self.goal = np.stack([g // self.size, g % self.size], 1)
        self.d = np.abs(self.start - self.goal).sum(1)
        self.pos, self.timer = self.start.copy(), np.zeros(self.n, np.int64)
        self.t, self.regret = 0, np.zeros(self.n)
        return self.obs()

    def obs(self):
        o = np.zeros((self.n, 2 * self.size), np.float32)
        o[self.rows, self.pos[:, 0]] = 1
        o[self.rows, self.size + self.pos[:, 1]] = 1
        return o

    def step(self, a):
        self.t += 1
        nxt = np.stack([np.clip(self.pos[:, 0] + self.DR[a], 0, self.size - 1), np.clip(self.pos[:, 1] + self.DC[a], 0, self.size - 1)], 1)
        self.timer += 1
        hit = (nxt == self.goal).all(1)
        done = hit | (self.timer >= 15)
        self.pos = np.where(done[:, None], self.start, nxt)
        self.timer[done] = 0
        reward = hit.astype(np.float64)
        self.regret += (self.t % self.d == 0) - reward
        return self.obs(), reward, np.zeros(self.n, bool), np.full(self.n, self.t == self.horizon), {"inner_done": done}


def per_step(env, horizon, actions) -> float:
    """Median over ROUNDS of the mean wall time of one step (us), whole tasks, reset excluded."""
    times = []
    for _ in range(ROUNDS):
        env.reset()
        start = time.perf_counter()
        for t in range(horizon):
            env.step(actions[t])
        times.append((time.perf_counter() - start) / horizon * 1e6)
    return float(np.median(times))


def main():
    rng = np.random.default_rng(0)
    print(f"one step of B = {B} tasks, microseconds (median of {ROUNDS} rounds of whole tasks)")
    print(f"{'environment':<12} {'lvrnn vector env':>17} {'Rust call alone':>16} {'numpy':>8} {'numpy / lvrnn':>14}")
    for name, env_id, horizon, arms, np_env in (
        ("bandit", "lvrnn/DirichletBandit-v0", 50, 5, NumpyBandit(B)),
        ("gridworld", "lvrnn/GridWorld-v0", 100, 4, NumpyGrid(B)),
    ):
        actions = rng.integers(0, arms, size=(horizon, B))
        vec = gym.make_vec(env_id, num_envs=B)
        vec.reset(seed=0)
        lv = per_step(vec, horizon, actions)
        raw = per_step(_Raw(vec.unwrapped._batch), horizon, actions)
        nump = per_step(np_env, horizon, actions)
        print(f"{name:<12} {lv:>17.1f} {raw:>16.1f} {nump:>8.1f} {nump / lv:>13.1f}x")


class _Raw:
    """The Rust batch alone (no Gymnasium wrapper): what one step costs in Rust plus the call."""

    def __init__(self, batch):
        self.batch, self.seed = batch, 0

    def reset(self):
        self.seed += 1
        self.batch.reset(self.seed, 0)

    def step(self, a):
        self.batch.step(a)


if __name__ == "__main__":
    main()
