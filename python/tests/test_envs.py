"""The Gymnasium environments (``lvrnn.envs``) against the Rust environments and references.

- ``check_env`` passes for both, at the paper's settings and at other T, alpha and grid sizes;
- hand-computed episodes: given tasks (``options={"task": ...}``) whose rewards are certain
  (bandit arms with p = 0 or 1; any gridworld task), the single and vector environments give
  the observations, rewards, inner-episode ends, truncation, regret and final info worked out
  by hand from the environments' rules (src/envs/bandit.rs, src/envs/gridworld.rs);
- seeds: task i of a vector environment, the i-th task of a single environment and task i of
  ``lvrnn.references`` are the same task; replaying a reference policy's actions in the vector
  environment gives that policy's rewards exactly (bandit oracle: the task's own reward stream;
  gridworld bayes_optimal: deterministic), so the environments are the Rust ones;
- a random agent's return and regret fall within the 99% interval of ``lvrnn reference``'s
  random row on the same tasks;
- bad arguments raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
from gymnasium.utils.env_checker import check_env  # noqa: E402

import lvrnn  # noqa: E402
import lvrnn.envs  # noqa: E402,F401  (registers the ids)

B_ID, G_ID = "lvrnn/DirichletBandit-v0", "lvrnn/GridWorld-v0"
UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3


def onehot(cell, size=5):
    o = np.zeros(2 * size, dtype=np.float32)
    o[cell[0]] = 1
    o[size + cell[1]] = 1
    return o


@pytest.mark.parametrize(
    "env_id,kwargs",
    [(B_ID, {}), (B_ID, {"alpha": 0.3, "horizon": 7}), (G_ID, {}), (G_ID, {"size": 3, "horizon": 9})],
)
def test_check_env_passes(env_id, kwargs):
    env = gym.make(env_id, **kwargs)
    check_env(env.unwrapped, skip_render_check=True)


def test_registered_defaults_are_the_papers():
    b, g = gym.make(B_ID).unwrapped, gym.make(G_ID).unwrapped
    assert (b.alpha, b.horizon, b.action_space.n, b.observation_space.shape) == (0.2, 50, 5, (1,))
    assert (g.size, g.horizon, g.action_space.n, g.observation_space.shape) == (5, 100, 4, (10,))
    v = gym.make_vec(G_ID, num_envs=3)
    assert isinstance(v, lvrnn.envs.GridWorldVectorEnv) and v.observation_space.shape == (3, 10)


def test_bandit_episode_by_hand():
    env = gym.make(B_ID, horizon=4).unwrapped
    p = [1.0, 0.0, 0.5, 0.0, 0.25]
    obs, _ = env.reset(seed=3, options={"task": p})
    assert obs.tolist() == [1.0]
    want = [(0, 1.0, 0.0), (1, 0.0, 1.0), (4, None, 0.75), (0, 1.0, 0.0)]  # arm, reward, regret
    cum = 0.0
    for k, (arm, reward, regret) in enumerate(want):
        obs, r, term, trunc, info = env.step(arm)
        cum += regret
        assert obs.tolist() == [1.0] and not term and trunc == (k == 3)
        if reward is not None:
            assert r == reward
        assert env.regret()[0] == pytest.approx(cum)
    np.testing.assert_array_equal(info["task"], p)
    assert info["regret"] == pytest.approx(1.75) and info["return"] == env.returns()[0]
    with pytest.raises(ValueError, match="reset"):
        env.step(0)


def test_gridworld_episode_by_hand():
    """Start (0, 0), goal (0, 2): right, right finds the goal (reward 1, back on the start, an
    inner episode ends); then 15 steps pressing up (a wall) end the next inner episode."""
    env = gym.make(G_ID, horizon=18).unwrapped
    obs, _ = env.reset(seed=0, options={"task": [0, 0, 0, 2]})
    np.testing.assert_array_equal(obs, onehot((0, 0)))
    obs, r, _, trunc, info = env.step(RIGHT)
    np.testing.assert_array_equal(obs, onehot((0, 1)))
    assert (r, info["inner_done"], trunc) == (0.0, False, False)
    obs, r, _, _, info = env.step(RIGHT)
    np.testing.assert_array_equal(obs, onehot((0, 0)))
    assert (r, info["inner_done"]) == (1.0, True)
    for k in range(15):
        obs, r, _, trunc, info = env.step(UP)
        np.testing.assert_array_equal(obs, onehot((0, 0)))
        assert r == 0.0 and info["inner_done"] == (k == 14) and trunc == (k == 15)
    obs, r, _, trunc, info = env.step(DOWN)  # t = 18 = T
    np.testing.assert_array_equal(obs, onehot((1, 0)))
    assert trunc and info["return"] == 1.0
    # The oracle (d = 2) scores at t = 2, 4, ..., 18: 9 rewards against the agent's 1.
    assert info["regret"] == 8.0
    np.testing.assert_array_equal(info["task"], [0, 0, 0, 2])


def test_vector_gridworld_by_hand_and_autoreset():
    env = gym.make_vec(G_ID, num_envs=2, horizon=2)
    obs, _ = env.reset(seed=4, options={"task": [[0, 0, 0, 1], [2, 2, 4, 4]]})
    np.testing.assert_array_equal(obs, [onehot((0, 0)), onehot((2, 2))])
    obs, r, term, trunc, info = env.step(np.array([RIGHT, DOWN]))
    np.testing.assert_array_equal(obs, [onehot((0, 0)), onehot((3, 2))])
    np.testing.assert_array_equal(r, [1.0, 0.0])
    np.testing.assert_array_equal(info["inner_done"], [True, False])
    assert not term.any() and not trunc.any()
    obs, r, term, trunc, info = env.step(np.array([LEFT, RIGHT]))
    assert trunc.all() and not term.any()
    np.testing.assert_array_equal(info["return"], [1.0, 0.0])
    # oracle: d = 1 scores at t = 1, 2; d = 4 never within T = 2
    np.testing.assert_array_equal(info["regret"], [1.0, 0.0])
    # Autoreset (NEXT_STEP): the next step starts tasks 2 and 3 of seed 4, reward 0.
    obs, r, term, trunc, _ = env.step(np.array([0, 0]))
    assert not r.any() and not trunc.any()
    single = gym.make(G_ID, horizon=2).unwrapped
    single.reset(seed=4)
    for k in range(3):
        single.reset()
    np.testing.assert_array_equal(env.unwrapped.task_params()[1], single.task_params()[0])


@pytest.mark.parametrize("env_id", [B_ID, G_ID])
def test_vector_task_i_is_the_single_envs_ith_task(env_id):
    n, steps = 4, 12
    vec = gym.make_vec(env_id, num_envs=n, horizon=steps)
    vec.reset(seed=11)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, vec.single_action_space.n, size=(steps, n))
    vec_rewards = np.stack([vec.step(a)[1] for a in actions])
    params = vec.unwrapped.task_params()
    single = gym.make(env_id, horizon=steps).unwrapped
    for i in range(n):
        single.reset(seed=11) if i == 0 else single.reset()
        np.testing.assert_array_equal(single.task_params()[0], params[i])
        got = [single.step(int(a))[1] for a in actions[:, i]]
        np.testing.assert_array_equal(got, vec_rewards[:, i])


@pytest.mark.parametrize("env_id,policy", [(B_ID, "oracle"), (G_ID, "bayes_optimal"), (G_ID, "episodic_search")])
def test_reference_actions_replayed_give_the_references_rewards(env_id, policy):
    """The Rust reference runs and the environment step the same tasks with the same rewards."""
    n, seed, kind = 6, 2, "bandit" if env_id == B_ID else "gridworld"
    size = 5 if kind == "bandit" else 3  # a 3x3 grid keeps the exact search fast
    refs = lvrnn.references(kind, n, seed, alpha=0.3, size=size)
    run = refs[policy]
    kwargs = {"alpha": 0.3} if kind == "bandit" else {"size": size}
    env = gym.make_vec(env_id, num_envs=n, **kwargs)
    env.reset(seed=seed)
    rewards, regret = [], np.zeros(n)
    for t in range(run.actions.shape[1]):
        _, r, _, _, _ = env.step(run.actions[:, t])
        rewards.append(r)
    np.testing.assert_array_equal(np.stack(rewards, 1), run.reward)
    np.testing.assert_allclose(env.unwrapped.regret(), run.cum_regret, rtol=1e-12, atol=1e-6)


def cli_table(run_cli, tmp_path, env, tasks, seed) -> str:
    out = run_cli(["reference", "--env", env, "--tasks", str(tasks), "--seed", str(seed)], tmp_path).stdout
    lines = out.splitlines()
    return "\n".join(lines[1 : 1 + 1 + 6 * 3]) + "\n"  # header and 18 rows (bandit)


def test_random_agent_matches_cli_random_row(run_cli, tmp_path):
    tasks, seed, alpha = 200, 5, 0.3
    out = run_cli(["reference", "--env", "bandit", "--tasks", str(tasks), "--seed", str(seed)], tmp_path).stdout
    row = next(line for line in out.splitlines() if line.startswith("random") and line.split()[1] == "50")
    f = row.split()
    ret, ret_ci, reg, reg_ci = float(f[3]), float(f[5]), float(f[7]), float(f[9])
    # lvrnn.references gives the CLI's table, number for number.
    refs = lvrnn.references("bandit", tasks, seed, alpha=alpha)
    assert refs.table.splitlines() == out.splitlines()[1 : 1 + len(refs.table.splitlines())]
    env = gym.make_vec(B_ID, num_envs=tasks, alpha=alpha)
    env.reset(seed=seed)
    rng = np.random.default_rng(1)
    for _ in range(50):
        *_, trunc, info = env.step(env.action_space.sample() * 0 + rng.integers(0, 5, tasks))
    assert trunc.all()
    assert abs(info["return"].mean() - ret) <= ret_ci, (info["return"].mean(), row)
    assert abs(info["regret"].mean() - reg) <= reg_ci, (info["regret"].mean(), row)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: gym.make(B_ID, alpha=0.0), "alpha"),
        (lambda: gym.make(B_ID, alpha=float("nan")), "alpha"),
        (lambda: gym.make(B_ID, horizon=0), "horizon"),
        (lambda: gym.make(G_ID, size=9), "size"),
        (lambda: gym.make(G_ID, size=1), "size"),
        (lambda: gym.make(G_ID, horizon=2.5), "horizon"),
        (lambda: gym.make_vec(B_ID, num_envs=0), "num_envs"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_actions_and_tasks_raise_value_error():
    env = gym.make_vec(B_ID, num_envs=2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions\[1\] = 5"):
        env.step(np.array([0, 5]))
    with pytest.raises(ValueError, match="actions has shape"):
        env.step(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="task"):
        env.reset(options={"task": [[0.5] * 5, [1.5] * 5]})
    grid = gym.make(G_ID).unwrapped
    with pytest.raises(ValueError, match="start and the goal"):
        grid.reset(options={"task": [1, 1, 1, 1]})
    grid.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        grid.step(4)
