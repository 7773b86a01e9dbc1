"""The paper's tasks as Gymnasium environments, stepped by the Rust environments.

Importing this module (it needs ``gymnasium``: ``pip install ./python[gym]``) registers

- ``lvrnn/DirichletBandit-v0``: the 5-armed Bernoulli bandit, arm probabilities
  p ~ Dirichlet(alpha * 1); one Gymnasium episode is one task of T = ``horizon`` = 50 pulls.
  Observation: the constant 1.0 (shape (1,)); action: an arm 0..4; reward 0 or 1.
- ``lvrnn/GridWorld-v0``: the sparse-reward ``size`` x ``size`` gridworld (5 x 5), start and goal
  uniform and distinct, the goal never observed; one Gymnasium episode is one task of T = 100
  interactions. Inner episodes of 15 steps stay inside it: when the goal is reached (reward 1)
  or 15 steps have passed, the agent is put back on its start, which the observation shows
  (one-hot row then one-hot column, shape (2 * size,)) and ``info["inner_done"]`` flags.
  Actions: 0 up, 1 down, 2 left, 3 right.

Both end with ``truncated`` at t = T (never ``terminated``). The task's parameters (bandit: the
arm probabilities; gridworld: start row, start col, goal row, goal col), the cumulative regret
against the oracle and the return are in ``info`` at the last step only, and on request from
``env.unwrapped.task_params()`` / ``.regret()`` (never in the observation).

Seeds: after ``reset(seed=s)`` the k-th task of a single environment is task k of
``lvrnn reference --seed s`` (the ``k``-th ``reset``), and the k-th batch of a vector
environment of B tasks holds tasks k*B, ..., k*B + B - 1: so a vector environment's task i, a
single environment's i-th task and :func:`lvrnn.references`'s task i are the same task (the
bandit's rewards, too, come from the task's own random stream). ``options={"task": params}``
plays given tasks instead.

``gymnasium.make_vec(id, num_envs=B)`` gives the batched :class:`BanditVectorEnv` /
:class:`GridWorldVectorEnv`: all B tasks in one Rust call per step, numpy in and out.
"""

from __future__ import annotations

from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from . import _lvrnn

__all__ = ["BanditEnv", "GridWorldEnv", "BanditVectorEnv", "GridWorldVectorEnv", "BANDIT_ID", "GRIDWORLD_ID"]

BANDIT_ID = "lvrnn/DirichletBandit-v0"
GRIDWORLD_ID = "lvrnn/GridWorld-v0"

#: The paper's settings (Appendix B.4): bandit alpha 0.2 for training (0.3 for its test tasks),
#: T = 50; gridworld 5 x 5, T = 100.
BANDIT_DEFAULTS = dict(alpha=0.2, horizon=50)
GRID_DEFAULTS = dict(horizon=100, size=5)


def _check_int(name: str, v: Any, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} = {v!r} is not valid: expected an integer >= {low}")
    return int(v)


def _check_alpha(alpha: Any) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        a = float("nan")
    if not (a > 0 and np.isfinite(a)):
        raise ValueError(f"alpha = {alpha!r} is not valid: the Dirichlet concentration must be a finite number > 0")
    return a


def _seed_from(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**63 - 1))


class _Tasks:
    """What the single and vector environments share: the Rust batch, its seed and task count."""

    def _init_tasks(self, env: str, num_envs: int, horizon: int, alpha: float, size: int):
        self._batch = _lvrnn.TaskBatch(env, num_envs, horizon, alpha, size)
        self._seed: Optional[int] = None
        self._next = 0  # index of the next task to draw
        self._done = True

    def _start(self, seed: Optional[int], options: Optional[dict], rng: np.random.Generator) -> np.ndarray:
        if seed is not None:
            self._seed, self._next = int(seed), 0
        elif self._seed is None:
            self._seed, self._next = _seed_from(rng), 0
        first, n = self._next, self._batch.num_envs
        self._next += n
        self._done = False
        task = None if options is None else options.get("task")
        if task is None:
            return self._batch.reset(self._seed, first)
        params = np.ascontiguousarray(np.asarray(task, dtype=np.float64).reshape(n, -1))
        return self._batch.set_tasks(params, self._seed, first)

    def task_params(self) -> np.ndarray:
        """The current tasks' parameters (evaluation only): bandit (B, 5) arm probabilities,
        gridworld (B, 4) start row, start col, goal row, goal col."""
        return self._batch.task_params()

    def regret(self) -> np.ndarray:
        """Cumulative regret against the oracle so far in the current tasks, (B,)."""
        return self._batch.regret()

    def returns(self) -> np.ndarray:
        """Cumulative reward so far in the current tasks, (B,)."""
        return self._batch.returns()

    @property
    def t(self) -> int:
        """Interactions so far in the current tasks."""
        return self._batch.t

    @property
    def horizon(self) -> int:
        return self._batch.horizon

    def _final_info(self) -> dict:
        return {"task": self.task_params(), "regret": self.regret(), "return": self.returns()}


# ---------------------------------------------------------------------------------------------
# Single environments


class _SingleEnv(_Tasks, gym.Env):
    metadata = {"render_modes": []}
    _kind = ""

    def _setup(self, horizon: int, alpha: float, size: int, obs_dim: int, actions: int):
        self._init_tasks(self._kind, 1, horizon, alpha, size)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(obs_dim,), dtype=np.float32)
        self.action_space = spaces.Discrete(actions)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        obs = self._start(seed, options, self.np_random)
        return obs[0], {"task_index": self._next - 1}

    def step(self, action):
        if not self.action_space.contains(action) and not (
            isinstance(action, (int, np.integer)) and 0 <= int(action) < self.action_space.n
        ):
            raise ValueError(f"action = {action!r} is out of range: actions are 0..{self.action_space.n}")
        if self._done:
            raise ValueError("step after the end of the task: call reset")
        obs, reward, inner, truncated = self._batch.step(np.array([int(action)], dtype=np.int64))
        info = {} if inner is None else {"inner_done": bool(inner[0])}
        if truncated:
            self._done = True
            info.update({k: v[0] for k, v in self._final_info().items()})
        return obs[0], float(reward[0]), False, truncated, info


class BanditEnv(_SingleEnv):
    """One Dirichlet-Bernoulli bandit task per episode (see the module documentation)."""

    _kind = "bandit"

    def __init__(self, alpha: float = BANDIT_DEFAULTS["alpha"], horizon: int = BANDIT_DEFAULTS["horizon"]):
        self.alpha = _check_alpha(alpha)
        self._setup(_check_int("horizon", horizon, 1), self.alpha, 0, 1, 5)


class GridWorldEnv(_SingleEnv):
    """One gridworld task per episode (see the module documentation)."""

    _kind = "gridworld"

    def __init__(self, horizon: int = GRID_DEFAULTS["horizon"], size: int = GRID_DEFAULTS["size"]):
        self.size = _check_int("size", size, 2)
        self._setup(_check_int("horizon", horizon, 1), 1.0, self.size, 2 * self.size, 4)


# ---------------------------------------------------------------------------------------------
# Vector environments


class _VectorEnv(_Tasks, VectorEnv):
    """B tasks stepped in one Rust call. Autoreset: after the step that truncates every task
    (all end together, at t = T), the next ``step`` starts the next B tasks and returns their
    first observation with reward 0 (its actions are ignored; ``AutoresetMode.NEXT_STEP``, as
    Gymnasium's own vector environments), or call ``reset()``."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}
    _kind = ""

    def _setup(self, num_envs: int, horizon: int, alpha: float, size: int, obs_dim: int, actions: int):
        self.num_envs = _check_int("num_envs", num_envs, 1)
        self._init_tasks(self._kind, self.num_envs, horizon, alpha, size)
        self.single_observation_space = spaces.Box(0.0, 1.0, shape=(obs_dim,), dtype=np.float32)
        self.single_action_space = spaces.Discrete(actions)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(self.num_envs, obs_dim), dtype=np.float32)
        self.action_space = spaces.MultiDiscrete(np.full(self.num_envs, actions))
        self._false = np.zeros(self.num_envs, dtype=bool)
        self._autoreset = False

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self._autoreset = False
        obs = self._start(seed, options, self.np_random)
        return obs, {}

    def step(self, actions):
        if self._autoreset:
            self._autoreset = False
            obs = self._start(None, None, self.np_random)
            return obs, np.zeros(self.num_envs), self._false.copy(), self._false.copy(), {}
        if self._done:
            raise ValueError("step before reset: call reset first")
        a = actions
        if not (type(a) is np.ndarray and a.dtype == np.int64 and a.flags.c_contiguous):
            a = np.asarray(a)
            if a.dtype.kind not in "iu":
                raise ValueError(f"actions has dtype {a.dtype}; expected integers")
            a = np.ascontiguousarray(a, dtype=np.int64)
        obs, reward, inner, truncated = self._batch.step(a)
        info = {} if inner is None else {"inner_done": inner}
        if truncated:
            self._done, self._autoreset = True, True
            final = self._final_info()
            info.update(final)
            info.update({f"_{k}": np.ones(self.num_envs, dtype=bool) for k in final})
            trunc = np.ones(self.num_envs, dtype=bool)
        else:
            trunc = self._false.copy()
        return obs, reward, self._false.copy(), trunc, info


class BanditVectorEnv(_VectorEnv):
    """``num_envs`` bandit tasks stepped together (see the module documentation)."""

    _kind = "bandit"

    def __init__(self, num_envs: int = 1, alpha: float = BANDIT_DEFAULTS["alpha"], horizon: int = BANDIT_DEFAULTS["horizon"]):
        self.alpha = _check_alpha(alpha)
        self._setup(num_envs, _check_int("horizon", horizon, 1), self.alpha, 0, 1, 5)


class GridWorldVectorEnv(_VectorEnv):
    """``num_envs`` gridworld tasks stepped together (see the module documentation)."""

    _kind = "gridworld"

    def __init__(self, num_envs: int = 1, horizon: int = GRID_DEFAULTS["horizon"], size: int = GRID_DEFAULTS["size"]):
        self.size = _check_int("size", size, 2)
        self._setup(num_envs, _check_int("horizon", horizon, 1), 1.0, self.size, 2 * self.size, 4)


def register_envs() -> None:
    """Registers the two ids with Gymnasium (done on import; idempotent)."""
    for env_id, single, vector in (
        (BANDIT_ID, BanditEnv, BanditVectorEnv),
        (GRIDWORLD_ID, GridWorldEnv, GridWorldVectorEnv),
    ):
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point=f"{__name__}:{single.__name__}",
                vector_entry_point=f"{__name__}:{vector.__name__}",
            )


register_envs()
