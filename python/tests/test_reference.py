"""``lvrnn.references`` and the exact beliefs, without gymnasium.

- the references' table is ``lvrnn reference``'s (gridworld, number for number); the
  Bayes-optimal gridworld search on every task beats or ties the others on average;
- ``grid_belief`` on hand-made histories is the closed form: every cell but the start, minus
  the cells stepped on without reward, until a reward names the goal;
- ``bandit_belief``: the weights are the likelihood prod_a p_a^s_a (1 - p_a)^f_a of each
  particle, normalised (to 1e-12); with many particles the mean is the exact Dirichlet
  posterior mean (closed form by expanding (1 - p_a)^f_a, to Monte-Carlo accuracy); the empty
  history's ESS is the particle count; history b uses the particles of the references on task b.
- bad arguments raise ``ValueError`` naming them.
"""

from __future__ import annotations

from itertools import product
from math import comb, lgamma

import numpy as np
import pytest

import lvrnn

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3


def onehot(cell, size=5):
    o = np.zeros(2 * size, dtype=np.float32)
    o[cell[0]] = 1
    o[size + cell[1]] = 1
    return o


def test_gridworld_table_is_the_clis(run_cli, tmp_path):
    tasks, seed = 12, 3
    out = run_cli(["reference", "--env", "gridworld", "--tasks", str(tasks), "--seed", str(seed)], tmp_path).stdout
    refs = lvrnn.references("gridworld", tasks, seed)
    assert refs.table.splitlines() == out.splitlines()[1:]
    assert refs.policies == ["random", "episodic_search", "bayes_optimal", "oracle"]
    r = refs["bayes_optimal"]
    assert r.actions.shape == (tasks, 100) and r.ess is None
    assert r.returns.mean() >= refs["random"].returns.mean()
    assert (refs["oracle"].cum_regret == 0).all()


def test_grid_belief_by_hand():
    """Start (0, 0), goal (1, 1) on 5 x 5: right (0, 1) no reward, down (1, 1) reward."""
    obs = np.stack([onehot((0, 0)), onehot((0, 1)), onehot((0, 0))])
    m = lvrnn.grid_belief(obs, np.array([RIGHT, DOWN]), np.array([0.0, 1.0]))
    assert m.shape == (3, 5, 5)
    want0 = np.ones((5, 5), bool)
    want0[0, 0] = False
    want1 = want0.copy()
    want1[0, 1] = False
    want2 = np.zeros((5, 5), bool)
    want2[1, 1] = True
    np.testing.assert_array_equal(m, [want0, want1, want2])
    # A wall bump (up from the start) rules out nothing new; batched histories.
    obs2 = np.stack([onehot((0, 0)), onehot((0, 0)), onehot((1, 0))])
    mb = lvrnn.grid_belief(np.stack([obs, obs2]), np.array([[RIGHT, DOWN], [UP, DOWN]]), np.zeros((2, 2)))
    want = want0.copy()
    want[1, 0] = False
    np.testing.assert_array_equal(mb[1, 2], want)
    assert mb[1, 2].sum() == 23


def test_grid_belief_refuses_impossible_histories():
    obs = np.stack([onehot((0, 0)), onehot((0, 1)), onehot((0, 0))])
    with pytest.raises(ValueError, match="impossible"):  # a reward on a cell ruled out
        lvrnn.grid_belief(obs, np.array([RIGHT, LEFT]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="rewards"):
        lvrnn.grid_belief(obs, np.array([RIGHT, LEFT]), np.array([0.0, 0.5]))
    with pytest.raises(ValueError, match="observations"):
        lvrnn.grid_belief(obs[:2], np.array([RIGHT, LEFT]), np.array([0.0, 0.0]))
    with pytest.raises(ValueError, match="size"):
        lvrnn.grid_belief(obs, np.array([RIGHT, LEFT]), np.array([0.0, 0.0]), size=9)


def exact_posterior_mean(alpha: float, succ, fail) -> np.ndarray:
    """E[p | data] under Dirichlet(alpha 1) and Bernoulli pulls, in closed form: the posterior
    is prop. to prod_a p_a^(alpha - 1 + s_a) (1 - p_a)^f_a; expanding each (1 - p_a)^f_a
    binomially makes it a signed sum of Dirichlet densities, whose normalisers
    B(c) = prod Gamma(c_a) / Gamma(sum c) give every moment."""
    k = len(succ)

    def log_beta(c):
        return sum(lgamma(x) for x in c) - lgamma(sum(c))

    z, m = 0.0, np.zeros(k)
    for js in product(*[range(f + 1) for f in fail]):
        coef = np.prod([comb(f, j) * (-1) ** j for f, j in zip(fail, js)])
        c = [alpha + s + j for s, j in zip(succ, js)]
        z += coef * np.exp(log_beta(c))
        for a in range(k):
            ca = list(c)
            ca[a] += 1
            m[a] += coef * np.exp(log_beta(ca))
    return m / z


def test_bandit_belief_weights_are_the_likelihood():
    actions = np.array([0, 0, 1, 3, 0, 1])
    rewards = np.array([1, 0, 1, 0, 1, 0])
    d = lvrnn.bandit_belief(actions, rewards, alpha=0.3, particles=512, return_particles=True)
    p, w = d["particles"], d["weights"]
    assert p.shape == (512, 5) and d["mean"].shape == (7, 5) and d["ess"].shape == (7,)
    like = np.ones(512)
    for a, r in zip(actions, rewards):
        like *= p[:, a] if r else 1 - p[:, a]
    np.testing.assert_allclose(w, like / like.sum(), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(d["mean"][-1], w @ p, rtol=1e-12)
    assert d["ess"][0] == pytest.approx(512, rel=1e-12)
    assert d["ess"][-1] == pytest.approx(1 / (w**2).sum(), rel=1e-12)


def test_bandit_belief_mean_is_the_closed_form():
    alpha = 0.3
    actions = np.array([0, 0, 0, 2, 2, 1, 4])
    rewards = np.array([1, 1, 0, 0, 1, 0, 0])
    succ, fail = [0] * 5, [0] * 5
    for a, r in zip(actions, rewards):
        (succ if r else fail)[a] += 1
    want = exact_posterior_mean(alpha, succ, fail)
    prior = lvrnn.bandit_belief(actions[:0], rewards[:0], alpha=alpha, particles=1 << 16)
    assert prior["mean"].shape == (1, 5)
    np.testing.assert_allclose(prior["mean"][0], 0.2, atol=0.01)
    got = lvrnn.bandit_belief(actions, rewards, alpha=alpha, particles=1 << 16)["mean"][-1]
    # 2^16 particles: the mean's Monte-Carlo error is about 0.003 here.
    np.testing.assert_allclose(got, want, atol=0.015)
    assert abs(got.sum() - 1) < 1e-9


def test_bandit_belief_uses_the_references_particles():
    """thompson_is's ESS along its own history equals bandit_belief's on the same task."""
    refs = lvrnn.references("bandit", 3, seed=7, horizon=10)
    run = refs["thompson_is"]
    d = lvrnn.bandit_belief(run.actions, run.reward, seed=7, tasks=np.arange(3))
    np.testing.assert_allclose(d["ess"][:, 1:], run.ess, rtol=1e-12)
    other = lvrnn.bandit_belief(run.actions, run.reward, seed=8)
    assert not np.allclose(other["ess"][:, 1:], run.ess)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: lvrnn.references("maze", 3), "env"),
        (lambda: lvrnn.references("bandit", 0), "tasks"),
        (lambda: lvrnn.references("bandit", 3, alpha=-1.0), "alpha"),
        (lambda: lvrnn.references("bandit", 3, horizon=0), "horizon"),
        (lambda: lvrnn.references("gridworld", 3, size=9), "size"),
        (lambda: lvrnn.references("bandit", 3, particles=0), "particles"),
        (lambda: lvrnn.references("bandit", 3, checkpoints=[51]), "checkpoints"),
        (lambda: lvrnn.bandit_belief([0, 5], [1, 0]), "actions"),
        (lambda: lvrnn.bandit_belief([0, 1], [1, 2]), "rewards"),
        (lambda: lvrnn.bandit_belief([0, 1], [1, 0], alpha=0.0), "alpha"),
        (lambda: lvrnn.bandit_belief([[0, 1]], [1, 0]), "rewards"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_import_lvrnn_does_not_import_gymnasium():
    """The posterior API and the references work without gymnasium: it is imported only by
    ``lvrnn.envs`` (or the first use of ``lvrnn.BanditEnv`` ...)."""
    import subprocess
    import sys

    code = "import sys, lvrnn; lvrnn.references('bandit', 1, horizon=2); assert 'gymnasium' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
